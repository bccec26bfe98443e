"""The steps of ``theralake run``: the tasks each plans, keyed by a content hash of their
inputs and settings, and how one task runs.

- ``ingest``: one task per top-level folder of the source (a patient's folder, usually), with
  the source's top-level tables (clinical, outcomes, administrations, calibration, mapping);
  then one task for the tables alone (patients without images).
- ``calibrate``: one task for the source's phantom acquisitions (folders with a
  ``phantom.json``), reconstructed with the ``reconstruct`` settings.
- ``reconstruct``: one task per patient-cycle with SPECT projections.
- ``dosimetry``: one task per patient-cycle with SPECT; cycle c waits for cycle c-1 (its
  cumulative BED).
- ``features``: one task per patient (deltas across cycles need them all).
- ``train``: one task per configured model.

A task's hash covers the ids of the lake rows it reads (content hashes themselves) or the
bytes of the files it ingests, so a re-run skips what is unchanged and a new patient is
processed alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from theralake.dosimetry.settings import config_hash, record_config
from theralake.ingest.errors import IngestError, printable
from theralake.ingest.phantom_calibration import find_phantoms
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.reconstruction import ReconstructionError
from theralake.ingest.spect_system import UnknownCollimator
from theralake.lake import Lake, stable_hash
from theralake.lake.views import cycle_input_ids
from theralake.pipelines.cycle import dosimetry_cycle, dosimetry_settings
from theralake.pipelines.spect import (
    calibrate,
    projection_network,
    recon_settings,
    reconstruct_cycle,
)
from theralake.registry.tracking import ModelNotFoundError
from theralake.settings import deep_merge

STEPS = ("ingest", "calibrate", "reconstruct", "dosimetry", "features", "train")
#: steps whose tasks run one after the other in the driver (MLflow's SQLite store takes one
#: writer); the others go to the engine's workers
SERIAL_STEPS = ("train", "calibrate")


class TaskFailed(RuntimeError):
    """A task that ran but could not do its work; the message says why."""


@dataclass(frozen=True)
class Task:
    step: str
    key: str  # unique within a run, e.g. dosimetry/P1234/2
    inputs_hash: str
    params: dict = field(default_factory=dict, compare=False)
    patient_id: str | None = None
    cycle: int | None = None
    after: tuple[str, ...] = ()  # keys of tasks that must finish first
    after_success: bool = True  # ... and succeed (else it fails unrun)


def plan(step: str, lake: Lake, settings: dict, source: Path | None = None) -> list[Task]:
    """The tasks of ``step`` given the lake as it is now."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
    return _PLANNERS[step](lake, settings, source)


def run_task(lake: Lake, task: Task, on_stage: Callable[[str], None] | None = None) -> None:
    """Do one task's work (rows appended to the lake atomically, idempotently);
    ``on_stage`` hears the stages of a patient-cycle's dosimetry as they start."""
    if task.step == "dosimetry":
        _run_dosimetry(lake, task.params, on_stage)
    else:
        _RUNNERS[task.step](lake, task.params)


# -- hashing -------------------------------------------------------------------------------
def files_hash(root: Path, files: list[Path]) -> str:
    """SHA-256 over the files' paths (relative to ``root``) and bytes."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(os.fsencode(f.relative_to(root)) + b"\0")  # a name in any encoding
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _ids_by_patient(lake: Lake, table: str, where: str = "TRUE") -> dict[str, list[str]]:
    df = lake.sql(f"SELECT patient_id, id FROM {table} WHERE {where}")
    return {pid: sorted(g.id) for pid, g in df.groupby("patient_id")}


# -- ingest ----------------------------------------------------------------------------------
def source_alias(pseudo: Pseudonymizer, name: str) -> str:
    """A keyed pseudonym of a source folder's name (it often names the patient)."""
    return "F" + pseudo.token("source-folder", name)


