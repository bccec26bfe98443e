"""Voxel-level kinetics: TIA maps from serial activity maps, all voxels fitted at once.

Every voxel's curve is fitted simultaneously (torch): the mono-exponential by variable
projection (exact per voxel: grid, then golden section over the washout rate, which is at
most ln(4)/t1), the bi-exponential by a batched Levenberg-Marquardt, with positivity/ordering
built into the parameters::

    mono: A = a e^{-λw t},              a = e^{θ0}, λw = λmin + e^{θ1}
    bi:   A = a (e^{-λw t} - e^{-λu t}), λu = λw + e^{θ2}

Weights are Poisson-like (1/max(A, floor)) or uniform. Per-voxel model choice (``auto``) by
the organ fits' rule (:func:`kinetics.selection_criterion`): the models with a residual
degree of freedom, AICc when ``n >= k + 2`` for both, else AIC for both (four time points),
where a bi fit must also pass the plausibility check (coefficients of variation). With one
residual degree of freedom a voxel's own residual cannot judge a fit that follows the noise
of one point, so both use the noise of the weights' model with one gain pooled over the
voxels (:func:`_choose_bi`). Before, mono was ranked by AICc and bi by plain AIC at four
points, which labelled every voxel bi (TIA −1.5 % on mono-exponential voxels).
Voxels whose summed activity is below ``min_activity_mbq`` (or whose fits fail) can take
the organ's kinetics scaled to the voxel (PyTheranostics approach):
``TIA_v = TIA_organ × Σ_t A_v(t) / Σ_t A_organ(t)`` (:func:`tia_map_organ_scaled`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from theralake.dosimetry import kinetics

__all__ = ["VoxelTiaResult", "fit_voxel_tacs", "tia_map_organ_scaled"]

MODEL_CODES = {"mono": 0, "bi": 1, "organ": 2, "none": -1}


@dataclass
class VoxelTiaResult:
    """TIA map (input units × h), chosen model code per voxel, and fitted parameters.

    ``model_map``: 0 mono, 1 bi, 2 organ-scaled, -1 zero voxel. ``lambda_eff_map``: the
    washout rate (1/h) of the chosen model (0 where not fitted).
    """

    tia_map: np.ndarray
    model_map: np.ndarray
    lambda_eff_map: np.ndarray
    params: dict[str, np.ndarray]


def _validate(time_h, maps) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(time_h, dtype=float).ravel()
    if t.size < 2:
        raise ValueError("at least two time points are needed for voxel fits")
    if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(np.diff(t) <= 0):
        raise ValueError("time_h must be finite, non-negative and strictly increasing")
    if isinstance(maps, (list, tuple)):
        shapes = {np.shape(m) for m in maps}
        if len(shapes) != 1:
            raise ValueError(f"activity maps have mismatched shapes: {sorted(shapes)}")
        a = np.stack([np.asarray(m, dtype=float) for m in maps])
    else:
        a = np.asarray(maps, dtype=float)
    if a.shape[0] != t.size:
        raise ValueError(f"{a.shape[0]} maps but {t.size} time points")
    if not np.all(np.isfinite(a)):
        raise ValueError("activity maps contain NaN or infinite values")
    if np.any(a < 0):
        raise ValueError("activity maps contain negative values")
    return t, a


def _model(model: str, th: list[torch.Tensor], t: torch.Tensor, lmin: float):
    """Return A (N,T) and the Jacobian columns [(N,T)] w.r.t. the log-parameters."""
    ea = torch.exp(th[0])[:, None]
    elw = torch.exp(th[1])[:, None]
    lw = lmin + elw
    ew = torch.exp(-lw * t)
    if model == "mono":
        f = ea * ew
        return f, [f, -f * t * elw]
    elu = torch.exp(th[2])[:, None]
    eu = torch.exp(-(lw + elu) * t)
    f = ea * (ew - eu)
    te = ea * t
    return f, [f, te * (eu - ew) * elw, te * eu * elu]


def _solve_small(h: dict, g: list[torch.Tensor]) -> list[torch.Tensor]:
    """Solve batched symmetric 2x2 or 3x3 systems by Cramer's rule (contiguous tensors)."""
    if len(g) == 2:
        a, b, d = h[0, 0], h[0, 1], h[1, 1]
        det = a * d - b * b
        return [(g[0] * d - b * g[1]) / det, (a * g[1] - b * g[0]) / det]
    cof, det = _cofactors(h)
    return [sum(cof[min(r, q), max(r, q)] * g[q] for q in range(3)) / det for r in range(3)]


