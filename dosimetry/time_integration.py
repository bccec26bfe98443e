"""A VOI's time-integrated activity from however many time points the protocol has.

- Two or more points: the TAC models by AICc, or AIC where a candidate has one residual degree
  of freedom (:func:`kinetics.select_tac_model`; with two or three points the
  mono-exponential through or fitted to them, else the trapezoid).
- One point: Hänscheid et al. 2018 (TIA = A(t) 2t/ln2), or Madsen et al. 2018 with the
  population effective half-life of the VOI's class (``data/population_half_lives.csv``, each
  value with its source; a class without one falls back to Hänscheid, with a warning).

Every result carries its uncertainty: the fit's; where the fit cannot give one (two points,
trapezoid) the SPECT activity uncertainty propagated through the same model (for the
trapezoid by a parametric bootstrap through its fitted tail); for one point the method's
(Hänscheid's approximation, or the population spread of the half-life). The dose rate's
shape for BED is kept as a sum of exponentials.

A fit is implausible, and a warning of the quality record, when its rate sits at a bound
(``fit_at_bound``: an effective half-life equal to the physical one is the constraint's, not
the data's) or when more than ``quality.max_extrapolated_fraction`` of its TIA lies outside
the measured time span (``tia_extrapolated``).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from theralake.dosimetry import kinetics
from theralake.dosimetry.quality import Finding

__all__ = ["Integration", "PopulationHalfLife", "integrate", "population_half_life",
           "voi_class"]

LN2 = math.log(2.0)
#: a TIA whose standard uncertainty exceeds this share of it is a quality warning
MAX_RELATIVE_SD = 0.5
#: Hänscheid's approximation is within 10 % for t between these multiples of T_eff
HANSCHEID_WINDOW = (0.75, 2.5)


@dataclass
class Integration:
    """How a VOI's TIA was obtained, and its dose-rate shape (Σ c_i exp(-a_i t))."""

    tia_mbq_h: float
    tia_sd_mbq_h: float | None
    method: str  # fit | hanscheid2018 | madsen2018
    model: str  # the fit model (mono, bi, tri, trapezoid) or the method
    effective_half_life_h: float
    time_points_h: list[float]
    coefficients: list[float]
    rates_per_h: list[float]
    parameters: dict
    plausible: bool = True
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class PopulationHalfLife:
    voi_class: str
    effective_half_life_h: float
    effective_half_life_sd_h: float | None
    source: str


def voi_class(voi: str) -> str:
    """The population class of a VOI name: sides and glands' sides dropped, lesions one."""
    if voi.startswith("lesion_") or voi == "tumor_total":
        return "lesion"
    for side in ("_left", "_right"):
        if voi.endswith(side):
            return voi[: -len(side)]
    return voi


@lru_cache(maxsize=4)
def _table(path: str | None) -> tuple[dict, ...]:
    source = Path(path) if path else Path(__file__).parent / "data" / "population_half_lives.csv"
    with open(source, newline="") as fh:
        return tuple(csv.DictReader(line for line in fh if not line.startswith("#")))


def population_half_life(voi: str, pharmaceutical: str | None, nuclide: str,
                         table: str | None = None) -> PopulationHalfLife | None:
    """The population effective half-life of a VOI's class for a pharmaceutical (its family
    named in the table, e.g. ``psma`` in "Lu-177 PSMA-617"), or None."""
    name = (pharmaceutical or "").lower()
    for row in _table(table):
        if row["voi_class"] == voi_class(voi) and row["nuclide"] == nuclide and \
                row["pharmaceutical"].lower() in name:
            sd = row.get("effective_half_life_sd_h") or ""
            return PopulationHalfLife(row["voi_class"], float(row["effective_half_life_h"]),
                                      float(sd) if sd else None, row["source"])
    return None


