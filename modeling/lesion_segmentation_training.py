"""Train the PET-to-SPECT lesion segmenter on the lake, score it against thresholds, register it.

- :func:`pet_cases`: each patient's pre-therapy PET on its CT, with the lesions contoured there.
- :func:`spect_cases`: every quantitative SPECT whose CT carries lesion contours, with the PET
  network's lesion probability registered (rigidly, CT to CT) from the PET/CT as its prior.
- :func:`compare_methods`: on held-out SPECT/CTs, lesion Dice, detection rate by lesion size and
  false positives of the network (with and without the PET prior) and of today's thresholds.
  The thresholds run as the dosimetry runs them: on the SPECT resampled to the CT, outside the
  contoured organs.
- :func:`train_lesion_segmenter` splits by patient, trains the PET network, then the SPECT
  network, scores, logs to the lake's MLflow store and registers ``lesion-segmenter``.
- ``theralake train-lesion-seg``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.dosimetry.lesion_segmentation import (
    SIZE_BINS_ML,
    LesionCase,
    LesionSegmenter,
    LesionSegmenterConfig,
    lesion_scores,
    size_bin,
)
from theralake.dosimetry.lesions import segment_lesions
from theralake.dosimetry.registration import register_ct, resample_map
from theralake.dosimetry.voi_activity import mask_on, to_grid
from theralake.lake import Lake, LakeError, Volume, views
from theralake.modeling.segmentation_training import ALIASES, split_patients
from theralake.registry import lesion_segmenter_model, segmenter_model, tracking

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_NAME", "THRESHOLDS", "LesionTraining", "compare_methods",
           "load_lesion_segmenter", "pet_cases", "register", "spect_cases",
           "train_lesion_segmenter"]

DEFAULT_NAME = "lesion-segmenter"
EXPERIMENT = "lesion-segmentation"
#: today's threshold methods (``lesions`` of the dosimetry settings): name -> (method, fraction)
THRESHOLDS = {"adaptive_41": ("adaptive", 0.41), "percent_max_41": ("percent_max", 0.41)}


@dataclass
class LesionTraining:
    """What :func:`train_lesion_segmenter` did: the model, its registry entry, its scores."""

    segmenter: LesionSegmenter
    model_name: str
    version: str
    alias: str
    run_id: str
    train_patients: list[str]
    val_patients: list[str]
    n_pet_cases: int
    n_spect_cases: int
    lesions: pd.DataFrame  # one row per held-out contoured lesion and method
    images: pd.DataFrame  # one row per held-out SPECT and method: dice, false_positives

    def summary(self) -> pd.DataFrame:
        """Per method: mean Dice, detection rate (all and by size), false positives per image."""
        return summarise(self.lesions, self.images)


# -- data ------------------------------------------------------------------------------------
def _contours(lake: Lake, ct: Volume, ct_id: str) -> tuple[list[np.ndarray], np.ndarray]:
    """(the lesion masks, the union of the organ masks) contoured on a CT (imported ones)."""
    vois = views.vois_on_image(lake, ct_id)
    vois = vois[vois.source.isin(views.IMPORTED_VOI_SOURCES)] if not vois.empty else vois
    lesions, organs = [], np.zeros(ct.array.shape, bool)
    for row in vois.to_dict("records"):
        mask = mask_on(Volume.from_row(row), ct)
        if row["voi"].startswith("lesion_"):
            lesions.append(mask)
        elif row["voi"] != "body":
            organs |= mask
    return lesions, organs


def _union(masks: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    return np.any(masks, axis=0) if masks else np.zeros(shape, bool)


def _resolution(row: dict) -> float:
    value = row.get("resolution_fwhm_mm")
    return float(value) if value is not None and np.isfinite(value) else float("nan")


def pet_cases(lake: Lake, patients: list[str] | None = None) -> list[LesionCase]:
    """Each patient's pre-therapy PET/CT with lesion contours (patients without are logged)."""
    ids = patients if patients is not None else sorted(
        lake.sql("SELECT DISTINCT patient_id FROM images WHERE kind = 'pet'").patient_id)
    out = []
    for pid in ids:
        pet_row = views.pre_therapy_pet(lake, pid)
        ct_row = views.frame_ct(lake, pid, pet_row["frame_of_reference_key"]) if pet_row \
            else None
        if ct_row is None:
            log.info("patient %s: no pre-therapy PET/CT", pid)
            continue
        ct = Volume.from_row(ct_row)
        lesions, _ = _contours(lake, ct, ct_row["id"])
        if not lesions:
            log.info("patient %s: no lesion contoured on the PET/CT", pid)
            continue
        out.append(LesionCase(pid, ct, Volume.from_row(pet_row),
                              ct.like(_union(lesions, ct.array.shape).astype(np.uint8)),
                              None, _resolution(pet_row)))
    return out


