"""Train, validate and register a model of a task: ``theralake train``.

One call: the dataset from the lake (hashed and snapshotted), nested cross-validation with
bootstrap intervals, figures, the final model refitted on every patient, and an MLflow run
holding parameters, metrics, figures, the dataset snapshot and the model (signature and input
example). The model is registered as ``theralake-<task>`` with the alias ``@candidate``; the
out-of-fold predictions go to the lake's ``predictions`` table.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import yaml

from theralake import __version__
from theralake.lake import Lake, stable_hash
from theralake.modeling import plots
from theralake.modeling.dataset import Dataset, build_dataset, load_modeling_config
from theralake.modeling.estimators import make_estimator, unwrap
from theralake.modeling.evaluation import CVResult, cross_validate
from theralake.registry import tracking

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
REQUIREMENTS = ("theralake", "scikit-learn", "scikit-survival", "xgboost-cpu", "torch",
                "numpy", "pandas", "mlflow")


def registered_name(task: str) -> str:
    return f"theralake-{task}"


@dataclass
class TrainResult:
    """What a training run produced."""

    dataset: Dataset
    cv: CVResult
    model: object
    run_id: str
    model_name: str | None
    version: str | None


def code_version() -> str:
    """The package version, with the git commit when run from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def fit_final(ds: Dataset, model: str, config: dict, seed: int = 0) -> object:
    """The tuned model refitted on every patient of the dataset."""
    fitted = make_estimator(ds.kind, model, config, seed).fit(ds.X, ds.y)
    return fitted if ds.kind == "regression" else unwrap(fitted)


def train(lake: Lake, task: str, model: str, features: str | None = None,
          config: dict | None = None, seed: int = 0, register: bool = True,
          progress: bool = True) -> TrainResult:
    """Validate ``model`` on ``task`` by nested cross-validation, fit it on all patients, log
    everything to MLflow and (``register``) add a registry version with alias ``@candidate``.
    """
    if model == "voxel":
        raise ValueError("the voxel dose network is trained by theralake.modeling.train_voxel."
                         "train_voxel (theralake train --task dose --model voxel)")
    config = config or load_modeling_config()
    snapshot = lake.snapshot()  # the data is read as of one snapshot, named in the run
    ds = build_dataset(lake.at(snapshot), task, features, config)
    cv = cross_validate(ds, model, config, seed, progress)
    final = fit_final(ds, model, config, seed)
    name = registered_name(task) if register else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        extra = _figures(ds, cv, folder)
        with tracking.start_run(lake, registered_name(task), run_name=f"{task}-{model}",
                                tags={**_tags(ds, model), "lake_snapshot": str(snapshot)}) as run:
            _log_run(ds, cv, config, model, seed, extra, folder)
            info = mlflow.sklearn.log_model(
                final, name="model", signature=mlflow.models.infer_signature(
                    ds.X.head(5), np.asarray(final.predict(ds.X.head(5)))),
                input_example=ds.X.head(3), pip_requirements=_requirements(),
                serialization_format="cloudpickle",  # skops cannot hold torch or xgboost
                registered_model_name=name)
            run_id = run.info.run_id
    version = None
    if name:
        version = str(info.registered_model_version)
        tracking.set_alias(lake, name, version, CANDIDATE, _tags(ds, model))
    _write_predictions(lake, ds, cv, run_id)
    return TrainResult(ds, cv, final, run_id, name, version)


def _tags(ds: Dataset, model: str) -> dict[str, str]:
    return {"task": ds.task, "kind": ds.kind, "model": model, "feature_set": ds.feature_set,
            "dataset_hash": ds.hash}


def _figures(ds: Dataset, cv: CVResult, folder: Path) -> dict[str, float]:
    if ds.kind == "survival":
        return plots.survival_figures(ds, cv, folder)
    if ds.kind == "binary":
        plots.binary_figures(ds, cv, folder)
    else:
        plots.dose_figures(ds, cv, folder)
    return {}


def _log_run(ds: Dataset, cv: CVResult, config: dict, model: str, seed: int,
             extra: dict[str, float], folder: Path) -> None:
    v = config["validation"]
    mlflow.log_params({
        "task": ds.task, "model": model, "feature_set": ds.feature_set, "seed": seed,
        "n_patients": len(ds.X), "n_events": ds.n_events, "n_features": ds.X.shape[1],
        "outer_folds": v["outer_folds"], "inner_folds": v["inner_folds"],
        "bootstrap": v["bootstrap"], "selection": config["preprocessing"]["selection"],
        "max_features": config["preprocessing"]["max_features"], "dataset_hash": ds.hash,
        "code_version": code_version()})
    mlflow.log_metrics({k: float(x) for k, x in {**cv.metrics, **extra}.items()
                        if np.isfinite(x)})
    ds.frame().to_parquet(folder / "dataset.parquet")
    cv.predictions.to_parquet(folder / "oof_predictions.parquet")
    (folder / "dataset.json").write_text(json.dumps({
        "hash": ds.hash, "columns": list(ds.X.columns), "dropped": ds.dropped,
        "chosen_params_per_fold": cv.chosen_params}, indent=2, default=str))
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    mlflow.log_artifacts(str(folder), artifact_path="validation")


def _requirements() -> list[str]:
    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return out


def _write_predictions(lake: Lake, ds: Dataset, cv: CVResult, run_id: str) -> None:
    """Out-of-fold predictions as ``predictions`` rows (cycle 1, model_uri of the run)."""
    def number(value: object) -> float | None:
        return None if value is None or pd.isna(value) else float(value)

    p = cv.predictions
    rows = [{"id": stable_hash("prediction", run_id, pid, t), "patient_id": pid, "cycle": 1,
             "task": ds.task, "target": t, "value": float(rec[t]),
             "lower": number(rec.get(f"{t}:lower")), "upper": number(rec.get(f"{t}:upper")),
             "model_uri": f"runs:/{run_id}/model"}
            for pid, rec in p.iterrows() for t in p.columns if ":" not in t and pd.notna(rec[t])]
    lake.append("predictions", rows, params_hash=ds.hash)
