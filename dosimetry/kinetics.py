"""Time-activity curves (organ or lesion level): fits, model selection and TIA.

Models (time ``t`` in h, activity in MBq):

* ``mono``: ``A(t) = a0 exp(-lw t)``
* ``bi`` (uptake and washout): ``A(t) = a0 (exp(-lw t) - exp(-lu t))``, ``lu > lw``
* ``tri``: ``A(t) = a1 exp(-l1 t) + a2 exp(-l2 t) - (a1 + a2) exp(-l3 t)``
* ``two_washout`` (two washout phases, uptake before the first point):
  ``A(t) = a1 exp(-l1 t) + a2 exp(-l2 t)``, ``l1 <= l2``
* ``trapezoid``: linear uptake from (0, 0) to the first point, trapezoids between points, and
  a tail after the last point, mono-exponential through the last two points (``tail="fit"``)
  or physical decay (``tail="physical"``).

Fitting is weighted non-linear least squares (``scipy.optimize.curve_fit``, trust-region
reflective with bounds) from several data-driven starting values. With ``sigma_mbq`` the
weights are absolute; without, a proportional error model is used (sigma ∝ model value,
re-weighted once with the fitted curve) and the covariance is scaled by the residuals.
Decay constants are bounded below by the physical decay constant when it is given (the data
are not decay-corrected, so biological clearance cannot be negative).

Model selection (NUKFIT-style, Kletting et al., Med Phys 2013;40:102504): candidates with at
least one residual degree of freedom (``n >= k + 1``), fits rejected when a parameter's
coefficient of variation exceeds ``max_cv`` or a parameter correlation exceeds
``max_abs_corr``; the lowest information criterion wins. The criterion is AICc when it is
defined for every candidate (``n >= k + 2``), else AIC for all of them
(:func:`selection_criterion`, the same rule as the voxel fits'): with the standard four time
points the uptake-washout model competes with the mono-exponential (AICc alone would drop it,
and a kidney with a 3 h uptake half-life loses 4 % of its TIA). Fallback when the
mono-exponential has no AICc (two or three points): two points -> mono-exponential through
them (or trapezoid with physical tail when not decreasing); one point -> use the
single-time-point methods :func:`tia_hanscheid` or :func:`tia_madsen`.

TIA (MBq·h) is the analytic integral 0..∞; its standard uncertainty comes from the fit
covariance (delta method) and optionally from a parametric bootstrap. The trapezoid's comes
from a parametric bootstrap of the activities through the whole rule, its fitted tail
included (the tail's rate is clipped at physical decay, which the delta method cannot
follow; EANM 2018 uncertainty guidance, Gear et al.); without ``sigma_mbq`` an error of
``ASSUMED_RELATIVE_SD`` of each activity is assumed and said in ``reasons``.

A fit whose rate sits at a bound (a clearance at physical decay, an uptake at its upper
limit) names it in ``at_bound``: its value is the constraint's, not the data's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

__all__ = [
    "MODELS",
    "TacFit",
    "TacSelection",
    "SingleTimePointTia",
    "model_function",
    "model_integral",
    "validate_tac",
    "fit_tac",
    "select_tac_model",
    "tia_hanscheid",
    "tia_madsen",
    "aicc",
    "aic",
    "selection_criterion",
]

LN2 = math.log(2.0)
#: the trapezoid's logarithmic segments: a fall to at least this fraction of the value before
LOG_DOWN_MIN_RATIO = 0.01
#: relative standard uncertainty assumed for each activity when none is given and the fit
#: cannot estimate one (no degrees of freedom, trapezoid)
ASSUMED_RELATIVE_SD = 0.10
#: parametric bootstrap resamples behind the trapezoid's uncertainty (fixed seed)
TRAPEZOID_RESAMPLES = 400
#: a rate within this relative distance of a bound sits at it
AT_BOUND_RTOL = 1e-4
MODELS = ("mono", "bi", "tri", "two_washout", "trapezoid")
PARAM_NAMES = {
    "mono": ("a0_mbq", "lambda_washout_per_h"),
    "bi": ("a0_mbq", "lambda_washout_per_h", "lambda_uptake_per_h"),
    "tri": ("a1_mbq", "lambda1_per_h", "a2_mbq", "lambda2_per_h", "lambda_uptake_per_h"),
    "two_washout": ("a1_mbq", "lambda1_per_h", "a2_mbq", "lambda2_per_h"),
}


# --------------------------------------------------------------------------- models
def _mono(t, a0, lw):
    return a0 * np.exp(-lw * t)


def _bi(t, a0, lw, lu):
    return a0 * (np.exp(-lw * t) - np.exp(-lu * t))


def _tri(t, a1, l1, a2, l2, l3):
    return a1 * np.exp(-l1 * t) + a2 * np.exp(-l2 * t) - (a1 + a2) * np.exp(-l3 * t)


def _two_washout(t, a1, l1, a2, l2):
    return a1 * np.exp(-l1 * t) + a2 * np.exp(-l2 * t)


_FUNCS: dict[str, Callable[..., np.ndarray]] = {"mono": _mono, "bi": _bi, "tri": _tri,
                                                "two_washout": _two_washout}


def model_function(model: str) -> Callable[..., np.ndarray]:
    """Return ``f(t, *params)`` for a parametric model name."""
    if model not in _FUNCS:
        raise ValueError(f"unknown model {model!r}; expected one of {tuple(_FUNCS)}")
    return _FUNCS[model]


def _cum_exp(lam: float, t_end: float) -> float:
    """∫_0^t_end exp(-lam t) dt (t_end may be inf)."""
    if math.isinf(t_end):
        return 1.0 / lam
    return -math.expm1(-lam * t_end) / lam


def model_integral(model: str, params: np.ndarray, t_end_h: float = math.inf,
                   t_start_h: float = 0.0) -> float:
    """Analytic integral of a parametric model from ``t_start_h`` to ``t_end_h`` (MBq·h)."""
    p = [float(x) for x in params]

    def cum(t: float) -> float:
        if model == "mono":
            return p[0] * _cum_exp(p[1], t)
        if model == "bi":
            return p[0] * (_cum_exp(p[1], t) - _cum_exp(p[2], t))
        if model == "tri":
            return (p[0] * _cum_exp(p[1], t) + p[2] * _cum_exp(p[3], t)
                    - (p[0] + p[2]) * _cum_exp(p[4], t))
        if model == "two_washout":
            return p[0] * _cum_exp(p[1], t) + p[2] * _cum_exp(p[3], t)
        raise ValueError(f"unknown model {model!r}")

    return cum(t_end_h) - (cum(t_start_h) if t_start_h > 0 else 0.0)


# --------------------------------------------------------------------------- results
@dataclass
class TacFit:
    """One fitted time-activity curve.

    Attributes:
        model: model name.
        param_names: names of ``params`` (with units).
        params: fitted parameters.
        param_sd: standard deviations of ``params`` (inf when not estimable).
        covariance: parameter covariance matrix.
        n_points: number of data points; ``wrss``: weighted residual sum of squares.
        aicc: corrected Akaike criterion (``None`` when n < k + 2).
        plausible: passed the NUKFIT-style checks; ``reasons`` says why not.
        tia_mbq_h: time-integrated activity 0..∞ (MBq·h) and ``tia_sd_mbq_h`` its standard
            uncertainty (delta method; ``inf`` when not estimable).
        tia_before_first_mbq_h / tia_measured_mbq_h / tia_after_last_mbq_h: split of the TIA
            into the extrapolated head, the measured span, and the extrapolated tail.
        effective_half_life_h: half-life of the slowest clearance phase.
        tia_bootstrap_sd_mbq_h / tia_bootstrap_ci95_mbq_h: parametric bootstrap results.
    """

    model: str
    param_names: tuple[str, ...]
    params: np.ndarray
    param_sd: np.ndarray
    covariance: np.ndarray
    n_points: int
    wrss: float
    aicc: float | None
    plausible: bool
    reasons: list[str]
    tia_mbq_h: float
    tia_sd_mbq_h: float
    tia_before_first_mbq_h: float
    tia_measured_mbq_h: float
    tia_after_last_mbq_h: float
    effective_half_life_h: float
    tia_bootstrap_sd_mbq_h: float | None = None
    tia_bootstrap_ci95_mbq_h: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        """Number of fitted parameters."""
        return len(self.params)

    @property
    def at_bound(self) -> list[str]:
        """The parameters that sit at a bound of the fit (their values are the bounds')."""
        return list(self.extra.get("at_bound", []))

    @property
    def extrapolated_fraction(self) -> float:
        """Fraction of the TIA outside the measured time span."""
        return (self.tia_before_first_mbq_h + self.tia_after_last_mbq_h) / self.tia_mbq_h

    def predict(self, time_h: np.ndarray) -> np.ndarray:
        """Model activity (MBq) at ``time_h``."""
        t = np.asarray(time_h, dtype=float)
        if self.model == "trapezoid":
            tt, aa, lam = self.extra["time_h"], self.extra["activity_mbq"], self.params[0]
            inside = np.interp(t, np.r_[0.0, tt], np.r_[0.0, aa])
            if self.extra.get("segments") == "log-down":  # exponential where it falls
                k = np.clip(np.searchsorted(tt, t) - 1, 0, len(tt) - 2)
                a0, a1 = aa[k], aa[k + 1]
                falling = (a1 < a0) & (a1 >= LOG_DOWN_MIN_RATIO * a0) & (t >= tt[0])
                frac = (t - tt[k]) / (tt[k + 1] - tt[k])
                expo = a0 * np.power(np.where(falling, a1 / np.where(a0 > 0, a0, 1), 1.0), frac)
                inside = np.where(falling, expo, inside)
            return np.where(t > tt[-1], aa[-1] * np.exp(-lam * (t - tt[-1])), inside)
        return model_function(self.model)(t, *self.params)

    def as_dict(self) -> dict:
        """JSON-friendly summary."""
        return {
            "model": self.model,
            "params": dict(zip(self.param_names, map(float, self.params), strict=False)),
            "param_sd": {n: (float(v) if np.isfinite(v) else None)
                         for n, v in zip(self.param_names, self.param_sd, strict=False)},
            "n_points": self.n_points,
            "wrss": self.wrss,
            "aicc": self.aicc,
            "plausible": self.plausible,
            "reasons": list(self.reasons),
            "tia_mbq_h": self.tia_mbq_h,
            "tia_sd_mbq_h": self.tia_sd_mbq_h if math.isfinite(self.tia_sd_mbq_h) else None,
            "tia_before_first_mbq_h": self.tia_before_first_mbq_h,
            "tia_measured_mbq_h": self.tia_measured_mbq_h,
            "tia_after_last_mbq_h": self.tia_after_last_mbq_h,
            "effective_half_life_h": self.effective_half_life_h,
            "tia_bootstrap_sd_mbq_h": self.tia_bootstrap_sd_mbq_h,
            "tia_bootstrap_ci95_mbq_h": self.tia_bootstrap_ci95_mbq_h,
            "at_bound": self.at_bound,
            "criterion": self.extra.get("criterion"),
        }


@dataclass
class TacSelection:
    """Result of model selection: the chosen fit, every fit tried, and the rule applied."""

    chosen: TacFit
    fits: list[TacFit]
    rule: str


@dataclass
class SingleTimePointTia:
    """Single-time-point TIA estimate (MBq·h) with the method and its assumptions."""

    method: str
    tia_mbq_h: float
    tia_sd_mbq_h: float
    time_h: float
    effective_half_life_h: float | None
    note: str


# --------------------------------------------------------------------------- validation
def validate_tac(time_h, activity_mbq, sigma_mbq=None) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray | None]:
    """Check and convert TAC inputs.

    Raises:
        ValueError: mismatched lengths, NaN, negative or non-increasing times, negative
            activities, non-positive sigma.
    """
    t = np.asarray(time_h, dtype=float).ravel()
    a = np.asarray(activity_mbq, dtype=float).ravel()
    if t.size != a.size:
        raise ValueError(f"time_h has {t.size} values but activity_mbq has {a.size}")
    if t.size == 0:
        raise ValueError("empty time-activity curve")
    if not np.all(np.isfinite(t)):
        raise ValueError("time_h contains NaN or infinite values")
    if np.any(t < 0):
        raise ValueError("time_h must be non-negative (hours after administration)")
    if np.any(np.diff(t) <= 0):
        raise ValueError("time_h must be strictly increasing")
    if not np.all(np.isfinite(a)):
        raise ValueError("activity_mbq contains NaN or infinite values")
    if np.any(a < 0):
        raise ValueError("activity_mbq must be non-negative")
    if not np.any(a > 0):
        raise ValueError("activity_mbq is zero everywhere")
    s = None
    if sigma_mbq is not None:
        s = np.asarray(sigma_mbq, dtype=float).ravel()
        if s.size != t.size:
            raise ValueError(f"sigma_mbq has {s.size} values, expected {t.size}")
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError("sigma_mbq must be finite and > 0")
    return t, a, s


