"""Nested cross-validation: patient-level outer folds score the tuned estimator.

The outer loop splits patients (one row each; a patient is never on both sides), the inner
grid search of :func:`~theralake.modeling.estimators.make_estimator` picks hyper-parameters on
the outer training part only, and the out-of-fold predictions give every metric with
bootstrap intervals (:mod:`theralake.modeling.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rich.progress import Progress
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold

from theralake.modeling import metrics
from theralake.modeling.dataset import Dataset
from theralake.modeling.estimators import make_estimator, unwrap


@dataclass
class CVResult:
    """Out-of-fold predictions (index: patient_id) and their metrics."""

    metrics: dict[str, float]
    predictions: pd.DataFrame
    survival: pd.DataFrame | None = None  # patients x evaluation times (survival tasks)
    chosen_params: list[dict] = field(default_factory=list)


def outer_folds(ds: Dataset, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-level folds, stratified on the event (survival) or the label (binary)."""
    if ds.kind == "survival":
        strata = ds.y["event"].astype(int)
    elif ds.kind == "binary":
        strata = np.asarray(ds.y)
    else:
        return list(KFold(n_splits, shuffle=True, random_state=seed).split(ds.X))
    return list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(ds.X, strata))


def _y(ds: Dataset, idx: np.ndarray) -> np.ndarray | pd.DataFrame:
    return ds.y.iloc[idx] if isinstance(ds.y, pd.DataFrame) else np.asarray(ds.y)[idx]


def cross_validate(ds: Dataset, model: str, config: dict, seed: int = 0,
                   progress: bool = True) -> CVResult:
    """Nested cross-validation of ``model`` on ``ds`` with the config's folds."""
    v = config["validation"]
    est = make_estimator(ds.kind, model, config, seed)
    folds = outer_folds(ds, v["outer_folds"], seed)
    times = metrics.evaluation_times(
        ds.y, horizon=config["tasks"].get(ds.task, {}).get("horizon_d")) \
        if ds.kind == "survival" else None
    pred = pd.DataFrame(index=ds.X.index)
    surv = (pd.DataFrame(np.nan, index=ds.X.index, columns=times)
            if times is not None else None)
    chosen = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{ds.task}/{model}: outer folds", total=len(folds))
        for train, test in folds:
            fitted = clone(est).fit(ds.X.iloc[train], _y(ds, train))
            chosen.append(getattr(fitted, "best_params_", {}))
            if ds.kind == "regression":  # the skill-less baseline: the training median
                median = ds.y.iloc[train].median()
                for target in ds.y.columns:
                    pred.loc[ds.X.index[test], f"{target}:baseline"] = median[target]
            _predict_into(ds, unwrap(fitted) if ds.kind != "regression" else fitted,
                          ds.X.iloc[test], pred, surv, times)
            bar.advance(task)
    return CVResult(_metrics(ds, pred, surv, times, config, seed), pred, surv, chosen)


def _predict_into(ds: Dataset, fitted: object, X: pd.DataFrame, pred: pd.DataFrame,
                  surv: pd.DataFrame | None, times: np.ndarray | None) -> None:
    rows = X.index
    if ds.kind == "survival":
        pred.loc[rows, "risk"] = fitted.predict(X)
        if hasattr(fitted, "predict_survival_function"):
            fns = fitted.predict_survival_function(X)
            surv.loc[rows] = np.vstack([fn(np.clip(times, fn.domain[0], fn.domain[1]))
                                        for fn in fns])
    elif ds.kind == "binary":
        pred.loc[rows, "probability"] = fitted.predict_proba(X)[:, 1]
    else:
        point = fitted.predict(X)
        lower, upper = fitted.predict_interval(X)
        for j, target in enumerate(fitted.targets_):
            pred.loc[rows, target] = point[:, j]
            pred.loc[rows, f"{target}:lower"] = lower[:, j]
            pred.loc[rows, f"{target}:upper"] = upper[:, j]


def _metrics(ds: Dataset, pred: pd.DataFrame, surv: pd.DataFrame | None,
             times: np.ndarray | None, config: dict, seed: int) -> dict[str, float]:
    n_boot = config["validation"]["bootstrap"]
    if ds.kind == "survival":
        has_surv = surv is not None and not surv.isna().any().any()
        horizon = config["tasks"][ds.task].get("horizon_d", float(np.median(times)))
        return metrics.survival_metrics(ds.y, pred["risk"].to_numpy(),
                                         surv.to_numpy() if has_surv else None, times,
                                         horizon, n_boot, seed)
    if ds.kind == "binary":
        return metrics.binary_metrics(np.asarray(ds.y), pred["probability"].to_numpy(), n_boot,
                                      seed)
    targets = list(ds.y.columns)
    return metrics.regression_metrics(
        ds.y, pred[targets].to_numpy(), pred[[f"{t}:lower" for t in targets]].to_numpy(),
        pred[[f"{t}:upper" for t in targets]].to_numpy(), n_boot, seed,
        baseline=pred[[f"{t}:baseline" for t in targets]].to_numpy())
