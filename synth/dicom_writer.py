"""Write imaging sessions as real DICOM: CT and PET slices, NM multi-frame SPECT, SEG.

Layout per patient: ``<PatientID>/<session>/{CT,PT,NM,SEG}/`` where session is ``PET0`` or
``C<cycle>TP<time point>``. UIDs are derived from the seed (deterministic output).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sr.codedict import codes
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from theralake.synth.constants import GA68, LU177, Nuclide
from theralake.synth.fastdicom import (
    PREAMBLE,
    SeriesWriter,
    encode_dataset,
    encode_element,
    file_meta,
    pixel_element,
    sequence,
)
from theralake.synth.grid import Grid
from theralake.synth.imaging import Session
from theralake.synth.patient import N_PROJECTIONS, PatientTruth, voi_labels
from theralake.synth.projections import projection_dataset, write_projections
from theralake.synth.tissues import ORGAN_VOIS

log = logging.getLogger(__name__)
MANUFACTURER = "theralake-synth"
SOFTWARE = "theralake.synth 0.1"


class UidFactory:
    """Deterministic UIDs from the seed and a key."""

    def __init__(self, seed: int, patient_id: str) -> None:
        self.base = [str(seed), patient_id]

    def __call__(self, *key: object) -> str:
        return generate_uid(entropy_srcs=[*self.base, *(str(k) for k in key)])


def _da(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S.%f")[:13]


def _base(pt: PatientTruth, session: Session, uids: UidFactory, modality: str,
          series_number: int, sop_class: str, study_key: str, description: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.PatientName = pt.patient_name
    ds.PatientID = pt.patient_id
    t0 = session.acquisition
    ds.PatientBirthDate = f"{t0.year - int(pt.clinical.age_y)}0101"
    ds.PatientSex = "M"
    ds.PatientAge = f"{int(pt.clinical.age_y):03d}Y"
    ds.PatientWeight = f"{pt.clinical.weight_kg:.1f}"
    ds.PatientSize = f"{pt.clinical.height_cm / 100:.2f}"
    ds.StudyInstanceUID = uids("study", study_key)
    ds.StudyDate = _da(t0)
    ds.StudyTime = _tm(t0)
    ds.StudyID = study_key
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = description
    ds.Modality = modality
    ds.SeriesInstanceUID = uids("series", study_key, modality)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{description} {modality}"
    ds.SeriesDate = _da(t0)
    ds.SeriesTime = _tm(t0)
    ds.AcquisitionDate = _da(t0)
    ds.AcquisitionTime = _tm(t0)
    ds.ContentDate = _da(t0)
    ds.ContentTime = _tm(t0)
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = uids("for", study_key)
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synthetic"
    ds.SoftwareVersions = SOFTWARE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def set_file_meta(ds: Dataset) -> None:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = ds.SOPClassUID
    fm.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = fm


def radiopharm_item(nuclide: Nuclide, name: str, start: dt.datetime, dose_bq: float) -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = name
    item.RadiopharmaceuticalStartTime = _tm(start)
    item.RadiopharmaceuticalStartDateTime = start.strftime("%Y%m%d%H%M%S")
    item.RadionuclideTotalDose = f"{dose_bq:.6g}"
    item.RadionuclideHalfLife = f"{nuclide.half_life_s:.6g}"
    if nuclide is GA68:
        item.RadionuclidePositronFraction = "0.8891"
    code = Dataset()
    code.CodeValue = nuclide.snomed_code
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = nuclide.snomed_meaning
    item.RadionuclideCodeSequence = [code]
    return item


@dataclass
class SeriesRef:
    """What a SEG needs to reference a written image series."""

    base: Dataset
    sop_uids: list[str]
    positions: list[list[str]]
    grid: Grid

    def datasets(self) -> list[Dataset]:
        """Header-only datasets of the slices (for highdicom)."""
        out = []
        for uid, pos in zip(self.sop_uids, self.positions, strict=True):
            d = Dataset()
            d.update(self.base)
            d.SOPInstanceUID = uid
            d.ImagePositionPatient = pos
            out.append(d)
        return out


def _slices(ds: Dataset, grid: Grid, stored: np.ndarray, folder: Path, prefix: str,
            uids: UidFactory, key: str, slopes: np.ndarray | None = None) -> SeriesRef:
    folder.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = grid.shape
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [f"{grid.spacing[1]:g}", f"{grid.spacing[0]:g}"]
    ds.SliceThickness = f"{grid.spacing[2]:g}"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    writer = SeriesWriter(ds)
    ref = SeriesRef(ds, [], [], grid)
    for k in range(nz):
        uid = uids("sop", key, k)
        z = grid.origin[2] + k * grid.spacing[2]
        pos = [f"{grid.origin[0]:.4f}", f"{grid.origin[1]:.4f}", f"{z:.4f}"]
        varying: dict[int, tuple[str, object]] = {
            0x00200013: ("IS", k + 1), 0x00200032: ("DS", pos), 0x00201041: ("DS", pos[2]),
        }
        if slopes is not None:
            varying[0x00281053] = ("DS", f"{slopes[k]:.8g}")
            varying[0x00541330] = ("US", k + 1)
        writer.write(folder / f"{prefix}{k + 1:04d}.dcm", uid, varying,
                     np.ascontiguousarray(stored[k]).tobytes())
        ref.sop_uids.append(uid)
        ref.positions.append(pos)
    return ref


def write_ct(pt: PatientTruth, session: Session, root: Path, uids: UidFactory) -> SeriesRef:
    """CT as one file per slice, int16 with intercept -1024."""
    key = session.tag
    ds = _base(pt, session, uids, "CT", 1, CTImageStorage, key, _describe(session))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.DeviceSerialNumber = "SYNCT01"
    stored = (session.ct_hu.astype(np.int32) + 1024).astype(np.int16)
    return _slices(ds, session.ct_grid, stored, root / key / "CT", "CT", uids, key + "CT")


def write_pet(pt: PatientTruth, session: Session, root: Path, uids: UidFactory) -> None:
    """PET (Bq/mL, decay-corrected to the series start) as int16 slices with per-slice slope."""
    key = session.tag
    ds = _base(pt, session, uids, "PT", 2, PositronEmissionTomographyImageStorage, key,
               _describe(session))
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelRepresentation = 1
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.CountsSource = "EMISSION"
    ds.RandomsCorrectionMethod = "NONE"
    ds.AttenuationCorrectionMethod = "CT"
    ds.ReconstructionMethod = "OSEM"
    ds.NumberOfSlices = session.image_grid.shape[0]
    ds.FrameReferenceTime = "0"
    ds.ActualFrameDuration = 180000
    ds.DecayFactor = "1"
    ds.RescaleIntercept = "0"
    ds.DeviceSerialNumber = "SYNPET01"
    pet = pt.pet
    ds.RadiopharmaceuticalInformationSequence = [
        radiopharm_item(GA68, "Ga-68 PSMA-11", pet.injection, pet.activity_mbq * 1e6)
    ]
    img = session.image
    vmax = img.reshape(img.shape[0], -1).max(axis=1)
    slopes = np.where(vmax > 0, vmax / 32767.0, 1.0)
    stored = np.rint(img / slopes[:, None, None]).astype(np.int16)
    _slices(ds, session.image_grid, stored, root / key / "PT", "PT", uids, key + "PT", slopes)


def write_nm(pt: PatientTruth, session: Session, root: Path, uids: UidFactory) -> None:
    """Quantitative SPECT as one NM multi-frame file of reconstructed counts."""
    key = session.tag
    cyc = pt.cycles[(session.cycle or 1) - 1]
    tp = session.time_point
    assert tp is not None
    ds = _base(pt, session, uids, "NM", 3, NuclearMedicineImageStorage, key, _describe(session))
    g = session.image_grid
    nz, ny, nx = g.shape
    ds.SOPInstanceUID = uids("sop", key, "NM")
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.PixelRepresentation = 0
    ds.Rows, ds.Columns = ny, nx
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = 0x00540080  # SliceVector
    ds.SliceVector = list(range(1, nz + 1))
    ds.NumberOfSlices = nz
    ds.PixelSpacing = [f"{g.spacing[1]:g}", f"{g.spacing[0]:g}"]
    ds.SliceThickness = f"{g.spacing[2]:g}"
    ds.SpacingBetweenSlices = f"{g.spacing[2]:g}"
    ds.Units = "CNTS"
    ds.DeviceSerialNumber = pt.camera
    ds.CorrectedImage = ["UNIF", "COR", "ATTN", "SCAT"]
    ds.DecayCorrection = "NONE"
    ds.NumberOfDetectors = 1
    det = Dataset()
    det.ImagePositionPatient = [f"{g.origin[0]:.4f}", f"{g.origin[1]:.4f}", f"{g.origin[2]:.4f}"]
    det.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    det.CollimatorType = "PARA"
    det.CollimatorGridName = "MEGP"
    ds.DetectorInformationSequence = [det]
    ds.NumberOfRotations = 1
    rot = Dataset()
    rot.StartAngle = "0"
    rot.AngularStep = f"{360.0 / N_PROJECTIONS:g}"
    rot.RotationDirection = "CW"
    rot.ScanArc = "360"
    rot.ActualFrameDuration = int(tp.frame_duration_ms)
    rot.NumberOfFramesInRotation = N_PROJECTIONS
    ds.RotationInformationSequence = [rot]
    ds.NumberOfEnergyWindows = 1
    ew = Dataset()
    ew.EnergyWindowName = "Lu177_208keV"
    rng_item = Dataset()
    rng_item.EnergyWindowLowerLimit = "187.2"
    rng_item.EnergyWindowUpperLimit = "228.8"
    ew.EnergyWindowRangeSequence = [rng_item]
    ds.EnergyWindowInformationSequence = [ew]
    ds.RadiopharmaceuticalInformationSequence = [
        radiopharm_item(LU177, "Lu-177 PSMA-617", cyc.administration, cyc.activity_mbq * 1e6)
    ]
    orient = Dataset()
    orient.CodeValue, orient.CodingSchemeDesignator, orient.CodeMeaning = (
        "F-10450", "SRT", "recumbent")
    ds.PatientOrientationCodeSequence = [orient]
    ds.PatientGantryRelationshipCodeSequence = []
    ds.PixelData = np.ascontiguousarray(session.image.astype(np.uint16)).tobytes()
    set_file_meta(ds)
    folder = root / key / "NM"
    folder.mkdir(parents=True, exist_ok=True)
    dcmwrite(folder / "NM0001.dcm", ds, enforce_file_format=True)


def write_nm_projections(pt: PatientTruth, session: Session, root: Path, uids: UidFactory
                         ) -> None:
    """The raw SPECT acquisition: NM tomographic projections of three energy windows."""
    assert session.projections is not None
    key = session.tag
    cyc = pt.cycles[(session.cycle or 1) - 1]
    ds = _base(pt, session, uids, "NM", 3, NuclearMedicineImageStorage, key, _describe(session))
    ds.RadiopharmaceuticalInformationSequence = [
        radiopharm_item(LU177, "Lu-177 PSMA-617", cyc.administration, cyc.activity_mbq * 1e6)]
    orient = Dataset()
    orient.CodeValue, orient.CodingSchemeDesignator, orient.CodeMeaning = (
        "F-10450", "SRT", "recumbent")
    ds.PatientOrientationCodeSequence = [orient]
    ds.PatientGantryRelationshipCodeSequence = []
    del ds.PatientPosition  # the NM image says it with the orientation codes instead
    ds.Laterality = ""
    ds = projection_dataset(ds, session.projections, camera=pt.camera,
                            sop_uid=uids("sop", key, "NM"))
    set_file_meta(ds)
    write_projections(ds, root / key / "NM")


_CODES = {
    "body": codes.SCT.EntireBody, "lung": codes.SCT.Lung, "liver": codes.SCT.Liver,
    "spleen": codes.SCT.Spleen, "kidney": codes.SCT.Kidney,
    "parotid": codes.SCT.ParotidGland, "submandibular": codes.SCT.SubmandibularGland,
    "urinary": hd.sr.CodedConcept("89837001", "SCT", "Urinary bladder"),
    "red": codes.SCT.BoneMarrow,
}


def _segment(number: int, name: str) -> hd.seg.SegmentDescription:
    if name.startswith("lesion"):
        cat, typ = codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    else:
        cat, typ = codes.SCT.AnatomicalStructure, _CODES[name.split("_")[0]]
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=name, segmented_property_category=cat,
        segmented_property_type=typ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        tracking_id=name, tracking_uid=generate_uid(entropy_srcs=[name]),
    )


def seg_vois(pt: PatientTruth) -> list[str]:
    """Names of the VOIs written in the SEG (DESIGN.md names)."""
    return list(ORGAN_VOIS) + pt.lesion_names


def _seg_masks(pt: PatientTruth, session: Session) -> tuple[list[str], list[np.ndarray]]:
    """The SEG's segments present on the session's CT, and their masks (z, y, x)."""
    vois = voi_labels(pt.lesion_names)
    present = np.bincount(session.labels.ravel())
    names, masks = [], []
    for name in seg_vois(pt):
        lut = np.zeros(present.size, bool)
        lut[[v for v in vois[name] if v < present.size]] = True
        if (present[lut] > 0).any():
            names.append(name)
            masks.append(lut[session.labels])
    return names, masks


def write_seg_highdicom(pt: PatientTruth, session: Session, ct: SeriesRef, path: Path,
                        uids: UidFactory) -> None:
    """True VOIs as a binary SEG built by highdicom (slow at full size; used to cross-check)."""
    key = session.tag
    names, masks = _seg_masks(pt, session)
    seg = hd.seg.Segmentation(
        source_images=ct.datasets(), pixel_array=np.stack(masks, axis=-1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(i + 1, n) for i, n in enumerate(names)],
        series_instance_uid=uids("series", key, "SEG"), series_number=100,
        sop_instance_uid=uids("sop", key, "SEG"), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name="synthetic",
        software_versions=SOFTWARE, device_serial_number="SYNTRUTH",
        series_description=f"{_describe(session)} true VOIs", omit_empty_frames=True,
    )
    seg.save_as(path)


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    d = Dataset()
    d.CodeValue, d.CodingSchemeDesignator, d.CodeMeaning = value, scheme, meaning
    return d


def write_seg(pt: PatientTruth, session: Session, ct: SeriesRef, root: Path,
              uids: UidFactory) -> None:
    """True VOIs as a binary DICOM SEG referencing the session's CT.

    Same content as highdicom's Segmentation (segment descriptions come from highdicom),
    but the per-frame functional groups are encoded at byte level, which is ~20x faster.
    """
    key = session.tag
    names, masks = _seg_masks(pt, session)
    base = ct.base
    g = ct.grid
    ds = Dataset()
    for kw in ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate",
               "PatientSex", "PatientAge", "PatientWeight", "PatientSize", "StudyInstanceUID",
               "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
               "ReferringPhysicianName", "StudyDescription", "FrameOfReferenceUID",
               "PositionReferenceIndicator"):
        setattr(ds, kw, getattr(base, kw))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = uids("sop", key, "SEG")
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = uids("series", key, "SEG")
    ds.SeriesNumber = 100
    ds.SeriesDescription = f"{_describe(session)} true VOIs"
    ds.SeriesDate, ds.SeriesTime = base.SeriesDate, base.SeriesTime
    ds.ContentDate, ds.ContentTime = base.ContentDate, base.ContentTime
    ds.InstanceNumber = 1
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synthetic"
    ds.DeviceSerialNumber = "SYNTRUTH"
    ds.SoftwareVersions = SOFTWARE
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "TRUTH"
    ds.ContentDescription = "true VOIs of the synthetic patient"
    ds.ContentCreatorName = "theralake^synth"
    ds.SegmentationType = "BINARY"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    nz, ny, nx = g.shape
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.SegmentSequence = [_segment(i + 1, n) for i, n in enumerate(names)]
    org_uid = uids("dimorg", key)
    org = Dataset()
    org.DimensionOrganizationUID = org_uid
    ds.DimensionOrganizationSequence = [org]
    ds.DimensionOrganizationType = "3D"
    d1, d2 = Dataset(), Dataset()
    d1.DimensionOrganizationUID = d2.DimensionOrganizationUID = org_uid
    d1.DimensionIndexPointer, d1.FunctionalGroupPointer = 0x0062000B, 0x0062000A
    d1.DimensionDescriptionLabel = "Segment Number"
    d2.DimensionIndexPointer, d2.FunctionalGroupPointer = 0x00200032, 0x00209113
    d2.DimensionDescriptionLabel = "Image Position Patient"
    ds.DimensionIndexSequence = [d1, d2]
    shared = Dataset()
    po = Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [po]
    pm = Dataset()
    pm.PixelSpacing = [f"{g.spacing[1]:g}", f"{g.spacing[0]:g}"]
    pm.SliceThickness = f"{g.spacing[2]:g}"
    pm.SpacingBetweenSlices = f"{g.spacing[2]:g}"
    shared.PixelMeasuresSequence = [pm]
    ds.SharedFunctionalGroupsSequence = [shared]
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = base.SeriesInstanceUID
    inst = []
    for uid in ct.sop_uids:
        r = Dataset()
        r.ReferencedSOPClassUID = base.SOPClassUID
        r.ReferencedSOPInstanceUID = uid
        inst.append(r)
    ref_series.ReferencedInstanceSequence = inst
    ds.ReferencedSeriesSequence = [ref_series]
    # frames: segment-major, then slices in +z order; empty frames omitted
    frames, items = [], []
    purpose = encode_dataset_items(0x0040A170, [_code_item(
        "121322", "DCM", "Source image for image processing operation")])
    deriv_code = encode_dataset_items(0x00089215, [_code_item("113076", "DCM", "Segmentation")])
    cls = encode_element(0x00081150, "UI", base.SOPClassUID)
    preserved = encode_element(0x0028135A, "CS", "YES")
    for s_idx, mask in enumerate(masks):
        occupied = np.flatnonzero(mask.reshape(nz, -1).any(axis=1))
        for k in occupied:
            frames.append(mask[k])
            src = (cls + encode_element(0x00081155, "UI", ct.sop_uids[k]) + preserved
                   + purpose)
            deriv = sequence(0x00082112, [src]) + deriv_code
            items.append(
                sequence(0x00089124, [deriv])
                + sequence(0x00209111, [encode_element(0x00209157, "UL",
                                                       [s_idx + 1, int(k) + 1])])
                + sequence(0x00209113, [encode_element(0x00200032, "DS", ct.positions[k])])
                + sequence(0x0062000A, [encode_element(0x0062000B, "US", s_idx + 1)])
            )
    ds.NumberOfFrames = len(frames)
    bits = np.packbits(np.stack(frames).ravel(), bitorder="little").tobytes()
    folder = root / key / "SEG"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "SEG0001.dcm", "wb") as f:
        f.write(PREAMBLE)
        f.write(file_meta(ds.SOPClassUID, ds.SOPInstanceUID))
        f.write(encode_dataset(ds))
        f.write(sequence(0x52009230, items))
        f.write(pixel_element(bits, "OB"))


def encode_dataset_items(tag: int, items: list[Dataset]) -> bytes:
    """A sequence element of pydicom datasets (encoded once, reused)."""
    return sequence(tag, [encode_dataset(it) for it in items])


def _describe(session: Session) -> str:
    if session.kind == "PET":
        return "Ga-68 PSMA-11 PET/CT"
    tp = session.time_point
    assert tp is not None
    return f"Lu-177 C{session.cycle} {tp.nominal_h:g}h SPECT/CT"


def write_session_dicom(pt: PatientTruth, session: Session, root: Path, seed: int,
                        seg: bool = True) -> None:
    """Write a session (CT + PET or NM + SEG) under ``root/<PatientID>``."""
    uids = UidFactory(seed, pt.patient_id)
    proot = root / pt.patient_id
    ct = write_ct(pt, session, proot, uids)
    if session.kind == "PET":
        write_pet(pt, session, proot, uids)
    elif session.projections is not None:
        write_nm_projections(pt, session, proot, uids)
    else:
        write_nm(pt, session, proot, uids)
    if seg:
        write_seg(pt, session, ct, proot, uids)
