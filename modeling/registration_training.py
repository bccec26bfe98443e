"""Train the AI CT-to-CT registration (``--registration ai``) on the lake's serial CTs.

:func:`train_registration` fits :class:`~theralake.dosimetry.registration_ai.AiRegistration`
(unsupervised: no labels) on every (first CT, later CT) pair of a patient-cycle, writes the
model atomically to ``<lake>/models/registration-ai`` (or ``out``) and logs the run (its
parameters, loss history, training time and weights hash, and the model folder) in the
lake's MLflow store. ``theralake train-reg`` is its command (:func:`register`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.dosimetry.registration_files import default_model_dir, weights_sha256
from theralake.lake import Lake

__all__ = ["EXPERIMENT", "RegistrationTraining", "default_model_dir", "register",
           "train_registration", "weights_sha256"]

EXPERIMENT = "ct-registration"


@dataclass
class RegistrationTraining:
    """What :func:`train_registration` did."""

    folder: Path
    sha256: str
    n_pairs: int
    epochs: int
    train_seconds: float
    final_loss: float
    run_id: str


def train_registration(lake: Lake, *, out: Path | None = None, patients: list[str] | None = None,
                       max_pairs: int | None = None, **params: object) -> RegistrationTraining:
    """Fit the AI registration on the lake's CT pairs, save it and track the run.

    Args:
        lake: the lake whose serial CTs train the model.
        out: model folder (default :func:`default_model_dir`); replaced atomically.
        patients: restrict to these patient ids.
        max_pairs: use at most this many pairs.
        **params: :class:`AiRegistration` hyper-parameters (epochs, size, spacing_mm, ...).

    Raises:
        ValueError: no patient-cycle with two CTs.
    """
    import mlflow

    from theralake.dosimetry.registration_ai import AiRegistration, lake_ct_pairs
    from theralake.registry.tracking import start_run

    pairs = lake_ct_pairs(lake, patients, max_pairs)
    if not pairs:
        raise ValueError(f"{lake.path}: no patient-cycle with two or more CTs to train on")
    model = AiRegistration(**params)
    folder = Path(out) if out else default_model_dir(lake)
    with start_run(lake, EXPERIMENT, run_name="voxelmorph") as run:
        mlflow.log_params({k: str(v) for k, v in model.get_params().items()})
        mlflow.log_params({"n_pairs": len(pairs)})
        t0 = time.perf_counter()
        model.fit(pairs)
        seconds = time.perf_counter() - t0
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(tmp)
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
        sha = weights_sha256(folder)
        for epoch, loss in enumerate(model.history_):
            mlflow.log_metric("loss", float(loss), step=epoch)
        mlflow.log_metrics({"train_seconds": seconds, "epochs_run": model.epochs_run_})
        mlflow.set_tag("weights_sha256", sha)
        mlflow.log_artifacts(str(folder), artifact_path="model")
        run_id = run.info.run_id
    return RegistrationTraining(folder, sha, len(pairs), model.epochs_run_, seconds,
                                float(model.history_[-1]) if model.history_ else float("nan"),
                                run_id)


def train_reg(
    lake: Annotated[Path | None, typer.Option(help="lake folder")] = None,
    epochs: Annotated[int, typer.Option(help="passes over the CT pairs")] = 100,
    max_minutes: Annotated[float | None, typer.Option(help="stop after this wall time")] = None,
    max_pairs: Annotated[int | None, typer.Option(help="use at most this many pairs")] = None,
    out: Annotated[Path | None, typer.Option(help="model folder (default: in the lake)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Train the AI CT registration (MONAI VoxelMorph) used by --registration ai."""
    the_lake = Lake(lake, create=False)
    try:
        res = train_registration(the_lake, out=out, max_pairs=max_pairs, epochs=epochs,
                                 max_minutes=max_minutes, device=device)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        print_json(res)
        return
    typer.echo(f"trained on {res.n_pairs} CT pairs, {res.epochs} epochs in "
               f"{res.train_seconds:.0f} s (final loss {res.final_loss:.4f})")
    typer.echo(f"model: {res.folder} (sha256 {res.sha256[:12]}), MLflow run {res.run_id}")


def register(app: typer.Typer) -> None:
    """Add ``train-reg`` to ``app``."""
    app.command("train-reg")(train_reg)
