"""Export lake volumes as DICOM that planning systems open: the CT series, an RTDOSE on
its frame of reference, and an RTSTRUCT of VOIs drawn on it.

The lake keeps only keyed hashes of source UIDs, so exports get new UIDs (derived from the
lake ids, hence stable across exports) and reference each other consistently. Every object
carries its IOD's Type 1 and Type 2 attributes (Type 2 empty where the lake keeps no value:
birth date, sex, referring physician, accession number, study date: nothing identifying
leaves the lake), DS values fit their 16 characters, and the RTDOSE (summation type ``PLAN``,
the convention planning systems read) references the plan of its administration by a UID
derived from the dose map's id (no RT Plan object is written: a radiopharmaceutical
administration has none to export). Tests check each object with dciodvfy (dicom3tools) and
strict pydicom.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import contourpy
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from theralake import __version__
from theralake.lake.dicom_seg import write_seg
from theralake.lake.volume import Volume

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
UID_ROOT = "1.2.826.0.1.3680043.10.1442."  # deterministic UIDs derived from lake ids


def _uid(*parts: object) -> str:
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[repr(p) for p in parts])


def ds_text(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM DS), as exact as fits."""
    for digits in range(12, 0, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value!r} does not fit a DICOM DS")


def _base(sop_class: str, sop_uid: str, modality: str, patient_id: str, study_uid: str,
          series_uid: str, frame_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop_uid, modality
    ds.PatientID = patient_id  # the lake's pseudonym, never the source's
    ds.PatientName = f"{patient_id}^"  # one component (the trailing caret says so)
    ds.PatientBirthDate = ds.PatientSex = ""  # Type 2: the lake keeps neither
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        study_uid, series_uid, frame_uid)
    ds.StudyDate = ds.StudyTime = ""  # Type 2: the lake keeps no calendar date
    ds.ReferringPhysicianName = ds.AccessionNumber = ""
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Manufacturer, ds.SoftwareVersions = "theralake", __version__
    now = dt.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.PositionReferenceIndicator = ""
    return ds


def _geometry(ds: Dataset, vol: Volume, k: int = 0) -> None:
    """Plane position, orientation and spacing (DS within 16 characters)."""
    pos, ori = _slice_geometry(vol, k)
    ds.ImagePositionPatient = [ds_text(v) for v in pos]
    ds.ImageOrientationPatient = [ds_text(v) for v in ori]
    ds.PixelSpacing = [ds_text(vol.spacing_mm[1]), ds_text(vol.spacing_mm[0])]
    ds.SliceThickness = ds_text(vol.spacing_mm[2])


def _slice_geometry(vol: Volume, k: int) -> tuple[list[float], list[float]]:
    pos = vol.index_to_world(np.array([0.0, 0.0, float(k)]))
    ori = list(vol.direction[:, 0]) + list(vol.direction[:, 1])
    return [float(v) for v in pos], [float(v) for v in ori]


