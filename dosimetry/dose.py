"""Voxel absorbed dose: local deposition (LDM), voxel S-value convolution (FFT), density
correction from CT, the dose-rate route, and per-VOI statistics (mean, DVH).

Units: TIA maps in MBq·h per voxel, activity maps in MBq per voxel, dose in Gy, dose rate in
Gy/h, voxel edge in mm, density in g/cm³, kernels in mGy/(MBq·s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from .kernels import FAR_FACTOR, VoxelKernel
from .nuclides import MEV_TO_J, get_nuclide
from .voxel_kinetics import fit_voxel_tacs

__all__ = ["local_deposition_dose", "convolve_fft", "vsv_dose", "hu_to_density",
           "dose_rate_map", "dose_from_dose_rate_maps", "VoiDoseStats", "voi_dose_stats"]

S_PER_H = 3600.0


def _check_map(name: str, arr, allow_negative: bool = False) -> np.ndarray:
    a = np.asarray(arr, dtype=float)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if not allow_negative and np.any(a < 0):
        raise ValueError(f"{name} contains negative values")
    return a


def _check_voxel(voxel_mm) -> np.ndarray:
    v = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,)).copy()
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"voxel size must be > 0 mm, got {voxel_mm}")
    return v


def _density(density_g_cm3, shape) -> np.ndarray:
    rho = np.broadcast_to(np.asarray(density_g_cm3, dtype=float), shape)
    if not np.all(np.isfinite(rho)) or np.any(rho <= 0):
        raise ValueError("density_g_cm3 must be finite and > 0 everywhere")
    return rho


def local_deposition_dose(tia_mbq_h, voxel_mm, nuclide: str, density_g_cm3=1.0,
                          include_photons: bool = False) -> np.ndarray:
    """LDM: all emitted (electron, alpha; optionally photon) energy absorbed in the voxel (Gy).

    Raises:
        ValueError: bad map, voxel size <= 0, density <= 0, unknown nuclide.
    """
    tia = _check_map("tia_mbq_h", tia_mbq_h)
    v = _check_voxel(voxel_mm)
    nuc = get_nuclide(nuclide)
    rho = _density(density_g_cm3, tia.shape)
    e_mev = nuc.electron_energy_mev + nuc.alpha_energy_mev
    if include_photons:
        e_mev += nuc.photon_energy_mev
    mass_kg = rho * np.prod(v / 10.0) * 1e-3
    return tia * 1e6 * S_PER_H * e_mev * MEV_TO_J / mass_kg


def convolve_fft(image, kernel) -> np.ndarray:
    """Same-size linear (zero-padded) convolution of a 3-D image by an odd 3-D kernel (FFT)."""
    img = np.asarray(image, dtype=float)
    k = np.asarray(kernel, dtype=float)
    if k.ndim != 3 or any(s % 2 == 0 for s in k.shape):
        raise ValueError(f"kernel must be 3-D with odd sizes, got {k.shape}")
    if img.ndim != 3:
        raise ValueError(f"image must be 3-D, got shape {img.shape}")
    shape = [n + m - 1 for n, m in zip(img.shape, k.shape, strict=False)]
    fshape = [sfft.next_fast_len(n, real=True) for n in shape]
    spec = sfft.rfftn(img, fshape, workers=-1)
    spec *= sfft.rfftn(k, fshape, workers=-1)
    full = sfft.irfftn(spec, fshape, workers=-1)
    start = [(m - 1) // 2 for m in k.shape]
    return np.ascontiguousarray(full[start[0]:start[0] + img.shape[0],
                                     start[1]:start[1] + img.shape[1],
                                     start[2]:start[2] + img.shape[2]])


def vsv_dose(tia_mbq_h, kernel: VoxelKernel, density_g_cm3=None,
             voxel_mm=None) -> np.ndarray:
    """Dose map (Gy) by voxel S-value convolution; optional density correction.

    The kernel dose (computed for ``kernel.density_g_cm3``) is scaled by
    ``kernel.density_g_cm3 / ρ(voxel)`` (same energy, different mass).

    Raises:
        ValueError: bad map, voxel size different from the kernel's, density <= 0.
    """
    tia = _check_map("tia_mbq_h", tia_mbq_h)
    if voxel_mm is not None:
        v = _check_voxel(voxel_mm)
        if not np.allclose(v, kernel.voxel_mm, rtol=1e-3):
            raise ValueError(f"voxel size {v} mm differs from the kernel's {kernel.voxel_mm} mm")
    dose = convolve_fft(tia * S_PER_H, kernel.values_mgy_per_mbq_s)
    if kernel.far_photon_mgy_per_mbq_s is not None:
        dose = dose + _far_photons(tia * S_PER_H, kernel.far_photon_mgy_per_mbq_s)
    dose = np.clip(dose, 0, None) * 1e-3
    if density_g_cm3 is not None:
        rho = _density(density_g_cm3, tia.shape)
        dose = dose * (kernel.density_g_cm3 / rho)
    return dose


def _far_photons(cumulated: np.ndarray, far_kernel: np.ndarray) -> np.ndarray:
    """The far photon kernel's dose: the map summed in blocks of ``FAR_FACTOR``³ voxels,
    convolved on the coarse grid, and interpolated back (trilinear, at voxel centres)."""
    f = FAR_FACTOR
    padded = np.pad(cumulated, [(0, (-n) % f) for n in cumulated.shape])
    nx, ny, nz = (n // f for n in padded.shape)
    blocks = padded.reshape(nx, f, ny, f, nz, f).sum(axis=(1, 3, 5))
    fine = ndimage.zoom(convolve_fft(blocks, far_kernel), f, order=1, mode="nearest",
                        grid_mode=True)
    return fine[tuple(slice(0, n) for n in cumulated.shape)]


def hu_to_density(hu, calibration: tuple[tuple[float, float], ...] | None = None) -> np.ndarray:
    """Mass density (g/cm³) from CT numbers by piecewise-linear calibration.

    Default: ρ = 1 + HU/1000 (air -1000 -> 0.001, water 0 -> 1.0), the water-air mixture
    line, adequate for lung and soft tissue; for bone pass the scanner's own phantom
    calibration as ((HU, ρ), ...) points, sorted by HU.
    """
    h = np.asarray(hu, dtype=float)
    if not np.all(np.isfinite(h)):
        raise ValueError("HU map contains NaN or infinite values")
    if calibration is None:
        calibration = ((-1000.0, 0.001), (0.0, 1.0), (3000.0, 4.0))
    pts = np.asarray(calibration, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 2 or np.any(np.diff(pts[:, 0]) <= 0):
        raise ValueError("calibration must be (HU, density) pairs with increasing HU")
    if np.any(pts[:, 1] <= 0):
        raise ValueError("calibration densities must be > 0")
    return np.interp(h, pts[:, 0], pts[:, 1])


def dose_rate_map(activity_mbq, kernel: VoxelKernel, density_g_cm3=None) -> np.ndarray:
    """Absorbed-dose-rate map (Gy/h) at one time point from an activity map (MBq/voxel)."""
    act = _check_map("activity_mbq", activity_mbq)
    return vsv_dose(act, kernel, density_g_cm3)  # MBq × 1 h -> Gy per hour


def dose_from_dose_rate_maps(time_h, dose_rate_maps_gy_per_h, model: str = "auto",
                             decay_constant_per_h: float | None = None) -> np.ndarray:
    """Dose-rate route: fit the voxel dose-rate curves and integrate them to ∞ (Gy)."""
    res = fit_voxel_tacs(time_h, dose_rate_maps_gy_per_h, model=model,
                         decay_constant_per_h=decay_constant_per_h)
    return res.tia_map


@dataclass
class VoiDoseStats:
    """Dose statistics of one VOI (Gy) and its cumulative DVH.

    ``dvh_dose_gy`` and ``dvh_volume_fraction`` give V(D) = fraction of the VOI receiving at
    least D; ``d2_gy``, ``d50_gy``, ``d98_gy`` are the doses to 2, 50, 98 % of the volume.
    """

    n_voxels: int
    volume_ml: float
    mass_g: float
    mean_gy: float
    sd_gy: float
    min_gy: float
    max_gy: float
    d2_gy: float
    d50_gy: float
    d98_gy: float
    dvh_dose_gy: np.ndarray
    dvh_volume_fraction: np.ndarray


def voi_dose_stats(dose_gy, mask, voxel_mm, density_g_cm3=1.0, n_bins: int = 200) -> VoiDoseStats:
    """Statistics and cumulative DVH of a dose map inside a boolean mask.

    Raises:
        ValueError: mismatched shapes, empty mask, NaN dose.
    """
    d = _check_map("dose_gy", dose_gy)
    m = np.asarray(mask, dtype=bool)
    if m.shape != d.shape:
        raise ValueError(f"mask shape {m.shape} differs from dose shape {d.shape}")
    if not m.any():
        raise ValueError("mask is empty")
    v = _check_voxel(voxel_mm)
    rho = _density(density_g_cm3, d.shape)[m]
    vals = d[m]
    vol_ml = float(m.sum() * np.prod(v / 10.0))
    mass = rho * np.prod(v / 10.0)
    edges = np.linspace(0.0, float(vals.max()) * 1.0001 + 1e-12, n_bins + 1)
    frac = np.array([(vals >= e).mean() for e in edges])
    return VoiDoseStats(
        n_voxels=int(m.sum()), volume_ml=vol_ml, mass_g=float(mass.sum()),
        mean_gy=float(np.average(vals, weights=mass)), sd_gy=float(vals.std()),
        min_gy=float(vals.min()), max_gy=float(vals.max()),
        d2_gy=float(np.percentile(vals, 98)), d50_gy=float(np.percentile(vals, 50)),
        d98_gy=float(np.percentile(vals, 2)), dvh_dose_gy=edges, dvh_volume_fraction=frac,
    )
