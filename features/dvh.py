"""Dose-volume histograms and DVH metrics per VOI, for absorbed-dose and BED maps (Gy).

The DVH is built from exact order statistics rather than from a binned histogram. The VOI's
voxel doses are sorted in descending order; voxel ``i`` (0-based) with weight ``w_i`` (its
fractional occupancy of the VOI, 1 for a plain binary mask) stands for the cumulative volume
fraction at its own midpoint::

    c_i = (w_0 + ... + w_{i-1} + w_i / 2) / W,        W = sum of all weights

(for unit weights ``c_i = (i + 0.5) / n``, the Hazen plotting position). Adding the end points
``(0, Dmax)`` and ``(1, Dmin)`` gives a monotone, piecewise-linear cumulative DVH
``fraction -> dose``. ``D(x%)`` is the dose at fraction ``x/100`` on this curve, linearly
interpolated between neighbouring voxel doses (sub-voxel accuracy, not snapped to a bin);
``V(d)``, the fraction receiving at least ``d``, is the inverse of the same curve (1 at and
below Dmin, 0 above Dmax; at a tied dose, the largest fraction). A continuous dose field
sampled at voxel centres is thus reproduced to a small fraction of a voxel's dose step.

Bad input (empty VOI, mask or weights not aligned with the dose map, NaN/infinite or negative
doses in the VOI) raises ``ValueError`` with the reason; the caller records the skip.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["Dvh", "cumulative_dvh", "dvh_metrics"]


@dataclass(frozen=True, eq=False)
class Dvh:
    """A stored cumulative DVH of one VOI.

    ``dose_gy``: increasing dose grid from 0 to the VOI's Dmax (Gy); ``volume_fraction``: the
    fraction (0..1) of the VOI volume receiving at least that dose; ``volume_ml``: VOI volume.
    """

    dose_gy: np.ndarray
    volume_fraction: np.ndarray
    volume_ml: float


@dataclass(frozen=True)
class _SortedVoi:
    """VOI doses sorted descending with weights, and the piecewise-linear cumulative DVH."""

    dose_desc_gy: np.ndarray  # voxel doses, descending
    weight: np.ndarray  # fractional occupancy of each voxel, aligned with dose_desc_gy
    curve_fraction: np.ndarray  # strictly increasing 0..1, end points included
    curve_dose_gy: np.ndarray  # non-increasing doses at curve_fraction
    volume_ml: float

    @property
    def total_weight(self) -> float:
        return float(self.weight.sum())

    def dose_at_fraction(self, fraction: float) -> float:
        """Minimum dose received by the hottest ``fraction`` (0..1) of the VOI volume (Gy)."""
        f = min(max(float(fraction), 0.0), 1.0)
        return float(np.interp(f, self.curve_fraction, self.curve_dose_gy))

    def fraction_at_dose(self, dose_gy: np.ndarray | float) -> np.ndarray:
        """Fraction (0..1) of the VOI volume receiving at least ``dose_gy``: the inverse of the
        curve, ``max {f : D(f) >= dose}`` (at a tied dose, the largest fraction)."""
        d = np.asarray(dose_gy, dtype=np.float64)
        dose_asc = self.curve_dose_gy[::-1]  # non-decreasing
        frac = self.curve_fraction[::-1]  # decreasing
        last = dose_asc.size - 1
        hi = np.searchsorted(dose_asc, d, side="right")  # first curve dose above d
        lo = np.clip(hi - 1, 0, last)  # last curve dose at or below d
        hi = np.clip(hi, 0, last)
        x0, x1 = dose_asc[lo], dose_asc[hi]
        t = np.divide(d - x0, x1 - x0, out=np.zeros_like(d + x0), where=x1 > x0)
        out = frac[lo] + t * (frac[hi] - frac[lo])
        tied = frac[np.clip(np.searchsorted(dose_asc, d, side="left"), 0, last)]
        out = np.where(x0 == d, tied, out)
        out = np.where(d < dose_asc[0], 1.0, out)
        return np.where(d > dose_asc[-1], 0.0, out)


def _sorted_voi(dose_gy: np.ndarray, mask: np.ndarray, voxel_volume_ml: float,
                weights: np.ndarray | None) -> _SortedVoi:
    """Validate the inputs and sort the VOI's voxel doses (descending) with their weights."""
    dose = np.asarray(dose_gy)
    m = np.asarray(mask)
    if m.shape != dose.shape:
        raise ValueError(f"mask not aligned with dose map: mask shape {m.shape} "
                         f"!= dose shape {dose.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask is not binary (values other than 0/1); pass one VOI's mask, "
                             "with partial occupancy as weights")
        m = m.astype(bool)
    if not (math.isfinite(voxel_volume_ml) and voxel_volume_ml > 0):
        raise ValueError(f"voxel volume must be positive and finite, got {voxel_volume_ml} ml")
    if weights is not None:
        w_all = np.asarray(weights, dtype=np.float64)
        if w_all.shape != dose.shape:
            raise ValueError(f"weights not aligned with dose map: weights shape {w_all.shape} "
                             f"!= dose shape {dose.shape}")
        w = w_all[m]
        if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w > 1):
            raise ValueError("weights (fractional occupancy) must be finite and within 0..1 "
                             "inside the VOI")
        keep = w > 0
    else:
        w = None
        keep = None
    if not np.issubdtype(dose.dtype, np.number) or np.issubdtype(dose.dtype, np.complexfloating):
        raise ValueError(f"dose map must be real-valued, got dtype {dose.dtype}")
    d = dose[m].astype(np.float64)
    if keep is not None:
        d, w = d[keep], w[keep]
    if d.size == 0:
        raise ValueError("empty VOI: the mask selects no voxels (or all weights are 0)")
    n_bad = int(np.count_nonzero(~np.isfinite(d)))
    if n_bad:
        raise ValueError(f"dose map has {n_bad} NaN or infinite voxel(s) in the VOI")
    n_neg = int(np.count_nonzero(d < 0))
    if n_neg:
        raise ValueError(f"dose map has {n_neg} negative voxel(s) in the VOI "
                         f"(min {float(d.min()):.6g} Gy)")
    if w is None:
        w = np.ones_like(d)
    order = np.argsort(-d, kind="stable")
    d, w = d[order], w[order]
    total = float(w.sum())
    mid = (np.cumsum(w) - 0.5 * w) / total
    curve_fraction = np.concatenate(([0.0], mid, [1.0]))
    curve_dose = np.concatenate(([d[0]], d, [d[-1]]))
    return _SortedVoi(d, w, curve_fraction, curve_dose, total * float(voxel_volume_ml))


