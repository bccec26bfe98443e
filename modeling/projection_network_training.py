"""Train a SPECT projection network (``theralake train-views``: fewer projections;
``theralake train-denoiser``: fewer counts) on the lake's full acquisitions, score it on
held-out patients against its baseline, and register it in MLflow.

Scores (held-out patients' photopeak views): views, the synthesised views' RMS error over
the acquired views' RMS (``val_nrmse``) against linear interpolation's
(``val_nrmse_baseline``); denoise, the error of the denoised thinned views against the full
acquisition's views scaled to the same counts, against the thinned views' own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.ingest.projection_networks import (
    Denoiser,
    ProjectionNetwork,
    ProjectionNetworkConfig,
    ViewSynthesizer,
    interpolate_views,
    load_network,
    nrmse,
    sparse_of,
    thinned,
)
from theralake.lake import Lake, Volume
from theralake.modeling.segmentation_training import ALIASES, split_patients
from theralake.registry import projection_network_model, segmenter_model, tracking

log = logging.getLogger(__name__)
NAMES = {"views": "view-synthesis", "denoise": "spect-denoiser"}
EXPERIMENT = "projection-networks"
#: the fewest views a training acquisition keeps after subsampling
MIN_ACQUIRED_VIEWS = 8


@dataclass
class NetworkTraining:
    network: ProjectionNetwork
    model_name: str
    version: str
    alias: str
    run_id: str
    train_patients: list[str]
    val_patients: list[str]
    val_nrmse: float
    val_nrmse_baseline: float  # linear interpolation (views), the thinned views (denoise)


def full_acquisitions(lake: Lake, factor: int = 1) -> list[tuple[str, np.ndarray]]:
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


def score(network: ProjectionNetwork, views: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(the network's error, its baseline's) on one held-out acquisition."""
    c = network.config
    if network.task == "views":
        sparse = sparse_of(views, c.factor)
        return (nrmse(network.apply(sparse), views, c.factor),
                nrmse(interpolate_views(sparse, c.factor), views, c.factor))
    low = thinned(views, c.count_fraction, np.random.default_rng(seed))
    reference = views * np.float32(c.count_fraction)
    return nrmse(network.apply(low), reference), nrmse(low, reference)


def train_projection_network(lake: Lake, config: ProjectionNetworkConfig,
                             val_fraction: float = 0.2, register_as: str | None = None,
                             alias: str = "champion") -> NetworkTraining:
    """Train on the lake's acquisitions (held-out patients scored), log to its MLflow store
    (params, ``val_nrmse``, ``val_nrmse_baseline``, ``train_seconds``) and register the model
    as ``register_as`` (default by task: view-synthesis, spect-denoiser) with ``alias``.

    Raises:
        ValueError: no acquisition to train on, or a bad alias or fraction.
    """
    import mlflow

    from theralake import __version__

    register_as = register_as or NAMES[config.task]
    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
    factor = config.factor if config.task == "views" else 1
    cases = full_acquisitions(lake, factor)
    if not cases:
        raise ValueError(f"no SPECT acquisition in the lake at {lake.path} to train on "
                         f"(views a multiple of {factor}, at least {MIN_ACQUIRED_VIEWS * factor})")
    train_p, val_p = split_patients([p for p, _ in cases], val_fraction, config.seed)
    kind = ViewSynthesizer if config.task == "views" else Denoiser
    network = kind(config).fit([v for p, v in cases if p in set(train_p)])
    scores = np.array([score(network, v, i) for i, (p, v) in enumerate(cases)
                       if p in set(val_p)]).reshape(-1, 2)
    val = scores.mean(axis=0) if len(scores) else np.full(2, np.nan)
    with tracking.start_run(lake, EXPERIMENT, run_name=f"{register_as}@{alias}",
                            tags={"theralake_version": __version__,
                                  "task": config.task}) as run:
        mlflow.log_params({**{k: str(v) for k, v in vars(config).items()},
                           "val_fraction": val_fraction, "n_train_patients": len(train_p),
                           "n_val_patients": len(val_p), "n_acquisitions": len(cases)})
        mlflow.log_metrics({"train_seconds": network.train_seconds_,
                            "epochs": network.epochs_, "final_loss": network.history_[-1],
                            **({"val_nrmse": val[0], "val_nrmse_baseline": val[1]}
                               if len(scores) else {})})
        version = segmenter_model.register_weights(
            lake, network.save, projection_network_model.ProjectionNetworkModel(),
            projection_network_model.ARTIFACT, projection_network_model.signature(),
            projection_network_model.input_example(), register_as, alias)
        client = tracking.client(lake)
        client.set_model_version_tag(register_as, version, "task", config.task)
    return NetworkTraining(network, register_as, version, alias, run.info.run_id, train_p,
                           val_p, float(val[0]), float(val[1]))