def aicc(n: int, k: int, wrss: float, absolute_sigma: bool) -> float | None:
    """Corrected AIC; ``None`` when ``n < k + 2``.

    With absolute sigma the log-likelihood term is chi-square (``wrss``), otherwise
    ``n ln(wrss / n)``; ``k`` is the number of fitted model parameters.
    """
    if n - k - 1 <= 0:
        return None
    base = wrss if absolute_sigma else n * math.log(max(wrss, 1e-300) / n)
    return base + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def aic(n: int, k: int, wrss: float, absolute_sigma: bool) -> float:
    """Akaike's criterion (defined for any ``n``; same likelihood term as :func:`aicc`)."""
    base = wrss if absolute_sigma else n * math.log(max(wrss, 1e-300) / n)
    return base + 2 * k


def selection_criterion(n: int, ks) -> str:
    """The criterion that ranks candidates with ``ks`` parameters on ``n`` points: ``aicc``
    when it is defined for every one of them (``n >= k + 2``), else ``aic`` for all (one
    criterion for every candidate; organ and voxel fits share this rule)."""
    return "aicc" if all(n >= k + 2 for k in ks) else "aic"


# --------------------------------------------------------------------------- starts
def _loglin(t: np.ndarray, a: np.ndarray) -> tuple[float, float]:
    """Log-linear fit on positive points: returns (a0, lambda)."""
    m = a > 0
    if m.sum() < 2:
        return float(a.max()), LN2 / max(t[-1], 1.0)
    slope, icpt = np.polyfit(t[m], np.log(a[m]), 1)
    return float(math.exp(icpt)), float(-slope)