def _plan_ingest(lake: Lake, settings: dict, source: Path | None) -> list[Task]:
    """Ingest tasks keyed by the pseudonym of each folder's name, never the name itself."""
    if source is None:
        return []
    root = Path(source).resolve()
    if not root.exists():
        raise FileNotFoundError(f"{printable(root)}: no such file or folder to ingest")
    pseudo = Pseudonymizer()
    if root.is_file():
        alias = source_alias(pseudo, root.name)
        return [Task("ingest", f"ingest/{alias}", files_hash(root.parent, [root]),
                     {"paths": [str(root)], "imaged_patients_only": False,
                      "root": str(root.parent), "aliases": {root.name: alias}})]
    top = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    tables_hash = files_hash(root, top)
    tasks = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [f for f in folder.rglob("*") if f.is_file()]
        alias = source_alias(pseudo, folder.name)
        tasks.append(Task("ingest", f"ingest/{alias}",
                          stable_hash("ingest", tables_hash, files_hash(root, files)),
                          {"paths": [str(folder), *map(str, top)],
                           "imaged_patients_only": True, "root": str(root),
                           "aliases": {folder.name: alias}}))
    tasks.append(Task("ingest", "ingest/(tables)", stable_hash("ingest-tables", tables_hash),
                      {"paths": [str(p) for p in top], "imaged_patients_only": False,
                       "root": str(root), "aliases": {}},
                      after=tuple(t.key for t in tasks), after_success=False))
    return tasks


def _run_ingest(lake: Lake, params: dict) -> None:
    from theralake.ingest.runner import IngestOptions, ingest

    if not params["paths"]:
        return
    report = ingest([Path(p) for p in params["paths"]], lake, IngestOptions(
        show_progress=False, imaged_patients_only=params["imaged_patients_only"]))
    if report.skipped:
        raise TaskFailed(pseudonymous("; ".join(f"{e.source}: {e.problem}"
                                                for e in report.skipped), params))


def pseudonymous(message: str, params: dict) -> str:
    """An ingest task's message with paths relative to the source and each source folder's
    name replaced by its pseudonym (the run log keeps no name)."""
    out = printable(message).replace(printable(params.get("root", "")) + os.sep, "")
    for name, alias in (params.get("aliases") or {}).items():
        out = out.replace(printable(name), alias)
    return out


# -- SPECT -----------------------------------------------------------------------------------
def _plan_calibrate(lake: Lake, settings: dict, source: Path | None) -> list[Task]:
    if source is None or not Path(source).is_dir():
        return []
    root = Path(source).resolve()
    folders = find_phantoms([root])
    if not folders:
        return []
    files = [f for folder in folders for f in sorted(folder.iterdir()) if f.is_file()]
    options = recon_settings(settings.get("reconstruct")).as_dict()
    return [Task("calibrate", "calibrate/(phantoms)",
                 stable_hash("calibrate", files_hash(root, files), options),
                 {"folders": [str(f) for f in folders], "reconstruct": options})]


def _run_calibrate(lake: Lake, params: dict) -> None:
    try:
        calibrate(lake, [Path(f) for f in params["folders"]],
                  recon_settings(params["reconstruct"]))
    except (IngestError, ReconstructionError, UnknownCollimator) as exc:
        raise TaskFailed(str(exc)) from exc


def _plan_reconstruct(lake: Lake, settings: dict, source: Path | None) -> list[Task]:
    windows = lake.sql("SELECT patient_id, cycle, id FROM projection_windows "
                       "WHERE cycle IS NOT NULL")
    if windows.empty:
        return []
    options = recon_settings(settings.get("reconstruct")).as_dict()
    calibration = sorted(lake.sql("SELECT id FROM camera_calibrations UNION ALL "
                                  "SELECT id FROM recovery_curves").id)
    cts = lake.sql("SELECT patient_id, cycle, id FROM images WHERE kind = 'ct'")
    options_all = settings.get("reconstruct") or {}
    network = [options_all.get("views_model"), options_all.get("denoise_model")]
    tasks = []
    for (pid, cyc), group in windows.groupby(["patient_id", "cycle"]):
        ct_ids = sorted(cts[(cts.patient_id == pid) & (cts.cycle == cyc)].id)
        tasks.append(Task("reconstruct", f"reconstruct/{pid}/{int(cyc)}", stable_hash(
            "reconstruct", options, sorted(group.id), ct_ids, calibration,
            *([network] if any(network) else [])),
            {"patient_id": pid, "cycle": int(cyc), "reconstruct": options,
             "networks": network}, pid, int(cyc)))
    return tasks


def _run_reconstruct(lake: Lake, params: dict) -> None:
    try:
        reconstruct_cycle(lake, params["patient_id"], params["cycle"],
                          recon_settings(params["reconstruct"]),
                          network=projection_network(lake, *params["networks"]))
    except (ReconstructionError, UnknownCollimator, ModelNotFoundError,
            FileNotFoundError, ValueError) as exc:
        raise TaskFailed(str(exc)) from exc