def _cofactors(h: dict) -> tuple[dict, torch.Tensor]:
    """Cofactors (upper triangle) and determinant of batched symmetric 3x3 matrices."""
    a, b, c, e, f, i = h[0, 0], h[0, 1], h[0, 2], h[1, 1], h[1, 2], h[2, 2]
    cof = {(0, 0): e * i - f * f, (0, 1): c * f - b * i, (0, 2): b * f - c * e,
           (1, 1): a * i - c * c, (1, 2): b * c - a * f, (2, 2): a * e - b * b}
    return cof, a * cof[0, 0] + b * cof[0, 1] + c * cof[0, 2]


def _lm(model: str, th0: torch.Tensor, t: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
        lmin: float, n_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    th = [th0[:, i].contiguous() for i in range(th0.shape[1])]
    p = len(th)
    lam = torch.full((th0.shape[0],), 1e-2, dtype=th0.dtype)
    f, j = _model(model, th, t, lmin)
    cost = (w * (y - f) ** 2).sum(1)
    for _ in range(n_iter):
        r = w * (y - f)
        wj = [w * jj for jj in j]
        h = {(a, b): (wj[a] * j[b]).sum(1) for a in range(p) for b in range(a, p)}
        for a in range(p):
            h[a, a] = h[a, a] * (1 + lam) + 1e-12
        g = [(jj * r).sum(1) for jj in j]
        step = _solve_small(h, g)
        th_new = [torch.clamp(x + torch.nan_to_num(s, nan=0.0).clamp(-3.0, 3.0), -30.0, 30.0)
                  for x, s in zip(th, step, strict=False)]
        f_new, j_new = _model(model, th_new, t, lmin)
        cost_new = (w * (y - f_new) ** 2).sum(1)
        ok = torch.isfinite(cost_new) & (cost_new < cost)
        okc = ok[:, None]
        th = [torch.where(ok, a, b) for a, b in zip(th_new, th, strict=False)]
        f = torch.where(okc, f_new, f)
        j = [torch.where(okc, a, b) for a, b in zip(j_new, j, strict=False)]
        cost = torch.where(ok, cost_new, cost)
        lam = torch.where(ok, lam / 3.0, lam * 4.0).clamp(1e-9, 1e9)
    return torch.stack(th, 1), cost


#: the lowest s = log(λw - λmin) (1/h) searched, the coarse grid that brackets the global
#: optimum, and the golden-section steps within the bracket (bracket width × 0.618^n)
_S_LOW, _S_GRID, _GOLDEN_STEPS = -21.0, 32, 24
#: the fastest mono-exponential washout: the curve extrapolated to t = 0 is at most this
#: many times the first measurement (λw <= ln(4)/t1: with a first scan at 4 h, T½ >= 2 h);
#: a voxel seen at the first time point only has no washout rate of its own
MAX_BACK_EXTRAPOLATION = 4.0


def _mono_profile(t: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lmin: float,
                  lmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mono-exponential least squares, exact per voxel (variable projection).

    For a given washout rate the best amplitude is linear, ``a = Σwye / Σwe²``, and the cost
    ``Σwy² - (Σwye)² / Σwe²``: the search maximises ``(Σwye)² / Σwe²`` (no cancellation in
    float32) over ``s = log(λw - λmin)``, λw <= ``lmax``: a coarse grid brackets the global
    maximum (the cost can have two minima), golden section refines it. Returns ``[log a, s]``
    and the cost.
    """
    def explained(s: torch.Tensor) -> torch.Tensor:
        e = torch.exp(-(lmin + torch.exp(s))[:, None] * t)
        we = w * e
        num = (we * y).sum(1)
        # a washout so fast that e underflows explains nothing (not 0/0)
        return torch.nan_to_num(num * num / (we * e).sum(1), nan=0.0, posinf=0.0)

    s_high = math.log(max(lmax - lmin, 1e-6))
    grid = torch.linspace(min(_S_LOW, s_high - 1.0), s_high, _S_GRID, dtype=y.dtype)
    best = torch.stack([explained(torch.full((y.shape[0],), float(g), dtype=y.dtype))
                        for g in grid], 1).argmax(1)
    step = float(grid[1] - grid[0])
    lo = torch.clamp(grid[best] - step, min=float(grid[0]))
    hi = torch.clamp(grid[best] + step, max=s_high)
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fc, fd = explained(c), explained(d)
    for _ in range(_GOLDEN_STEPS):
        left = fc > fd  # the maximum lies in [lo, d]
        hi, lo = torch.where(left, d, hi), torch.where(left, lo, c)
        new = torch.where(left, hi - golden * (hi - lo), lo + golden * (hi - lo))
        f_new = explained(new)
        c, d = torch.where(left, new, d), torch.where(left, c, new)
        fc, fd = torch.where(left, f_new, fd), torch.where(left, fc, f_new)
    s = (lo + hi) / 2
    e = torch.exp(-(lmin + torch.exp(s))[:, None] * t)
    amp = (w * e * y).sum(1) / (w * e * e).sum(1)
    cost = (w * (y - amp[:, None] * e) ** 2).sum(1)
    return torch.stack([torch.log(torch.clamp(amp, min=1e-30)), s], 1), cost


#: the median of a chi-square variable with one degree of freedom
CHI2_1_MEDIAN = 0.4549364


def _choose_bi(mono_cost: torch.Tensor, bi: tuple[torch.Tensor, torch.Tensor], t: torch.Tensor,
               yn: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, weighting: str,
               lmin: float, max_cv: float) -> torch.Tensor:
    """Per voxel: whether the bi-exponential beats the mono-exponential by the organ fits'
    rule, AIC among plausible fits, with the noise known instead of each voxel's own residual
    (one residual degree of freedom at four time points: a bi fit can follow the noise of one
    point, and its own residual then says it is exact).

    The noise is the weights' model with one gain for all voxels (Poisson: variance ∝ A;
    uniform: constant), the gain the median of the bi fits' residuals (bi nests mono, so they
    are honest for both). A voxel takes bi where AIC with that variance prefers it
    (``Δχ² > 2``) and each bi parameter's coefficient of variation is at most ``max_cv``.
    """
    th, bi_cost = bi
    n = t.shape[1]
    per_scale = scale[:, 0] if weighting == "poisson" else scale[:, 0] ** 2
    gain = torch.median(bi_cost * per_scale) / (n - 3) / CHI2_1_MEDIAN
    var = torch.clamp(gain / per_scale, min=1e-30)  # each voxel's noise in normalised units
    better = (mono_cost - bi_cost) / var > 2.0
    _, j = _model("bi", [th[:, i].contiguous() for i in range(3)], t, lmin)
    h = {(a, b): (w * j[a] * j[b]).sum(1) for a in range(3) for b in range(a, 3)}
    cof, det = _cofactors(h)
    k = var / det  # covariance of the log-parameters = k × cofactors
    elw, elu = torch.exp(th[:, 1]), torch.exp(th[:, 2])
    lw = lmin + elw
    cv2 = torch.stack([k * cof[0, 0], k * cof[1, 1] * elw**2 / lw**2,
                       k * (cof[1, 1] * elw**2 + 2 * cof[1, 2] * elw * elu
                            + cof[2, 2] * elu**2) / (lw + elu) ** 2], 1)
    identified = torch.isfinite(cv2).all(1) & (det > 0) & (cv2 <= max_cv**2).all(1)
    return better & identified


def _integral(model: str, th: torch.Tensor, lmin: float) -> torch.Tensor:
    a = torch.exp(th[:, 0])
    lw = lmin + torch.exp(th[:, 1])
    if model == "mono":
        return a / lw
    lu = lw + torch.exp(th[:, 2])
    return a * (1 / lw - 1 / lu)


def _crit(kind: str, n: int, k: int, cost: torch.Tensor) -> torch.Tensor:
    """AIC or AICc of every voxel's fit (relative weights: the likelihood term n ln(cost/n))."""
    base = n * torch.log(torch.clamp(cost, min=1e-300) / n) + 2 * k
    return base + (2 * k * (k + 1) / (n - k - 1) if kind == "aicc" else 0.0)