def _starts(model: str, t: np.ndarray, a: np.ndarray, lmin: float, lmax: float) -> list:
    tail = slice(max(len(t) - 3, 0), None) if len(t) >= 3 else slice(None)
    if np.argmax(a) < len(a) - 1:
        tail = slice(max(int(np.argmax(a)), len(t) - 3), None)
    a0, lw = _loglin(t[tail], a[tail])
    lw = float(np.clip(lw, lmin * 1.05 + 1e-9, lmax / 10))
    a0 = max(a0, float(a.max()))
    if model == "mono":
        return [[a0, lw]]
    lus = [f * lw for f in (2.0, 5.0, 20.0, 100.0)] + [LN2 / max(0.3 * t[0], 1e-3)]
    lus = sorted({float(np.clip(x, lw * 1.01, lmax * 0.99)) for x in lus})
    if model == "bi":
        return [[a0 * 1.2, lw, lu] for lu in lus]
    if model == "two_washout":  # the slow phase through the tail, the fast one the rest
        slow0 = a0 * math.exp(-lw * t[0])
        fast0 = max(float(a[0]) - slow0, 0.05 * float(a[0]))
        return [[a0, lw, fast0 * math.exp(min(lf * t[0], 50.0)), lf]
                for lf in lus if lf * t[0] < 50.0] or [[a0, lw, fast0, lus[0]]]
    starts = []
    for lu in lus:
        for f in (0.5, 0.8):
            l2 = float(np.clip(lw * 4, lw * 1.01, lu * 0.99))
            starts.append([a0 * f, lw, a0 * (1 - f) * 2, l2, lu * 1.5 if lu * 1.5 < lmax else lu])
    return starts


