"""Sums of exponentials for compartment kinetics, with analytic integrals.

A compartment holds A(t) = A0 * sum_k c_k exp(-(lambda_k + lambda_p) t) where c_k are fractions
of the administered activity A0, lambda_k biological rate constants (1/h) and lambda_p the
physical decay constant. Uptake and washout is c = (f, -f), lambda = (lambda_w, lambda_u)
with lambda_u > lambda_w, so A(0) = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExpSum:
    """Biological kinetics of a compartment as fractions of the administered activity."""

    coefs: tuple[float, ...]
    rates_per_h: tuple[float, ...]

    @classmethod
    def uptake_washout(cls, fraction: float, t_uptake_h: float, t_washout_h: float) -> ExpSum:
        """Bi-exponential uptake (half-time t_uptake_h) and washout (half-time t_washout_h)."""
        lu, lw = math.log(2) / t_uptake_h, math.log(2) / t_washout_h
        if lu <= lw:
            raise ValueError("uptake must be faster than washout")
        return cls((fraction, -fraction), (lw, lu))

    def scaled(self, factor: float) -> ExpSum:
        return ExpSum(tuple(c * factor for c in self.coefs), self.rates_per_h)

    def fraction(self, t_h: np.ndarray | float, decay_per_h: float = 0.0) -> np.ndarray:
        """Fraction of the administered activity present at t (with physical decay)."""
        t = np.asarray(t_h, dtype=float)
        out = np.zeros_like(t)
        for c, lam in zip(self.coefs, self.rates_per_h, strict=True):
            out = out + c * np.exp(-(lam + decay_per_h) * t)
        return out

    def integral_h(self, decay_per_h: float) -> float:
        """Integral over [0, inf) of ``fraction`` (residence time, h)."""
        return float(sum(c / (lam + decay_per_h)
                         for c, lam in zip(self.coefs, self.rates_per_h, strict=True)))

    def effective_washout_per_h(self, decay_per_h: float) -> float:
        """Effective decay constant of the slowest positive term (late-phase clearance)."""
        pos = [lam for c, lam in zip(self.coefs, self.rates_per_h, strict=True) if c > 0]
        return min(pos) + decay_per_h


def fit_effective_half_life(t_h: np.ndarray, activity: np.ndarray) -> float:
    """Effective half-life (h) from a log-linear least-squares fit of activity over time."""
    t = np.asarray(t_h, dtype=float)
    y = np.log(np.asarray(activity, dtype=float))
    slope = np.polyfit(t, y, 1)[0]
    return float(math.log(2) / -slope) if slope < 0 else math.inf
