"""Train the SPECT view synthesis network on the lake's full acquisitions, score it on
held-out patients against linear interpolation, and register it in MLflow
(``theralake train-views``)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.ingest.view_synthesis import (
    ViewSynthesisConfig,
    ViewSynthesizer,
    interpolate_views,
    nrmse,
    sparse_of,
)
from theralake.lake import Lake, Volume
from theralake.modeling.segmentation_training import ALIASES, split_patients
from theralake.registry import segmenter_model, tracking, view_synthesis_model

log = logging.getLogger(__name__)
DEFAULT_NAME = "view-synthesis"
EXPERIMENT = "view-synthesis"
#: the fewest views a training acquisition keeps after subsampling
MIN_ACQUIRED_VIEWS = 8


@dataclass
class ViewSynthesisTraining:
    synthesizer: ViewSynthesizer
    model_name: str
    version: str
    alias: str
    run_id: str
    train_patients: list[str]
    val_patients: list[str]
    val_nrmse: float  # the network's synthesised views against the acquired ones
    val_nrmse_linear: float  # linear interpolation's


def full_acquisitions(lake: Lake, factor: int) -> list[tuple[str, np.ndarray]]:
    """(patient, photopeak views) of every acquisition whose views subsample by ``factor``."""
    windows = lake.sql("SELECT patient_id, image_id, len(angles_deg) n FROM projection_windows "
                       "WHERE role = 'photopeak' ORDER BY patient_id, image_id")
    usable = windows[(windows.n % factor == 0) & (windows.n // factor >= MIN_ACQUIRED_VIEWS)]
    if usable.empty:
        return []
    images = lake.read("images", "list_contains(?, id)", [list(usable.image_id)])
    arrays = {r["id"]: Volume.from_row(r).array.astype(np.float32)
              for r in images.to_dict("records")}
    return [(r.patient_id, arrays[r.image_id]) for r in usable.itertuples()]


def train_view_synthesis(lake: Lake, config: ViewSynthesisConfig | None = None,
                         val_fraction: float = 0.2, register_as: str = DEFAULT_NAME,
                         alias: str = "champion") -> ViewSynthesisTraining:
    """Train on the lake's acquisitions (held-out patients scored), log to its MLflow store
    (params, ``val_nrmse``, ``val_nrmse_linear``, ``train_seconds``, the loss curve) and
    register the model as ``register_as`` with ``alias``.

    Raises:
        ValueError: no acquisition to train on, or a bad alias or fraction.
    """
    import mlflow

    from theralake import __version__

    config = config or ViewSynthesisConfig()
    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
    cases = full_acquisitions(lake, config.factor)
    if not cases:
        raise ValueError(f"no SPECT acquisition in the lake at {lake.path} has a multiple of "
                         f"{config.factor} views (at least {MIN_ACQUIRED_VIEWS * config.factor})")
    train_p, val_p = split_patients([p for p, _ in cases], val_fraction, config.seed)
    synthesizer = ViewSynthesizer(config).fit([v for p, v in cases if p in set(train_p)])
    val = [v for p, v in cases if p in set(val_p)]
    net = [nrmse(synthesizer.fill(sparse_of(v, config.factor)), v, config.factor) for v in val]
    linear = [nrmse(interpolate_views(sparse_of(v, config.factor), config.factor), v,
                    config.factor) for v in val]
    scores = (float(np.mean(net)) if net else float("nan"),
              float(np.mean(linear)) if linear else float("nan"))
    with tracking.start_run(lake, EXPERIMENT, run_name=f"{register_as}@{alias}",
                            tags={"theralake_version": __version__}) as run:
        mlflow.log_params({**{k: str(v) for k, v in vars(config).items()},
                           "val_fraction": val_fraction, "n_train_patients": len(train_p),
                           "n_val_patients": len(val_p), "n_acquisitions": len(cases)})
        mlflow.log_metrics({"train_seconds": synthesizer.train_seconds_,
                            "epochs": synthesizer.epochs_,
                            "final_loss": synthesizer.history_[-1],
                            **({"val_nrmse": scores[0], "val_nrmse_linear": scores[1]}
                               if net else {})})
        with tempfile.TemporaryDirectory(prefix="theralake-views-") as tmp:
            folder = synthesizer.save(Path(tmp) / view_synthesis_model.ARTIFACT)
            info = segmenter_model.log_weights(
                view_synthesis_model.ViewSynthesisModel(), folder,
                view_synthesis_model.signature(), view_synthesis_model.input_example(),
                register_as)
        version = str(info.registered_model_version)
        client = tracking.client(lake)
        client.set_registered_model_alias(register_as, alias, version)
        client.set_model_version_tag(register_as, version, "factor", str(config.factor))
    return ViewSynthesisTraining(synthesizer, register_as, version, alias, run.info.run_id,
                                 train_p, val_p, *scores)


def load_view_synthesizer(lake: Lake, spec: str) -> tuple[ViewSynthesizer, str]:
    """The network ``spec`` names: a folder of weights, or ``name[@alias]`` in the lake's
    registry (alias champion by default); with the name it is recorded under.

    Raises:
        theralake.registry.tracking.ModelNotFoundError: no such model or alias.
        FileNotFoundError: a folder that is not a saved network.
    """
    if Path(spec).is_dir():
        return ViewSynthesizer.load(Path(spec)), f"weights {Path(spec).name}"
    name, _, alias = spec.partition("@")
    with tempfile.TemporaryDirectory(prefix="theralake-views-") as tmp:
        try:
            folder, version = tracking.download_model(lake, name, alias or "champion", tmp)
        except tracking.ModelNotFoundError as exc:
            raise tracking.ModelNotFoundError(
                f"{exc}; train one with `theralake train-views` or give a weights folder"
            ) from None
        found = [p.parent for p in Path(folder).rglob("config.json")
                 if (p.parent / "weights.pt").exists()]
        if not found:
            raise FileNotFoundError(f"model {name} version {version.version} holds no view "
                                    "synthesis weights")
        return ViewSynthesizer.load(found[0]), f"{name} v{version.version}"


def register(app: typer.Typer) -> None:
    @app.command("train-views")
    def train_views(
        lake: Annotated[Path | None, typer.Option(
            "--lake", help="lake folder (default $THERALAKE_LAKE or ./lake)")] = None,
        factor: Annotated[int, typer.Option(
            help="one view acquired in FACTOR (2: every 2nd, 4: every 4th)")] = 4,
        epochs: Annotated[int, typer.Option(help="maximum training epochs")] = 40,
        minutes: Annotated[float, typer.Option(help="maximum training minutes")] = 10.0,
        val_fraction: Annotated[float, typer.Option(
            help="fraction of patients held out for scoring")] = 0.2,
        alias: Annotated[str, typer.Option(help="registry alias of the new version")
                         ] = "champion",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        as_json: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False,
    ) -> None:
        """Train the view synthesis network (fewer projections) and register it in MLflow."""
        config = replace(ViewSynthesisConfig(), factor=factor, max_epochs=epochs,
                         max_minutes=minutes, seed=seed)
        try:
            result = train_view_synthesis(Lake(lake, create=False), config, val_fraction,
                                          alias=alias)
        except (ValueError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        summary = {"model": f"{result.model_name} v{result.version}", "alias": result.alias,
                   "val_nrmse": result.val_nrmse, "val_nrmse_linear": result.val_nrmse_linear,
                   "train_patients": len(result.train_patients),
                   "val_patients": len(result.val_patients)}
        if as_json:
            print_json(summary)
        elif not quiet:
            typer.echo(f"registered {summary['model']} @{alias}: held-out view error "
                       f"{result.val_nrmse:.3f} (linear interpolation "
                       f"{result.val_nrmse_linear:.3f})")
