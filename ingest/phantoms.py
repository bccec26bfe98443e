"""Calibration phantoms described in a ``phantom.json``: a uniform cylinder (sensitivity) or
a NEMA IEC body phantom (sphere recovery), with their voxel fractions on a SPECT grid.

Shapes: the body is an elliptic cylinder (``semi_axes_mm``, ``length_mm``, ``centre_mm``, LPS);
the NEMA IEC body's D shape is approximated by it, and its lung insert is left out. Spheres
(``diameter_mm``, ``centre_mm``) hold ``sphere_bq_per_ml``, the rest of the body
``background_bq_per_ml``; a cylinder states its total ``activity_mbq`` instead. Activities
refer to ``reference_time`` (ISO 8601).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from theralake.ingest.errors import IngestError
from theralake.ingest.spect_system import Geometry

KINDS = ("cylinder", "nema_iec")
#: the description's file name: a folder holding one is a phantom's, not a patient's
PHANTOM_FILE = "phantom.json"
#: the NEMA IEC body phantom's sphere inner diameters (mm, NEMA NU 2)
NEMA_SPHERES_MM = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)


@dataclass(frozen=True, kw_only=True)
class Sphere:
    diameter_mm: float
    centre_mm: tuple[float, float, float]

    @property
    def volume_ml(self) -> float:
        return math.pi / 6.0 * self.diameter_mm ** 3 / 1000.0


@dataclass(frozen=True, kw_only=True)
class Phantom:
    """A phantom and its known activity."""

    kind: str
    nuclide: str
    reference_time: dt.datetime
    semi_axes_mm: tuple[float, float]
    length_mm: float
    centre_mm: tuple[float, float, float]
    activity_mbq: float | None = None
    background_bq_per_ml: float | None = None
    sphere_bq_per_ml: float | None = None
    spheres: tuple[Sphere, ...] = field(default=())

    @property
    def body_volume_ml(self) -> float:
        a, b = self.semi_axes_mm
        return math.pi * a * b * self.length_mm / 1000.0

    @property
    def body_bq_per_ml(self) -> float:
        """Concentration outside the spheres at the reference time."""
        if self.activity_mbq is not None:
            return self.activity_mbq * 1e6 / self.body_volume_ml
        return float(self.background_bq_per_ml or 0.0)

    def as_json(self) -> dict:
        out = {"phantom": self.kind, "nuclide": self.nuclide,
               "reference_time": self.reference_time.isoformat(),
               "body": {"semi_axes_mm": list(self.semi_axes_mm), "length_mm": self.length_mm,
                        "centre_mm": list(self.centre_mm)}}
        if self.activity_mbq is not None:
            out["activity_mbq"] = self.activity_mbq
        if self.kind == "nema_iec":
            out |= {"background_bq_per_ml": self.background_bq_per_ml,
                    "sphere_bq_per_ml": self.sphere_bq_per_ml,
                    "spheres": [{"diameter_mm": s.diameter_mm, "centre_mm": list(s.centre_mm)}
                                for s in self.spheres]}
        return out


def read_phantom(path: Path) -> Phantom:
    """A phantom description.

    Raises:
        IngestError: naming the file and the missing or wrong field.
    """
    try:
        spec = json.loads(Path(path).read_text())
        body = spec["body"]
        kind = spec["phantom"]
        if kind not in KINDS:
            raise ValueError(f"phantom {kind!r}: one of {', '.join(KINDS)}")
        phantom = Phantom(
            kind=kind, nuclide=str(spec.get("nuclide", "Lu-177")),
            reference_time=dt.datetime.fromisoformat(spec["reference_time"]),
            semi_axes_mm=tuple(float(v) for v in body["semi_axes_mm"]),
            length_mm=float(body["length_mm"]),
            centre_mm=tuple(float(v) for v in body["centre_mm"]),
            activity_mbq=float(spec["activity_mbq"]) if kind == "cylinder" else None,
            background_bq_per_ml=spec.get("background_bq_per_ml"),
            sphere_bq_per_ml=spec.get("sphere_bq_per_ml"),
            spheres=tuple(Sphere(diameter_mm=float(s["diameter_mm"]),
                                 centre_mm=tuple(float(v) for v in s["centre_mm"]))
                          for s in spec.get("spheres", [])))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IngestError(path, f"unreadable phantom description ({type(exc).__name__}: "
                                f"{exc})") from exc
    if kind == "nema_iec" and (not phantom.spheres or phantom.sphere_bq_per_ml is None):
        raise IngestError(path, "a nema_iec phantom needs spheres and sphere_bq_per_ml")
    if kind == "cylinder" and not (phantom.activity_mbq or 0) > 0:
        raise IngestError(path, "a cylinder phantom needs a positive activity_mbq")
    return phantom


def _axes(g: Geometry, offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (z, y, x broadcastable) of points ``offset`` voxels into each voxel."""
    x = g.origin_mm[0] + (np.arange(g.bins) + offset) * g.pixel_mm
    y = g.origin_mm[1] + (np.arange(g.bins) + offset) * g.pixel_mm
    z = g.origin_mm[2] + (np.arange(g.rows) + offset) * g.pixel_mm
    return z[:, None, None], y[None, :, None], x[None, None, :]


def fractions(phantom: Phantom, g: Geometry, supersample: int = 3
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fraction of each voxel (z, y, x) inside the body and inside each sphere, sampled at
    ``supersample``^3 points per voxel and scaled to the shape's exact volume (the sampling
    alone misses it by up to a sub-voxel at each face)."""
    lo = np.asarray(g.origin_mm) - g.pixel_mm / 2
    hi = lo + g.pixel_mm * np.array([g.bins, g.bins, g.rows])
    half = np.array([*phantom.semi_axes_mm, phantom.length_mm / 2])
    if np.any(np.asarray(phantom.centre_mm) - half < lo) or \
            np.any(np.asarray(phantom.centre_mm) + half > hi):
        raise ValueError("the phantom extends beyond the reconstruction's field of view")
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    body = np.zeros(g.grid_shape_zyx, np.float32)
    spheres = [np.zeros(g.grid_shape_zyx, np.float32) for _ in phantom.spheres]
    (a, b), (cx, cy, cz) = phantom.semi_axes_mm, phantom.centre_mm
    for oz in offsets:
        for oy in offsets:
            for ox in offsets:
                z = _axes(g, oz)[0]
                y = _axes(g, oy)[1]
                x = _axes(g, ox)[2]
                body += (((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0) & \
                    (np.abs(z - cz) <= phantom.length_mm / 2)
                for s, out in zip(phantom.spheres, spheres, strict=True):
                    sx, sy, sz = s.centre_mm
                    out += (x - sx) ** 2 + (y - sy) ** 2 + (z - sz) ** 2 <= \
                        (s.diameter_mm / 2) ** 2
    ml = (g.pixel_mm / 10.0) ** 3

    def exact(frac: np.ndarray, volume_ml: float) -> np.ndarray:
        return frac * np.float32(volume_ml / (float(frac.sum()) * ml)) if frac.any() else frac

    return exact(body, phantom.body_volume_ml), [
        exact(f, s.volume_ml) for f, s in zip(spheres, phantom.spheres, strict=True)]


def activity_bq(phantom: Phantom, g: Geometry) -> np.ndarray:
    """True activity (Bq per voxel, reference time) on the grid."""
    body, spheres = fractions(phantom, g)
    ml = (g.pixel_mm / 10.0) ** 3
    out = body * phantom.body_bq_per_ml * ml
    for s in spheres:
        out += s * ((phantom.sphere_bq_per_ml or 0.0) - phantom.body_bq_per_ml) * ml
    return out