@dataclass
class SpectCase:
    """A SPECT/CT with its lesion contours, organ union and PET prior (on the CT)."""

    case: LesionCase
    lesions: list[np.ndarray]
    organs: np.ndarray


def spect_cases(lake: Lake, segmenter: LesionSegmenter, patients: list[str] | None = None
                ) -> list[SpectCase]:
    """Every quantitative SPECT whose CT carries lesion contours, with its PET prior (None
    when the patient has no PET/CT)."""
    images = lake.read("images", "kind IN ('spect', 'ct', 'pet')",
                       columns=["id", "patient_id", "cycle", "kind", "units", "time_h",
                                "series_key", "frame_of_reference_key", "params_hash",
                                "created_utc"])
    if patients is not None:
        images = images[images.patient_id.isin(patients)]
    out, priors = [], {}
    for (pid, _cycle), group in images[images.cycle.notna()].groupby(["patient_id", "cycle"]):
        for spect, ct_meta in views.pair_time_points(group):
            if ct_meta is None:
                continue
            ct_row = lake.read("images", "id = ?", [ct_meta["id"]]).iloc[0].to_dict()
            ct = Volume.from_row(ct_row)
            lesions, organs = _contours(lake, ct, ct_row["id"])
            if not lesions:
                continue
            if pid not in priors:
                priors[pid] = _pet_prior(lake, pid, segmenter)
            spect_row = lake.read("images", "id = ?", [spect["id"]]).iloc[0].to_dict()
            prior = _carried(priors[pid], ct)
            out.append(SpectCase(LesionCase(
                pid, ct, Volume.from_row(spect_row),
                ct.like(_union(lesions, ct.array.shape).astype(np.uint8)), prior,
                _resolution(spect_row)), lesions, organs))
    return out


def _pet_prior(lake: Lake, pid: str, segmenter: LesionSegmenter
               ) -> tuple[Volume, Volume] | None:
    """(the PET network's lesion probability, the PET's CT), or None without a PET/CT."""
    pet_row = views.pre_therapy_pet(lake, pid)
    ct_row = views.frame_ct(lake, pid, pet_row["frame_of_reference_key"]) if pet_row else None
    if ct_row is None:
        return None
    ct = Volume.from_row(ct_row)
    return segmenter.probability(ct, Volume.from_row(pet_row), network="pet"), ct


def _carried(prior: tuple[Volume, Volume] | None, ct: Volume) -> Volume | None:
    """The PET prior registered (rigid, CT to CT) onto another CT."""
    if prior is None:
        return None
    probability, pet_ct = prior
    reg = register_ct(ct, pet_ct, deformable=False)
    if reg.failed:
        log.warning("PET/CT to SPECT/CT registration flagged (%s)", "; ".join(reg.reasons))
    return resample_map(probability, reg.transform, ct, 0.0)


