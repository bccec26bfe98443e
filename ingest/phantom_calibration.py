"""Camera calibration from phantom acquisitions: the sensitivity (cps/MBq, one view) from a
uniform cylinder and the sphere recovery curve from a NEMA IEC body phantom, each
reconstructed with the same system model and settings as the patients.

The sensitivity is reconstruction-based (MIRD Pamphlet 26): the reconstruction's counts (per
view) within ``SENSITIVITY_MARGIN_MM`` of the phantom, over its activity averaged over the
acquisition (counts farther out are noise the non-negative reconstruction cannot cancel). The
recovery of a sphere is the reconstruction's mean in the sphere, weighted by each voxel's true
fraction in it, over the sphere's true concentration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from theralake.ingest.dicom_files import acquisition_datetime
from theralake.ingest.errors import IngestError
from theralake.ingest.phantoms import PHANTOM_FILE, Phantom, fractions, read_phantom
from theralake.ingest.projections import (
    Window,
    collimator_name,
    frame_duration_s,
    is_projection_data,
    read_views,
)
from theralake.ingest.radiopharm import administration_from_dicom
from theralake.ingest.reconstruction import (
    ReconSettings,
    counts_to_bq_per_ml,
    reconstruct,
    scatter_estimate,
)
from theralake.ingest.spect_system import Geometry, collimator_code, hu_to_mu
from theralake.lake import stable_hash

SENSITIVITY_MARGIN_MM = 30.0


@dataclass
class PhantomAcquisition:
    """A phantom's description and its acquisition (views by window role)."""

    source: Path
    phantom: Phantom
    camera: str
    collimator: str
    views: dict[str, np.ndarray]
    widths_kev: dict[str, float]
    geometry: Geometry
    frame_duration_s: float
    decay_factor: float  # activity averaged over the acquisition / activity at reference time
    photopeak_kev: float


def find_phantoms(roots: list[Path]) -> list[Path]:
    """Every folder with a ``phantom.json`` under the roots."""
    out = []
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        found = [root / PHANTOM_FILE] if (root / PHANTOM_FILE).is_file() else \
            sorted(root.rglob(PHANTOM_FILE))
        out += [p.parent for p in found]
    return out


def _by_role(windows: list[Window], views: dict[int, np.ndarray], photopeak_kev: float
             ) -> tuple[dict[str, np.ndarray], dict[str, float], float]:
    peaks = [w for w in windows if w.role == "photopeak"]
    if not peaks:
        raise ValueError("no photopeak window")
    peak = min(peaks, key=lambda w: abs((w.peak_kev or 0) - photopeak_kev)).peak_kev
    mine = [w for w in windows if w.peak_kev == peak and w.role != "other"]
    return ({w.role: views[w.index].astype(np.float32) for w in mine},
            {w.role: w.width_kev for w in mine}, float(peak or 0))


def read_phantom_acquisition(folder: Path, photopeak_kev: float = 208.4
                             ) -> PhantomAcquisition:
    """A folder's ``phantom.json`` and its one NM projection file.

    Raises:
        IngestError: naming the file and what is missing.
    """
    phantom = read_phantom(folder / PHANTOM_FILE)
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != PHANTOM_FILE):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - not DICOM: not this phantom's acquisition
            continue
        if str(ds.get("Modality")) == "NM" and is_projection_data(ds):
            files.append((path, ds))
    if len(files) != 1:
        raise IngestError(folder, f"expected one NM projection file beside {PHANTOM_FILE}, "
                                  f"found {len(files)}")
    path, ds = files[0]
    pixels = ds.pixel_array
    windows, views, geometry = read_views(ds, pixels[None] if pixels.ndim == 2 else pixels,
                                          phantom.nuclide, path)
    try:
        by_role, widths, peak = _by_role(windows, views, photopeak_kev)
        code = collimator_code(collimator_name(ds), str(ds.get("Manufacturer") or ""))
    except ValueError as exc:
        raise IngestError(path, str(exc)) from exc
    duration = frame_duration_s(ds)
    start = acquisition_datetime(ds)
    admin = administration_from_dicom(ds, path)
    if duration is None or start is None or admin is None or not admin.half_life_s:
        raise IngestError(path, "a phantom acquisition needs ActualFrameDuration, its "
                                "acquisition time and the nuclide's half-life")
    lam = math.log(2) / admin.half_life_s
    total = duration * len(geometry.angles_deg)
    decay = math.exp(-lam * (start - phantom.reference_time).total_seconds()) * \
        (1 - math.exp(-lam * total)) / (lam * total)
    camera = str(ds.get("DeviceSerialNumber") or ds.get("StationName") or "")
    return PhantomAcquisition(path, phantom, camera, code, by_role, widths, geometry, duration,
                              decay, peak)