def cumulative_dvh(dose_gy: np.ndarray, mask: np.ndarray, voxel_volume_ml: float,
                   weights: np.ndarray | None = None, n_points: int = 200) -> Dvh:
    """The cumulative DVH of one VOI on ``n_points`` doses from 0 to Dmax (see module doc).

    ``weights`` (optional, same shape as the dose map) are per-voxel fractional occupancies
    0..1; the VOI volume is ``sum(weights in mask) * voxel_volume_ml``. Works for dose or BED.
    """
    if n_points < 2:
        raise ValueError(f"n_points must be at least 2, got {n_points}")
    voi = _sorted_voi(dose_gy, mask, voxel_volume_ml, weights)
    grid = np.linspace(0.0, float(voi.dose_desc_gy[0]), int(n_points))
    frac = voi.fraction_at_dose(grid)
    grid.flags.writeable = False
    frac.flags.writeable = False
    return Dvh(dose_gy=grid, volume_fraction=frac, volume_ml=voi.volume_ml)


def _geud(dose: np.ndarray, weight: np.ndarray, a: float) -> float:
    """Generalised EUD ``(Σ w D^a / Σ w)^(1/a)`` (Gy), computed without overflow.

    ``a = 0`` is the limit (geometric mean). For ``a <= 0`` any zero-dose voxel gives 0.
    """
    total = float(weight.sum())
    if a == 0:
        if np.any(dose == 0):
            return 0.0
        return float(np.exp(np.sum(weight * np.log(dose)) / total))
    if a < 0:
        if np.any(dose == 0):
            return 0.0
        ref = float(dose.min())  # (d/ref)^a <= 1
    else:
        ref = float(dose.max())  # (d/ref)^a <= 1
        if ref == 0:
            return 0.0
    mean = float(np.sum(weight * (dose / ref) ** a)) / total
    return ref * mean ** (1.0 / a)


def dvh_metrics(dose_gy: np.ndarray, mask: np.ndarray, voxel_volume_ml: float,
                d_at_cc: Iterable[float] = (0.5, 2.0), v_at_gy: Iterable[float] = (10.0, 20.0),
                geud_a: Iterable[float] = (-10, 1, 10),
                weights: np.ndarray | None = None) -> dict[str, float]:
    """DVH metrics of one VOI on a dose or BED map (all doses in Gy).

    Keys: ``dmean_gy, dmax_gy, dmin_gy, d2_gy, d50_gy, d95_gy, d98_gy`` (``Dx``: minimum dose
    to the hottest x % of the volume), ``d{x:g}cc_gy`` per ``d_at_cc`` (minimum dose to the
    hottest x cc; omitted when the VOI is smaller than x cc), ``v{x:g}gy_pct`` per ``v_at_gy``
    (percent of the volume receiving at least x Gy), ``geud_a{a:g}_gy`` per ``geud_a``
    (generalised EUD; a=1 is Dmean, a→∞ Dmax, a→-∞ Dmin), ``hi`` (ICRU 83 homogeneity index
    ``(D2 - D98) / D50``; omitted when D50 is 0) and ``volume_ml``. Weighted by ``weights``
    (fractional occupancy 0..1) when given. Raises ``ValueError`` on bad input.
    """
    voi = _sorted_voi(dose_gy, mask, voxel_volume_ml, weights)
    d, w = voi.dose_desc_gy, voi.weight
    out: dict[str, float] = {
        "dmean_gy": float(np.sum(w * d) / voi.total_weight),
        "dmax_gy": float(d[0]),
        "dmin_gy": float(d[-1]),
    }
    for pct in (2, 50, 95, 98):
        out[f"d{pct}_gy"] = voi.dose_at_fraction(pct / 100.0)
    for cc in d_at_cc:
        cc = float(cc)
        if not (math.isfinite(cc) and cc > 0):
            raise ValueError(f"D(x cc) needs a positive volume, got {cc} cc")
        if cc <= voi.volume_ml * (1.0 + 1e-12):
            out[f"d{cc:g}cc_gy"] = voi.dose_at_fraction(cc / voi.volume_ml)
    for gy in v_at_gy:
        gy = float(gy)
        if not math.isfinite(gy):
            raise ValueError(f"V(x Gy) needs a finite dose, got {gy} Gy")
        out[f"v{gy:g}gy_pct"] = 100.0 * float(voi.fraction_at_dose(gy))
    for a in geud_a:
        a = float(a)
        if not math.isfinite(a):
            raise ValueError(f"gEUD needs a finite exponent a, got {a}")
        out[f"geud_a{a:g}_gy"] = _geud(d, w, a)
    if out["d50_gy"] > 0:
        out["hi"] = (out["d2_gy"] - out["d98_gy"]) / out["d50_gy"]
    out["volume_ml"] = voi.volume_ml
    return out