def integrate(time_h: np.ndarray, activity_mbq: np.ndarray, voi: str, settings: dict,
              decay_constant_per_h: float, pharmaceutical: str | None, nuclide: str
              ) -> Integration:
    """The TIA of one VOI from its usable time points (activities not decay-corrected).

    Raises:
        ValueError: no usable time point, or activities that cannot be integrated.
    """
    t, a = np.asarray(time_h, float), np.asarray(activity_mbq, float)
    if t.size == 0:
        raise ValueError("no usable time point")
    if not np.any(a > 0):
        raise ValueError(f"no activity measured in it at {', '.join(f'{x:g} h' for x in t)}")
    if t.size == 1:
        return _single(float(t[0]), float(a[0]), voi, settings, pharmaceutical, nuclide)
    sel = kinetics.select_tac_model(t, a, tuple(settings["tac_models"]),
                                    decay_constant_per_h=decay_constant_per_h)
    fit = _with_uncertainty(sel.chosen, t, a, settings, decay_constant_per_h)
    sd = fit.tia_sd_mbq_h if math.isfinite(fit.tia_sd_mbq_h) else None
    failed_checks = not fit.plausible
    findings = _plausibility(fit, voi, settings, decay_constant_per_h)
    if sd is not None and sd > MAX_RELATIVE_SD * fit.tia_mbq_h:
        findings.append(Finding("tia_uncertain", "warn", f"TIA {fit.tia_mbq_h:.4g} ± {sd:.3g} "
                                f"MBq·h: the standard uncertainty exceeds "
                                f"{100 * MAX_RELATIVE_SD:.0f} %", voi, sd / fit.tia_mbq_h))
    if failed_checks:
        findings.append(Finding("fit_implausible", "warn", f"{fit.model} fit of {t.size} time "
                                f"points failed its plausibility checks ({'; '.join(fit.reasons)}"
                                f"; {sel.rule})", voi, fit.tia_mbq_h))
    coefficients, rates = _exponential_terms(fit)
    return Integration(fit.tia_mbq_h, sd, "fit", fit.model, fit.effective_half_life_h,
                       [float(x) for x in t], coefficients, rates, fit.as_dict(),
                       fit.plausible, findings)


def _with_uncertainty(fit: kinetics.TacFit, t: np.ndarray, a: np.ndarray, settings: dict,
                      decay_constant_per_h: float) -> kinetics.TacFit:
    """The fit with the SPECT activity uncertainty (``activity_relative_sd``) propagated where
    it could not estimate its own (no degrees of freedom, the trapezoid, an assumed error), and
    as a floor with one residual degree of freedom (the bi-exponential at four points: a
    near-exact fit would say ± 0)."""
    sd = fit.tia_sd_mbq_h
    one_dof = fit.model != "trapezoid" and fit.n_points - fit.n_params == 1
    if math.isfinite(sd) and sd > 0 and not fit.extra.get("sd_assumed") and not one_dof and \
            not any(r.startswith("no degrees of freedom") for r in fit.reasons):
        return fit
    rel = float(settings["activity_relative_sd"])
    try:
        again = kinetics.fit_tac(t, a, fit.model, sigma_mbq=np.maximum(rel * a, 1e-9 * a.max()),
                                 decay_constant_per_h=decay_constant_per_h,
                                 segments=fit.extra.get("segments", "linear"))
    except RuntimeError as exc:  # the weighted refit did not converge: say so, keep the fit's
        return dataclasses.replace(fit, reasons=[
            *fit.reasons, f"the {rel:.0%} activity uncertainty could not be propagated ({exc})"])
    if one_dof:  # one residual is no estimate of the noise: at least the SPECT's own
        if math.isfinite(sd) and sd >= again.tia_sd_mbq_h:
            return fit
        return dataclasses.replace(fit, tia_sd_mbq_h=again.tia_sd_mbq_h, reasons=[
            *fit.reasons, f"one residual degree of freedom: TIA uncertainty from a {rel:.0%} "
            "activity uncertainty (larger than the residuals')"])
    if np.allclose(again.params, fit.params, rtol=1e-6):  # the same curve, now with its errors
        return again
    return dataclasses.replace(fit, tia_sd_mbq_h=again.tia_sd_mbq_h, reasons=[
        *fit.reasons, f"TIA uncertainty from a {rel:.0%} activity uncertainty"])


