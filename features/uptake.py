"""Uptake metrics of a VOI on PET (SUV) or SPECT (Bq/mL): max, mean, peak, volume, totals.

- ``suvpeak``/``peak_bq_ml``: the highest mean over a 1 cm³ sphere (radius 6.2 mm) centred on
  any voxel of the VOI: IBSI's *global* intensity peak, PERCIST's SUVpeak.
  ``suvpeak_local``/``peak_local_bq_ml``: IBSI's *local* intensity peak, the sphere mean
  centred on the VOI's hottest voxel (the highest such mean when several are equally hot).
  The sphere's voxels are those whose centres lie within the radius, inside the VOI or not;
  at the image's edge the mean is over the sphere's voxels inside the image (not zeros).
- ``mtv_ml``: molecular tumour volume, the VOI's volume.
- ``tla``: total lesion activity = SUVmean × MTV (g, PET); ``tlf`` = TLA / body weight.
- SPECT: ``activity_mbq`` in the VOI and ``percent_ia``, its share of the administered
  activity decayed to the acquisition time.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from theralake.lake.volume import bounding_box

__all__ = ["PEAK_RADIUS_MM", "peak_kernel", "pet_metrics", "spect_metrics", "burden"]

PEAK_RADIUS_MM = (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0) * 10.0  # 1 cm³ sphere: 6.2 mm


def peak_kernel(voxel_mm) -> np.ndarray:
    """Mean filter over the voxels whose centres lie within 6.2 mm (z, y, x order)."""
    v = np.asarray(voxel_mm, dtype=float)[::-1]
    half = np.floor(PEAK_RADIUS_MM / v).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, v, strict=True)],
                        indexing="ij")
    ball = (grids[0] ** 2 + grids[1] ** 2 + grids[2] ** 2) <= PEAK_RADIUS_MM ** 2
    return ball / ball.sum()


def _check(image: np.ndarray, mask: np.ndarray, voxel_mm) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """The image and mask cropped to the VOI plus the peak sphere's reach, validated."""
    m = np.asarray(mask, bool)
    if np.shape(image) != m.shape:
        raise ValueError(f"mask shape {m.shape} is not the image's {np.shape(image)}")
    box = bounding_box(m, margin=[s // 2 for s in peak_kernel(voxel_mm).shape])
    if box is None:
        raise ValueError("VOI is empty on the image grid")
    img, m = np.asarray(image[box], dtype=float), m[box]
    if not np.all(np.isfinite(img[m])):
        raise ValueError("image has NaN or infinite values inside the VOI")
    return img, m


def _peaks(img: np.ndarray, m: np.ndarray, voxel_mm) -> tuple[float, float]:  # noqa: ANN001
    """(global, local) intensity peak of the VOI: the highest sphere mean centred in it, and
    the sphere mean centred on its hottest voxel (``img`` holds the sphere's reach, cut only
    by the image's edge, where the mean is over the sphere's voxels inside)."""
    kernel = peak_kernel(voxel_mm)
    sums = ndimage.convolve(img, kernel, mode="constant", cval=0.0)
    inside = ndimage.convolve(np.ones_like(img), kernel, mode="constant", cval=0.0)
    means = sums / inside
    hottest = m & (img == img[m].max())
    return float(means[m].max()), float(means[hottest].max())


def pet_metrics(suv: np.ndarray, mask: np.ndarray, voxel_mm, weight_kg: float | None = None
                ) -> dict[str, float]:
    """SUVmax, SUVmean, SUVpeak, MTV (mL), TLA and, with the weight, TLF."""
    img, m = _check(suv, mask, voxel_mm)
    voxel_ml = float(np.prod(voxel_mm)) / 1000.0
    vals = img[m]
    peak, local = _peaks(img, m, voxel_mm)
    out = {"suvmax": float(vals.max()), "suvmean": float(vals.mean()), "suvpeak": peak,
           "suvpeak_local": local, "mtv_ml": float(m.sum()) * voxel_ml}
    out["tla"] = out["suvmean"] * out["mtv_ml"]
    if weight_kg:
        out["tlf"] = out["tla"] / (weight_kg * 1000.0)
    return out


def spect_metrics(bq_per_ml: np.ndarray, mask: np.ndarray, voxel_mm,
                  administered_mbq_now: float | None = None) -> dict[str, float]:
    """Max, mean and peak concentration (Bq/mL), volume, activity (MBq) and %IA."""
    img, m = _check(bq_per_ml, mask, voxel_mm)
    voxel_ml = float(np.prod(voxel_mm)) / 1000.0
    vals = img[m]
    peak, local = _peaks(img, m, voxel_mm)
    out = {"max_bq_ml": float(vals.max()), "mean_bq_ml": float(vals.mean()),
           "peak_bq_ml": peak, "peak_local_bq_ml": local, "volume_ml": float(m.sum()) * voxel_ml,
           "activity_mbq": float(vals.sum()) * voxel_ml / 1e6}
    if administered_mbq_now:
        out["percent_ia"] = 100.0 * out["activity_mbq"] / administered_mbq_now
    return out


def burden(per_lesion: list[dict[str, float]], volume_key: str, total_key: str
           ) -> dict[str, float]:
    """Whole-body tumour burden: lesion count, total volume and total of ``total_key``."""
    return {"lesion_count": float(len(per_lesion)),
            "total_volume_ml": float(sum(d[volume_key] for d in per_lesion)),
            f"total_{total_key}": float(sum(d.get(total_key, 0.0) for d in per_lesion))}
