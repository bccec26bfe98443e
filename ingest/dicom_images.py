"""DICOM image series (CT, PET, SPECT/NM, RTDOSE) to quantitative volumes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset

from theralake.ingest.calibration import CalibrationTable
from theralake.ingest.dicom_files import (
    Series,
    acquisition_datetime,
    parse_datetime,
    plane_pixels,
    read_full,
    series_datetime,
)
from theralake.ingest.errors import IngestError
from theralake.ingest.frames import (
    Frame,
    enhanced_frames,
    nm_frames,
    rtdose_frames,
    single_frame,
    stack,
)
from theralake.ingest.projections import (
    collimator_name,
    frame_duration_s,
    is_projection_data,
    read_views,
)
from theralake.ingest.radiopharm import Administration, administration_from_dicom, decay_factor
from theralake.ingest.scrub import identifying_values
from theralake.lake import Volume
from theralake.lake.volume import require_finite as require_finite_voxels

IMAGE_MODALITIES = {"CT": "ct", "PT": "pet", "NM": "spect", "RTDOSE": "dose", "MR": "mr"}
#: the kind of an NM acquisition's energy-window images (views, not a volume)
PROJECTIONS = "projections"


@dataclass
class PendingImage:
    """A quantitative image read from a source, before its place on the timeline is known."""

    raw_patient_id: str
    modality: str
    kind: str
    units: str
    volume: Volume
    acquired: datetime | None
    source_label: str
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    administration: Administration | None = None
    nuclide: str | None = None
    suvbw_per_bqml: float | None = None
    calibration_cps_per_mbq: float | None = None
    acquisition_duration_s: float | None = None
    resolution_fwhm_mm: float | None = None
    description: str | None = None
    weight_kg: float | None = None
    sex: str | None = None
    age_y: float | None = None
    height_m: float | None = None
    source_digest: list[str] = field(default_factory=list)
    #: an energy window of a SPECT acquisition: its window, geometry and camera (kind
    #: ``projections``; the volume's array is the views (angle, r, z))
    projection: dict | None = None
    #: the source's identifying values (names, IDs, dates...), scrubbed from free text
    identifiers: list[str] = field(default_factory=list)


#: the kinds whose voxels are measurements: a NaN or an infinity in them is refused
QUANTITATIVE_KINDS = ("ct", "pet", "spect", "dose", "mr")


def require_finite(voxels: np.ndarray, label: str) -> None:
    """Refuse an image with voxels that are not finite numbers (NaN, infinity).

    Raises:
        IngestError: naming the file and how many voxels are not finite.
    """
    try:
        require_finite_voxels(voxels)
    except ValueError as exc:
        raise IngestError(label, str(exc)) from exc


def _demographics(ds: Dataset) -> dict:
    age = str(ds.get("PatientAge") or "")
    age_y = None
    if age[:-1].isdigit() and age.endswith(("Y", "M", "W", "D")):
        age_y = float(age[:-1]) / {"Y": 1, "M": 12, "W": 52.18, "D": 365.25}[age[-1]]
    weight = ds.get("PatientWeight")
    size = ds.get("PatientSize")
    return {"weight_kg": float(weight) if weight not in (None, "") and float(weight) > 0 else None,
            "sex": str(ds.get("PatientSex") or "") or None, "age_y": age_y,
            "height_m": float(size) if size not in (None, "") and float(size) > 0 else None}


def _planes(series: Series) -> tuple[list[Frame], Dataset]:
    """All planes of a series and one full data set of it."""
    frames: list[Frame] = []
    last = None
    for path, header in series.headers:
        classic = series.modality in ("CT", "PT", "MR") and "ImagePositionPatient" in header
        pixels = plane_pixels(path, header) if classic else None
        ds = header if pixels is not None else read_full(path)  # the header: all but pixels
        last = ds
        if series.modality == "NM":
            frames.extend(nm_frames(ds, path))
        elif series.modality == "RTDOSE":
            frames.extend(rtdose_frames(ds, path))
        elif "PerFrameFunctionalGroupsSequence" in ds:
            frames.extend(enhanced_frames(ds, path))
        else:
            frame = single_frame(ds, path, pixels)
            acq = acquisition_datetime(ds)
            frame.time = acq.timestamp() if acq else None
            frames.append(frame)
    assert last is not None
    return frames, last


def read_series(series: Series, calibration: CalibrationTable) -> list[PendingImage]:
    """The images of a series: one per energy window of SPECT projections, else one."""
    if series.modality == "NM" and is_projection_data(series.first):
        return read_projection_series(series)
    return [read_image_series(series, calibration)]


def read_projection_series(series: Series) -> list[PendingImage]:
    """A SPECT acquisition (NM TOMO): one image of kind ``projections`` per energy window.

    Raises:
        IngestError: the acquisition cannot be reconstructed (geometry, windows, gating).
    """
    if len(series.headers) > 1:
        raise IngestError(series.label, "SPECT projections are expected in one multi-frame "
                                        f"file, found {len(series.headers)} files")
    path = series.headers[0][0]
    ds = read_full(path)
    pixels = ds.pixel_array
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    admin = administration_from_dicom(ds, path)
    nuclide = admin.nuclide if admin else None
    windows, views, geometry = read_views(ds, pixels, nuclide, path)
    duration = frame_duration_s(ds)
    if duration is None:
        raise IngestError(path, "NM projections without ActualFrameDuration")
    out = []
    for w in windows:
        step = 360.0 / len(geometry.angles_deg)
        volume = Volume(views[w.index], (geometry.pixel_mm, geometry.pixel_mm, step),
                        geometry.origin_mm)
        out.append(PendingImage(
            raw_patient_id=str(ds.get("PatientID", "")), modality="NM", kind=PROJECTIONS,
            units="COUNTS", volume=volume, acquired=acquisition_datetime(ds),
            source_label=str(path), series_uid=series.uid,
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID") or "") or None,
            administration=admin, nuclide=nuclide, acquisition_duration_s=duration *
            len(geometry.angles_deg),
            description=f"{w.name} {w.lower_kev:g}-{w.upper_kev:g} keV",
            identifiers=identifying_values(ds), **_demographics(ds),
            projection={"window": w, "geometry": geometry, "frame_duration_s": duration,
                        "collimator": collimator_name(ds),
                        "manufacturer": str(ds.get("Manufacturer") or ""),
                        "camera": str(ds.get("DeviceSerialNumber") or
                                      ds.get("StationName") or "")}))
    if not out[0].raw_patient_id:
        raise IngestError(path, "no PatientID")
    return out


def read_image_series(series: Series, calibration: CalibrationTable) -> PendingImage:
    """Read one image series into a quantitative volume (HU, Bq/mL or Gy).

    Raises:
        IngestError: the series cannot be read or quantified; the message says why.
    """
    if series.modality not in IMAGE_MODALITIES:
        raise IngestError(series.label, f"modality {series.modality or '?'} is not an image "
                                        "modality theralake ingests")
    if series.modality == "NM" and len(series.headers) > 1:
        raise IngestError(series.label, "a reconstructed SPECT is expected in one multi-frame "
                                        f"file, found {len(series.headers)} files")
    frames, ds = _planes(series)
    thickness = float(ds.get("SliceThickness") or 1.0)
    volume, order = stack(frames, series.label, single_step=thickness)
    image = PendingImage(
        raw_patient_id=str(ds.get("PatientID", "")), modality=series.modality,
        kind=IMAGE_MODALITIES[series.modality], units="", volume=volume,
        acquired=acquisition_datetime(ds), source_label=series.label, series_uid=series.uid,
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID") or "") or None,
        description=str(ds.get("SeriesDescription") or "") or None,
        identifiers=identifying_values(ds), **_demographics(ds))
    if not image.raw_patient_id:
        raise IngestError(series.label, "no PatientID")
    if series.modality == "CT":
        image.units = "HU"
        if volume.array.min() >= -32768 and volume.array.max() <= 32767 and \
                np.issubdtype(volume.array.dtype, np.integer):
            volume.array = volume.array.astype(np.int16)
    elif series.modality == "PT":
        _quantify_pet(image, ds, [frames[i] for i in order])
    elif series.modality == "NM":
        _quantify_spect(image, ds, calibration)
    elif series.modality == "RTDOSE":
        units = str(ds.get("DoseUnits") or "GY").upper()
        image.units = units
        image.acquired = None
        image.description = " ".join(str(ds.get(k) or "") for k in ("DoseType",
                                     "DoseSummationType")).strip() or None
        volume.array = volume.array.astype(np.float32)
    else:
        image.units = "MR"
    return image


def _quantify_pet(image: PendingImage, ds: Dataset, frames: list[Frame]) -> None:
    """PET in Bq/mL at the series start, with the SUVbw factor (DecayCorrection honoured)."""
    label = image.source_label
    units = str(ds.get("Units") or "").upper()
    if units != "BQML":
        raise IngestError(label, f"PET Units {units or 'missing'}: only BQML is quantitative")
    admin = administration_from_dicom(ds, label)
    if admin is None:
        raise IngestError(label, "PET without radiopharmaceutical data "
                                 "(RadiopharmaceuticalInformationSequence): no injection time, "
                                 "dose or half-life, so no SUV and no time after injection")
    if admin.activity_mbq is None or admin.activity_mbq <= 0:
        raise IngestError(label, "PET without RadionuclideTotalDose: SUV cannot be computed")
    if not admin.half_life_s:
        raise IngestError(label, "PET without RadionuclideHalfLife")
    start = series_datetime(ds)
    if start is None:
        raise IngestError(label, "PET without series date/time")
    half_life_h = admin.half_life_s / 3600.0
    correction = str(ds.get("DecayCorrection") or "").upper()
    arr = image.volume.array.astype(np.float64)
    if correction == "ADMIN":  # values refer to the injection time: bring them to the scan
        arr *= decay_factor((start - admin.time).total_seconds() / 3600, half_life_h)
    elif correction == "NONE":  # each plane at its own acquisition time: refer to the start
        for k, frame in enumerate(frames):
            if frame.time is not None:
                dt_h = (frame.time - start.timestamp()) / 3600
                arr[k] /= decay_factor(dt_h, half_life_h)
    elif correction != "START":
        raise IngestError(label, f"PET DecayCorrection {correction or 'missing'} is not "
                                 "START, ADMIN or NONE")
    image.volume.array = arr.astype(np.float32)
    image.units = "BQML"
    image.acquired = start
    image.administration = admin
    image.nuclide = admin.nuclide
    if (start - admin.time).total_seconds() < 0:
        raise IngestError(label, "PET series starts before the radiopharmaceutical injection")
    if image.weight_kg:
        decayed_bq = admin.activity_mbq * 1e6 * decay_factor(
            (start - admin.time).total_seconds() / 3600, half_life_h)
        image.suvbw_per_bqml = image.weight_kg * 1000.0 / decayed_bq


def _duration_s(ds: Dataset) -> float | None:
    """SPECT acquisition duration: frame duration x projections, summed over rotations."""
    rotations = ds.get("RotationInformationSequence") or [ds]
    total = 0.0
    for rot in rotations:
        frame_ms = rot.get("ActualFrameDuration") or ds.get("ActualFrameDuration")
        n = rot.get("NumberOfFramesInRotation") or ds.get("NumberOfFramesInRotation")
        if frame_ms in (None, "") or n in (None, ""):
            return None
        total += float(frame_ms) / 1000.0 * float(n)
    return total or None


def _quantify_spect(image: PendingImage, ds: Dataset, calibration: CalibrationTable) -> None:
    """SPECT to Bq/mL: taken as is when the series says BQML, else counts / (cal x duration)."""
    label = image.source_label
    admin = administration_from_dicom(ds, label)
    image.administration = admin
    image.nuclide = admin.nuclide if admin else None
    units = str(ds.get("Units") or "").upper()
    arr = image.volume.array.astype(np.float64)
    camera_ids = [str(ds.get(k) or "") for k in ("DeviceSerialNumber", "StationName",
                                                  "ManufacturerModelName")]
    image.resolution_fwhm_mm = calibration.lookup_fwhm(camera_ids, image.nuclide)
    if units == "BQML":
        image.volume.array = arr.astype(np.float32)
        image.units = "BQML"
        return
    duration = _duration_s(ds)
    if duration is None:
        raise IngestError(label, "SPECT in counts without an acquisition duration "
                                 "(ActualFrameDuration and NumberOfFramesInRotation)")
    factor = calibration.lookup(camera_ids, image.nuclide)
    if factor is None:
        raise IngestError(label, "SPECT in counts needs a calibration factor (cps/MBq): give "
                                 "--calibration-cps-per-mbq or a calibration.csv row for camera "
                                 f"{next((c for c in camera_ids if c), '?')}"
                                 f" and {image.nuclide or 'its nuclide'}")
    bq = arr / (factor * 1e-6 * duration)
    image.volume.array = (bq / image.volume.voxel_volume_ml).astype(np.float32)
    image.units = "BQML"
    image.calibration_cps_per_mbq = factor
    image.acquisition_duration_s = duration
    if not math.isfinite(float(image.volume.array.max())):
        raise IngestError(label, "SPECT quantification produced non-finite values")


__all__ = ["PendingImage", "read_image_series", "read_series", "parse_datetime"]
