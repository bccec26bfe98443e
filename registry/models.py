"""The model registry: list versions, promote through a validation gate, model cards.

Registered models use aliases, not stages: ``@candidate`` (set by training) and ``@champion``
(set by :func:`promote` only when the version's validation metrics pass the gate of its task
kind in the modelling config). Promotion writes a model card (TRIPOD+AI items that apply) next
to the run's artifacts and into ``<lake>/models/cards/``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from theralake.lake.store import _atomic_write_bytes
from theralake.registry import tracking

CHAMPION = "champion"
KEY_METRICS = ("harrell_c", "harrell_c_lower", "uno_c", "ibs", "auc", "auc_lower",
               "calibration_slope", "coverage", "median_abs_rel_error", "spearman_min_lower",
               "error_ratio_to_median",
               "organ_median_abs_rel_error", "lesion_median_abs_rel_error", "organ_error_ratio",
               "lesion_error_ratio")


class PromotionRefused(ValueError):
    """A version's validation metrics miss the promotion gate (the message lists which)."""


def _version(lake: object, name: str, version: str):  # noqa: ANN202 - ModelVersion
    try:
        return tracking.client(lake).get_model_version(name, str(version))
    except MlflowException as exc:
        raise tracking.ModelNotFoundError(
            f"no version {version} of registered model {name!r} in {tracking.registry_uri(lake)}"
        ) from exc


def list_models(lake: object) -> pd.DataFrame:
    """One row per registered version: name, version, aliases, task, model, key metrics
    (none for a read-only lake without a registry)."""
    try:
        c = tracking.client(lake)
    except tracking.ModelNotFoundError:
        return pd.DataFrame()
    rows = []
    for rm in c.search_registered_models():
        aliases = dict(getattr(rm, "aliases", None) or {})
        for mv in c.search_model_versions(f"name = '{rm.name}'"):
            metrics = c.get_run(mv.run_id).data.metrics if mv.run_id else {}
            rows.append({"name": rm.name, "version": int(mv.version),
                         "aliases": ",".join(sorted(f"@{a}" for a, v in aliases.items()
                                                    if str(v) == str(mv.version))),
                         "task": mv.tags.get("task"), "model": mv.tags.get("model"),
                         "feature_set": mv.tags.get("feature_set"),
                         **{k: metrics[k] for k in KEY_METRICS if k in metrics}})
    return pd.DataFrame(rows).sort_values(["name", "version"]) if rows else pd.DataFrame()


def check_gate(metrics: dict[str, float], gate: dict[str, dict]) -> list[str]:
    """The gate's failures (empty: passed). A missing metric fails. Bounds: ``min`` and
    ``max`` (inclusive), ``above`` and ``below`` (strict)."""
    return [f for metric, bounds in gate.items()
            for f in _criterion(metric, metrics.get(metric), bounds)[1]]


def _criterion(metric: str, value: float | None, bounds: dict) -> tuple[str, list[str]]:
    """A gate criterion in words (``metric >= 0.6``) and its failures for ``value``."""
    words = " and ".join(f"{metric} {op} {bounds[k]}" for k, op in
                         (("min", ">="), ("above", ">"), ("max", "<="), ("below", "<"))
                         if k in bounds)
    if value is None:
        return words, [f"{metric}: not measured by the run"]
    fails = {"min": value < bounds.get("min", -math.inf),
             "above": value <= bounds.get("above", -math.inf),
             "max": value > bounds.get("max", math.inf),
             "below": value >= bounds.get("below", math.inf)}
    signs = {"min": "<", "above": "<=", "max": ">", "below": ">="}
    return words, [f"{metric} = {value:.3f} {signs[k]} {bounds[k]}" for k, bad in fails.items()
                   if bad]


