"""Figures of the reports (matplotlib): CT slices with dose and VOI contours, TAC fits, DVHs,
dose distributions and feature importance. Each function returns a figure; the caller embeds
it (:func:`theralake.pipelines.report_html.figure`)."""

from __future__ import annotations

import dataclasses
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from theralake.dosimetry import kinetics  # noqa: E402
from theralake.lake import Volume  # noqa: E402

#: CT soft-tissue window (HU): level 40, width 400.
CT_WINDOW = (-160.0, 240.0)
#: The dose wash starts at this fraction of the colour scale's top.
DOSE_SHOWN = 0.1
ORGAN_COLOURS = {
    "kidney_left": "#ff7f0e", "kidney_right": "#ffbb78", "liver": "#8c564b",
    "spleen": "#9467bd", "parotid_gland_left": "#2ca02c", "parotid_gland_right": "#98df8a",
    "submandibular_gland_left": "#17becf", "submandibular_gland_right": "#9edae5",
    "lacrimal_gland_left": "#bcbd22", "lacrimal_gland_right": "#dbdb8d",
    "urinary_bladder": "#e7ba52", "red_marrow": "#d62728", "tumor_total": "#e377c2",
    "lung_left": "#aec7e8", "lung_right": "#c5b0d5",
}
LESION_COLOUR = "#00e5ff"
CYCLE_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f")


def voi_colour(voi: str) -> str:
    return LESION_COLOUR if voi.startswith("lesion_") else ORGAN_COLOURS.get(voi, "#7f7f7f")


def label(voi: str) -> str:
    """A VOI name for people: ``kidney_left`` -> ``kidney left``."""
    return voi.replace("_", " ")


