"""Train the CT organ segmenter on the lake's labelled cases and keep it in the MLflow registry.

- :func:`labelled_cases` builds label maps from the ``vois`` lying on each CT of the lake.
- :func:`split_patients` splits by patient (no patient on both sides).
- :func:`train_segmenter` fits :class:`OrganSegmenter`, scores Dice per organ on the held-out
  patients, logs params/metrics/train time and the model (an MLflow ``pyfunc`` holding the
  weights and ``config.json``) in the lake's MLflow store, registers it and sets an alias.
- :func:`load_segmenter` loads ``name@alias`` from the registry, or the user's own weights.
- ``theralake train-seg`` (:func:`train_seg`, added by :func:`register`).

Labelling rules (documented choices):

- Label ``i`` (1-based) is ``organs[i - 1]``; 0 is background.
- Only masks from human/imported sources are used (:data:`LABEL_SOURCES`, first preferred when
  one CT has the same organ from several sources); model outputs (``ai``) and thresholds are
  never training labels.
- A CT lacking a mask of any of the organs is **skipped**, not labelled partially: an organ
  left out would be taught as background, which is wrong. Skipped CTs are logged.
- A voxel in more than one organ mask gets the organ that comes first in ``organs``.
- A mask not on its CT's grid is resampled onto it (nearest neighbour).

MLflow imports are deferred so that the CLI starts fast.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import numpy as np
import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.lake import Lake, Volume

if TYPE_CHECKING:
    from theralake.dosimetry.segmentation import OrganSegmenter, SegmenterConfig

log = logging.getLogger(__name__)

__all__ = ["ALIASES", "LABEL_SOURCES", "LabelledCase", "SegmenterTraining", "labelled_cases",
           "load_segmenter", "register", "split_patients", "train_seg", "train_segmenter"]

#: Sources of VOI masks that count as ground truth, most preferred first.
LABEL_SOURCES: tuple[str, ...] = ("seg", "rtstruct", "nifti")
#: Aliases a trained segmenter may get.
ALIASES: tuple[str, ...] = ("champion", "candidate")
DEFAULT_NAME = "organ-segmenter"
EXPERIMENT = "organ-segmentation"


class LabelledCase(NamedTuple):
    """A CT, its label map (same grid, uint8) and its patient."""

    ct: Volume
    labels: Volume
    patient_id: str


@dataclass
class SegmenterTraining:
    """What :func:`train_segmenter` did: the model, its registry entry and its scores."""

    segmenter: OrganSegmenter
    model_name: str
    version: str
    alias: str
    run_id: str
    tracking_uri: str
    dice: dict[str, float]  # mean over the held-out CTs, per organ (NaN without validation)
    dice_per_case: list[dict[str, float]]
    train_seconds: float
    epochs: int
    train_patients: list[str]
    val_patients: list[str]
    n_train_cases: int
    n_val_cases: int
    skipped_cases: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"

    @property
    def dice_mean(self) -> float:
        vals = [v for v in self.dice.values() if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")


# -- data ------------------------------------------------------------------------------------
def _in(values: list[str]) -> str:
    return "(" + ", ".join("?" * len(values)) + ")"


def labelled_cases(lake: Lake, organs: tuple[str, ...] | list[str],
                   sources: tuple[str, ...] = LABEL_SOURCES) -> list[LabelledCase]:
    """Every CT of the lake with masks of all ``organs``, as (ct, label map, patient_id).

    Cases are ordered by patient, cycle, time and image id. See the module docstring for the
    labelling rules (skipped CTs, overlaps, sources).
    """
    import SimpleITK as sitk

    organs = tuple(organs)
    if not organs or len(set(organs)) != len(organs):
        raise ValueError(f"organs must be distinct and at least one, got {list(organs)}")
    if not sources:
        raise ValueError("at least one label source is needed")
    cts = lake.read("images", "kind = 'ct'", columns=["id", "patient_id", "cycle", "time_h"])
    meta = lake.read(
        "vois", f"image_id IS NOT NULL AND voi IN {_in(list(organs))} AND source IN "
        f"{_in(list(sources))}", [*organs, *sources],
        columns=["id", "patient_id", "voi", "image_id", "source"])
    rank = {s: i for i, s in enumerate(sources)}
    meta = meta[meta.image_id.isin(set(cts.id))].assign(rank=meta.source.map(rank))
    meta = meta.sort_values(["image_id", "voi", "rank", "id"]).drop_duplicates(
        ["image_id", "voi"])
    have = meta.groupby("image_id").voi.nunique()
    complete = set(have[have == len(organs)].index)
    cts = cts.sort_values(["patient_id", "cycle", "time_h", "id"], na_position="first")
    skipped = cts[~cts.id.isin(complete)]
    if len(skipped):
        log.info("%d of %d CTs skipped: not every organ of %s is labelled on them",
                 len(skipped), len(cts), list(organs))
    cts = cts[cts.id.isin(complete)]
    if cts.empty:
        return []
    meta = meta[meta.image_id.isin(complete)]
    ct_rows = lake.read("images", "list_contains(?, id)", [list(cts.id)]).set_index("id")
    mask_rows = lake.read("vois", "list_contains(?, id)", [list(meta.id)]).set_index("id")
    by_image = {img: dict(zip(g.voi, g.id, strict=True)) for img, g in meta.groupby("image_id")}
    out = []
    for ct_id, pid in zip(cts.id, cts.patient_id, strict=True):
        ct = Volume.from_row(ct_rows.loc[ct_id].to_dict())
        labels = np.zeros(ct.array.shape, np.uint8)
        for value in range(len(organs), 0, -1):  # earlier organs overwrite later ones
            mask = Volume.from_row(mask_rows.loc[by_image[ct_id][organs[value - 1]]].to_dict())
            if not mask.same_grid(ct):
                mask = Volume.from_sitk(sitk.Resample(
                    mask.to_sitk(), ct.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0))
            labels[mask.array > 0] = value
        out.append(LabelledCase(ct, ct.like(labels), str(pid)))
    return out


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def split_patients(patient_ids: list[str] | set[str], val_fraction: float, seed: int = 0
                   ) -> tuple[list[str], list[str]]:
    """Patient-level split: ``round(val_fraction * n)`` patients (at least 1 when the fraction
    is positive, at most n - 1) held out, drawn with ``seed``. Returns sorted (train, val)."""
    _check_fraction(val_fraction)
    patients = sorted(set(patient_ids))
    if not patients:
        raise ValueError("no patients to split")
    if val_fraction == 0:
        return patients, []
    if len(patients) < 2:
        raise ValueError(f"a validation split needs at least 2 labelled patients, the lake has "
                         f"{len(patients)}; use val_fraction=0 (--val-fraction 0)")
    n_val = min(len(patients) - 1, max(1, round(val_fraction * len(patients))))
    order = np.random.default_rng(seed).permutation(len(patients))
    val = sorted(patients[i] for i in order[:n_val])
    return [p for p in patients if p not in set(val)], val


# -- training --------------------------------------------------------------------------------
def train_segmenter(lake: Lake, config: SegmenterConfig | None = None, val_fraction: float = 0.2,
                    register_as: str = DEFAULT_NAME, alias: str = "champion",
                    experiment: str = EXPERIMENT,
                    sources: tuple[str, ...] = LABEL_SOURCES) -> SegmenterTraining:
    """Train on the lake's labelled CTs, score held-out patients and register the model.

    Logs to the lake's MLflow store (:mod:`theralake.registry.tracking`): params (the config,
    the split sizes), metrics ``val_dice_<organ>``, ``val_dice_mean``, ``train_seconds``,
    ``epochs``, ``steps``, ``final_loss`` and the loss curve ``train_loss``; artifact ``split.json``
    (pseudonymised patient ids on each side) and the model (pyfunc, see
    :mod:`theralake.registry.segmenter_model`), registered as ``register_as`` with ``alias``
    pointing to the new version.

    Raises:
        ValueError: bad alias/fraction, or no CT of the lake has every organ labelled.
    """
    import mlflow

    from theralake import __version__
    from theralake.dosimetry.segmentation import OrganSegmenter, SegmenterConfig, dice_per_label
    from theralake.registry import segmenter_model, tracking

    config = config or SegmenterConfig()
    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
    _check_fraction(val_fraction)
    cases = labelled_cases(lake, config.organs, sources)
    if not cases:
        raise ValueError(f"no CT in the lake at {lake.path} has masks of all organs "
                         f"{list(config.organs)} (sources {list(sources)})")
    n_skipped = _count_cts(lake) - len(cases)
    train_p, val_p = split_patients([c.patient_id for c in cases], val_fraction, config.seed)
    train = [c for c in cases if c.patient_id in set(train_p)]
    val = [c for c in cases if c.patient_id in set(val_p)]
    log.info("training on %d CTs of %d patients, validating on %d CTs of %d patients",
             len(train), len(train_p), len(val), len(val_p))
    seg = OrganSegmenter(config).fit([c.ct for c in train], [c.labels for c in train])
    per_case = [dice_per_label(c.labels.array, seg.predict(c.ct).array, config.organs)
                for c in val]
    dice = {o: float(np.nanmean([d[o] for d in per_case])) if per_case else float("nan")
            for o in config.organs}

    uri = tracking.tracking_uri(lake)
    tags = {"theralake_version": __version__, "lake": str(lake.path)}
    with tracking.start_run(lake, experiment, run_name=f"{register_as}@{alias}",
                            tags=tags) as run:
        params = {k: (",".join(map(str, v)) if isinstance(v, tuple | list) else v)
                  for k, v in asdict(config).items() if k != "extra"}
        params.update(val_fraction=val_fraction, n_train_patients=len(train_p),
                      n_val_patients=len(val_p), n_train_cases=len(train),
                      n_val_cases=len(val), n_skipped_cases=n_skipped,
                      label_sources=",".join(sources))
        mlflow.log_params(params)
        metrics = {"train_seconds": seg.train_seconds_, "epochs": seg.epochs_,
                   "steps": len(seg.history_),
                   "final_loss": seg.history_[-1]}
        if per_case:
            metrics.update({f"val_dice_{o}": v for o, v in dice.items()})
            metrics["val_dice_mean"] = float(np.nanmean(list(dice.values())))
        mlflow.log_metrics(metrics)
        client = tracking.client(lake)
        _log_curve(client, run.info.run_id, seg.history_)
        mlflow.log_dict({"train_patients": train_p, "val_patients": val_p,
                         "dice_per_val_case": per_case}, "split.json")
        with tempfile.TemporaryDirectory(prefix="theralake-seg-") as tmp:
            folder = seg.save(Path(tmp) / segmenter_model.ARTIFACT)
            info = segmenter_model.log_weights(
                segmenter_model.OrganSegmenterModel(), folder, segmenter_model.signature(),
                segmenter_model.input_example(), register_as)
        version = str(info.registered_model_version)
        client.set_registered_model_alias(register_as, alias, version)
        client.set_model_version_tag(register_as, version, "organs", ",".join(config.organs))
        if per_case:
            client.set_model_version_tag(register_as, version, "val_dice_mean",
                                         f"{metrics['val_dice_mean']:.4f}")
    return SegmenterTraining(
        segmenter=seg, model_name=register_as, version=version, alias=alias,
        run_id=run.info.run_id, tracking_uri=uri, dice=dice, dice_per_case=per_case,
        train_seconds=seg.train_seconds_, epochs=seg.epochs_, train_patients=train_p,
        val_patients=val_p, n_train_cases=len(train), n_val_cases=len(val),
        skipped_cases=n_skipped)


def _count_cts(lake: Lake) -> int:
    return int(lake.sql("SELECT count(*) n FROM images WHERE kind = 'ct'").n.iloc[0])


def _log_curve(client, run_id: str, history: list[float], points: int = 500) -> None:  # noqa: ANN001
    """The loss curve (one value per optimiser step) as the metric ``train_loss`` (at most
    ``points`` values)."""
    from mlflow.entities import Metric

    if not history:
        return
    steps = np.unique(np.linspace(0, len(history) - 1, min(points, len(history))).astype(int))
    now = int(time.time() * 1000)
    metrics = [Metric("train_loss", float(history[s]), now, int(s) + 1) for s in steps]
    for i in range(0, len(metrics), 250):
        client.log_batch(run_id, metrics=metrics[i:i + 250])


# -- loading ---------------------------------------------------------------------------------
def load_segmenter(lake: Lake | str | Path | None = None, name: str = DEFAULT_NAME,
                   alias: str = "champion", weights_dir: str | Path | None = None
                   ) -> OrganSegmenter:
    """The segmenter registered as ``name@alias`` in the lake's registry, or the user's own.

    Args:
        lake: the lake (or its folder) whose MLflow registry holds the model; not needed
            with ``weights_dir``.
        weights_dir: a folder with ``weights.pt`` and ``config.json`` (as written by
            :meth:`OrganSegmenter.save`); when given it wins and the registry is not read.

    Raises:
        theralake.registry.tracking.ModelNotFoundError: no such model or alias (a
            ``LookupError``; the message says what the registry has and how to fix it).
        FileNotFoundError: ``weights_dir`` is not a saved segmenter.
        theralake.lake.LakeError: ``lake`` is a folder that holds no lake.

    The returned segmenter's ``registry_version_`` is the registered version loaded.
    """
    from theralake.dosimetry.segmentation import OrganSegmenter
    from theralake.registry import segmenter_model, tracking

    if weights_dir is not None:
        return OrganSegmenter.load(weights_dir)
    if lake is None:
        raise ValueError("load_segmenter needs a lake (for its registry) or weights_dir")
    if not isinstance(lake, Lake):
        lake = Lake(lake, create=False)
    with tempfile.TemporaryDirectory(prefix="theralake-seg-") as tmp:
        try:
            folder, version = tracking.download_model(lake, name, alias, tmp)
        except tracking.ModelNotFoundError as exc:
            raise tracking.ModelNotFoundError(
                f"{exc}; train one with `theralake train-seg --alias {alias}` or pass your "
                "own weights folder (weights.pt + config.json)") from None
        found = [p.parent for p in folder.rglob("config.json") if (p.parent / "weights.pt")
                 .exists()]
        preferred = [p for p in found if p.name == segmenter_model.ARTIFACT]
        if not found:
            raise FileNotFoundError(f"model {name} version {version.version} holds no "
                                    "segmenter weights (weights.pt + config.json)")
        seg = OrganSegmenter.load((preferred or found)[0])
    seg.registry_version_ = str(version.version)
    return seg


# -- command line ----------------------------------------------------------------------------
def train_seg(
    lake: Annotated[Path | None, typer.Option(
        "--lake", help="lake folder (default $THERALAKE_LAKE or ./lake)")] = None,
    epochs: Annotated[int, typer.Option(help="maximum training epochs")] = 200,
    minutes: Annotated[float, typer.Option(
        "--max-minutes", "--minutes", help="stop after this wall time (minutes; --minutes is "
        "the older spelling)")] = 10.0,
    val_fraction: Annotated[float, typer.Option(
        help="fraction of patients held out for Dice (0: none)")] = 0.2,
    alias: Annotated[str, typer.Option(help="registry alias: champion | candidate")
                     ] = "champion",
    spacing_mm: Annotated[float, typer.Option(help="isotropic working voxel size (mm)")
                          ] = 4.0,
    organs: Annotated[str, typer.Option(help="comma-separated organs (labels 1..n)")
                      ] = "liver,spleen,kidney_left,kidney_right",
    name: Annotated[str, typer.Option(help="registered model name")] = DEFAULT_NAME,
    seed: Annotated[int, typer.Option(help="random seed (split and training)")] = 0,
    patch_voxels: Annotated[int, typer.Option(help="training patch edge (voxels)")] = 48,
    patches_per_case: Annotated[int, typer.Option(help="patches per CT per epoch")] = 4,
    batch_size: Annotated[int, typer.Option(help="patches per optimiser step")] = 2,
    channels: Annotated[str, typer.Option(help="U-Net channels per level, comma-separated")
                        ] = "16,32,64,128",
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate")] = 2e-3,
    threads: Annotated[int, typer.Option(
        help="torch CPU threads (0: torch's default; 1 is often fastest on a busy machine)")
                       ] = 0,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Train the CT organ segmenter on the lake's labelled CTs and register it in MLflow."""
    import torch

    from theralake.dosimetry.segmentation import SegmenterConfig
    from theralake.lake import LakeError

    organ_list = tuple(o.strip() for o in organs.split(",") if o.strip())
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        widths = tuple(int(c) for c in channels.split(",") if c.strip())
        if len(widths) < 2:
            raise ValueError(f"--channels needs at least two levels, got {channels!r}")
        if patch_voxels % 2 ** (len(widths) - 1):
            raise ValueError(f"--patch-voxels must be a multiple of {2 ** (len(widths) - 1)} "
                             f"for {len(widths)} levels, got {patch_voxels}")
        the_lake = Lake(lake, create=False)
        config = SegmenterConfig(organs=organ_list, spacing_mm=spacing_mm, max_epochs=epochs,
                                 max_minutes=minutes, seed=seed, patch_voxels=patch_voxels,
                                 patches_per_case=patches_per_case, batch_size=batch_size,
                                 channels=widths,
                                 learning_rate=learning_rate)
        res = train_segmenter(the_lake, config, val_fraction=val_fraction, register_as=name,
                              alias=alias)
    except (LakeError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        print_json({"model_name": res.model_name, "version": res.version, "alias": res.alias,
                    "run_id": res.run_id, "epochs": res.epochs,
                    "train_seconds": res.train_seconds, "train_cases": res.n_train_cases,
                    "held_out_cases": res.n_val_cases, "dice": res.dice,
                    "dice_mean": res.dice_mean if res.dice_per_case else None})
        return
    typer.echo(f"trained on {res.n_train_cases} CTs of {len(res.train_patients)} patients "
               f"({res.epochs} epochs, {res.train_seconds:.1f} s); held out "
               f"{res.n_val_cases} CTs of {len(res.val_patients)} patients")
    if res.dice_per_case:
        typer.echo(f"{'organ':<24}{'Dice':>8}")
        for organ, value in res.dice.items():
            typer.echo(f"{organ:<24}{value:>8.3f}")
        typer.echo(f"{'mean':<24}{res.dice_mean:>8.3f}")
    else:
        typer.echo("no held-out patients: Dice not computed")
    typer.echo(f"registered {res.model_name} version {res.version} as @{res.alias} "
               f"(run {res.run_id}, {res.tracking_uri})")


def register(app: typer.Typer) -> None:
    """Add ``train-seg`` to a Typer app."""
    app.command("train-seg")(train_seg)
