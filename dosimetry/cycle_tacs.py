"""Each VOI's activity at each time point of a cycle, and whether that time point saw it.

With ``tac_vois: own`` every contoured VOI is measured on each time point's own SPECT: with
the contours of that time point's CT, the segmenter's masks of it, or else the reference VOIs
carried onto it by registering the reference CT onto it (its SPECT is never resampled, which
would blur it by about a voxel more than the resolution the partial-volume correction
assumes). Lesions thresholded on the reference SPECT are measured on the SPECTs registered
onto the reference grid, as their masks were found there. With
``tac_vois: reference`` the reference VOIs are measured on the SPECTs registered onto the
reference grid. Partial-volume correction (GTM) uses each time point's SPECT resolution.

A time point whose SPECT holds less than ``quality.min_fov_coverage`` of a VOI (a limited
axial field of view, a different grid) does not measure that VOI: its value is left out of the
VOI's curve, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from theralake.dosimetry import registration
from theralake.dosimetry.auto_vois import Segmenter
from theralake.dosimetry.cycle_io import Contour, CtImage, CycleInputs, TimePoint
from theralake.dosimetry.cycle_vois import (
    Registrar,
    Voi,
    carried_row,
    registration_pair_row,
    segment_ct,
)
from theralake.dosimetry.quality import Finding
from theralake.dosimetry.voi_activity import voi_activities_mbq
from theralake.lake import Volume
from theralake.lake.views import SEGMENTED_LESION_SOURCES
from theralake.lake.volume import bounding_box

__all__ = ["Measured", "fov_fraction", "measure_tacs"]

#: at most this many voxels of a VOI are mapped through a transform to find its coverage
COVERAGE_SAMPLES = 20_000


@dataclass
class Measured:
    """Activity (MBq) per VOI and time point, the fraction of each VOI each time point's
    SPECT saw, and the partial-volume correction applied."""

    activity_mbq: dict[str, np.ndarray]
    coverage: dict[str, np.ndarray]
    partial_volume: str  # none | gtm
    findings: list[Finding] = field(default_factory=list)
    new_rows: list[dict] = field(default_factory=list)  # VOIs put on the other CTs
    registration_rows: list[dict] = field(default_factory=list)


def _inside(world: np.ndarray, image: Volume) -> np.ndarray:
    idx = image.world_to_index(world)
    n = np.array(image.shape_xyz, float)
    return np.all((idx >= -0.5) & (idx <= n - 0.5), axis=1)


def _corners(mask: Volume) -> np.ndarray | None:
    """The world positions of the corners of a mask's bounding box (voxel centres)."""
    box = bounding_box(mask.array)
    if box is None:
        return None
    z, y, x = ((b.start, b.stop - 1) for b in box)
    return mask.index_to_world(np.array([[i, j, k] for i in x for j in y for k in z], float))


