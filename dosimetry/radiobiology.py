"""Radiobiology: BED with the Lea-Catcheside factor, EQD2, sums over cycles.

For an absorbed-dose rate that is a sum of exponentials ``R(t) = Σ c_i exp(-a_i t)``
(mono: one term; bi-exponential uptake/washout: ``c (e^{-λw t} - e^{-λu t})``), with
repair constant ``μ = ln2 / T_rep``, the Lea-Catcheside factor is (derived analytically)::

    G = 2 Σ_ij c_i c_j / ((a_i + a_j)(a_j + μ)) / D²,   D = Σ c_i / a_i

and ``BED = D + G D² / (α/β)``; for mono-exponential ``G = λ/(λ+μ)`` gives
``BED = D (1 + D λ / ((μ + λ) α/β))``. ``EQD2 = BED / (1 + 2/(α/β))``.
Cycles are summed assuming complete repair between them.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["Tissue", "get_tissue", "lea_catcheside_g", "bed_exponential", "bed_mono",
           "bed_bi", "eqd2", "sum_cycles", "BedResult"]

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Tissue:
    """Tissue LQ parameters: α/β (Gy), repair half-time (h), and source."""

    name: str
    alpha_beta_gy: float
    t_rep_h: float
    status: str
    source: str

    @property
    def mu_per_h(self) -> float:
        """Repair rate constant ln2/T_rep (1/h)."""
        return LN2 / self.t_rep_h


@dataclass(frozen=True)
class BedResult:
    """BED (Gy), EQD2 (Gy), absorbed dose (Gy) and the Lea-Catcheside factor."""

    dose_gy: float
    bed_gy: float
    eqd2_gy: float
    g_factor: float


@lru_cache(maxsize=1)
def _tissues() -> dict[str, Tissue]:
    path = Path(__file__).parent / "data" / "tissues.csv"
    with open(path, newline="") as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        return {r["tissue"]: Tissue(r["tissue"], float(r["alpha_beta_gy"]), float(r["t_rep_h"]),
                                    r["status"], r["source"]) for r in rows}


_ALIASES = {"kidney_left": "kidney", "kidney_right": "kidney", "kidneys": "kidney",
            "tumor_total": "tumor", "tumour": "tumor", "marrow": "red_marrow"}


def get_tissue(name: str) -> Tissue:
    """Tissue parameters by name (VOI names such as ``kidney_left`` and ``lesion_001`` map).

    Raises:
        ValueError: unknown tissue.
    """
    key = _ALIASES.get(name, name)
    if key.startswith("lesion_"):
        key = "tumor"
    if key.startswith(("parotid_gland", "submandibular_gland")):
        key = "salivary_gland"
    tab = _tissues()
    if key not in tab:
        raise ValueError(f"unknown tissue {name!r}; known: {sorted(tab)}")
    return tab[key]


def _check(alpha_beta_gy: float, t_rep_h: float) -> None:
    if not (np.isfinite(alpha_beta_gy) and alpha_beta_gy > 0):
        raise ValueError("alpha_beta_gy must be > 0")
    if not (np.isfinite(t_rep_h) and t_rep_h > 0):
        raise ValueError("t_rep_h must be > 0")


def lea_catcheside_g(coefficients, rates_per_h, t_rep_h: float) -> float:
    """G factor of a dose rate ``Σ c_i exp(-a_i t)`` (any units of c; rates in 1/h)."""
    c = np.asarray(coefficients, float)
    a = np.asarray(rates_per_h, float)
    if c.shape != a.shape or c.size == 0:
        raise ValueError("coefficients and rates must have the same non-zero length")
    if np.any(~np.isfinite(a)) or np.any(a <= 0):
        raise ValueError("rates_per_h must be finite and > 0")
    if not (np.isfinite(t_rep_h) and t_rep_h > 0):
        raise ValueError("t_rep_h must be > 0")
    mu = LN2 / t_rep_h
    d = float(np.sum(c / a))
    if not d > 0:
        raise ValueError("the dose-rate function integrates to a non-positive dose")
    num = float(np.sum(np.outer(c, c) / ((a[:, None] + a[None, :]) * (a[None, :] + mu))))
    return 2.0 * num / d**2


def eqd2(bed_gy: float, alpha_beta_gy: float) -> float:
    """EQD2 = BED / (1 + 2/(α/β)) (Gy)."""
    if not (np.isfinite(alpha_beta_gy) and alpha_beta_gy > 0):
        raise ValueError("alpha_beta_gy must be > 0")
    return bed_gy / (1.0 + 2.0 / alpha_beta_gy)


def bed_exponential(dose_gy: float, coefficients, rates_per_h, alpha_beta_gy: float,
                    t_rep_h: float) -> BedResult:
    """BED for a dose rate shaped as a sum of exponentials, scaled to ``dose_gy``."""
    _check(alpha_beta_gy, t_rep_h)
    if not (np.isfinite(dose_gy) and dose_gy >= 0):
        raise ValueError("dose_gy must be finite and >= 0")
    g = lea_catcheside_g(coefficients, rates_per_h, t_rep_h)
    bed = dose_gy + g * dose_gy**2 / alpha_beta_gy
    return BedResult(dose_gy, bed, eqd2(bed, alpha_beta_gy), g)


def bed_mono(dose_gy: float, lambda_eff_per_h: float, alpha_beta_gy: float,
             t_rep_h: float) -> BedResult:
    """BED for a mono-exponentially decreasing dose rate (effective λ in 1/h)."""
    return bed_exponential(dose_gy, [1.0], [lambda_eff_per_h], alpha_beta_gy, t_rep_h)


def bed_bi(dose_gy: float, lambda_washout_per_h: float, lambda_uptake_per_h: float,
           alpha_beta_gy: float, t_rep_h: float) -> BedResult:
    """BED for ``R(t) ∝ exp(-λw t) - exp(-λu t)`` (uptake then washout)."""
    if not lambda_uptake_per_h > lambda_washout_per_h:
        raise ValueError("lambda_uptake_per_h must exceed lambda_washout_per_h")
    return bed_exponential(dose_gy, [1.0, -1.0], [lambda_washout_per_h, lambda_uptake_per_h],
                           alpha_beta_gy, t_rep_h)


def sum_cycles(results: list[BedResult], alpha_beta_gy: float) -> BedResult:
    """Sum dose and BED over cycles (complete repair between cycles); EQD2 of the sum."""
    if not results:
        raise ValueError("no cycles to sum")
    d = sum(r.dose_gy for r in results)
    b = sum(r.bed_gy for r in results)
    g = (b - d) * alpha_beta_gy / d**2 if d > 0 else 0.0
    return BedResult(d, b, eqd2(b, alpha_beta_gy), g)