class DicomExport:
    """UIDs shared by one export (patient, study, frame of reference, CT series)."""

    def __init__(self, patient_id: str, ct_id: str):
        self.patient_id = patient_id
        self.ct_id = ct_id
        self.study_uid = _uid("study", patient_id, ct_id)
        self.frame_uid = _uid("frame", ct_id)
        self.ct_series_uid = _uid("ct-series", ct_id)
        self.ct_sop_uids: list[str] = []
        self.ct_datasets: list[Dataset] = []

    def write_ct(self, ct: Volume, out: Path) -> list[Path]:
        """One CT Image Storage file per slice (HU as int16, rescale intercept 0)."""
        out.mkdir(parents=True, exist_ok=True)
        hu = np.clip(np.rint(ct.array), -32768, 32767).astype(np.int16)
        paths = []
        self.ct_sop_uids, self.ct_datasets = [], []
        for k in range(hu.shape[0]):
            sop = _uid("ct", self.ct_id, k)
            ds = _base(CT_STORAGE, sop, "CT", self.patient_id, self.study_uid,
                       self.ct_series_uid, self.frame_uid)
            _geometry(ds, ct, k)
            ds.InstanceNumber = k + 1
            ds.Laterality = ds.PatientPosition = ""  # Type 2C: not kept by the lake
            ds.KVP = ds.AcquisitionNumber = ""  # Type 2
            ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "HU"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.PixelData = hu[k].tobytes()
            path = out / f"CT_{k + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            self.ct_sop_uids.append(sop)
            self.ct_datasets.append(ds)
        return paths

    def write_seg(self, masks: Mapping[str, np.ndarray], sources: Mapping[str, str | None],
                  out: Path) -> Path:
        """A DICOM SEG of the VOIs on the exported CT (see :mod:`theralake.lake.dicom_seg`)."""
        if not self.ct_datasets:
            raise ValueError("write the CT series first: the segmentation references it")
        return write_seg(self.ct_datasets, masks, sources, out,
                         _uid("seg-series", self.ct_id), _uid("seg", self.ct_id, sorted(masks)))

    def write_rtdose(self, dose: Volume, out: Path, dose_id: str,
                     description: str = "theralake absorbed dose", bits: int = 32) -> Path:
        """A multi-frame RTDOSE in Gy (unsigned ``bits``-bit counts times DoseGridScaling) on
        the CT's frame, ``DoseSummationType`` PLAN with the reference that requires."""
        if not np.isfinite(dose.array).all() or dose.array.min() < 0:
            raise ValueError("a dose map to export must be finite and non-negative")
        if bits not in (16, 32):
            raise ValueError(f"an RTDOSE holds 16- or 32-bit counts, not {bits}")
        out.parent.mkdir(parents=True, exist_ok=True)
        ds = _base(RTDOSE_STORAGE, _uid("rtdose", dose_id), "RTDOSE", self.patient_id,
                   self.study_uid, _uid("rtdose-series", dose_id), self.frame_uid)
        ds.OperatorsName = ""  # Type 2 of the RT Series
        _geometry(ds, dose)
        nz, ny, nx = dose.array.shape
        ds.NumberOfFrames, ds.Rows, ds.Columns = nz, ny, nx
        ds.FrameIncrementPointer = (0x3004, 0x000C)
        ds.GridFrameOffsetVector = [ds_text(k * dose.spacing_mm[2]) for k in range(nz)]
        peak = float(dose.array.max())
        top = 0.93 * (2.0**bits - 1)  # counts below the type's maximum
        ds.DoseGridScaling = ds_text(peak / top if peak > 0 else 1.0)
        scale = float(ds.DoseGridScaling)
        ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
        plan = Dataset()
        plan.ReferencedSOPClassUID = RTPLAN_STORAGE
        plan.ReferencedSOPInstanceUID = _uid("rtplan", dose_id)
        ds.ReferencedRTPlanSequence = Sequence([plan])
        ds.DoseComment = description[:64]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
            bits, bits, bits - 1, 0)
        counts = np.rint(dose.array.astype(np.float64) / scale)
        ds.PixelData = counts.astype(np.uint32 if bits == 32 else np.uint16).tobytes()
        ds.save_as(out, enforce_file_format=True)
        return out

    def write_rtstruct(self, ct: Volume, masks: Mapping[str, np.ndarray], out: Path) -> Path:
        """An RTSTRUCT with one ROI per mask (contours of each slice, on the CT's slices)."""
        if not self.ct_sop_uids:
            raise ValueError("write the CT series first: the structure set references it")
        out.parent.mkdir(parents=True, exist_ok=True)
        ds = _base(RTSTRUCT_STORAGE, _uid("rtstruct", self.ct_id, sorted(masks)), "RTSTRUCT",
                   self.patient_id, self.study_uid, _uid("rtstruct-series", self.ct_id),
                   self.frame_uid)
        ds.StructureSetLabel, ds.StructureSetName = "theralake", "theralake VOIs"
        ds.StructureSetDate, ds.StructureSetTime = ds.ContentDate, ds.ContentTime
        del ds.ContentDate, ds.ContentTime  # not of the RT Structure Set IOD
        ds.OperatorsName = ""  # Type 2 of the RT Series
        contour_images = Sequence([Dataset() for _ in self.ct_sop_uids])
        for item, sop in zip(contour_images, self.ct_sop_uids, strict=True):
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CT_STORAGE, sop
        series = Dataset()
        series.SeriesInstanceUID, series.ContourImageSequence = self.ct_series_uid, contour_images
        study = Dataset()
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        study.ReferencedSOPInstanceUID = self.study_uid
        study.RTReferencedSeriesSequence = Sequence([series])
        frame = Dataset()
        frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = self.frame_uid, Sequence(
            [study])
        ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
        rois, roi_contours, observations = Sequence(), Sequence(), Sequence()
        colours = [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                   [145, 30, 180], [70, 240, 240], [240, 50, 230]]
        for number, (name, mask) in enumerate(masks.items(), start=1):
            if mask.shape != ct.array.shape:
                raise ValueError(f"VOI {name}: mask shape {mask.shape} is not the CT's")
            roi = Dataset()
            roi.ROINumber, roi.ROIName = number, name
            roi.ReferencedFrameOfReferenceUID = self.frame_uid
            roi.ROIGenerationAlgorithm = "AUTOMATIC"  # Type 2
            rois.append(roi)
            rc = Dataset()
            rc.ReferencedROINumber, rc.ROIDisplayColor = number, colours[(number - 1) % 8]
            rc.ContourSequence = Sequence(_slice_contours(ct, mask, self.ct_sop_uids))
            roi_contours.append(rc)
            obs = Dataset()
            obs.ObservationNumber, obs.ReferencedROINumber = number, number
            obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN", ""
            observations.append(obs)
        ds.StructureSetROISequence, ds.ROIContourSequence = rois, roi_contours
        ds.RTROIObservationsSequence = observations
        ds.save_as(out, enforce_file_format=True)
        return out


def _slice_contours(ct: Volume, mask: np.ndarray, sop_uids: list[str]) -> list[Dataset]:
    """Closed planar contours around each slice's mask (through pixel-edge midpoints)."""
    out = []
    for k in np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0]:
        padded = np.pad(mask[k].astype(float), 1)
        for line in contourpy.contour_generator(z=padded).lines(0.5):
            if len(line) < 4:
                continue
            ij = np.asarray(line)[:-1] - 1.0  # (x, y) indices; the last point repeats the first
            ijk = np.column_stack([ij, np.full(len(ij), float(k))])
            world = ct.index_to_world(ijk)
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(world)
            c.ContourData = [f"{v:.3f}" for v in world.ravel()]
            img = Dataset()
            img.ReferencedSOPClassUID, img.ReferencedSOPInstanceUID = CT_STORAGE, sop_uids[k]
            c.ContourImageSequence = Sequence([img])
            out.append(c)
    return out
