"""Figures of a validation run (PNG files, logged with the run): Kaplan-Meier curves by
predicted risk group and by tumour-dose tertile with log-rank tests, calibration, decision
curves and predicted vs measured dose."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sksurv.compare import compare_survival  # noqa: E402
from sksurv.nonparametric import kaplan_meier_estimator  # noqa: E402

from theralake.modeling import metrics  # noqa: E402
from theralake.modeling.dataset import Dataset  # noqa: E402
from theralake.modeling.evaluation import CVResult  # noqa: E402

DOSE_COLUMN = "dosimetry/tumor_total/absorbed_dose_gy"


def km_by_group(y: np.ndarray, groups: pd.Series, title: str, out: Path) -> float:
    """Kaplan-Meier curve per group and the log-rank p-value (written into the title)."""
    event, time = metrics.survival_times(y)
    ok = groups.notna().to_numpy()
    _, p = compare_survival(y[ok], groups[ok].astype(str).to_numpy())
    fig, ax = plt.subplots(figsize=(6, 4))
    for g in sorted(groups[ok].unique()):
        m = (groups == g).to_numpy()
        t, s = kaplan_meier_estimator(event[m], time[m])
        ax.step(np.r_[0, t], np.r_[1, s], where="post", label=f"{g} (n={m.sum()})")
    ax.set(xlabel="time (days)", ylabel="survival", ylim=(0, 1.02),
           title=f"{title}: log-rank p = {p:.3g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return float(p)


def tertiles(values: pd.Series, labels: tuple[str, str, str]) -> pd.Series:
    return pd.qcut(values.rank(method="first"), 3, labels=list(labels))


def survival_figures(ds: Dataset, cv: CVResult, folder: Path) -> dict[str, float]:
    """KM by risk tertile and dose tertile, calibration at the horizon; log-rank p-values."""
    out = {}
    risk = tertiles(cv.predictions["risk"], ("low risk", "mid risk", "high risk"))
    out["logrank_p_risk"] = km_by_group(ds.y, risk, f"{ds.task}: predicted risk",
                                        folder / "km_risk_groups.png")
    if DOSE_COLUMN in ds.X.columns and ds.X[DOSE_COLUMN].notna().sum() >= 9:
        dose = ds.X[DOSE_COLUMN]
        groups = pd.Series(pd.NA, index=dose.index, dtype=object)
        groups[dose.notna()] = tertiles(dose.dropna(), ("low dose", "mid dose", "high dose"))
        out["logrank_p_dose"] = km_by_group(ds.y, groups, f"{ds.task}: tumour dose tertile",
                                            folder / "km_dose_tertiles.png")
    if cv.survival is not None and not cv.survival.isna().any().any():
        times = cv.survival.columns.to_numpy(float)
        h = int(np.argmin(np.abs(times - cv.metrics["horizon_d"])))
        event, time = metrics.survival_times(ds.y)
        tab, slope, intercept = metrics.calibration_at(event, time, cv.survival.iloc[:, h]
                                                       .to_numpy(), times[h])
        _calibration_plot(tab, f"{ds.task}: risk by day {times[h]:.0f}", slope, intercept,
                          folder / "calibration.png")
    return out


def _calibration_plot(tab: pd.DataFrame, title: str, slope: float, intercept: float,
                      out: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot(tab.predicted, tab.observed, "o-")
    ax.set(xlabel="predicted", ylabel="observed", xlim=(0, 1), ylim=(0, 1),
           title=f"{title}\nslope {slope:.2f}, intercept {intercept:.2f}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def binary_figures(ds: Dataset, cv: CVResult, folder: Path) -> None:
    """Calibration by quintile and the decision curve."""
    y = np.asarray(ds.y)
    p = cv.predictions["probability"].to_numpy()
    bins = pd.qcut(pd.Series(p).rank(method="first"), 5, labels=False).to_numpy()
    tab = pd.DataFrame({"predicted": [p[bins == g].mean() for g in range(5)],
                        "observed": [y[bins == g].mean() for g in range(5)]})
    _calibration_plot(tab, ds.task, cv.metrics["calibration_slope"],
                      cv.metrics["calibration_intercept"], folder / "calibration.png")
    dca = metrics.net_benefit(y, p, np.linspace(0.05, 0.8, 16))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for col in ("model", "treat_all", "treat_none"):
        ax.plot(dca.threshold, dca[col], label=col.replace("_", " "))
    ax.set(xlabel="threshold probability", ylabel="net benefit",
           ylim=(min(-0.05, dca.model.min()), max(0.05, dca[["model", "treat_all"]].max().max())),
           title=f"{ds.task}: decision curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "decision_curve.png", dpi=110)
    plt.close(fig)


def dose_figures(ds: Dataset, cv: CVResult, folder: Path) -> None:
    """Predicted (with interval) vs measured dose per GBq, one panel per target."""
    targets = list(ds.y.columns)
    cols = min(4, len(targets))
    rows = -(-len(targets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, t in zip(axes.ravel(), targets, strict=False):
        m = ds.y[t].notna()
        truth, pred = ds.y[t][m], cv.predictions[t][m]
        err = np.vstack([pred - cv.predictions[f"{t}:lower"][m],
                         cv.predictions[f"{t}:upper"][m] - pred])
        ax.errorbar(truth, pred, yerr=err, fmt="o", ms=3, alpha=0.5, lw=0.5)
        lim = [0, float(max(truth.max(), pred.max()) * 1.1)]
        ax.plot(lim, lim, "k--", lw=1)
        ax.set(title=t, xlabel="measured Gy/GBq", ylabel="predicted Gy/GBq")
    for ax in axes.ravel()[len(targets):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(folder / "dose_predicted_vs_measured.png", dpi=100)
    plt.close(fig)


def voxel_figures(evaluation: pd.DataFrame, measured: np.ndarray,
                  predicted: dict[str, np.ndarray], focus: np.ndarray, title: str,
                  folder: Path) -> None:
    """Predicted vs measured VOI mean dose per GBq per predictor (``evaluate_voxel`` rows),
    and one patient's maps on the axial slice with the most measured dose in ``focus`` (a
    mask, e.g. the organs), coloured up to the highest measured dose in it."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ev = evaluation[(evaluation.voi != "body") & (evaluation.measured_gy_per_gbq > 0)]
    for (name, lesion), g in ev.groupby([ev.predictor, ev.voi.str.startswith("lesion_")]):
        ax.scatter(g.measured_gy_per_gbq, g.predicted_gy_per_gbq.clip(lower=1e-3), s=14,
                   alpha=0.6, marker="^" if lesion else "o",
                   label=f"{name}, {'lesions' if lesion else 'organs'}")
    lim = [float(ev.measured_gy_per_gbq.min()) / 2, float(ev.measured_gy_per_gbq.max()) * 2]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="measured VOI mean (Gy/GBq)",
           ylabel="predicted VOI mean (Gy/GBq)", title="held-out patients")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "voxel_predicted_vs_measured.png", dpi=110)
    plt.close(fig)
    inside = np.where(focus, measured, 0.0)
    z = int(np.argmax(inside.sum(axis=(1, 2))))
    maps = {"measured": measured, **predicted}
    vmax = float(inside.max()) or 1.0
    fig, axes = plt.subplots(1, len(maps), figsize=(3.4 * len(maps), 3.4), squeeze=False)
    for ax, (name, arr) in zip(axes[0], maps.items(), strict=True):
        im = ax.imshow(arr[z], cmap="inferno", vmin=0, vmax=vmax, origin="lower")
        ax.set(title=f"{name} (slice {z})", xticks=[], yticks=[])
    fig.colorbar(im, ax=axes[0].tolist(), label="Gy/GBq", shrink=0.8)
    fig.suptitle(title)
    fig.savefig(folder / "voxel_dose_slice.png", dpi=110)
    plt.close(fig)