def load_projection_network(lake: Lake, spec: str) -> tuple[ProjectionNetwork, str]:
    """The network ``spec`` names: a folder of weights, or ``name[@alias]`` in the lake's
    registry (alias champion by default); with the name it is recorded under.

    Raises:
        theralake.registry.tracking.ModelNotFoundError: no such model or alias.
        FileNotFoundError: a folder that is not a saved network.
    """
    return tracking.load_by_spec(lake, spec, load_network, "weights.pt",
                                 "train one with `theralake train-views` or `theralake "
                                 "train-denoiser`")


def _train_command(config: ProjectionNetworkConfig, lake: Path | None, val_fraction: float,
                   alias: str, as_json: bool, quiet: bool) -> None:
    try:
        result = train_projection_network(Lake(lake, create=False), config, val_fraction,
                                          alias=alias)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    baseline = "linear interpolation" if config.task == "views" else "the low-count views"
    summary = {"model": f"{result.model_name} v{result.version}", "alias": result.alias,
               "task": config.task, "val_nrmse": result.val_nrmse,
               "val_nrmse_baseline": result.val_nrmse_baseline,
               "train_patients": len(result.train_patients),
               "val_patients": len(result.val_patients)}
    if as_json:
        print_json(summary)
    elif not quiet:
        typer.echo(f"registered {summary['model']} @{alias}: held-out error "
                   f"{result.val_nrmse:.3f} ({baseline} {result.val_nrmse_baseline:.3f})")


LakePath = Annotated[Path | None, typer.Option(
    "--lake", help="lake folder (default $THERALAKE_LAKE or ./lake)")]
Epochs = Annotated[int, typer.Option(help="maximum training epochs")]
Minutes = Annotated[float, typer.Option(help="maximum training minutes")]
ValFraction = Annotated[float, typer.Option(help="fraction of patients held out for scoring")]
Alias = Annotated[str, typer.Option(help="registry alias of the new version")]
Seed = Annotated[int, typer.Option(help="random seed")]


def register(app: typer.Typer) -> None:
    @app.command("train-views")
    def train_views(
        lake: LakePath = None,
        factor: Annotated[int, typer.Option(
            help="one view acquired in FACTOR (2: every 2nd, 4: every 4th)")] = 4,
        epochs: Epochs = 40, minutes: Minutes = 10.0, val_fraction: ValFraction = 0.2,
        alias: Alias = "champion", seed: Seed = 0,
        as_json: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False,
    ) -> None:
        """Train the view synthesis network (fewer projections) and register it in MLflow."""
        _train_command(replace(ProjectionNetworkConfig(), task="views", factor=factor,
                               max_epochs=epochs, max_minutes=minutes, seed=seed),
                       lake, val_fraction, alias, as_json, quiet)

    @app.command("train-denoiser")
    def train_denoiser(
        lake: LakePath = None,
        count_fraction: Annotated[float, typer.Option(
            help="the fraction of the counts it restores (0.25: a quarter of the time)")
        ] = 0.25,
        epochs: Epochs = 40, minutes: Minutes = 10.0, val_fraction: ValFraction = 0.2,
        alias: Alias = "champion", seed: Seed = 0,
        as_json: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False,
    ) -> None:
        """Train the projection denoiser (fewer counts) and register it in MLflow."""
        _train_command(replace(ProjectionNetworkConfig(), task="denoise",
                               count_fraction=count_fraction, max_epochs=epochs,
                               max_minutes=minutes, seed=seed),
                       lake, val_fraction, alias, as_json, quiet)