def _bounds(model: str, a: np.ndarray, lmin: float, lmax: float) -> tuple[list, list]:
    amax = 100.0 * float(a.max())
    if model == "mono":
        return [0.0, lmin], [amax, lmax]
    if model == "bi":
        return [0.0, lmin, lmin], [amax, lmax, lmax]
    if model == "two_washout":  # a fast phase may start far above the first point
        return [0.0, lmin, 0.0, lmin], [1e6 * amax, lmax, 1e6 * amax, lmax]
    return [0.0, lmin, 0.0, lmin, lmin], [amax, lmax, amax, lmax, lmax]


def _eff_half_life(model: str, p: np.ndarray) -> float:
    if model in ("mono", "bi"):
        return LN2 / p[1]
    if model in ("tri", "two_washout"):
        return LN2 / min(p[1], p[3])
    return LN2 / p[0]


def _num_grad(fun: Callable[[np.ndarray], float], p: np.ndarray) -> np.ndarray:
    g = np.zeros_like(p)
    for i in range(len(p)):
        h = 1e-6 * max(abs(p[i]), 1e-8)
        pp, pm = p.copy(), p.copy()
        pp[i] += h
        pm[i] -= h
        g[i] = (fun(pp) - fun(pm)) / (2 * h)
    return g


# --------------------------------------------------------------------------- fitting
def _fit_param(model: str, t, a, s, lmin, lmax, max_cv, max_abs_corr, p_start=None):
    f = model_function(model)
    names = PARAM_NAMES[model]
    k = len(names)
    if t.size < k:
        raise ValueError(
            f"model {model!r} has {k} parameters but only {t.size} points were given"
        )
    lo, hi = _bounds(model, a, lmin, lmax)
    starts = [p_start] if p_start is not None else _starts(model, t, a, lmin, lmax)
    absolute = s is not None
    floor = 1e-3 * float(a.max())
    best = None
    for p0 in starts:
        p0 = np.clip(np.asarray(p0, float), np.asarray(lo) + 1e-12, np.asarray(hi) - 1e-12)
        sig = s if absolute else np.maximum(a, floor)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 in a blind covariance
                popt, pcov = curve_fit(f, t, a, p0=p0, sigma=sig, absolute_sigma=absolute,
                                       bounds=(lo, hi), method="trf", maxfev=5000)
                if not absolute:  # re-weight with the model (proportional errors)
                    sig = np.maximum(f(t, *popt), floor)
                    popt, pcov = curve_fit(f, t, a, p0=popt, sigma=sig, absolute_sigma=False,
                                           bounds=(lo, hi), method="trf", maxfev=5000)
        except (RuntimeError, ValueError):
            continue
        wrss = float(np.sum(((a - f(t, *popt)) / sig) ** 2))
        if best is None or wrss < best[2] * (1 - 1e-9):
            best = (popt, pcov, wrss, sig)
    if best is None:
        raise RuntimeError(f"{model} fit did not converge")
    popt, pcov, wrss, sig = best
    if model in ("tri", "two_washout") and popt[1] > popt[3]:  # order the washout phases
        order = [2, 3, 0, 1, 4][:len(popt)]
        popt = popt[order]
        pcov = pcov[np.ix_(order, order)]
    n = t.size
    reasons: list[str] = []
    dof = n - k
    if dof == 0:
        # Exactly determined: no residual scale; covariance from the weights alone.
        if not absolute:
            reasons.append("no degrees of freedom: uncertainty from an assumed 10 % error")
            sig = 0.10 * np.maximum(f(t, *popt), floor)
        jac = np.column_stack([
            _num_grad(lambda q, ti=ti: float(f(np.array([ti]), *q)[0]), popt) for ti in t
        ]).T / sig[:, None]
        try:
            pcov = np.linalg.inv(jac.T @ jac)
        except np.linalg.LinAlgError:
            pcov = np.full((k, k), np.inf)
    # a parameter the curve does not depend on (an uptake too fast for the first point)
    # gets no variance from curve_fit's pseudo-inverse: not estimable, not exact
    scale = wrss / max(n - k, 1) if not absolute and n > k else 1.0  # curve_fit's s²
    blind = np.diag(pcov) <= scale * (1e-9 * np.abs(popt)) ** 2
    if np.any(blind) and wrss > 0:
        pcov = pcov.copy()
        pcov[blind, :] = np.inf
        pcov[:, blind] = np.inf
    if not np.all(np.isfinite(pcov)):
        pcov = np.where(np.isfinite(pcov), pcov, np.inf)
        reasons.append("covariance not estimable (parameters not identifiable)")
    sd = np.sqrt(np.clip(np.diag(pcov), 0, None))
    sd = np.where(np.isfinite(sd), sd, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(popt > 0, sd / np.abs(popt), np.inf)
    if np.any(cv > max_cv):
        bad = [nm for nm, c in zip(names, cv, strict=False) if c > max_cv]
        reasons.append(f"coefficient of variation > {max_cv:.0%} for {', '.join(bad)}")
    if np.all(np.isfinite(pcov)) and np.all(sd > 0):
        corr = pcov / np.outer(sd, sd)
        off = np.abs(corr[~np.eye(k, dtype=bool)])
        if off.size and off.max() > max_abs_corr:
            reasons.append(f"parameter correlation {off.max():.3f} > {max_abs_corr}")
    tia = model_integral(model, popt)
    g = _num_grad(lambda q: model_integral(model, q), popt)
    var = float(g @ pcov @ g) if np.all(np.isfinite(pcov)) else math.inf
    tia_sd = math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.inf
    head = model_integral(model, popt, t_end_h=float(t[0]))
    meas = model_integral(model, popt, t_end_h=float(t[-1]), t_start_h=float(t[0]))
    if not (math.isfinite(tia) and tia > 0):
        raise RuntimeError(f"{model} fit gave a non-positive TIA")
    at_bound = [nm for nm, v, low, high in zip(names, popt, lo, hi, strict=True)
                if nm.startswith("lambda") and (abs(v - low) <= AT_BOUND_RTOL * low
                                                or abs(v - high) <= AT_BOUND_RTOL * high)]
    return TacFit(
        model=model, param_names=names, params=popt, param_sd=sd, covariance=pcov,
        n_points=n, wrss=wrss, aicc=aicc(n, k, wrss, absolute), plausible=not reasons,
        reasons=reasons, tia_mbq_h=tia, tia_sd_mbq_h=tia_sd, tia_before_first_mbq_h=head,
        tia_measured_mbq_h=meas, tia_after_last_mbq_h=tia - head - meas,
        effective_half_life_h=_eff_half_life(model, popt),
        extra={"sigma_used": sig, "absolute_sigma": absolute, "at_bound": at_bound},
    )


def _segment_areas(t: np.ndarray, act: np.ndarray, segments: str) -> np.ndarray:
    """Area of each interval between points: linear, or (``log-down``) exponential where the
    curve falls (exact for a mono-exponential washout; the linear rule overestimates it)."""
    lin = 0.5 * (act[1:] + act[:-1]) * np.diff(t)
    if segments == "linear":
        return lin
    a0, a1 = act[:-1], act[1:]
    # within two decades: a curve that falls to about nothing (a value clipped at zero) is
    # no exponential to follow, and its logarithm would make the area's uncertainty explode
    down = (a1 < a0) & (a1 >= LOG_DOWN_MIN_RATIO * a0)
    ratio = np.where(down, a0 / np.where(a1 > 0, a1, 1.0), 1.0)
    log = np.where(down, (a0 - a1) * np.diff(t) / np.log(np.where(down, ratio, 2.0)), lin)
    return np.where(down, log, lin)


def _trapezoid(t, a, s, tail: str, decay_constant_per_h: float | None,
               segments: str = "linear", spread: bool = True) -> TacFit:
    """The trapezoid and its tail; ``spread``: its uncertainty too (a bootstrap of its own,
    not needed for a resample of an outer bootstrap)."""
    def parts(act: np.ndarray) -> tuple[float, float, float, float]:
        lam = None
        if tail == "fit" and t.size >= 2 and act[-1] > 0 and act[-2] > act[-1]:
            lam = math.log(act[-2] / act[-1]) / (t[-1] - t[-2])
            if decay_constant_per_h is not None:
                lam = max(lam, decay_constant_per_h)
        if lam is None:
            if decay_constant_per_h is None:
                raise ValueError(
                    "trapezoid tail: the last points do not decrease; give the nuclide's "
                    "decay constant for a physical-decay tail"
                )
            lam = decay_constant_per_h
        head = 0.5 * act[0] * t[0]
        meas = float(np.sum(_segment_areas(t, act, segments)))
        return head, meas, act[-1] / lam, lam

    head, meas, after, lam = parts(a)
    reasons: list[str] = []
    assumed = s is None
    if assumed:
        s = ASSUMED_RELATIVE_SD * a
        reasons.append(f"no sigma given: uncertainty from an assumed {ASSUMED_RELATIVE_SD:.0%} "
                       "error of each activity")
    tia_sd, lam_sd = _trapezoid_spread(a, np.asarray(s, float), parts) if spread \
        else (math.nan, math.nan)
    tia = head + meas + after
    at_decay = tail == "fit" and decay_constant_per_h is not None and \
        abs(lam - decay_constant_per_h) <= AT_BOUND_RTOL * decay_constant_per_h
    return TacFit(
        model="trapezoid", param_names=("lambda_tail_per_h",), params=np.array([lam]),
        param_sd=np.array([lam_sd]), covariance=np.array([[lam_sd**2]]),
        n_points=t.size, wrss=0.0, aicc=None, plausible=True, reasons=reasons,
        tia_mbq_h=tia, tia_sd_mbq_h=tia_sd, tia_before_first_mbq_h=head,
        tia_measured_mbq_h=meas, tia_after_last_mbq_h=after, effective_half_life_h=LN2 / lam,
        extra={"time_h": t, "activity_mbq": a, "tail": tail, "segments": segments,
               "sd_assumed": assumed, "at_bound": ["lambda_tail_per_h"] if at_decay else []},
    )


def _trapezoid_spread(a: np.ndarray, s: np.ndarray,
                      parts: Callable[[np.ndarray], tuple[float, float, float, float]]
                      ) -> tuple[float, float]:
    """Standard deviations of the trapezoid's TIA and tail rate over a parametric bootstrap
    of the activities (normal, clipped at zero; a fixed seed, so the same curve always gives
    the same numbers)."""
    rng = np.random.default_rng(20180101)
    draws = np.clip(a + rng.normal(0.0, 1.0, (TRAPEZOID_RESAMPLES, a.size)) * s, 0.0, None)
    tias, lams = [], []
    for q in draws:
        try:
            head, meas, after, lam = parts(q)
        except ValueError:  # a draw whose tail cannot be followed
            continue
        tias.append(head + meas + after)
        lams.append(lam)
    if len(tias) < 10:
        return math.inf, math.inf
    return float(np.std(tias, ddof=1)), float(np.std(lams, ddof=1))


def _bootstrap(fit: TacFit, t, a, s, n_boot: int, seed: int, lmin, lmax) -> None:
    rng = np.random.default_rng(seed)
    f_t = fit.predict(t)
    if s is not None:
        sig = s
    elif fit.model == "trapezoid":  # no residuals: the error its own uncertainty assumed
        sig = ASSUMED_RELATIVE_SD * a
    else:
        scale = math.sqrt(fit.wrss / max(t.size - fit.n_params, 1))
        sig = scale * fit.extra["sigma_used"]
    tias = []
    for _ in range(n_boot):
        y = np.clip(f_t + rng.normal(0.0, sig), 0.0, None)
        if not np.any(y > 0):
            continue
        try:
            if fit.model == "trapezoid":
                b = _trapezoid(t, y, s, fit.extra["tail"], lmin if lmin > 1e-9 else None,
                               fit.extra["segments"], spread=False)
            else:
                b = _fit_param(fit.model, t, y, s, lmin, lmax, np.inf, 1.0, p_start=fit.params)
        except (RuntimeError, ValueError):
            continue
        tias.append(b.tia_mbq_h)
    if len(tias) < max(10, n_boot // 2):
        fit.reasons.append("bootstrap failed for most resamples")
        return
    arr = np.asarray(tias)
    fit.tia_bootstrap_sd_mbq_h = float(arr.std(ddof=1))
    fit.tia_bootstrap_ci95_mbq_h = (float(np.percentile(arr, 2.5)),
                                    float(np.percentile(arr, 97.5)))


def fit_tac(time_h, activity_mbq, model: str = "mono", *, sigma_mbq=None,
            decay_constant_per_h: float | None = None, tail: str = "fit",
            segments: str = "linear", max_cv: float = 0.5, max_abs_corr: float = 0.99,
            bootstrap: int = 0, seed: int = 0) -> TacFit:
    """Fit one model to a time-activity curve and integrate it.

    Args:
        time_h: acquisition times after administration (h), strictly increasing.
        activity_mbq: activities (MBq), not decay-corrected.
        model: ``mono``, ``bi``, ``tri`` or ``trapezoid``.
        sigma_mbq: absolute standard deviations of the activities (optional).
        decay_constant_per_h: physical decay constant; lower bound of the clearance rates
            and the trapezoid's physical tail.
        tail: trapezoid tail, ``fit`` (mono-exponential through the last two points) or
            ``physical``.
        segments: trapezoid between the points, ``linear``, or ``log-down`` (exponential
            where the curve falls: linear up, logarithmic down).
        max_cv, max_abs_corr: plausibility thresholds.
        bootstrap: number of parametric bootstrap resamples (0: none).
        seed: bootstrap seed.

    Raises:
        ValueError: bad input or fewer points than parameters.
    """
    t, a, s = validate_tac(time_h, activity_mbq, sigma_mbq)
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    if decay_constant_per_h is not None and not (decay_constant_per_h > 0):
        raise ValueError("decay_constant_per_h must be > 0")
    if tail not in ("fit", "physical"):
        raise ValueError("tail must be 'fit' or 'physical'")
    if segments not in ("linear", "log-down"):
        raise ValueError("segments must be 'linear' or 'log-down'")
    lmin = decay_constant_per_h if decay_constant_per_h is not None else 1e-6
    lmax = max(50.0 / max(t[0], 0.05), 100 * lmin)
    if model == "trapezoid":
        fit = _trapezoid(t, a, s, tail, decay_constant_per_h, segments)
    else:
        fit = _fit_param(model, t, a, s, lmin, lmax, max_cv, max_abs_corr)
    if bootstrap:
        _bootstrap(fit, t, a, s, int(bootstrap), seed, lmin, lmax)
    return fit


def select_tac_model(time_h, activity_mbq,
                     models: tuple[str, ...] = ("mono", "bi", "tri", "two_washout"), *,
                     sigma_mbq=None, decay_constant_per_h: float | None = None,
                     max_cv: float = 0.5, max_abs_corr: float = 0.99, bootstrap: int = 0,
                     seed: int = 0) -> TacSelection:
    """Fit candidate models and pick one by AICc (AIC) among plausible fits (NUKFIT-style).

    Candidates are the models with ``n >= k + 1`` points; they are ranked by AICc when it is
    defined for all of them, else by AIC (:func:`selection_criterion`). Rules, in order:
    (1) plausible fits -> the lowest criterion; (2) no plausible fit -> the lowest criterion
    among converged fits, flagged; (3) too few points for the mono-exponential's AICc (two or
    three) -> mono through the points (n = 2), fitted and plausible (n = 3), or the trapezoid.
    The criterion's values are in each fit's ``extra["criterion"]``.

    Raises:
        ValueError: bad input, or a single point (use single-time-point methods).
    """
    t, a, s = validate_tac(time_h, activity_mbq, sigma_mbq)
    if t.size < 2:
        raise ValueError(
            "one time point: fewer points than parameters; use tia_hanscheid or tia_madsen"
        )
    for m in models:
        if m not in MODELS:
            raise ValueError(f"unknown model {m!r}; expected one of {MODELS}")
    kw = dict(sigma_mbq=s, decay_constant_per_h=decay_constant_per_h, max_cv=max_cv,
              max_abs_corr=max_abs_corr)
    candidates = [m for m in models if m != "trapezoid" and t.size >= len(PARAM_NAMES[m]) + 1]
    kind = selection_criterion(t.size, [len(PARAM_NAMES[m]) for m in candidates])
    fits: list[TacFit] = []
    if t.size >= len(PARAM_NAMES["mono"]) + 2:
        for m in candidates:
            try:
                fit = fit_tac(t, a, m, **kw)
            except RuntimeError:
                continue
            value = fit.aicc if kind == "aicc" else aic(fit.n_points, fit.n_params, fit.wrss,
                                                         s is not None)
            fit.extra["criterion"] = {kind: value}
            fits.append(fit)
    label = kind.upper().replace("AICC", "AICc")
    good = [f for f in fits if f.plausible]
    if good:
        chosen = min(good, key=lambda f: f.extra["criterion"][kind])
        rule = f"lowest {label} among plausible fits"
    elif fits:
        chosen = min(fits, key=lambda f: f.extra["criterion"][kind])
        rule = f"no plausible fit; lowest {label} among converged fits (check reasons)"
    else:
        chosen, rule = _few_points(t, a, s, kw, decay_constant_per_h)
        fits.append(chosen)
    if bootstrap:
        lmin = decay_constant_per_h if decay_constant_per_h is not None else 1e-6
        lmax = max(50.0 / max(t[0], 0.05), 100 * lmin)
        _bootstrap(chosen, t, a, s, int(bootstrap), seed, lmin, lmax)
    return TacSelection(chosen=chosen, fits=fits, rule=rule)


def _few_points(t, a, s, kw: dict, decay_constant_per_h: float | None) -> tuple[TacFit, str]:
    """Too few points for AICc: the mono-exponential when the curve falls from its first
    point (through two points; fitted, and plausible, through three), else the trapezoid,
    logarithmic where the curve falls."""
    falling = a[1] < a[0] and a[-1] > 0
    if falling:
        try:
            mono = fit_tac(t, a, "mono", **kw)
            if t.size == 2:
                return mono, ("fallback: too few points for AICc; mono-exponential through "
                              "the points")
            if mono.plausible:
                return mono, "too few points for AICc; mono-exponential fit (plausible)"
        except RuntimeError:
            pass
    trapezoid = fit_tac(t, a, "trapezoid", sigma_mbq=s, decay_constant_per_h=decay_constant_per_h,
                        segments="log-down")
    return trapezoid, ("fallback: too few points for AICc; trapezoid (linear up, logarithmic "
                       "down) with a fitted tail")


# --------------------------------------------------------------------------- single time point
def _check_stp(time_h: float, activity_mbq: float) -> None:
    if not (np.isfinite(time_h) and time_h > 0):
        raise ValueError("time_h must be finite and > 0")
    if not (np.isfinite(activity_mbq) and activity_mbq >= 0):
        raise ValueError("activity_mbq must be finite and >= 0")


def tia_hanscheid(time_h: float, activity_mbq: float) -> SingleTimePointTia:
    """Hänscheid et al. (JNM 2018;59:75): TIA ≈ A(t) · 2t / ln2.

    Best when the measurement time is close to 1.5 effective half-lives (error < 10 %
    for t between 0.75 and 2.5 T_eff, mono-exponential kinetics assumed).
    """
    _check_stp(time_h, activity_mbq)
    return SingleTimePointTia("hanscheid2018", activity_mbq * 2.0 * time_h / LN2, 0.0,
                              time_h, None, "assumes mono-exponential, t ≈ 1.5 T_eff")


def tia_madsen(time_h: float, activity_mbq: float, effective_half_life_h: float,
               effective_half_life_sd_h: float = 0.0) -> SingleTimePointTia:
    """Madsen et al. (Med Phys 2018;45:2318): TIA = A(t) e^{λt} / λ with a population T_eff.

    The standard uncertainty propagates ``effective_half_life_sd_h`` (first order).
    """
    _check_stp(time_h, activity_mbq)
    if not (np.isfinite(effective_half_life_h) and effective_half_life_h > 0):
        raise ValueError("effective_half_life_h must be finite and > 0")
    if effective_half_life_sd_h < 0:
        raise ValueError("effective_half_life_sd_h must be >= 0")
    lam = LN2 / effective_half_life_h
    tia = activity_mbq * math.exp(lam * time_h) / lam
    # d tia / d T = tia * (1/T - lam t / T)  (since lam = ln2/T)
    dtia = tia * (1.0 - lam * time_h) / effective_half_life_h
    return SingleTimePointTia("madsen2018", tia, abs(dtia) * effective_half_life_sd_h, time_h,
                              effective_half_life_h, "population effective half-life")
