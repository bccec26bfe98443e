"""Activity in each VOI of one SPECT time point, optionally corrected for partial volume.

VOIs are masks on a CT grid of the same frame of reference as the SPECT. Without correction
a VOI's activity is the sum over the SPECT voxels it fills by half or more. With the GTM
(:mod:`theralake.dosimetry.partial_volume`) the VOIs are made disjoint (lesions over organs,
the body's remainder last) and solved together; organs listed in ``shell_mm`` are split into
an outer shell of that thickness and a core, each with its own concentration (the kidney's
cortex and medulla: MIRD Pamphlet 19, Bouchet et al. J Nucl Med 2003;44:1113-1147; adult
cortical thickness about 7-10 mm), so that activity concentrated in the cortex is not
under-corrected by a uniform-organ assumption.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from theralake.dosimetry.partial_volume import gtm_concentrations, transfer_matrix
from theralake.lake import Volume
from theralake.lake.volume import bounding_box

__all__ = ["to_grid", "occupancy_on", "mask_on", "disjoint_regions", "voi_activities_mbq"]

CORE = "#core"


def to_grid(vol: Volume, grid: Volume, default: float = 0.0) -> np.ndarray:
    """Resample a volume (linear) onto another grid of the same frame of reference."""
    src = sitk.Cast(vol.to_sitk(), sitk.sitkFloat32)
    out = sitk.Resample(src, grid.to_sitk(), sitk.Transform(), sitk.sitkLinear, default,
                        sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def occupancy_on(mask: Volume, grid: Volume) -> np.ndarray:
    """The fraction of each ``grid`` voxel that ``mask`` fills (linear resampling), computed
    only on the grid voxels near the mask: the numbers of :func:`to_grid`, at a fraction of its
    cost for an organ on a whole-body grid."""
    out = np.zeros(grid.array.shape, np.float32)
    box = bounding_box(mask.array, 1)  # keeps a ring of zeros: the interpolation sees them
    if box is None:
        return out
    src = mask.crop(box)
    n = src.shape_xyz
    corners = np.array([[i, j, k] for i in (-1, n[0]) for j in (-1, n[1]) for k in (-1, n[2])],
                       dtype=float)
    idx = grid.world_to_index(src.index_to_world(corners))
    lo = np.maximum(np.floor(idx.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(idx.max(0)).astype(int) + 2, grid.shape_xyz)
    if np.any(hi <= lo):
        return out
    sub = tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1], strict=True))
    target = Volume(np.zeros(tuple(int(b - a) for a, b in zip(lo[::-1], hi[::-1], strict=True)),
                             np.uint8), grid.spacing_mm,
                    tuple(grid.index_to_world(lo.astype(float))), grid.direction)
    out[sub] = to_grid(src, target)
    return out


def mask_on(mask: Volume, grid: Volume) -> np.ndarray:
    """A CT-grid mask on the SPECT grid: occupancy >= 0.5 (a VOI smaller than a SPECT voxel
    keeps its most occupied voxel; one outside the grid comes back empty)."""
    occupancy = occupancy_on(mask, grid)
    out = occupancy >= 0.5
    if not out.any() and occupancy.max() > 0:
        out = occupancy == occupancy.max()
    return out


def disjoint_regions(vois: Mapping[str, Volume], shell_mm: Mapping[str, float] | None = None
                     ) -> dict[str, np.ndarray]:
    """Disjoint CT-grid masks: lesions keep their voxels, then organs, then the body's
    remainder (``remainder``); an organ with a shell thickness gets a ``NAME#core`` part."""
    shell_mm = shell_mm or {}
    names = sorted((n for n in vois if n != "body"), key=lambda n: not n.startswith("lesion_"))
    any_vol = next(iter(vois.values()))
    taken = np.zeros(any_vol.array.shape, bool)
    out: dict[str, np.ndarray] = {}
    for name in names:
        m = vois[name].array.astype(bool) & ~taken
        taken |= m
        thickness = float(shell_mm.get(name, 0.0))
        if thickness > 0:
            core = _deeper_than(m, np.asarray(vois[name].spacing_mm, dtype=float)[::-1],
                                thickness)
            if core.sum() >= 8:  # too thin an organ stays one region
                out[name + CORE] = core
                m = m & ~core
        out[name] = m
    if "body" in vois:
        out["remainder"] = vois["body"].array.astype(bool) & ~taken
    return out


def _deeper_than(mask: np.ndarray, spacing_zyx: np.ndarray, thickness_mm: float) -> np.ndarray:
    """The voxels of ``mask`` whose centre lies deeper than ``thickness_mm`` below its surface
    (half a voxel outside the outer voxel centres). The distance transform runs on the mask's
    box widened by one voxel: the nearest outside voxel of any inside voxel lies in that box,
    so the distances are those of the whole grid."""
    out = np.zeros(mask.shape, bool)
    box = bounding_box(mask, 1)
    if box is None:
        return out
    depth = ndimage.distance_transform_edt(mask[box], sampling=spacing_zyx)
    out[box] = depth - 0.5 * spacing_zyx.min() > thickness_mm
    return out


def voi_activities_mbq(activity_mbq: np.ndarray, grid: Volume, vois: Mapping[str, Volume],
                       partial_volume: Mapping | None = None) -> dict[str, float]:
    """Activity (MBq) per VOI in one activity map (MBq per voxel on ``grid``).

    Args:
        activity_mbq: (z, y, x) activity per SPECT voxel.
        grid: the SPECT grid.
        vois: VOI masks on one CT grid of the same frame of reference.
        partial_volume: ``{"method": "none"|"gtm", "fwhm_mm": float, "shell_mm": {...}}``.

    Raises:
        ValueError: GTM without a resolution, regions too small for the PSF.
    """
    pv = dict(partial_volume or {})
    method = pv.get("method", "none")
    raw = {n: float(activity_mbq[mask_on(v, grid)].sum()) for n, v in vois.items()}
    if method == "none":
        return raw
    if method != "gtm" or not pv.get("fwhm_mm"):
        raise ValueError("partial_volume needs method 'gtm' and the SPECT fwhm_mm")
    fine = disjoint_regions(vois, pv.get("shell_mm"))
    ct = next(iter(vois.values()))
    occupancy = {n: np.clip(occupancy_on(ct.like(m.astype(np.uint8)), grid), 0, 1)
                 .astype(np.float64) for n, m in fine.items()}
    occupancy = {n: o for n, o in occupancy.items() if (o >= 0.5).any()}
    fwhm = float(pv["fwhm_mm"])
    matrix = transfer_matrix(occupancy, fwhm, grid.spacing_mm)
    conc = gtm_concentrations(activity_mbq / grid.voxel_volume_ml, occupancy, fwhm,
                              grid.spacing_mm, matrix)
    out = dict(raw)
    for name in vois:
        if name == "body" or name not in conc:
            continue
        parts = [p for p in (name, name + CORE) if p in conc]
        out[name] = sum(max(conc[p], 0.0) * float(fine[p].sum()) * ct.voxel_volume_ml
                        for p in parts)
    return out
