"""NM tomographic acquisitions (SPECT projections) to views in PyTomography's convention.

Each energy window becomes one image of kind ``projections`` whose array is the views
(angle, r, z): angles ascending in PyTomography's detector convention (DICOM angle + 180),
r along the detector's columns, z from the lowest row up; the window's geometry (angles, radii,
reconstruction grid) rides along for the ``projection_windows`` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from theralake.ingest.errors import IngestError
from theralake.ingest.spect_system import GAMMA_LINES_KEV, Geometry

#: two window edges closer than this (keV) touch (a scatter window beside its photopeak)
EDGE_TOLERANCE_KEV = 0.5


@dataclass
class Window:
    """One energy window of an acquisition."""

    index: int
    name: str
    lower_kev: float
    upper_kev: float
    role: str  # photopeak, scatter_lower, scatter_upper, other
    peak_kev: float | None  # the gamma line of the photopeak it is or belongs to

    @property
    def width_kev(self) -> float:
        return self.upper_kev - self.lower_kev


def is_projection_data(ds: Dataset) -> bool:
    """Whether an NM data set holds tomographic projections (not a reconstruction)."""
    image_type = [str(t).upper() for t in ds.get("ImageType", [])]
    return len(image_type) > 2 and image_type[2] in ("TOMO", "GATED TOMO")


def _vector(ds: Dataset, name: str, n: int, label: str) -> np.ndarray:
    value = ds.get(name)
    if value is None:
        if name in ("DetectorVector", "RotationVector", "EnergyWindowVector"):
            return np.ones(n, dtype=int)
        raise IngestError(label, f"NM projections without {name}")
    out = np.atleast_1d(np.asarray(value, dtype=int))
    if out.size != n:
        raise IngestError(label, f"{name} has {out.size} values for {n} frames")
    return out


def windows_of(ds: Dataset, nuclide: str | None, label: str) -> list[Window]:
    """The energy windows with their roles: a window holding a gamma line of the nuclide is a
    photopeak; one whose upper (lower) edge touches a photopeak is its lower (upper) scatter."""
    items = list(ds.get("EnergyWindowInformationSequence") or [])
    if not items:
        raise IngestError(label, "NM projections without EnergyWindowInformationSequence")
    lines = GAMMA_LINES_KEV.get(nuclide or "Lu-177", ())
    out = []
    for i, item in enumerate(items):
        ranges = item.get("EnergyWindowRangeSequence") or []
        if not ranges:
            raise IngestError(label, f"energy window {i + 1} without its range")
        lo, hi = (float(ranges[0].get(k) or 0) for k in ("EnergyWindowLowerLimit",
                                                          "EnergyWindowUpperLimit"))
        if not hi > lo:
            raise IngestError(label, f"energy window {i + 1}: limits {lo}-{hi} keV")
        peak = next((e for e in lines if lo <= e <= hi), None)
        out.append(Window(i + 1, str(item.get("EnergyWindowName") or f"window {i + 1}"), lo,
                          hi, "photopeak" if peak else "other", peak))
    for w in out:
        if w.role != "other":
            continue
        for p in (p for p in out if p.role == "photopeak"):
            if abs(w.upper_kev - p.lower_kev) <= EDGE_TOLERANCE_KEV:
                w.role, w.peak_kev = "scatter_lower", p.peak_kev
            elif abs(w.lower_kev - p.upper_kev) <= EDGE_TOLERANCE_KEV:
                w.role, w.peak_kev = "scatter_upper", p.peak_kev
    return out


def _angles_and_radii(ds: Dataset, detectors: np.ndarray, views: np.ndarray, label: str
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the DICOM gantry angle and the radial distance (mm) of its detector."""
    rotations = ds.get("RotationInformationSequence") or []
    infos = ds.get("DetectorInformationSequence") or []
    if not rotations or not infos:
        raise IngestError(label, "NM projections without RotationInformationSequence or "
                                 "DetectorInformationSequence")
    rot = rotations[0]
    step = float(rot.get("AngularStep") or 0)
    if step <= 0:
        raise IngestError(label, "NM projections without AngularStep")
    sign = 1.0 if str(rot.get("RotationDirection") or "").upper() in ("CC", "CCW") else -1.0
    angles = np.empty(len(detectors))
    radii = np.empty(len(detectors))
    for k, (d, v) in enumerate(zip(detectors, views, strict=True)):
        info = infos[min(d, len(infos)) - 1]
        start = info.get("StartAngle", rot.get("StartAngle"))
        radial = info.get("RadialPosition", rot.get("RadialPosition"))
        if start is None or radial is None:
            raise IngestError(label, "NM projections without StartAngle or RadialPosition")
        radial = np.atleast_1d(np.asarray(radial, dtype=float))
        angles[k] = float(start) + sign * step * (v - 1)
        radii[k] = radial[v - 1] if radial.size > 1 else radial[0]
    return angles, radii