# -- scores ----------------------------------------------------------------------------------
def compare_methods(segmenter: LesionSegmenter, cases: list[SpectCase]
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per lesion, per image) scores of the network, the network without its PET prior and
    :data:`THRESHOLDS` on held-out SPECT/CTs."""
    c = segmenter.config
    lesion_rows, image_rows = [], []
    for n, sc in enumerate(cases):
        case = sc.case
        voxel_ml = case.ct.voxel_volume_ml
        spect = to_grid(case.uptake, case.ct).clip(0, None)
        found = {
            "network": segmenter.segment(case.ct, case.uptake, case.prior),
            "network_no_prior": segmenter.segment(case.ct, case.uptake, None),
            **{name: segment_lesions(spect, voxel_ml, method=method, fraction=fraction,
                                     exclude=sc.organs, min_volume_ml=c.min_volume_ml)
               for name, (method, fraction) in THRESHOLDS.items()},
        }
        for method, lesions in found.items():
            s = lesion_scores(sc.lesions, [les.mask for les in lesions], voxel_ml)
            image_rows.append({"image": n, "patient_id": case.patient_id, "method": method,
                               "dice": s.dice, "false_positives": s.false_positives,
                               "found": len(lesions)})
            lesion_rows += [{"image": n, "patient_id": case.patient_id, "method": method,
                             "volume_ml": v, "size": size_bin(v), "detected": d, "dice": b}
                            for v, d, b in zip(s.volumes_ml, s.detected, s.best_dice,
                                               strict=True)]
    return pd.DataFrame(lesion_rows), pd.DataFrame(image_rows)


def summarise(lesions: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean Dice per image, detection rate overall and per size bin, false
    positives per image."""
    if images.empty:
        return pd.DataFrame()
    out = images.groupby("method", sort=False).agg(
        dice=("dice", "mean"), false_positives=("false_positives", "mean"))
    out["detection"] = lesions.groupby("method").detected.mean()
    by_size = lesions.pivot_table(index="method", columns="size", values="detected",
                                  aggfunc="mean")
    order = [size_bin(v) for v in (0.0, *SIZE_BINS_ML)]
    by_size = by_size[[b for b in order if b in by_size.columns]]
    out = out.join(by_size.add_prefix("detection "))
    out["lesions"] = lesions.groupby("method").size()
    return out


# -- training --------------------------------------------------------------------------------
def spect_resolution_mm(lake: Lake) -> float:
    """The median resolution recorded on the lake's quantitative SPECTs (the PET network's
    smoothing target), else the config's default."""
    found = lake.sql("SELECT median(resolution_fwhm_mm) r FROM images WHERE kind = 'spect' "
                     "AND units = 'BQML' AND resolution_fwhm_mm > 0").r.iloc[0]
    return float(found) if pd.notna(found) else LesionSegmenterConfig().spect_fwhm_mm



def train_lesion_segmenter(lake: Lake, config: LesionSegmenterConfig | None = None,
                           val_fraction: float = 0.25, register_as: str = DEFAULT_NAME,
                           alias: str = "champion") -> LesionTraining:
    """Train on the lake's contoured PET/CTs and SPECT/CTs (held-out patients scored against
    the thresholds), log to its MLflow store and register the model with ``alias``.

    Logs params (the config, split sizes) and metrics ``val_dice_<method>``,
    ``val_detection_<method>``, ``val_false_positives_<method>``, the train times and the
    per-lesion scores (``lesion_scores.csv``).

    Raises:
        ValueError: no contoured PET/CT or SPECT/CT to train on, or a bad alias.
    """
    import mlflow

    from theralake import __version__

    config = config or LesionSegmenterConfig(spect_fwhm_mm=spect_resolution_mm(lake))
    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, got {alias!r}")
    pets = pet_cases(lake)
    if not pets:
        raise ValueError(f"no pre-therapy PET/CT with lesion contours in the lake at {lake.path}")
    train_p, val_p = split_patients([c.patient_id for c in pets], val_fraction, config.seed)
    seg = LesionSegmenter(config).fit_pet([c for c in pets if c.patient_id in set(train_p)])
    spects = spect_cases(lake, seg)
    train = [sc.case for sc in spects if sc.case.patient_id in set(train_p)]
    if not train:
        raise ValueError(f"no SPECT/CT with lesion contours of the training patients in the "
                         f"lake at {lake.path}")
    seg.fit_spect(train)
    lesions, images = compare_methods(
        seg, [sc for sc in spects if sc.case.patient_id in set(val_p)])
    summary = summarise(lesions, images)
    with tracking.start_run(lake, EXPERIMENT, run_name=f"{register_as}@{alias}",
                            tags={"theralake_version": __version__}) as run:
        mlflow.log_params({**{k: str(v) for k, v in vars(config).items() if k != "extra"},
                           "val_fraction": val_fraction, "n_train_patients": len(train_p),
                           "n_val_patients": len(val_p), "n_pet_cases": len(pets),
                           "n_spect_cases": len(spects)})
        metrics = {f"train_seconds_{k}": v for k, v in seg.train_seconds_.items()}
        for method, row in summary.iterrows():
            metrics.update({f"val_dice_{method}": row.dice,
                            f"val_detection_{method}": row.detection,
                            f"val_false_positives_{method}": row.false_positives})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        if not lesions.empty:
            mlflow.log_text(lesions.to_csv(index=False), "lesion_scores.csv")
        version = segmenter_model.register_weights(
            lake, seg.save, lesion_segmenter_model.LesionSegmenterModel(),
            lesion_segmenter_model.ARTIFACT, lesion_segmenter_model.signature(),
            lesion_segmenter_model.input_example(), register_as, alias)
    return LesionTraining(seg, register_as, version, alias, run.info.run_id, train_p, val_p,
                          len(pets), len(spects), lesions, images)


