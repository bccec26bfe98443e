"""NIfTI images with JSON sidecars (DESIGN.md 'NIfTI input')."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from theralake.ingest.dicom_images import PendingImage
from theralake.ingest.errors import IngestError
from theralake.ingest.radiopharm import (
    HALF_LIFE_H,
    Administration,
    canonical_nuclide,
    decay_factor,
    purpose_of,
)
from theralake.lake import Volume
from theralake.lake.volume import read_image

SIDECAR_KEYS = {
    "PatientID", "Modality", "Units", "Radionuclide", "Cycle", "InjectedActivityMBq",
    "InjectionDateTime", "AcquisitionDateTime", "PatientWeightKg",
    "CalibrationFactorCpsPerMBq", "Labels", "FrameOf", "AcquisitionDurationS",
    "Radiopharmaceutical", "SeriesDescription", "ResolutionFwhmMm",
}
UNITS = {"CT": {"HU"}, "PT": {"BQML", "SUVbw"}, "NM": {"BQML", "CNTS"}, "SEG": {"LABELS"},
         "RTDOSE": {"GY"}}
KINDS = {"CT": "ct", "PT": "pet", "NM": "spect", "RTDOSE": "dose"}


@dataclass
class PendingLabels:
    """A label map with its names, before it is split into VOIs."""

    raw_patient_id: str
    volume: Volume
    labels: dict[int, str]
    frame_of: str | None
    source_label: str
    frame_of_reference_uid: str


def stem(path: Path) -> str:
    name = path.name
    return name[:-7] if name.endswith(".nii.gz") else name.rsplit(".", 1)[0]


def read_sidecar(path: Path) -> dict:
    side = path.with_name(stem(path) + ".json")
    if not side.exists():
        raise IngestError(path, f"no JSON sidecar {side.name}")
    try:
        meta = json.loads(side.read_text())
    except ValueError as exc:
        raise IngestError(side, f"unreadable JSON ({exc})") from exc
    bad = set(meta) - SIDECAR_KEYS
    if bad:
        raise IngestError(side, f"unknown sidecar keys {sorted(bad)}; allowed: "
                                f"{', '.join(sorted(SIDECAR_KEYS))}")
    for key in ("PatientID", "Modality", "Units"):
        if key not in meta:
            raise IngestError(side, f"sidecar lacks {key}")
    if not str(meta["PatientID"]).strip():
        raise IngestError(side, "PatientID is empty")
    _check_numbers(meta, side)
    if meta["Modality"] not in UNITS:
        raise IngestError(side, f"Modality {meta['Modality']!r} not one of {sorted(UNITS)}")
    if meta["Units"] not in UNITS[meta["Modality"]]:
        raise IngestError(side, f"Units {meta['Units']!r} not valid for {meta['Modality']} "
                                f"(expected {' or '.join(sorted(UNITS[meta['Modality']]))})")
    return meta


#: sidecar keys that hold a number
NUMERIC_KEYS = ("InjectedActivityMBq", "PatientWeightKg", "CalibrationFactorCpsPerMBq",
                "AcquisitionDurationS", "ResolutionFwhmMm")


def _check_numbers(meta: dict, side: Path) -> None:
    for key in NUMERIC_KEYS:
        value = meta.get(key)
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not math.isfinite(number):
            raise IngestError(side, f"{key}: expected a finite number, got {value!r}")


def _when(meta: dict, key: str, side: Path) -> datetime | None:
    if key not in meta:
        return None
    try:
        return datetime.fromisoformat(str(meta[key])).replace(tzinfo=None)
    except ValueError as exc:
        raise IngestError(side, f"{key}: not an ISO 8601 date-time ({meta[key]!r})") from exc


def administration_from_sidecar(meta: dict, side: Path) -> Administration | None:
    if "Radionuclide" not in meta or "InjectionDateTime" not in meta:
        return None
    try:
        nuclide = canonical_nuclide(meta["Radionuclide"])
    except ValueError as exc:
        raise IngestError(side, str(exc)) from exc
    activity = meta.get("InjectedActivityMBq")
    if activity is not None and not float(activity) > 0:
        raise IngestError(side, "InjectedActivityMBq must be positive")
    cycle = meta.get("Cycle")
    if cycle is not None and (not isinstance(cycle, int) or cycle < 1):
        raise IngestError(side, f"Cycle must be a positive integer, got {cycle!r}")
    act = float(activity) if activity is not None else None
    return Administration(str(meta["PatientID"]), nuclide, _when(meta, "InjectionDateTime", side),
                          act, meta.get("Radiopharmaceutical"), purpose_of(nuclide, act),
                          "sidecar", cycle)


def read_nifti(path: Path) -> PendingImage | PendingLabels:
    """A NIfTI file and its sidecar, quantified like the DICOM equivalent."""
    meta = read_sidecar(path)
    side = path.with_name(stem(path) + ".json")
    try:
        vol = read_image(path)
    except ValueError as exc:
        raise IngestError(path, str(exc)) from exc
    modality, units = meta["Modality"], meta["Units"]
    frame = f"nifti:{path.parent.resolve()}/{meta.get('FrameOf') or stem(path)}"
    if modality == "SEG":
        labels = meta.get("Labels")
        if not isinstance(labels, dict) or not labels:
            raise IngestError(side, "SEG sidecar needs Labels, e.g. {\"1\": \"kidney_left\"}")
        return PendingLabels(str(meta["PatientID"]), vol, {int(k): str(v) for k, v in
                             labels.items()}, meta.get("FrameOf"), str(path), frame)
    admin = administration_from_sidecar(meta, side)
    acquired = _when(meta, "AcquisitionDateTime", side)
    image = PendingImage(
        raw_patient_id=str(meta["PatientID"]), modality=modality, kind=KINDS[modality],
        units=units, volume=vol, acquired=acquired, source_label=str(path),
        frame_of_reference_uid=frame, administration=admin,
        nuclide=admin.nuclide if admin else None,
        description=str(meta["SeriesDescription"]) if meta.get("SeriesDescription") else None,
        identifiers=[str(meta["PatientID"])],
        weight_kg=float(meta["PatientWeightKg"]) if meta.get("PatientWeightKg") else None)
    arr = vol.array.astype(np.float64)
    if modality in ("PT", "NM") and admin is None:
        raise IngestError(side, f"{modality} sidecar needs Radionuclide and InjectionDateTime")
    if modality in ("PT", "NM") and acquired is None:
        raise IngestError(side, f"{modality} sidecar needs AcquisitionDateTime")
    if modality == "NM" and meta.get("ResolutionFwhmMm") is not None:
        if not float(meta["ResolutionFwhmMm"]) > 0:
            raise IngestError(side, "ResolutionFwhmMm must be positive (mm)")
        image.resolution_fwhm_mm = float(meta["ResolutionFwhmMm"])
    if modality == "PT":
        if admin.activity_mbq is None:
            raise IngestError(side, "PET sidecar needs InjectedActivityMBq")
        dt_h = (acquired - admin.time).total_seconds() / 3600
        decayed_bq = admin.activity_mbq * 1e6 * decay_factor(dt_h, HALF_LIFE_H[admin.nuclide])
        if image.weight_kg:
            image.suvbw_per_bqml = image.weight_kg * 1000 / decayed_bq
        if units == "SUVbw":
            if not image.weight_kg:
                raise IngestError(side, "SUVbw image needs PatientWeightKg")
            arr = arr / image.suvbw_per_bqml
        image.units = "BQML"
    elif modality == "NM" and units == "CNTS":
        cal, dur = meta.get("CalibrationFactorCpsPerMBq"), meta.get("AcquisitionDurationS")
        if not cal or not dur or float(cal) <= 0 or float(dur) <= 0:
            raise IngestError(side, "NM in counts needs positive CalibrationFactorCpsPerMBq and "
                                    "AcquisitionDurationS")
        arr = arr / (float(cal) * 1e-6 * float(dur)) / vol.voxel_volume_ml
        image.calibration_cps_per_mbq, image.acquisition_duration_s = float(cal), float(dur)
        image.units = "BQML"
    elif modality == "CT":
        image.volume.array = vol.array.astype(np.int16) if np.all(arr == np.round(arr)) and \
            np.abs(arr).max() < 32768 else vol.array.astype(np.float32)
        return image
    elif modality == "RTDOSE":
        image.units = "GY"
    image.volume.array = arr.astype(np.float32)
    return image