def _origin(ds: Dataset, bins: int, rows: int, pixel: float, label: str
            ) -> tuple[float, float, float]:
    """LPS of the reconstruction grid's voxel (0, 0, 0), as PyTomography places it."""
    info = ds.DetectorInformationSequence[0]
    if "ImagePositionPatient" not in info:
        raise IngestError(label, "NM projections without ImagePositionPatient")
    sx, sy, sz = (float(v) for v in info.ImagePositionPatient)
    if sy == 0:
        rot = ds.RotationInformationSequence[0]
        sx -= (bins - 1) / 2 * pixel
        sy -= (bins - 1) / 2 * pixel + float(rot.get("TableHeight") or 0)
    return (sx, sy, sz - (rows - 1) * pixel)


def read_views(ds: Dataset, pixels: np.ndarray, nuclide: str | None, label: str | Path
               ) -> tuple[list[Window], dict[int, np.ndarray], Geometry]:
    """The windows, each window's views (angle, r, z) and the acquisition geometry.

    Raises:
        IngestError: gated or multi-rotation data, uneven angles between windows, or missing
            geometry; the message names the attribute.
    """
    label = str(label)
    if str(ds.ImageType[2]).upper() == "GATED TOMO":
        raise IngestError(label, "gated SPECT projections are not reconstructed by theralake")
    n = pixels.shape[0]
    if int(ds.get("NumberOfRotations") or 1) != 1:
        raise IngestError(label, "NM projections of several rotations are not supported")
    spacing = [float(v) for v in (ds.get("PixelSpacing") or [0, 0])]
    if spacing[0] <= 0 or abs(spacing[0] - spacing[1]) > 1e-3:
        raise IngestError(label, f"NM projections need square pixels, PixelSpacing {spacing}")
    windows = windows_of(ds, nuclide, label)
    energy = _vector(ds, "EnergyWindowVector", n, label)
    detectors = _vector(ds, "DetectorVector", n, label)
    views = _vector(ds, "AngularViewVector", n, label)
    angles, radii = _angles_and_radii(ds, detectors, views, label)
    py_angles = (angles + 180.0) % 360.0
    out: dict[int, np.ndarray] = {}
    reference = None
    for w in windows:
        take = np.flatnonzero(energy == w.index)
        if take.size == 0:
            raise IngestError(label, f"energy window {w.index} ({w.name}) has no frames")
        order = take[np.argsort(py_angles[take], kind="stable")]
        if reference is None:
            reference = order
        elif not np.allclose(py_angles[order], py_angles[reference]):
            raise IngestError(label, f"energy window {w.index} has other angles than window 1")
        out[w.index] = np.ascontiguousarray(
            np.transpose(pixels[order][:, ::-1, :], (0, 2, 1)), dtype=np.float32)
    assert reference is not None
    rows, bins = pixels.shape[1], pixels.shape[2]
    geometry = Geometry(angles_deg=py_angles[reference], radii_mm=radii[reference], bins=bins,
                        rows=rows, pixel_mm=spacing[0],
                        origin_mm=_origin(ds, bins, rows, spacing[0], label))
    return windows, out, geometry


def frame_duration_s(ds: Dataset) -> float | None:
    rot = (ds.get("RotationInformationSequence") or [ds])[0]
    value = rot.get("ActualFrameDuration") or ds.get("ActualFrameDuration")
    return float(value) / 1000.0 if value not in (None, "") else None


def collimator_name(ds: Dataset) -> str:
    info = (ds.get("DetectorInformationSequence") or [Dataset()])[0]
    return str(info.get("CollimatorGridName") or "").strip()