def load_lesion_segmenter(lake: Lake, spec: str | None = None) -> tuple[LesionSegmenter, str]:
    """The segmenter ``spec`` names (a weights folder, or ``name[@alias]`` in the lake's
    registry; default ``lesion-segmenter@champion``), with the name it is recorded under.

    Raises:
        theralake.registry.tracking.ModelNotFoundError: no such model or alias.
        FileNotFoundError: a folder that is not a saved lesion segmenter.
    """
    return tracking.load_by_spec(lake, spec or f"{DEFAULT_NAME}@champion",
                                 LesionSegmenter.load, "spect.pt",
                                 "train one with `theralake train-lesion-seg`")


# -- command line ----------------------------------------------------------------------------
def register(app: typer.Typer) -> None:
    @app.command("train-lesion-seg")
    def train_lesion_seg(
        lake: Annotated[Path | None, typer.Option(
            "--lake", help="lake folder (default $THERALAKE_LAKE or ./lake)")] = None,
        pet_epochs: Annotated[int, typer.Option(help="PET network epochs")] = 100,
        spect_epochs: Annotated[int, typer.Option(help="SPECT fine-tuning epochs")] = 100,
        minutes: Annotated[float, typer.Option(
            help="maximum minutes for each of the two networks")] = 5.0,
        spacing_mm: Annotated[float, typer.Option(help="working voxel size (mm)")] = 4.0,
        spect_fwhm_mm: Annotated[float | None, typer.Option(
            help="the SPECT resolution the PET is smoothed to (mm; default: the median "
            "recorded on the lake's SPECTs, else 15)")] = None,
        val_fraction: Annotated[float, typer.Option(
            help="fraction of patients held out for scoring")] = 0.25,
        alias: Annotated[str, typer.Option(help="registry alias: champion | candidate")
                         ] = "champion",
        seed: Annotated[int, typer.Option(help="random seed (split and training)")] = 0,
        as_json: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False,
    ) -> None:
        """Train the PET-to-SPECT lesion segmenter, score it against the thresholds on held-out
        patients and register it in MLflow."""
        try:
            the_lake = Lake(lake, create=False)
            config = LesionSegmenterConfig(
                pet_epochs=pet_epochs, spect_epochs=spect_epochs, pet_minutes=minutes,
                spect_minutes=minutes, spacing_mm=spacing_mm, seed=seed,
                spect_fwhm_mm=spect_fwhm_mm or spect_resolution_mm(the_lake))
            res = train_lesion_segmenter(the_lake, config, val_fraction, alias=alias)
        except (LakeError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        table = res.summary()
        if as_json:
            print_json({"model": f"{res.model_name} v{res.version}", "alias": res.alias,
                        "train_patients": len(res.train_patients),
                        "val_patients": len(res.val_patients),
                        "methods": {m: {k: (None if pd.isna(v) else float(v))
                                        for k, v in row.items()}
                                    for m, row in table.iterrows()}})
            return
        if not quiet:
            typer.echo(f"registered {res.model_name} v{res.version} @{res.alias}; held out "
                       f"{len(res.val_patients)} patients")
            typer.echo(table.round(3).to_string() if not table.empty
                       else "no held-out SPECT/CT with lesion contours: nothing scored")