def fit_voxel_tacs(time_h, activity_maps, model: str = "auto", *,
                   decay_constant_per_h: float | None = None, mask=None,
                   weighting: str = "poisson", n_iter: int = 40,
                   min_activity_mbq: float = 0.0, organ_tia: float | None = None,
                   chunk: int = 1_000_000, threads: int | None = None, max_cv: float = 0.5,
                   dtype: torch.dtype = torch.float64) -> VoxelTiaResult:
    """Fit mono/bi-exponential curves to every voxel and integrate them 0..∞.

    Args:
        time_h: (T,) acquisition times (h), strictly increasing.
        activity_maps: (T, ...) array or list of T equal-shape maps (MBq per voxel, or any
            non-negative quantity such as a dose rate).
        model: ``mono``, ``bi`` or ``auto`` (per-voxel choice by the organ fits' rule: the
            candidates with a residual degree of freedom, AICc, or AIC with the noise pooled
            over the voxels at four time points; see :func:`_choose_bi`).
        decay_constant_per_h: physical decay constant, lower bound of the washout rate.
        mask: optional boolean mask of voxels to fit (others get 0).
        weighting: ``poisson`` (1/A) or ``uniform``.
        n_iter: Levenberg-Marquardt iterations.
        min_activity_mbq: voxels with Σ_t A below this use organ-scaled kinetics when
            ``organ_tia`` is given (else 0).
        organ_tia: organ TIA for the fallback, with the organ being the mask (or all).
        chunk: voxels per batch (memory control).
        threads: torch intra-op threads (default: unchanged).
        max_cv: ``auto`` takes the bi-exponential only where each of its parameters has a
            coefficient of variation of at most this (the organ fits' plausibility check).
        dtype: torch dtype of the fit (float32 is ~2x faster, float64 default).

    Raises:
        ValueError: bad times, mismatched map shapes, NaN or negative values, bad model.
    """
    t, a = _validate(time_h, activity_maps)
    if model not in ("mono", "bi", "auto"):
        raise ValueError(f"voxel model must be 'mono', 'bi' or 'auto', got {model!r}")
    if weighting not in ("poisson", "uniform"):
        raise ValueError("weighting must be 'poisson' or 'uniform'")
    if threads:
        torch.set_num_threads(int(threads))
    shape = a.shape[1:]
    m = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} differs from map shape {shape}")
    lmin = float(decay_constant_per_h) if decay_constant_per_h else 1e-6
    lmax = math.log(MAX_BACK_EXTRAPOLATION) / t[0] if t[0] > 0 else 10.0
    y_all = a.reshape(t.size, -1).T
    sel = m.ravel() & (y_all.sum(1) > 0)
    low = sel & (y_all.sum(1) < min_activity_mbq)
    fit_idx = np.flatnonzero(sel & ~low)
    n_tot = y_all.shape[0]
    tia = np.zeros(n_tot)
    code = np.full(n_tot, -1, np.int8)
    lam_eff = np.zeros(n_tot)
    models = ("mono", "bi") if model == "auto" else (model,)
    if model == "auto":  # the organ fits' candidates: at least one residual degree of freedom
        models = tuple(m for m in models
                       if t.size >= len(kinetics.PARAM_NAMES[m]) + 1) or ("mono",)
    kind = kinetics.selection_criterion(t.size, [len(kinetics.PARAM_NAMES[m]) for m in models])
    if model == "bi" and t.size < 3:
        raise ValueError("bi-exponential voxel fits need at least 3 time points")
    tt = torch.as_tensor(t, dtype=dtype)[None, :]
    for s0 in range(0, fit_idx.size, chunk):
        idx = fit_idx[s0:s0 + chunk]
        y = torch.as_tensor(y_all[idx], dtype=dtype)
        scale = y.max(1, keepdim=True).values
        yn = y / scale
        w = (1.0 / torch.clamp(yn, min=0.05)) if weighting == "poisson" else torch.ones_like(yn)
        out = {}
        for mdl in models:
            if mdl == "mono":
                th, cost = _mono_profile(tt, yn, w, lmin, lmax)
            else:  # LM from a log-linear start through the last two points
                y1, y2 = torch.clamp(yn[:, -2], min=1e-3), torch.clamp(yn[:, -1], min=1e-3)
                lw0 = torch.clamp(torch.log(y1 / y2) / float(t[-1] - t[-2]),
                                  min=lmin * 1.1 + 1e-6, max=10.0)
                a0 = torch.clamp(yn[:, -1] * torch.exp(lw0 * float(t[-1])), min=1e-3, max=1e6)
                floor_u = torch.full_like(lw0, 2.0 / float(t[0] or 1.0))
                lu0 = torch.clamp(torch.maximum(5 * lw0, floor_u), max=50.0)
                th0 = torch.stack([torch.log(a0 * 1.3), torch.log(lw0 - lmin),
                                   torch.log(lu0 - lw0)], 1)
                th, cost = _lm(mdl, th0, tt, yn, w, lmin, n_iter)
            out[mdl] = (th, cost, _crit(kind, t.size, th.shape[1], cost))
        if len(models) == 2:
            if kind == "aic":  # bi has one residual degree of freedom
                use_bi = _choose_bi(out["mono"][1], out["bi"][:2], tt, yn, w, scale,
                                    weighting, lmin, max_cv)
            else:
                use_bi = out["bi"][2] < out["mono"][2]
        else:
            use_bi = torch.full((idx.size,), models[0] == "bi")
        tia_c = torch.zeros(idx.size, dtype=dtype)
        lam_c = torch.zeros(idx.size, dtype=dtype)
        for mdl, sel_m in (("mono", ~use_bi), ("bi", use_bi)):
            if mdl not in out:
                continue
            th = out[mdl][0]
            tia_c = torch.where(sel_m, _integral(mdl, th, lmin), tia_c)
            lam_c = torch.where(sel_m, lmin + torch.exp(th[:, 1]), lam_c)
        tia[idx] = (tia_c * scale[:, 0]).double().numpy()
        lam_eff[idx] = lam_c.double().numpy()
        code[idx] = np.where(use_bi.numpy(), MODEL_CODES["bi"], MODEL_CODES["mono"])
    bad = ~np.isfinite(tia)
    if np.any(bad):
        tia[bad] = 0.0
        low = low | bad
    if np.any(low):
        if organ_tia is not None:
            organ_sum = y_all[m.ravel()].sum()
            tia[low] = organ_tia * y_all[low].sum(1) / organ_sum
            code[low] = MODEL_CODES["organ"]
        else:
            tia[low] = 0.0
    return VoxelTiaResult(tia.reshape(shape), code.reshape(shape), lam_eff.reshape(shape),
                          {"models_tried": np.array(models)})


def tia_map_organ_scaled(time_h, activity_maps, organ_mask, organ_tia: float) -> np.ndarray:
    """Voxel TIA from the organ's TIA scaled by each voxel's share of the organ activity.

    ``TIA_v = TIA_organ × ∫A_v / ∫A_organ`` with trapezoid integrals over the measured span
    (the organ's kinetics applied to every voxel; PyTheranostics approach).

    Raises:
        ValueError: bad inputs, empty mask, non-positive organ TIA.
    """
    t, a = _validate(time_h, activity_maps)
    m = np.asarray(organ_mask, bool)
    if m.shape != a.shape[1:]:
        raise ValueError(f"organ mask shape {m.shape} differs from map shape {a.shape[1:]}")
    if not m.any():
        raise ValueError("organ mask is empty")
    if not (math.isfinite(organ_tia) and organ_tia >= 0):
        raise ValueError("organ_tia must be finite and >= 0")
    integ = np.trapezoid(a, t, axis=0)
    total = integ[m].sum()
    if total <= 0:
        raise ValueError("organ activity integrates to zero")
    out = np.where(m, organ_tia * integ / total, 0.0)
    return out