# -- dosimetry -------------------------------------------------------------------------------
def _dosimetry_settings(lake: Lake, settings: dict) -> dict:
    opts = settings.get("dosimetry") or {}
    return dosimetry_settings(lake, opts.get("config"), **(opts.get("overrides") or {}))


def _plan_dosimetry(lake: Lake, settings: dict, source: Path | None) -> list[Task]:
    config = _dosimetry_settings(lake, settings)
    chash = config_hash(config)
    inputs = cycle_input_ids(lake)
    if not inputs:
        return []
    record_config(lake, config)
    tasks: list[Task] = []
    previous: dict[str, Task] = {}
    for (pid, cyc), ids in sorted(inputs.items()):
        prev = previous.get(pid)
        h = stable_hash("dosimetry", chash, ids, prev.inputs_hash if prev else None)
        task = Task("dosimetry", f"dosimetry/{pid}/{int(cyc)}", h,
                    {"patient_id": pid, "cycle": int(cyc), "config": config}, pid, int(cyc),
                    (prev.key,) if prev else ())
        previous[pid] = task
        tasks.append(task)
    return tasks


def _run_dosimetry(lake: Lake, params: dict,
                   on_stage: Callable[[str], None] | None = None) -> None:
    dosimetry_cycle(lake, params["patient_id"], params["cycle"], params["config"], on_stage)


# -- features --------------------------------------------------------------------------------
def _plan_features(lake: Lake, settings: dict, source: Path | None) -> list[Task]:
    from theralake.features.radiomics import load_feature_set

    set_name = (settings.get("features") or {}).get("set", "default")
    fs = load_feature_set(set_name)
    set_hash = stable_hash(*(fs.hash_for(k) for k in ("ct", "pet", "spect", "dose")))
    inputs = [_ids_by_patient(lake, t) for t in ("images", "vois", "dose_maps",
                                                 "organ_dosimetry", "administrations")]
    return [Task("features", f"features/{pid}",
                 stable_hash("features", set_hash, *(ids.get(pid, []) for ids in inputs)),
                 {"patient_id": pid, "set": set_name}, pid)
            for pid in sorted(inputs[0])]


def _run_features(lake: Lake, params: dict) -> None:
    from theralake.features.job import run_features

    run_features(lake, [params["patient_id"]], params["set"], workers=1, progress=False)


# -- train -----------------------------------------------------------------------------------
def _plan_train(lake: Lake, settings: dict, source: Path | None) -> list[Task]:
    from theralake.modeling.dataset import load_modeling_config

    config = load_modeling_config(settings.get("modeling_config"))
    deep_merge(config, settings.get("modeling_overrides") or {})
    data = stable_hash(*(sorted(lake.sql(f"SELECT id FROM {t}").id) for t in (
        "clinical", "outcomes", "administrations", "organ_dosimetry", "features")))
    tasks = []
    for entry in settings.get("train") or []:
        task, model, feats = entry["task"], entry["model"], entry.get("features")
        key = f"train/{task}/{model}" + (f"/{feats}" if feats else "")
        tasks.append(Task("train", key, stable_hash(
            "train", data, task, model, feats, json.dumps(config, sort_keys=True, default=str),
            settings.get("seed", 0)),
            {"task": task, "model": model, "features": feats, "config": config,
             "seed": settings.get("seed", 0)}))
    return tasks


def _run_train(lake: Lake, params: dict) -> None:
    import warnings

    from theralake.modeling.dataset import DatasetError
    from theralake.modeling.train import train

    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        train(lake, params["task"], params["model"], params["features"], params["config"],
              params["seed"], register=True, progress=False)
    except DatasetError as exc:
        raise TaskFailed(str(exc)) from exc


_PLANNERS = {"ingest": _plan_ingest, "calibrate": _plan_calibrate,
             "reconstruct": _plan_reconstruct, "dosimetry": _plan_dosimetry,
             "features": _plan_features, "train": _plan_train}
_RUNNERS = {"ingest": _run_ingest, "calibrate": _run_calibrate, "reconstruct": _run_reconstruct,
            "dosimetry": _run_dosimetry, "features": _run_features, "train": _run_train}


def done_tasks(lake: Lake) -> pd.DataFrame:
    """(task, inputs_hash) of every task a run has finished."""
    return lake.sql("SELECT DISTINCT task, inputs_hash FROM run_log WHERE status = 'done'")
