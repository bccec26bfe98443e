"""Writes real, complete DICOM test objects (CT, PET, NM SPECT, RTSTRUCT) with pydicom.

Every object carries file meta, its SOP class, patient/study/series/frame-of-reference/
equipment modules and identifying values (:data:`PHI`) that the PHI test searches for.
The writers return a :class:`SeriesTruth` with what a correct ingest must reproduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"

#: Identifying values written into every object; none of them may reach the lake.
PHI: dict[str, str] = {
    "PatientName": "Quixote^Dulcinea^Maria",
    "PatientID": "MRN-7731-QX",
    "PatientBirthDate": "19510317",
    "InstitutionName": "Saint Elsewhere Memorial Hospital",
    "InstitutionAddress": "42 Wallaby Way Springfield",
    "AccessionNumber": "ACC98765432",
    "ReferringPhysicianName": "Zhivago^Yuri",
    "PerformingPhysicianName": "Frankenstein^Victor",
    "OperatorsName": "Ratched^Mildred",
    "StudyID": "STU4711X",
    "OtherPatientIDs": "ALT-55501-ZZ",
    "StationName": "SPECTROOM7",
}
#: Dates written into the objects (study day, birth day); only offsets may be stored.
PHI_DATES: tuple[str, ...] = ("20230405", "2023-04-05", "19510317", "1951-03-17")

T0 = datetime(2023, 4, 5, 9, 15, 0)  # default study day (matches PHI's StudyDate)

HALF_LIFE_S = {"Ga-68": 67.71 * 60, "Lu-177": 159.53 * 3600, "F-18": 109.77 * 60}
NUCLIDE_CODES = {"Ga-68": ("C-131A3", "^68^Gallium"), "Lu-177": ("C-145A4", "^177^Lutetium"),
                 "F-18": ("C-111A1", "^18^Fluorine")}


@dataclass
class SeriesTruth:
    """What a written series should become in the lake."""

    paths: list[Path]
    series_uid: str
    frame_uid: str
    study_uid: str
    array: np.ndarray  # real-world values, (z, y, x)
    spacing: tuple[float, float, float]  # (x, y, z) mm
    origin: tuple[float, float, float]  # world position of voxel (0, 0, 0)
    direction: np.ndarray  # 3x3, columns = x, y, z axes (LPS)
    sop_uids: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        return (np.asarray(ijk, float) * np.asarray(self.spacing)) @ self.direction.T + \
            np.asarray(self.origin)


def direction_from_angle(deg: float) -> np.ndarray:
    """Axes rotated by ``deg`` about the patient z axis (an oblique but axial stack)."""
    a = math.radians(deg)
    row = np.array([math.cos(a), math.sin(a), 0.0])
    col = np.array([-math.sin(a), math.cos(a), 0.0])
    return np.column_stack([row, col, np.cross(row, col)])


def _da(when: datetime) -> str:
    return when.strftime("%Y%m%d")


def _tm(when: datetime) -> str:
    return when.strftime("%H%M%S") + (f".{when.microsecond:06d}" if when.microsecond else "")


def _dt(when: datetime) -> str:
    return _da(when) + _tm(when)


def base_dataset(sop_class: str, modality: str, *, study_uid: str, series_uid: str,
                 frame_uid: str | None, when: datetime, phi: dict | None = None,
                 series_number: int = 1, description: str = "test series") -> FileDataset:
    """A data set with file meta and the patient, study, series and equipment modules."""
    phi = {**PHI, **(phi or {})}
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    for key, value in phi.items():
        setattr(ds, key, value)
    ds.PatientSex = "F"
    ds.PatientAge = "072Y"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = phi.get("StudyDate", _da(when))
    ds.StudyTime = _tm(when)
    ds.SeriesDate = _da(when)
    ds.SeriesTime = _tm(when)
    ds.ContentDate = _da(when)
    ds.ContentTime = _tm(when)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.Manufacturer = "ThetaTest"
    ds.ManufacturerModelName = "Phantom 3000"
    ds.DeviceSerialNumber = "SN-0001"
    if frame_uid:
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
    return ds


def _pixel_module(ds: Dataset, stored: np.ndarray, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(stored.astype(np.int16 if signed else np.uint16)).tobytes()


def _plane_geometry(ds: Dataset, direction: np.ndarray, position: np.ndarray,
                    spacing: tuple[float, float, float]) -> None:
    ds.ImageOrientationPatient = [round(float(v), 10) for v in
                                  np.concatenate([direction[:, 0], direction[:, 1]])]
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.PixelSpacing = [spacing[1], spacing[0]]  # (between rows, between columns)
    ds.SliceThickness = spacing[2]


def write_ct_series(folder: Path, hu: np.ndarray, *, spacing=(2.0, 2.0, 3.0),
                    origin=(-31.0, -29.5, 12.0), direction: np.ndarray | None = None,
                    offsets_mm: list[float] | None = None, phi: dict | None = None,
                    when: datetime = T0, frame_uid: str | None = None,
                    study_uid: str | None = None, series_uid: str | None = None,
                    description: str = "CT test series") -> SeriesTruth:
    """A CT series, one file per slice, HU = stored - 1024 (slope 1, intercept -1024).

    ``offsets_mm`` moves slices along the normal (defaults to k * spacing_z); use it to
    write series with missing slices or irregular spacing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    nz = hu.shape[0]
    offsets = [k * spacing[2] for k in range(nz)] if offsets_mm is None else offsets_mm
    paths, sops = [], []
    for k in range(nz):
        ds = base_dataset(CT_STORAGE, "CT", study_uid=study_uid, series_uid=series_uid,
                          frame_uid=frame_uid, when=when, phi=phi, description=description)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.AcquisitionDate, ds.AcquisitionTime = _da(when), _tm(when)
        ds.KVP = 120
        pos = np.asarray(origin, float) + offsets[k] * direction[:, 2]
        _plane_geometry(ds, direction, pos, spacing)
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        _pixel_module(ds, hu[k] + 1024, signed=False)
        path = folder / f"ct_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sops.append(ds.SOPInstanceUID)
    return SeriesTruth(paths, series_uid, frame_uid, study_uid, hu.astype(np.int32),
                       tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                       direction, sops)


