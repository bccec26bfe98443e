"""Train, score and register the voxel dose network: ``theralake train --task dose --model voxel``.

One call: the voxel samples of the lake (:func:`~theralake.modeling.dose_voxel.voxel_samples`),
a seeded patient-level split (``voxel_dose.held_out_fraction`` of the config held out, at least
one patient), :class:`~theralake.modeling.dose_voxel.VoxelDoseModel` and the
:class:`~theralake.modeling.dose_voxel.SuvScaledDose` baseline fitted on the training patients,
both scored on the held-out patients (:func:`~theralake.modeling.dose_voxel.evaluate_voxel`),
and an MLflow run with the parameters, metrics (network and ``baseline_*``, their ratios), the
figures, the dataset hash and code version, and the network as a ``pyfunc`` model
(:mod:`theralake.registry.dose_voxel_model`) registered as ``theralake-dose-voxel@candidate``.
The held-out VOI means go to the ``predictions`` table (task ``dose-voxel``, target = VOI).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from theralake.lake import Lake, stable_hash
from theralake.modeling.dose_voxel import (
    SuvScaledDose,
    VoxelDoseModel,
    VoxelSample,
    evaluate_voxel,
    summarise_voxel,
    voxel_samples,
)

log = logging.getLogger(__name__)

__all__ = ["TASK", "VOXEL_MODEL_NAME", "VoxelTraining", "load_voxel_model", "train_voxel",
           "voxel_metrics"]

VOXEL_MODEL_NAME = "theralake-dose-voxel"
TASK = "dose-voxel"  # the predictions table's task
CANDIDATE = "candidate"


@dataclass
class VoxelTraining:
    """What :func:`train_voxel` did."""

    model: VoxelDoseModel
    baseline: SuvScaledDose
    evaluation: pd.DataFrame  # evaluate_voxel rows of the held-out patients
    summary: pd.DataFrame  # summarise_voxel of them
    metrics: dict[str, float]
    train_patients: list[str]
    held_out_patients: list[str]
    dataset_hash: str
    run_id: str
    model_name: str | None
    version: str | None


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (> 0) for the block, then restored."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def dataset_hash(samples: list[VoxelSample]) -> str:
    """Hash of the samples' patients and dose maps (their order does not matter)."""
    return stable_hash("voxel-dose", sorted((s.patient_id, s.dose_map_id) for s in samples))