def _plausibility(fit: kinetics.TacFit, voi: str, settings: dict,
                  decay_constant_per_h: float) -> list[Finding]:
    """Mark a fit at a bound, or extrapolated beyond the configured share, implausible (in
    its own record too), with the findings that say so."""
    out = []
    bounded = fit.at_bound
    if bounded:
        physical = any(abs(p - decay_constant_per_h) <= 1e-3 * decay_constant_per_h
                       for n, p in zip(fit.param_names, fit.params, strict=True)
                       if n in bounded)
        what = (f"effective half-life {fit.effective_half_life_h:.1f} h = the physical "
                "half-life (its lower bound): no biological clearance seen"
                if physical else f"{', '.join(bounded)} at the fit's bound")
        fit.reasons.append(what)
        out.append(Finding("fit_at_bound", "warn", f"{fit.model} fit: {what}; the TIA rests on "
                           "the constraint, not the data", voi, fit.effective_half_life_h))
    most = float(settings["quality"]["max_extrapolated_fraction"])
    share = fit.extrapolated_fraction
    if share > most:
        fit.reasons.append(f"{100 * share:.0f} % of the TIA extrapolated")
        out.append(Finding("tia_extrapolated", "warn", f"{100 * share:.0f} % of the TIA lies "
                           f"outside the measured {fit.n_points} time points (more than "
                           f"{100 * most:.0f} %)", voi, share))
    if out:
        fit.plausible = False
    return out


def _single(t: float, a: float, voi: str, settings: dict, pharmaceutical: str | None,
            nuclide: str) -> Integration:
    stp = settings["single_time_point"]
    population = population_half_life(voi, pharmaceutical, nuclide,
                                      stp.get("population_half_lives"))
    findings = []
    if stp["method"] == "madsen" and population is not None:
        sd_h = population.effective_half_life_sd_h
        res = kinetics.tia_madsen(t, a, population.effective_half_life_h, sd_h or 0.0)
        sd = res.tia_sd_mbq_h if sd_h else float(stp["relative_sd"]) * res.tia_mbq_h
        half_life = population.effective_half_life_h
        note = f"population effective half-life {half_life:g} h ({population.source})"
    else:
        if stp["method"] == "madsen":
            findings.append(Finding(
                "no_population_half_life", "warn", f"no population effective half-life for "
                f"{voi_class(voi)} with {pharmaceutical or 'this pharmaceutical'}: Hänscheid's "
                "method used instead of Madsen's", voi))
        res = kinetics.tia_hanscheid(t, a)
        sd = float(stp["relative_sd"]) * res.tia_mbq_h
        half_life = t  # the mono-exponential the approximation implies
        note = "TIA = A(t) 2t/ln2"
        if population is not None:
            ratio = t / population.effective_half_life_h
            if not HANSCHEID_WINDOW[0] <= ratio <= HANSCHEID_WINDOW[1]:
                findings.append(Finding(
                    "single_time_point_timing", "warn", f"imaged at {t:g} h = {ratio:.2f} "
                    f"population effective half-lives ({population.effective_half_life_h:g} h); "
                    f"Hänscheid's method is within 10 % only between {HANSCHEID_WINDOW[0]} and "
                    f"{HANSCHEID_WINDOW[1]}", voi, ratio))
    return Integration(res.tia_mbq_h, sd, res.method, res.method, half_life, [t], [1.0],
                       [LN2 / half_life], {"method": res.method, "time_h": t,
                                           "activity_mbq": a, "note": note}, True, findings)


def _exponential_terms(fit: kinetics.TacFit) -> tuple[list[float], list[float]]:
    """The fitted TAC as Σ c_i exp(-a_i t) (for the Lea-Catcheside factor)."""
    p = [float(x) for x in fit.params]
    if fit.model == "mono":
        return [p[0]], [p[1]]
    if fit.model == "bi":
        return [p[0], -p[0]], [p[1], p[2]]
    if fit.model == "tri":
        return [p[0], p[2], -(p[0] + p[2])], [p[1], p[3], p[4]]
    if fit.model == "two_washout":
        return [p[0], p[2]], [p[1], p[3]]
    return [1.0], [LN2 / fit.effective_half_life_h]  # trapezoid: its tail's effective decay