def _counts(acq: PhantomAcquisition, settings: ReconSettings, body: np.ndarray) -> np.ndarray:
    """The phantom reconstructed (counts per view per voxel), attenuation from its shape
    (``body``, the voxels' fractions in it: water)."""
    settings = replace(settings, collimator=acq.collimator, photopeak_kev=acq.photopeak_kev)
    mu = body * hu_to_mu(np.zeros(1), acq.photopeak_kev)[0]
    scatter = scatter_estimate(acq.views, acq.widths_kev)[0] if settings.scatter else None
    return reconstruct(acq.geometry, acq.views["photopeak"], mu_per_cm=mu, scatter=scatter,
                       settings=settings)


def sensitivity(acq: PhantomAcquisition, settings: ReconSettings) -> tuple[float, float]:
    """(cps/MBq in one view, the phantom's mean activity in MBq) from a uniform cylinder."""
    if acq.phantom.kind != "cylinder":
        raise ValueError(f"{acq.source}: sensitivity needs a cylinder phantom")
    body = fractions(acq.phantom, acq.geometry)[0]
    counts = _counts(acq, settings, body)
    near = ndimage.binary_dilation(body > 0, iterations=max(
        1, round(SENSITIVITY_MARGIN_MM / acq.geometry.pixel_mm)))
    activity = float(acq.phantom.activity_mbq or 0) * acq.decay_factor
    return float(counts[near].sum()) / (acq.frame_duration_s * activity), activity


def recovery(acq: PhantomAcquisition, settings: ReconSettings, cps_per_mbq: float
             ) -> list[dict]:
    """Per sphere of a NEMA IEC acquisition: diameter, volume and recovery."""
    p = acq.phantom
    if p.kind != "nema_iec":
        raise ValueError(f"{acq.source}: a recovery curve needs a nema_iec phantom")
    body, spheres = fractions(p, acq.geometry)
    counts = _counts(acq, settings, body)
    ml = (acq.geometry.pixel_mm / 10.0) ** 3
    bq_ml = counts_to_bq_per_ml(counts, cps_per_mbq=cps_per_mbq,
                                frame_duration_s=acq.frame_duration_s, voxel_ml=ml)
    true = float(p.sphere_bq_per_ml or 0) * acq.decay_factor
    out = []
    for sphere, weight in zip(p.spheres, spheres, strict=True):
        mean = float((bq_ml * weight).sum() / weight.sum())
        out.append({"diameter_mm": sphere.diameter_mm, "volume_ml": sphere.volume_ml,
                    "recovery": mean / true, "sphere_bq_per_ml": true,
                    "background_bq_per_ml": float(p.background_bq_per_ml or 0) *
                    acq.decay_factor})
    return out


def calibration_row(acq: PhantomAcquisition, settings: ReconSettings, cps_per_mbq: float,
                    activity_mbq: float, camera_key: str | None) -> dict:
    """A ``camera_calibrations`` row."""
    row = {"camera_key": camera_key, "nuclide": acq.phantom.nuclide,
           "photopeak_kev": acq.photopeak_kev, "collimator": acq.collimator,
           "cps_per_mbq": cps_per_mbq, "phantom": acq.phantom.kind,
           "activity_mbq": activity_mbq, "method": settings.method,
           "iterations": settings.iterations, "subsets": settings.subsets,
           "beta": settings.beta if settings.method == "bsrem" else None,
           "source": acq.source.parent.name}
    row["id"] = stable_hash("camera_calibration", *sorted(row.items()))
    return row


def recovery_rows(acq: PhantomAcquisition, settings: ReconSettings, calibration: dict,
                  spheres: list[dict]) -> list[dict]:
    """``recovery_curves`` rows of a NEMA IEC acquisition reconstructed with a calibration."""
    out = []
    for sphere in spheres:
        row = {"camera_key": calibration["camera_key"], "nuclide": acq.phantom.nuclide,
               "photopeak_kev": acq.photopeak_kev, "collimator": acq.collimator,
               "method": settings.method, "iterations": settings.iterations,
               "subsets": settings.subsets,
               "beta": settings.beta if settings.method == "bsrem" else None,
               "calibration_id": calibration["id"], **sphere,
               "source": acq.source.parent.name,
               "input_ids": [calibration["id"]]}
        row["id"] = stable_hash("recovery", *sorted((k, v) for k, v in row.items()
                                                   if k != "input_ids"))
        out.append(row)
    return out