def fov_fraction(mask: Volume, image: Volume, transform: object | None = None) -> float:
    """The fraction of a VOI (a mask on a CT) whose points lie in an image's field of view,
    after ``transform`` (reference to image space) when given."""
    corners = _corners(mask)
    if corners is None:
        return 0.0
    move = (lambda p: p) if transform is None else (
        lambda p: np.array([transform.TransformPoint(tuple(map(float, q))) for q in p]))
    if _inside(move(corners), image).all():
        return 1.0
    nz = np.nonzero(mask.array)
    ijk = np.column_stack(nz[::-1]).astype(float)
    if len(ijk) > COVERAGE_SAMPLES:
        ijk = ijk[:: len(ijk) // COVERAGE_SAMPLES + 1]
    return float(_inside(move(mask.index_to_world(ijk)), image).mean())


def measure_tacs(inputs: CycleInputs, ref_index: int, maps: np.ndarray,
                 moved: dict[int, registration.RegistrationResult], vois: dict[str, Voi],
                 settings: dict, segmenter: Segmenter | None, registrar: Registrar,
                 params_hash: str) -> Measured:
    """Activity per VOI (``vois``: on the reference CT) and time point."""
    points = inputs.time_points
    names = list(vois)
    pv, pv_findings = _partial_volume(points, settings)
    out = Measured({n: np.zeros(len(points)) for n in names},
                   {n: np.zeros(len(points)) for n in names}, pv["method"], pv_findings)
    ref = points[ref_index]
    for i, tp in enumerate(points):
        own = _own_vois(inputs, tp, ref.ct, vois, segmenter, registrar, params_hash, out) \
            if settings["tac_vois"] == "own" and i != ref_index else {}
        rest = [n for n in names if n not in own]
        jobs = []  # (activity MBq/voxel, its grid, masks solved together, kept, transform)
        if own:
            image = np.clip(tp.spect.array.astype(np.float64), 0, None) \
                * tp.spect.voxel_volume_ml / 1e6
            jobs.append((image, tp.spect, own, list(own), tp.spect, None))
        if rest:  # the reference time point, or VOIs that could not be carried
            reg = moved.get(i)
            jobs.append((maps[i], ref.spect, {n: v.mask for n, v in vois.items()}, rest,
                         tp.spect, None if reg is None else reg.transform))
        settings_i = {**pv, "fwhm_mm": pv["fwhm_mm"][i]} if pv["method"] == "gtm" else pv
        for image, grid, masks, keep, seen_by, transform in jobs:
            try:
                activity = voi_activities_mbq(image, grid, masks, settings_i)
            except ValueError as exc:
                raise ValueError(f"{inputs.label}, time point {tp.time_h:g} h: {exc}") from exc
            for n in keep:
                out.activity_mbq[n][i] = activity[n]
                out.coverage[n][i] = min(fov_fraction(masks[n], grid),
                                         fov_fraction(masks[n], seen_by, transform)
                                         if transform is not None or seen_by is not grid
                                         else 1.0)
    return out


def _partial_volume(points: list[TimePoint], settings: dict) -> tuple[dict, list[Finding]]:
    """The GTM settings with each time point's resolution, or no correction (and why)."""
    pv = dict(settings.get("partial_volume") or {})
    if pv.get("method", "none") != "gtm":
        return {"method": "none"}, []
    given = pv.get("fwhm_mm")
    fwhm = [given or p.spect_row.get("resolution_fwhm_mm") for p in points]
    if any(f is None or not np.isfinite(f) for f in fwhm):
        lacking = [f"{p.time_h:g} h" for p, f in zip(points, fwhm, strict=True)
                   if f is None or not np.isfinite(f)]
        return {"method": "none"}, [Finding(
            "no_partial_volume_correction", "warn", "partial_volume gtm asked for, but the "
            f"SPECT resolution is unknown at {', '.join(lacking)}: no correction applied (set "
            "partial_volume.fwhm_mm, or the camera's fwhm_mm in the calibration table)")]
    return {**pv, "method": "gtm", "fwhm_mm": [float(f) for f in fwhm]}, []


def _own_vois(inputs: CycleInputs, tp: TimePoint, ref_ct: CtImage, vois: dict[str, Voi],
              segmenter: Segmenter | None, registrar: Registrar, params_hash: str,
              out: Measured) -> dict[str, Volume]:
    """Every VOI on a time point's own CT: its contours, the segmenter's masks of it, and the
    reference VOIs carried onto it (by registering the reference CT onto it), so that it is
    measured on its own SPECT, not on a resampled one."""
    own = {n: c.mask for n, c in tp.ct.contours.items() if n in vois}
    if segmenter is not None:
        missing = [n for n in vois if n not in own and n != "body"
                   and not n.startswith("lesion_")]
        for name, (mask, row, new) in segment_ct(inputs, tp.ct, missing, segmenter).items():
            own[name] = tp.ct.volume.like(mask.astype(np.uint8))
            if new:
                out.new_rows.append(row)
    # segmented lesions are the reference SPECT's hot spots: they stay on the reference
    # grid (measured on the registered map), the contoured VOIs go onto this CT
    missing = [n for n in vois if n not in own
               and vois[n].row.get("source") not in SEGMENTED_LESION_SOURCES]
    if not missing:
        return own
    reg = registrar(tp.ct.volume, ref_ct.volume)
    out.registration_rows.append(registration_pair_row(inputs, tp.ct, ref_ct, reg,
                                                       params_hash))
    carried = registration.resample_masks({n: vois[n].mask for n in missing}, reg.transform,
                                          tp.ct.volume)
    organs = np.zeros(tp.ct.volume.array.shape, bool)
    for name, mask in [*carried.items(), *((n, m.array > 0) for n, m in own.items())]:
        if not name.startswith("lesion_") and name != "body":
            organs |= mask
    for name in missing:
        voi, mask = vois[name], carried[name]
        if name.startswith("lesion_"):  # a carried lesion never takes an organ's voxels
            mask &= ~organs
        if not mask.any():
            continue  # outside this CT: measured on the registered map
        out.new_rows.append(carried_row(inputs, name, mask, tp.ct, Contour(voi.row, voi.mask),
                                        ref_ct, params_hash))
        own[name] = tp.ct.volume.like(mask.astype(np.uint8))
        if reg.failed:
            out.findings.append(Finding(
                "carried_by_failed_registration", "warn", f"measured at {tp.time_h:g} h with "
                f"its contour carried by a registration that failed its quality check "
                f"({'; '.join(reg.reasons)})", name))
    return own
