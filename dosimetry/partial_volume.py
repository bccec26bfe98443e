"""Partial-volume correction of regional activity by the geometric transfer matrix (GTM).

Rousset OG, Ma Y, Evans AC. Correction for partial volume effects in PET: principle and
validation. J Nucl Med 1998;39:904-911. Each region j, spread by the system's point-spread
function (a Gaussian of the given FWHM), contributes ``W_ij`` to the mean measured in region
i; solving ``W c = t`` for the measured regional means ``t`` gives the true mean
concentrations ``c``, spill-out and spill-in included. The regions should cover everything
that holds activity (organs, lesions and the remainder of the body).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from theralake.lake.volume import bounding_box

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def spread(occupancy: np.ndarray, fwhm_mm: float, voxel_mm) -> np.ndarray:
    """A region's occupancy map blurred by the Gaussian PSF (the regional spread function)."""
    sigma = fwhm_mm * FWHM_TO_SIGMA / np.asarray(voxel_mm, dtype=float)[::-1]  # (z, y, x)
    return ndimage.gaussian_filter(np.asarray(occupancy, dtype=np.float64), sigma, mode="constant")


def transfer_matrix(occupancy: Mapping[str, np.ndarray], fwhm_mm: float, voxel_mm
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The GTM ``W`` (rows: measured regions, columns: sources) and the measurement masks."""
    names = list(occupancy)
    domains = {n: np.asarray(occupancy[n]) >= 0.5 for n in names}
    for n, d in domains.items():
        if not d.any():
            raise ValueError(f"region {n} covers no voxel by half or more")
    w = np.zeros((len(names), len(names)))
    sigma = fwhm_mm * FWHM_TO_SIGMA / np.asarray(voxel_mm, dtype=float)[::-1]
    counts = {n: d.sum() for n, d in domains.items()}
    for j, n in enumerate(names):
        box = bounding_box(occupancy[n], np.ceil(4 * sigma).astype(int))  # the RSF's support
        rsf = spread(occupancy[n][box], fwhm_mm, voxel_mm)
        for i, m in enumerate(names):
            w[i, j] = rsf[domains[m][box]].sum() / counts[m]
    return w, domains


def gtm_concentrations(image: np.ndarray, occupancy: Mapping[str, np.ndarray], fwhm_mm: float,
                       voxel_mm, matrix: tuple[np.ndarray, dict] | None = None
                       ) -> dict[str, float]:
    """True mean concentration per region (the image's units) by the GTM method.

    Args:
        image: measured activity or concentration map (z, y, x).
        occupancy: per region, the fraction of each voxel it fills (0..1), disjoint regions.
        fwhm_mm: the system's spatial resolution (FWHM, mm).
        voxel_mm: (x, y, z) voxel size in mm.
        matrix: a transfer matrix from :func:`transfer_matrix` to reuse across time points.

    Raises:
        ValueError: bad resolution, shapes, empty regions or a singular matrix.
    """
    if not fwhm_mm > 0:
        raise ValueError("the PSF FWHM must be positive")
    img = np.asarray(image, dtype=np.float64)
    for n, occ in occupancy.items():
        if np.shape(occ) != img.shape:
            raise ValueError(f"region {n} has shape {np.shape(occ)}, the image {img.shape}")
    w, domains = matrix or transfer_matrix(occupancy, fwhm_mm, voxel_mm)
    t = np.array([img[domains[n]].mean() for n in occupancy])
    if np.linalg.cond(w) > 1e8:
        raise ValueError("the transfer matrix is singular (regions too small for the PSF)")
    c = np.linalg.solve(w, t)
    return dict(zip(occupancy, c.tolist(), strict=True))