def promote(lake: object, name: str, version: str | int, config: dict | None = None) -> Path:
    """Set ``name@champion`` to ``version`` if its run passes the gate; returns the card.

    Raises:
        ModelNotFoundError: no such version.
        PromotionRefused: the gate's failures, one per line.
    """
    from theralake.modeling.dataset import load_modeling_config

    config = config or load_modeling_config()
    mv = _version(lake, name, version)
    c = tracking.client(lake)
    run = c.get_run(mv.run_id)
    kind = mv.tags.get("kind") or run.data.tags.get("kind")
    gate = config["promotion"].get(kind)
    if gate is None:
        raise PromotionRefused(f"{name} version {version}: no promotion gate for task kind "
                               f"{kind!r} in the config")
    failures = check_gate(run.data.metrics, gate)
    if failures:
        raise PromotionRefused(f"{name} version {version} is not promoted:\n  "
                               + "\n  ".join(failures))
    card = model_card(lake, name, str(version), gate)
    path = tracking.mlflow_dir(lake).parent / "models" / "cards" / f"{name}-v{version}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, card.encode())
    with tracking.use_lake(lake):
        mlflow.MlflowClient().log_artifact(mv.run_id, str(path), artifact_path="model_card")
    c.set_registered_model_alias(name, CHAMPION, str(version))
    c.set_model_version_tag(name, str(version), "promoted_utc",
                            dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    return path


def model_card(lake: object, name: str, version: str, gate: dict | None = None) -> str:
    """A Markdown model card of a registered version (TRIPOD+AI items that apply)."""
    mv = _version(lake, name, version)
    run = tracking.client(lake).get_run(mv.run_id)
    p, m, t = run.data.params, run.data.metrics, mv.tags
    kind = t.get("kind", "")

    def metric(k: str) -> str:
        if k not in m:
            return "n/a"
        ci = (f" (95 % CI {m[k + '_lower']:.3f}-{m[k + '_upper']:.3f})"
              if f"{k}_lower" in m and f"{k}_upper" in m else "")
        return f"{m[k]:.3f}{ci}"

    shown = {"survival": ["harrell_c", "uno_c", "td_auc", "ibs", "calibration_slope",
                          "calibration_intercept", "logrank_p_risk", "logrank_p_dose"],
             "binary": ["auc", "brier", "calibration_slope", "calibration_intercept"],
             "regression": ["median_abs_rel_error", "coverage", "median_rel_width",
                            "spearman_min", "baseline_median_abs_rel_error",
                            "error_ratio_to_median"],
             "voxel": ["organ_median_abs_rel_error", "lesion_median_abs_rel_error",
                       "voxel_mae_gy_per_gbq", "baseline_organ_median_abs_rel_error",
                       "baseline_lesion_median_abs_rel_error", "baseline_voxel_mae_gy_per_gbq",
                       "organ_error_ratio", "lesion_error_ratio"]}
    if kind == "voxel":  # a network on images, validated on held-out patients
        data = [f"- Patients {p.get('n_patients')}: pre-therapy PET (SUVbw) and CT, target the "
                f"cycle-1 dose map ({p.get('method')}) per GBq administered."]
        about = [f"- `voxel`: MONAI 3D U-Net (channels {p.get('channels')}) refining k x SUV, "
                 f"{p.get('epochs')} epochs of {p.get('patch_voxels')}-voxel patches, L1 loss "
                 "on log dose per GBq."]
        validation = [f"- Patient-level split: {p.get('n_train_patients')} training and "
                      f"{p.get('n_held_out_patients')} held-out patients (seed {p.get('seed')}); "
                      "errors of the held-out VOI means against their dosimetry, beside the "
                      "SUV-scaled baseline."]
    else:
        data = [f"- Patients {p.get('n_patients')}, events {p.get('n_events')}, candidate "
                f"features {p.get('n_features')} (feature set `{p.get('feature_set')}`)."]
        about = [f"- `{p.get('model')}`; preprocessing inside the cross-validation: median "
                 "imputation with missing indicators, log of skewed columns, scaling, "
                 f"correlation pruning, selection `{p.get('selection')}` (at most "
                 f"{p.get('max_features')})."]
        validation = [f"- Nested cross-validation: {p.get('outer_folds')} outer patient-level "
                      f"folds, {p.get('inner_folds')} inner folds for tuning; 95 % intervals "
                      f"from {p.get('bootstrap')} bootstrap resamples of the out-of-fold "
                      "predictions."]
    lines = [
        f"# Model card: {name} version {version}", "",
        "## Intended use",
        f"- Task `{t.get('task')}` ({kind}): " + {
            "survival": "risk of the endpoint after Lu-177 radioligand therapy (higher = "
                        "worse), for cohort research and risk stratification.",
            "binary": "probability of the endpoint after the first cycle.",
            "regression": "first-cycle absorbed dose per GBq from pre-therapy data, with "
                          "conformal prediction intervals, for activity planning.",
            "voxel": "first-cycle absorbed dose per GBq map from the pre-therapy PET/CT "
                     "(a U-Net refining k x SUV; with the lesion channel, the PET's lesion "
                     "contours get the training lesions' dose per SUV), for activity "
                     "planning."}.get(kind, ""),
        "- Decision support for trained staff only; not a substitute for measured dosimetry.",
        "", "## Data (TRIPOD+AI 5-8, 20)",
        f"- Source: the theralake lake, dataset hash `{p.get('dataset_hash')}`"
        + (f", lake snapshot {run.data.tags['lake_snapshot']} (`theralake sql --at "
           f"{run.data.tags['lake_snapshot']}` reads the rows it was trained on)."
           if "lake_snapshot" in run.data.tags else "."),
        *data,
        "", "## Model (TRIPOD+AI 12)",
        *about,
        f"- Code {p.get('code_version')}, MLflow run `{mv.run_id}`.",
        "", "## Validation (TRIPOD+AI 12e, 23)",
        *validation,
        "", "| metric | value |", "|---|---|",
        *[f"| {k} | {metric(k)} |" for k in shown.get(kind, []) if k in m],
        "", "## Promotion gate",
        *(_gate_lines(m, gate) if gate else ["- not checked"]),
        "", "## Limits (TRIPOD+AI 27)",
        "- Internal validation only; external validation on another centre's patients is "
        "needed before clinical use.",
        "- Performance holds for patients like those of the training data (same tracer, "
        "imaging protocol and dosimetry method).",
        "- Trained on synthetic patients when the dataset came from `theralake synth`.",
    ]
    return "\n".join(lines) + "\n"


def _gate_lines(metrics: dict[str, float], gate: dict[str, dict]) -> list[str]:
    """Each criterion of the gate with the run's value and whether it passed."""
    out = ["| criterion | value | passed |", "|---|---|---|"]
    for metric, bounds in gate.items():
        value = metrics.get(metric)
        words, failures = _criterion(metric, value, bounds)
        shown = "not measured" if value is None else f"{value:.3f}"
        out.append(f"| {words} | {shown} | {'no' if failures else 'yes'} |")
    return out


def load_model(lake: object, name: str, alias: str, dst: str | Path) -> tuple[object, str]:
    """The registered model ``name@alias`` (scikit-learn flavour) and its ``models:/`` URI.

    Models are pickled: those of the lake's own registry are trusted (theralake wrote them);
    from a server, loading needs ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true``.

    Raises:
        ModelNotFoundError: no such model or alias.
    """
    import mlflow.sklearn

    path, mv = tracking.download_model(lake, name, alias, dst)
    own = tracking.registry_uri(lake) == tracking.lake_store_uri(lake)
    with _allow_pickle(own):
        return mlflow.sklearn.load_model(str(path)), f"models:/{name}/{mv.version}"


def load_champion(lake: object, task: str, dst: str | Path) -> tuple[object, str]:
    """The ``@champion`` model of a task (see :func:`load_model`) and its ``models:/`` URI.

    Raises:
        ModelNotFoundError: no champion (the message says how to get one).
    """
    try:
        return load_model(lake, f"theralake-{task}", CHAMPION, dst)
    except tracking.ModelNotFoundError as exc:
        raise tracking.ModelNotFoundError(
            f"{exc}. Train one (theralake train --task {task}) and promote it (theralake "
            f"models promote theralake-{task} VERSION)") from None


@contextlib.contextmanager
def _allow_pickle(allow: bool) -> Iterator[None]:
    key = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    before = os.environ.get(key)
    if allow:
        os.environ[key] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
