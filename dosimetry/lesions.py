"""Lesion segmentation on PET (SUV) or SPECT (Bq/mL) by thresholds, and lesion matching.

Thresholds: absolute (in the image's units), a fraction of each lesion's maximum, or
adaptive (background-corrected fraction: T = B + f (max - B), B the median of a shell around
the lesion). Candidates are connected components (26-connectivity) outside physiological
organs, kept above a minimum volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

_STRUCT = ndimage.generate_binary_structure(3, 3)


@dataclass
class Lesion:
    """One segmented lesion: its mask, volume (mL), maximum and centroid (voxel z, y, x)."""

    mask: np.ndarray
    volume_ml: float
    max_value: float
    centroid: np.ndarray


def segment_lesions(image: np.ndarray, voxel_ml: float, *, method: str = "adaptive",
                    threshold: float | None = None, fraction: float = 0.41,
                    seed_threshold: float | None = None, exclude: np.ndarray | None = None,
                    min_volume_ml: float = 0.5, shell_voxels: int = 2) -> list[Lesion]:
    """Segment lesions; returns them largest first.

    Args:
        image: SUV or Bq/mL array (z, y, x).
        voxel_ml: voxel volume in mL.
        method: ``absolute`` (image >= threshold), ``percent_max`` (>= fraction x lesion max),
            or ``adaptive`` (>= B + fraction x (max - B)).
        threshold: absolute threshold (``absolute``), in the image's units.
        fraction: the fraction of the maximum (``percent_max``, ``adaptive``).
        seed_threshold: the level that finds candidates for the relative methods (default:
            ``threshold`` if given, else 3 x the median of the non-zero image).
        exclude: boolean mask of physiological uptake (kidneys, salivary glands, bladder ...).
        min_volume_ml: smaller components are dropped.
        shell_voxels: the background shell's width, in voxels.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise ValueError(f"image must be 3D, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    if voxel_ml <= 0:
        raise ValueError("voxel volume must be positive")
    if method not in ("absolute", "percent_max", "adaptive"):
        raise ValueError(f"unknown method {method!r}: absolute, percent_max or adaptive")
    if method == "absolute" and threshold is None:
        raise ValueError("the absolute method needs a threshold")
    if not 0 < fraction < 1:
        raise ValueError("fraction must lie between 0 and 1")
    allowed = np.ones(image.shape, bool) if exclude is None else ~np.asarray(exclude, bool)
    if exclude is not None and exclude.shape != image.shape:
        raise ValueError("the exclusion mask does not match the image shape")
    positive = image[image > 0]
    seed = seed_threshold if seed_threshold is not None else (
        threshold if threshold is not None else 3.0 * float(np.median(positive))
        if positive.size else 0.0)
    labels, n = ndimage.label((image >= seed) & allowed, structure=_STRUCT)
    lesions = []
    for idx, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        pad = tuple(slice(max(s.start - 3 * shell_voxels, 0), s.stop + 3 * shell_voxels)
                    for s in region)
        comp = labels[pad] == idx
        local = image[pad]
        peak = float(local[comp].max())
        if method == "absolute":
            mask = comp
        else:
            if method == "adaptive":
                grown = ndimage.binary_dilation(comp, _STRUCT, iterations=shell_voxels)
                shell = ndimage.binary_dilation(grown, _STRUCT, iterations=shell_voxels) & ~grown
                background = float(np.median(local[shell & allowed[pad]])) if shell.any() else 0.0
                level = background + fraction * (peak - background)
            else:
                level = fraction * peak
            near = ndimage.binary_dilation(comp, _STRUCT, iterations=shell_voxels)
            cand, _ = ndimage.label((local >= level) & near & allowed[pad], structure=_STRUCT)
            at_peak = cand[np.unravel_index(np.argmax(np.where(comp, local, -np.inf)),
                                            local.shape)]
            mask = cand == at_peak
        volume = float(mask.sum()) * voxel_ml
        if volume < min_volume_ml:
            continue
        full = np.zeros(image.shape, bool)
        full[pad] = mask
        lesions.append(Lesion(full, volume, peak, np.array(ndimage.center_of_mass(full))))
    return sorted(lesions, key=lambda les: -les.volume_ml)


def match_lesions(a: list[np.ndarray], b: list[np.ndarray], spacing_mm: tuple[float, ...],
                  max_distance_mm: float = 20.0) -> list[tuple[int, int]]:
    """Pair lesions of two time points (masks on one grid) by centroid distance (Hungarian).

    Pairs farther apart than ``max_distance_mm`` stay unmatched. Returns (index in a,
    index in b) pairs.
    """
    if not a or not b:
        return []
    scale = np.asarray(spacing_mm, dtype=float)[::-1]  # (x, y, z) spacing -> (z, y, x)
    ca = np.array([np.array(ndimage.center_of_mass(m)) * scale for m in a])
    cb = np.array([np.array(ndimage.center_of_mass(m)) * scale for m in b])
    dist = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(dist)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)
            if dist[r, c] <= max_distance_mm]