def _radiopharm_item(nuclide: str, dose_bq: float, injection: datetime,
                     half_life_s: float | None = None, pharmaceutical: str | None = None
                     ) -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = pharmaceutical or f"{nuclide} test tracer"
    item.RadiopharmaceuticalStartTime = _tm(injection)
    item.RadiopharmaceuticalStartDateTime = _dt(injection)
    item.RadionuclideTotalDose = f"{dose_bq:.6g}"
    item.RadionuclideHalfLife = f"{half_life_s or HALF_LIFE_S[nuclide]:.6g}"
    item.RadionuclidePositronFraction = 0.889 if nuclide == "Ga-68" else 0.0
    code = Dataset()
    code.CodeValue, code.CodeMeaning = NUCLIDE_CODES[nuclide]
    code.CodingSchemeDesignator = "SRT"
    item.RadionuclideCodeSequence = Sequence([code])
    return item


def write_pet_series(folder: Path, bqml: np.ndarray, *, weight_kg: float = 72.5,
                     dose_bq: float = 180e6, injection: datetime = T0,
                     start: datetime | None = None, nuclide: str = "Ga-68",
                     half_life_s: float | None = None, decay_correction: str = "START",
                     slice_times: list[datetime] | None = None, radiopharm: bool = True,
                     spacing=(4.0, 4.0, 3.0), origin=(-64.0, -64.0, 10.0),
                     direction: np.ndarray | None = None, phi: dict | None = None,
                     frame_uid: str | None = None, study_uid: str | None = None
                     ) -> SeriesTruth:
    """A PET series in BQML, one file per slice, a float RescaleSlope per slice.

    The truth array holds the exact real-world values stored (stored int x slope).
    """
    folder.mkdir(parents=True, exist_ok=True)
    start = start or injection + timedelta(minutes=60)
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    frame_uid = frame_uid or generate_uid()
    truth = np.zeros(bqml.shape, dtype=np.float64)
    paths, sops = [], []
    for k in range(bqml.shape[0]):
        ds = base_dataset(PET_STORAGE, "PT", study_uid=study_uid, series_uid=series_uid,
                          frame_uid=frame_uid, when=start, phi=phi, description="PET test")
        acq = slice_times[k] if slice_times else start
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.InstanceNumber = k + 1
        ds.AcquisitionDate, ds.AcquisitionTime = _da(acq), _tm(acq)
        ds.Units = "BQML"
        ds.DecayCorrection = decay_correction
        ds.CorrectedImage = ["ATTN", "DECY"] if decay_correction != "NONE" else ["ATTN"]
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.PatientWeight = f"{weight_kg:g}"
        ds.PatientSize = "1.68"
        ds.ActualFrameDuration = 120000
        ds.FrameReferenceTime = 0
        if radiopharm:
            ds.RadiopharmaceuticalInformationSequence = Sequence(
                [_radiopharm_item(nuclide, dose_bq, injection, half_life_s)])
        pos = np.asarray(origin, float) + k * spacing[2] * direction[:, 2]
        _plane_geometry(ds, direction, pos, spacing)
        peak = float(np.abs(bqml[k]).max()) or 1.0
        slope = peak / 30000.0
        stored = np.round(bqml[k] / slope).astype(np.int16)
        ds.RescaleSlope = f"{slope:.10g}"
        ds.RescaleIntercept = 0
        truth[k] = stored * float(ds.RescaleSlope)
        _pixel_module(ds, stored, signed=True)
        path = folder / f"pt_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sops.append(ds.SOPInstanceUID)
    return SeriesTruth(paths, series_uid, frame_uid, study_uid, truth,
                       tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                       direction, sops, {"start": start, "injection": injection})