def voxel_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Run metrics from :func:`summarise_voxel`: ``organ_`` and ``lesion_median_abs_rel_error``
    and ``voxel_mae_gy_per_gbq`` (body voxels) of the network, the same prefixed
    ``baseline_``, and ``*_ratio`` = network / baseline (below 1: the network is better)."""
    names = [("organ", "median_abs_relative_error", "organ_median_abs_rel_error", "organ"),
             ("lesion", "median_abs_relative_error", "lesion_median_abs_rel_error", "lesion"),
             ("body", "mae_gy_per_gbq", "voxel_mae_gy_per_gbq", "voxel_mae")]
    out = {}
    for group, column, name, ratio in names:
        for predictor, prefix in (("network", ""), ("baseline", "baseline_")):
            if (predictor, group) in summary.index:
                out[prefix + name] = float(summary.loc[(predictor, group), column])
        if name in out and out.get(f"baseline_{name}"):
            out[f"{ratio}_error_ratio"] = out[name] / out[f"baseline_{name}"]
    return out


def train_voxel(lake: Lake, config: dict | None = None, seed: int = 0, register: bool = True,
                epochs: int | None = None, progress: bool = True) -> VoxelTraining:
    """Fit the voxel dose network on a patient-level split, score it and the SUV baseline on
    the held-out patients, track the run and (``register``) register it as ``@candidate``.

    Args:
        lake: the lake (patients with a pre-therapy PET/CT and a cycle-1 dose map).
        config: the modelling config (``voxel_dose`` section; default the packaged one).
        seed: seeds the split and the network.
        epochs: overrides ``voxel_dose.network.epochs``.

    Raises:
        ValueError: fewer than two usable patients (the reasons are logged per patient).
    """
    from theralake.modeling.dataset import load_modeling_config
    from theralake.modeling.segmentation_training import split_patients

    config = config or load_modeling_config()
    vc = config["voxel_dose"]
    samples = voxel_samples(lake, method=vc.get("method"))
    if len(samples) < 2:
        raise ValueError(f"the voxel dose model needs at least 2 patients with a pre-therapy "
                         f"PET/CT and a cycle-1 dose map; the lake at {lake.path} has "
                         f"{len(samples)}")
    train_ids, held_ids = split_patients([s.patient_id for s in samples],
                                         float(vc["held_out_fraction"]), seed)
    train = [s for s in samples if s.patient_id in set(train_ids)]
    held = [s for s in samples if s.patient_id in set(held_ids)]
    net_params = {**vc["network"], "channels": tuple(vc["network"]["channels"])}
    if epochs is not None:
        net_params["epochs"] = epochs
    log.info("voxel dose model: training on %d patients, scoring %d", len(train), len(held))
    with torch_threads(int(vc.get("threads", 1))):
        model = VoxelDoseModel(random_state=seed, progress=progress, **net_params).fit(train)
        baseline = SuvScaledDose().fit(train)
        evaluation = evaluate_voxel(model, held, baseline)
        first = held[0]
        slices = {name: p.predict(first.pet_suv, first.ct_hu, first.pet_lesions).array
                  for name, p in (("network", model), ("baseline", baseline))}
    summary = summarise_voxel(evaluation)
    metrics = {**voxel_metrics(summary), "train_seconds": model.train_seconds_,
               "final_loss": model.history_[-1]}
    ds_hash = dataset_hash(samples)
    run_id, name, version = _track(lake, config, model, evaluation, metrics, (train_ids, held_ids),
                                   ds_hash, seed, register, (first, slices))
    _write_predictions(lake, evaluation, held, run_id, ds_hash)
    return VoxelTraining(model, baseline, evaluation, summary, metrics, train_ids, held_ids,
                         ds_hash, run_id, name, version)


def _tags(ds_hash: str, lesion_channel: bool) -> dict[str, str]:
    return {"task": "dose", "kind": "voxel", "model": "voxel",
            "feature_set": "pet+ct+lesions" if lesion_channel else "pet+ct",
            "dataset_hash": ds_hash}


def _track(lake: Lake, config: dict, model: VoxelDoseModel, evaluation: pd.DataFrame,
           metrics: dict[str, float], split: tuple[list[str], list[str]], ds_hash: str,
           seed: int, register: bool, example: tuple[VoxelSample, dict[str, np.ndarray]]
           ) -> tuple[str, str | None, str | None]:
    """Log the run (and register the model); returns the run id, the name and version."""
    import mlflow

    from theralake.modeling import plots
    from theralake.modeling.train import code_version
    from theralake.registry import dose_voxel_model, segmenter_model, tracking

    name = VOXEL_MODEL_NAME if register else None
    sample, slices = example
    with tempfile.TemporaryDirectory(prefix="theralake-voxel-") as tmp:
        folder = Path(tmp) / "validation"
        folder.mkdir()
        organs = np.any([m for v, m in sample.masks.items() if v != "body"] or [sample.body],
                        axis=0)
        plots.voxel_figures(evaluation, sample.dose_gy_per_gbq.array, slices, organs,
                            f"held-out patient {sample.patient_id}", folder)
        evaluation.to_parquet(folder / "evaluation.parquet")
        (folder / "split.yaml").write_text(yaml.safe_dump(
            {"train_patients": split[0], "held_out_patients": split[1]}))
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        with tracking.start_run(lake, VOXEL_MODEL_NAME, run_name="dose-voxel",
                                tags=_tags(ds_hash, model.lesion_channel)) as run:
            params = {k: (",".join(map(str, v)) if isinstance(v, tuple | list) else v)
                      for k, v in model.get_params().items() if k != "progress"}
            mlflow.log_params({**params, "task": "dose", "model": "voxel", "seed": seed,
                               "method": sample.method, "n_train_patients": len(split[0]),
                               "n_held_out_patients": len(split[1]),
                               "n_patients": len(split[0]) + len(split[1]),
                               "held_out_fraction": config["voxel_dose"]["held_out_fraction"],
                               "dataset_hash": ds_hash, "code_version": code_version()})
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
            for epoch, loss in enumerate(model.history_):
                mlflow.log_metric("train_loss", float(loss), step=epoch + 1)
            mlflow.log_artifacts(str(folder), artifact_path="validation")
            saved = model.save(Path(tmp) / dose_voxel_model.ARTIFACT)
            info = segmenter_model.log_weights(
                dose_voxel_model.VoxelDoseModelWrapper(), saved,
                dose_voxel_model.signature(model.lesion_channel),
                dose_voxel_model.input_example(model.lesion_channel), name)
            run_id = run.info.run_id
    version = str(info.registered_model_version) if name else None
    if name:
        tracking.set_alias(lake, name, version, CANDIDATE, _tags(ds_hash, model.lesion_channel))
    return run_id, name, version


def _write_predictions(lake: Lake, evaluation: pd.DataFrame, held: list[VoxelSample],
                       run_id: str, ds_hash: str) -> None:
    """The network's held-out VOI means (Gy/GBq) as ``predictions`` rows (cycle 1)."""
    inputs = {s.patient_id: [s.pet_image_id, s.dose_map_id] for s in held}
    net = evaluation[evaluation.predictor == "network"]
    lake.append("predictions", [
        {"id": stable_hash("prediction", run_id, r.patient_id, r.voi), "patient_id": r.patient_id,
         "cycle": 1, "task": TASK, "target": r.voi, "value": float(r.predicted_gy_per_gbq),
         "lower": None, "upper": None, "model_uri": f"runs:/{run_id}/model",
         "input_ids": inputs[r.patient_id]} for r in net.itertuples()], params_hash=ds_hash)


def load_voxel_model(lake: Lake, alias: str = CANDIDATE, name: str = VOXEL_MODEL_NAME
                     ) -> VoxelDoseModel:
    """The network registered as ``name@alias`` in the lake's registry (its weights folder is
    read directly: no pickle). ``registry_version_`` is the version loaded.

    Raises:
        theralake.registry.tracking.ModelNotFoundError: no such model or alias.
        FileNotFoundError: the registered model holds no voxel dose weights.
    """
    from theralake.registry import dose_voxel_model, tracking

    with tempfile.TemporaryDirectory(prefix="theralake-voxel-") as tmp:
        folder, version = tracking.download_model(lake, name, alias, tmp)
        model = VoxelDoseModel.load(folder / "artifacts" / dose_voxel_model.ARTIFACT)
    model.registry_version_ = str(version.version)
    return model
