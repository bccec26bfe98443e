"""Quality findings of a patient-cycle's dosimetry: what was dropped, guessed or doubtful.

A :class:`Finding` is one row of the lake's ``quality`` table once written: a ``check`` name,
a status (``pass``, ``warn``, ``fail``) and the reason in words. ``fail`` means the VOI (or,
without a VOI, the patient-cycle) has no number; ``warn`` that its number rests on a
fallback or falls short of a check. The recovery estimate that decides whether a VOI needs
partial-volume correction is that of a uniform sphere of the VOI's volume imaged with a
Gaussian point-spread function (exact in closed form).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import optimize

__all__ = ["Finding", "STATUSES", "fit_resolution_fwhm_mm", "sphere_recovery", "worst"]

STATUSES = ("pass", "warn", "fail")


@dataclass(frozen=True)
class Finding:
    """One quality finding (a ``quality`` row without its lineage)."""

    check: str
    status: str
    message: str
    voi: str | None = None
    value: float | None = None
    image_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r}; one of {STATUSES}")

    def line(self) -> str:
        """The finding as one console line."""
        where = f"{self.voi}: " if self.voi else ""
        return f"{self.status.upper()} {self.check}: {where}{self.message}"


def worst(statuses: Iterable[str]) -> str:
    """The worst of some statuses (``pass`` when there are none)."""
    return max(statuses, key=STATUSES.index, default="pass")


def sphere_recovery(volume_ml: float, fwhm_mm: float) -> float:
    """Fraction of a uniform sphere's activity a Gaussian PSF of ``fwhm_mm`` leaves inside it.

    It is the probability that a point drawn uniformly in the sphere, displaced by the PSF,
    stays inside: for a point at distance r from the centre that probability is the
    non-central chi (3 degrees of freedom) distribution function at the radius, integrated
    over r by Gauss-Legendre quadrature.
    """
    if not (volume_ml > 0 and fwhm_mm > 0):
        raise ValueError("volume_ml and fwhm_mm must be > 0")
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    sigma = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    # P(|U + G| < R) for U uniform in the ball of radius R and G ~ N(0, s^2 I):
    # a radial integral evaluated by Gauss-Legendre quadrature over the ball's radius
    nodes, weights = np.polynomial.legendre.leggauss(48)
    total = 0.0
    for x, w in zip(map(float, nodes), map(float, weights), strict=True):
        r = 0.5 * radius * (x + 1.0)  # radius of the uniform point
        density = 3.0 * r * r / radius**3  # its radial density in the ball
        total += 0.5 * radius * w * density * _inside(r, radius, sigma)
    return min(max(total, 0.0), 1.0)


def fit_resolution_fwhm_mm(volumes_ml: Iterable[float], recoveries: Iterable[float],
                           background_ratio: float = 0.0) -> float:
    """The Gaussian FWHM (mm) whose sphere recoveries best match measured ones (least squares):
    a sphere's measured mean over its true concentration is ``b + (1 - b) x`` its recovery,
    with ``b`` the background over the sphere concentration (the background spills in)."""
    v = np.asarray(list(volumes_ml), dtype=float)
    r = np.asarray(list(recoveries), dtype=float)
    b = float(background_ratio)

    def cost(fwhm: float) -> float:
        model = np.array([b + (1.0 - b) * sphere_recovery(x, fwhm) for x in v])
        return float(((model - r) ** 2).sum())

    return float(optimize.minimize_scalar(cost, bounds=(1.0, 80.0), method="bounded",
                                          options={"xatol": 0.01}).x)


def _inside(r: float, radius: float, sigma: float) -> float:
    """P(|p + G| < R) for a point p at distance r from the centre, G isotropic Gaussian."""
    if r < 1e-12:
        x = radius / (sigma * math.sqrt(2.0))
        return math.erf(x) - 2.0 * x * math.exp(-x * x) / math.sqrt(math.pi)
    s2 = sigma * math.sqrt(2.0)
    a, b = (radius - r) / s2, (radius + r) / s2
    gauss = (sigma / (r * math.sqrt(2.0 * math.pi))) * (math.exp(-b * b) - math.exp(-a * a))
    return 0.5 * (math.erf(a) + math.erf(b)) + gauss