def write_spect(path: Path, counts: np.ndarray, *, frame_duration_ms: int = 20000,
                frames_in_rotation: int = 60, rotations: int = 2, nuclide: str = "Lu-177",
                dose_bq: float = 7.4e9, injection: datetime = T0,
                acquired: datetime | None = None, spacing=(4.8, 4.8, 4.8),
                origin=(-76.8, -76.8, -20.0), phi: dict | None = None,
                frame_uid: str | None = None, study_uid: str | None = None,
                radiopharm: bool = True) -> SeriesTruth:
    """A reconstructed SPECT in counts: one NM multi-frame file (RECON TOMO).

    The acquisition duration is ``frame_duration_ms / 1000 x frames_in_rotation`` summed
    over ``rotations`` items of RotationInformationSequence.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    acquired = acquired or injection + timedelta(hours=24)
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    frame_uid = frame_uid or generate_uid()
    ds = base_dataset(NM_STORAGE, "NM", study_uid=study_uid, series_uid=series_uid,
                      frame_uid=frame_uid, when=acquired, phi=phi, description="SPECT test")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.InstanceNumber = 1
    ds.AcquisitionDate, ds.AcquisitionTime = _da(acquired), _tm(acquired)
    nz = counts.shape[0]
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = 0x00540080  # SliceVector
    ds.SliceVector = list(range(1, nz + 1))
    ds.NumberOfSlices = nz
    ds.PixelSpacing = [spacing[1], spacing[0]]
    ds.SliceThickness = spacing[2]
    ds.SpacingBetweenSlices = spacing[2]
    det = Dataset()
    det.ImagePositionPatient = [float(v) for v in origin]
    det.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.DetectorInformationSequence = Sequence([det])
    ds.NumberOfDetectors = 1
    rots = []
    for _ in range(rotations):
        rot = Dataset()
        rot.ActualFrameDuration = frame_duration_ms
        rot.NumberOfFramesInRotation = frames_in_rotation
        rot.StartAngle = 0
        rot.AngularStep = 360.0 / frames_in_rotation
        rot.RotationDirection = "CW"
        rot.ScanArc = 360
        rots.append(rot)
    ds.RotationInformationSequence = Sequence(rots)
    ds.NumberOfRotations = rotations
    win = Dataset()
    win.EnergyWindowName = "PEAK208"
    ds.EnergyWindowInformationSequence = Sequence([win])
    if radiopharm:
        ds.RadiopharmaceuticalInformationSequence = Sequence(
            [_radiopharm_item(nuclide, dose_bq, injection)])
    _pixel_module(ds, counts, signed=False)
    ds.save_as(path, enforce_file_format=True)
    return SeriesTruth([path], series_uid, frame_uid, study_uid, counts.astype(np.float64),
                       tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                       np.eye(3), [ds.SOPInstanceUID],
                       {"duration_s": frame_duration_ms / 1000 * frames_in_rotation * rotations,
                        "acquired": acquired, "injection": injection})


def write_rtstruct(path: Path, ct: SeriesTruth, rois: dict[str, list[np.ndarray]], *,
                   frame_uid: str | None = None, phi: dict | None = None,
                   when: datetime = T0) -> Path:
    """An RTSTRUCT with closed planar contours (world mm, (n, 3) each) drawn on ``ct``.

    ``frame_uid`` overrides the frame of reference it states (default: the CT's).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    frame_uid = frame_uid or ct.frame_uid
    ds = base_dataset(RTSTRUCT_STORAGE, "RTSTRUCT", study_uid=ct.study_uid,
                      series_uid=generate_uid(), frame_uid=None, when=when, phi=phi,
                      description="RTSTRUCT test")
    ds.StructureSetLabel = "test contours"
    ds.StructureSetDate, ds.StructureSetTime = _da(when), _tm(when)
    contour_images = []
    for sop in ct.sop_uids:
        img = Dataset()
        img.ReferencedSOPClassUID = CT_STORAGE
        img.ReferencedSOPInstanceUID = sop
        contour_images.append(img)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = ct.series_uid
    ref_series.ContourImageSequence = Sequence(contour_images)
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref_study.ReferencedSOPInstanceUID = ct.study_uid
    ref_study.RTReferencedSeriesSequence = Sequence([ref_series])
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = frame_uid
    ref_frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_frame])
    roi_seq, contour_seq, obs_seq = [], [], []
    for number, (name, polygons) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        roi_seq.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = [255, 0, 0]
        items = []
        for poly in polygons:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(poly)
            c.ContourData = [f"{v:.6f}" for v in np.asarray(poly, float).ravel()]
            items.append(c)
        rc.ContourSequence = Sequence(items)
        contour_seq.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = "ORGAN"
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = Sequence(roi_seq)
    ds.ROIContourSequence = Sequence(contour_seq)
    ds.RTROIObservationsSequence = Sequence(obs_seq)
    ds.save_as(path, enforce_file_format=True)
    return path


def square_polygon(ct: SeriesTruth, k: int, i0: float, j0: float, i1: float, j1: float
                   ) -> np.ndarray:
    """A square (rectangle) in slice ``k`` with corners at continuous indices, in world mm."""
    ijk = np.array([[i0, j0, k], [i1, j0, k], [i1, j1, k], [i0, j1, k]], float)
    return ct.index_to_world(ijk)


def circle_polygon(ct: SeriesTruth, k: int, ci: float, cj: float, radius_mm: float,
                   n: int = 180) -> np.ndarray:
    """A circle of ``radius_mm`` about continuous index (ci, cj) in slice ``k``, world mm."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ijk = np.column_stack([ci + radius_mm / ct.spacing[0] * np.cos(t),
                           cj + radius_mm / ct.spacing[1] * np.sin(t), np.full(n, k)])
    return ct.index_to_world(ijk)


def phantom(shape=(10, 32, 32), low: float = -1000, high: float = 1500, seed: int = 0
            ) -> np.ndarray:
    """A reproducible integer volume (z, y, x) with structure in every direction."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    base = low + (high - low) * ((x + 2 * y + 3 * z) % 17) / 16
    return np.round(base + rng.integers(-20, 20, size=shape)).clip(low, high).astype(np.int32)
