"""Sphere model: self-dose S-values of uniform spheres for any nuclide.

For a uniformly filled sphere of radius R the mean absorbed fraction is
``φ = Σ_shells E(r) P_R(r) / E_emitted`` with the project's point kernels
(:mod:`.point_kernels`) and the exact geometric reduction factor of a sphere
``P_R(r) = 1 - 3x/4 + x³/16`` (x = r/R ≤ 2; Berger 1971, MIRD Pamphlet 7), i.e. the
probability that a point at distance r in a random direction from a uniform point of the
sphere lies in the sphere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .nuclides import MEV_TO_J, get_nuclide
from .point_kernels import RadialDeposition, electron_dpk, photon_dpk

__all__ = ["SphereS", "sphere_self_s", "geometric_factor"]


@dataclass(frozen=True)
class SphereS:
    """Self-dose S-value of a sphere (Gy per Bq·s) with its components."""

    nuclide: str
    mass_g: float
    density_g_cm3: float
    s_gy_per_bq_s: float
    electron_gy_per_bq_s: float
    photon_gy_per_bq_s: float
    electron_absorbed_fraction: float
    photon_absorbed_fraction: float


def geometric_factor(r: np.ndarray, radius: float) -> np.ndarray:
    """Probability that a point at distance ``r`` from a uniform point in a sphere is inside."""
    x = np.asarray(r, float) / radius
    return np.where(x < 2.0, 1 - 0.75 * x + x**3 / 16.0, 0.0)


def _absorbed(dep: RadialDeposition, radius_mm: float, density: float) -> float:
    edges = dep.r_edges_mm / density
    # average the factor over each shell (5-point rule)
    lo, hi = edges[:-1], edges[1:]
    pts = [lo + f * (hi - lo) for f in (0.1, 0.3, 0.5, 0.7, 0.9)]
    g = np.mean([geometric_factor(p, radius_mm) for p in pts], axis=0)
    return dep.local_mev + float(np.sum(dep.energy_mev * g))


def sphere_self_s(nuclide: str, mass_g: float, density_g_cm3: float = 1.0) -> SphereS:
    """Self-dose S-value (Gy/(Bq·s)) of a uniform sphere of ``mass_g``.

    Raises:
        ValueError: mass or density <= 0, unknown nuclide.
    """
    nuc = get_nuclide(nuclide)
    if not (np.isfinite(mass_g) and mass_g > 0):
        raise ValueError(f"mass_g must be > 0, got {mass_g}")
    if not (np.isfinite(density_g_cm3) and density_g_cm3 > 0):
        raise ValueError("density_g_cm3 must be > 0")
    radius_mm = 10.0 * (3 * mass_g / density_g_cm3 / (4 * math.pi)) ** (1 / 3)
    e_dep, p_dep = electron_dpk(nuc.name), photon_dpk(nuc.name)
    e_abs = _absorbed(e_dep, radius_mm, density_g_cm3)
    p_abs = _absorbed(p_dep, radius_mm, density_g_cm3)
    m_kg = mass_g * 1e-3
    s_e, s_p = e_abs * MEV_TO_J / m_kg, p_abs * MEV_TO_J / m_kg
    return SphereS(
        nuclide=nuc.name, mass_g=float(mass_g), density_g_cm3=float(density_g_cm3),
        s_gy_per_bq_s=s_e + s_p, electron_gy_per_bq_s=s_e, photon_gy_per_bq_s=s_p,
        electron_absorbed_fraction=e_abs / e_dep.emitted_mev if e_dep.emitted_mev else 0.0,
        photon_absorbed_fraction=p_abs / p_dep.emitted_mev if p_dep.emitted_mev else 0.0,
    )