# ------------------------------------------------------------------------ image slices
def _canonical(array: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Flip (z, y, x) axes whose direction cosine is negative, so that x runs to the patient's
    left, y to posterior and z to superior (LPS) as displayed."""
    for axis_xyz, cosine in enumerate(np.diag(direction)):
        if cosine < 0:
            array = np.flip(array, axis=2 - axis_xyz)
    return array


def peak_gy(dose_gy: np.ndarray) -> float:
    """The top of the dose colour scale: the 99.5th percentile of the positive voxels."""
    positive = dose_gy[dose_gy > 0]
    return float(np.percentile(positive, 99.5)) if positive.size else 1.0


def slices(ct: Volume, dose_gy: np.ndarray, masks: dict[str, np.ndarray],
           centre_zyx: tuple[int, int, int], title: str, vmax_gy: float | None = None
           ) -> plt.Figure:
    """Axial and coronal CT slices through ``centre_zyx`` with the dose (on the CT grid) as a
    colour wash above :data:`DOSE_SHOWN` of ``vmax_gy`` (square-root colour scale, so that
    organ doses show beside lesion peaks) and the VOIs as contours."""
    d = ct.direction
    img = _canonical(ct.array.astype(np.float32), d)
    dose = _canonical(dose_gy, d)
    vois = {k: _canonical(m.astype(np.uint8), d) for k, m in masks.items()}
    z, y, _ = centre_zyx
    sx, sy, sz = ct.spacing_mm
    nz, ny, nx = img.shape
    vmax = vmax_gy or peak_gy(dose)
    views = [("axial", lambda a: a[z], (0, nx * sx, ny * sy, 0), "upper",
              "x (mm, patient right → left)", "y (mm, anterior → posterior)"),
             ("coronal", lambda a: a[:, y, :], (0, nx * sx, 0, nz * sz), "lower",
              "x (mm, patient right → left)", "z (mm, inferior → superior)")]
    fig = plt.figure(figsize=(11, 6.4))
    grid = fig.add_gridspec(1, 3, width_ratios=[nx * sx / (ny * sy),
                                                nx * sx / (nz * sz), 0.05], wspace=0.3)
    axes = [fig.add_subplot(grid[0, i]) for i in range(2)]
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)
    shown: dict[str, str] = {}
    for ax, (name, cut, extent, origin, xlabel, ylabel) in zip(axes, views, strict=True):
        ax.imshow(cut(img), cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], extent=extent,
                  origin=origin, interpolation="bilinear")
        wash = np.ma.masked_less(cut(dose), DOSE_SHOWN * vmax)
        im = ax.imshow(wash, cmap="turbo", alpha=0.55, norm=norm, extent=extent,
                       origin=origin, interpolation="bilinear")
        for voi, mask in vois.items():
            part = cut(mask)
            if part.any():
                ax.contour(part, levels=[0.5], colors=[voi_colour(voi)], linewidths=1.1,
                           extent=extent, origin=origin)
                shown["lesions" if voi.startswith("lesion_") else label(voi)] = voi_colour(voi)
        ax.set_title(f"{name} slice", fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7.5)
    fig.colorbar(im, cax=fig.add_subplot(grid[0, 2])).set_label("absorbed dose (Gy)")
    handles = [Line2D([], [], color=c, lw=2, label=n) for n, c in sorted(shown.items())]
    fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles) or 1),
               fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=12)
    fig.subplots_adjust(bottom=0.2, top=0.9, left=0.07, right=0.95)
    return fig


# ------------------------------------------------------------------------ TAC fits
def fit_from_json(text: str, time_h: np.ndarray, activity_mbq: np.ndarray
                  ) -> kinetics.TacFit | None:
    """The :class:`~theralake.dosimetry.kinetics.TacFit` of an ``organ_dosimetry`` row's
    ``fit_parameters`` (JSON of ``TacFit.as_dict``), with its data points for the trapezoid;
    None for rows without a kinetic model (e.g. ``truth``)."""
    try:
        d = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(d, dict) or d.get("model") not in kinetics.MODELS:
        return None
    names = tuple(d["params"])
    sd = np.array([np.inf if d["param_sd"].get(n) is None else d["param_sd"][n]
                   for n in names], float)
    return kinetics.TacFit(
        model=d["model"], param_names=names, params=np.array([d["params"][n] for n in names]),
        param_sd=sd, covariance=np.diag(np.where(np.isfinite(sd), sd, 0.0) ** 2),
        n_points=d["n_points"], wrss=d["wrss"], aicc=d["aicc"], plausible=d["plausible"],
        reasons=list(d["reasons"]), tia_mbq_h=d["tia_mbq_h"],
        tia_sd_mbq_h=d["tia_sd_mbq_h"] if d["tia_sd_mbq_h"] is not None else math.inf,
        tia_before_first_mbq_h=d["tia_before_first_mbq_h"],
        tia_measured_mbq_h=d["tia_measured_mbq_h"], tia_after_last_mbq_h=d["tia_after_last_mbq_h"],
        effective_half_life_h=d["effective_half_life_h"],
        extra={"time_h": np.asarray(time_h, float), "activity_mbq": np.asarray(activity_mbq,
                                                                                float)})


def _band(fit: kinetics.TacFit, t: np.ndarray, draws: int = 200) -> np.ndarray | None:
    """16th and 84th percentiles of the curve with the parameters drawn from their standard
    deviations (independently: the lake keeps the SDs, not the correlations)."""
    if fit.model == "trapezoid" or not np.all(np.isfinite(fit.param_sd)):
        return None
    rng = np.random.default_rng(0)
    p = np.clip(rng.normal(fit.params, fit.param_sd, (draws, fit.n_params)), 1e-12, None)
    curves = np.array([dataclasses.replace(fit, params=q).predict(t) for q in p])
    return np.percentile(curves, [16, 84], axis=0)


def tac_grid(panels: list[tuple[str, list[dict]]]) -> plt.Figure:
    """One panel per VOI; per cycle the measured points (error bars where the lake has
    ``activity_sigma_mbq``), the fitted curve and its ±1 SD band.

    Args:
        panels: ``(voi, curves)``; a curve is a dict with ``cycle``, ``time_h``,
            ``activity_mbq``, ``sigma_mbq`` (array or None) and ``fit`` (TacFit or None).
    """
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax, (voi, curves) in zip(axes.ravel(), panels, strict=False):
        notes = []
        for c in curves:
            colour = CYCLE_COLOURS[(int(c["cycle"]) - 1) % len(CYCLE_COLOURS)]
            t, a = np.asarray(c["time_h"], float), np.asarray(c["activity_mbq"], float)
            ax.errorbar(t, a, yerr=c["sigma_mbq"], fmt="o", ms=4, color=colour, capsize=2,
                        label=f"cycle {c['cycle']}")
            fit = c["fit"]
            if fit is None:
                continue
            grid = np.linspace(0.0, max(t.max() * 1.1, 1.0), 200)
            ax.plot(grid, fit.predict(grid), color=colour, lw=1.3)
            band = _band(fit, grid)
            if band is not None:
                ax.fill_between(grid, band[0], band[1], color=colour, alpha=0.15, lw=0)
            notes.append(f"C{c['cycle']}: {fit.model}, T½eff {fit.effective_half_life_h:.0f} h")
        ax.set_title(label(voi), fontsize=10)
        ax.text(0.98, 0.97, "\n".join(notes), transform=ax.transAxes, ha="right", va="top",
                fontsize=7.5, color="#444")
        ax.set_xlabel("time after administration (h)", fontsize=8)
        ax.set_ylabel("activity (MBq)", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=7.5)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels) or 1, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


# ------------------------------------------------------------------------ DVHs
def dvh_grid(dvhs: pd.DataFrame) -> plt.Figure:
    """Cumulative DVHs: a column per cycle, a row per quantity (dose, BED); organs coloured,
    lesions thin."""
    cycles = sorted(dvhs.cycle.unique())
    quantities = [q for q in ("dose", "bed") if q in set(dvhs.quantity)]
    fig, axes = plt.subplots(len(quantities), len(cycles), squeeze=False,
                             figsize=(5.4 * len(cycles), 3.6 * len(quantities)))
    for i, q in enumerate(quantities):
        for j, cyc in enumerate(cycles):
            ax = axes[i, j]
            part = dvhs[(dvhs.quantity == q) & (dvhs.cycle == cyc)].sort_values("voi")
            lesion_label = "lesions"
            for r in part.itertuples():
                lesion = r.voi.startswith("lesion_")
                ax.plot(r.dose_gy, 100 * np.asarray(r.volume_fraction), color=voi_colour(r.voi),
                        lw=0.8 if lesion else 1.6, alpha=0.7 if lesion else 1.0,
                        label=lesion_label if lesion else label(r.voi))
                if lesion:
                    lesion_label = "_"
            ax.set(title=f"cycle {cyc}: {'absorbed dose' if q == 'dose' else 'BED'}",
                   xlabel=f"{'dose' if q == 'dose' else 'BED'} (Gy)", ylabel="volume (%)",
                   ylim=(0, 102), xlim=(0, None))
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               frameon=False)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ cohort figures
def dose_boxplot(df: pd.DataFrame, order: list[str]) -> plt.Figure:
    """Absorbed dose per VOI group (``group`` column), one box per cycle side by side."""
    cycles = sorted(df.cycle.unique())
    width = 0.8 / len(cycles)
    fig, ax = plt.subplots(figsize=(11, 4.6))
    for k, cyc in enumerate(cycles):
        data = [df[(df.group == g) & (df.cycle == cyc)].absorbed_dose_gy.dropna().to_numpy()
                for g in order]
        pos = np.arange(len(order)) + (k - (len(cycles) - 1) / 2) * width
        keep = [i for i, d in enumerate(data) if len(d)]
        box = ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=width * 0.85,
                         patch_artist=True, showfliers=True, flierprops={"ms": 3})
        colour = CYCLE_COLOURS[(int(cyc) - 1) % len(CYCLE_COLOURS)]
        for patch in box["boxes"]:
            patch.set(facecolor=colour, alpha=0.45, edgecolor=colour)
        ax.plot([], [], "s", color=colour, alpha=0.6, label=f"cycle {cyc}")
    ax.set_xticks(np.arange(len(order)), [label(g) for g in order], rotation=35, ha="right",
                  fontsize=8.5)
    values = df.absorbed_dose_gy[df.absorbed_dose_gy > 0]
    if len(values) and values.max() / values.min() > 50:
        ax.set_yscale("log")
    ax.set_ylabel("absorbed dose (Gy)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def importance_bars(values: pd.Series, title: str, xlabel: str, top: int = 15) -> plt.Figure:
    """Horizontal bars of the largest ``|values|`` (positive red, negative blue)."""
    v = values.reindex(values.abs().sort_values(ascending=False).index)[:top][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(v) + 1.2))
    ax.barh(range(len(v)), v.to_numpy(), color=["#c0392b" if x > 0 else "#2e6da4" for x in v])
    ax.set_yticks(range(len(v)), [str(i) for i in v.index], fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def importance_heatmap(values: pd.DataFrame, title: str, unit: str) -> plt.Figure:
    """Features (rows) x targets (columns) coefficients, diverging colours around 0."""
    lim = float(np.nanmax(np.abs(values.to_numpy()))) or 1.0
    fig, ax = plt.subplots(figsize=(1.0 * values.shape[1] + 4.5, 0.3 * values.shape[0] + 2.2))
    im = ax.imshow(values.to_numpy(float), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [label(c) for c in values.columns], rotation=40,
                  ha="right", fontsize=8)
    ax.set_yticks(range(values.shape[0]), list(values.index), fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8).set_label(unit)
    ax.set_title(title)
    fig.tight_layout()
    return fig
