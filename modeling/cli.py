"""``theralake train``, ``evaluate``, ``models list|promote|card`` and ``recommend``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.ingest.cli import LakeOption
from theralake.lake import Lake, LakeError

TaskOption = Annotated[str, typer.Option(help="pfs | os | response | toxicity | dose")]
ModelOption = Annotated[str, typer.Option(
    help="survival: cox, coxnet, rsf, xgb, xgb-aft, deepsurv; response/toxicity: logistic, "
         "xgb; dose: ridge, xgb, voxel (the PET/CT -> dose map network)")]
FeaturesOption = Annotated[str | None, typer.Option(
    "--features", help="feature set: names joined by '+' (e.g. clinical+tumour_dose) or a "
                       "YAML file with include:; default: the task's")]
ConfigOption = Annotated[Path | None, typer.Option(help="modelling YAML (updates the default)")]


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from exc


def _metrics_table(metrics: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("metric", "value", "95 % CI"):
        table.add_column(col)
    for k, v in metrics.items():
        if k.endswith(("_lower", "_upper")):
            continue
        lo, hi = metrics.get(f"{k}_lower"), metrics.get(f"{k}_upper")
        table.add_row(k, f"{v:.4g}", f"{lo:.4g} - {hi:.4g}" if lo is not None else "")
    Console().print(table)


def _trained(res: object, task: str, model: str, metrics: dict[str, float]) -> dict:
    return {"task": task, "model": model, "run_id": res.run_id, "model_name": res.model_name,
            "version": res.version, "metrics": metrics}


def _train_voxel(task: str, config: Path | None, seed: int, register_model: bool,
                 epochs: int | None, lake: Path | None, as_json: bool) -> None:
    from theralake.modeling.dataset import DatasetError, load_modeling_config
    from theralake.modeling.train_voxel import train_voxel

    if task != "dose":
        _fail(ValueError(f"--model voxel is a dose model, not one of task {task!r}"))
    try:
        res = train_voxel(Lake(lake, create=False), load_modeling_config(config), seed,
                          register_model, epochs)
    except (DatasetError, LakeError, ValueError) as exc:
        _fail(exc)
    if as_json:
        print_json({**_trained(res, task, "voxel", res.metrics),
                    "dataset_hash": res.dataset_hash})
        return
    _metrics_table(res.metrics, f"dose / voxel (trained on {len(res.train_patients)} patients, "
                                f"held out {len(res.held_out_patients)})")
    where = f"{res.model_name} version {res.version} @candidate" if res.version else "-"
    typer.echo(f"run {res.run_id}; registered: {where}; dataset {res.dataset_hash[:12]}")


def register(app: typer.Typer) -> None:
    models = typer.Typer(help="The model registry: list, promote (with the gate), cards.",
                         no_args_is_help=True)
    app.add_typer(models, name="models")

    @app.command("train")
    def train_command(task: TaskOption, model: ModelOption, features: FeaturesOption = None,
                      config: ConfigOption = None, seed: int = 0,
                      register_model: Annotated[bool, typer.Option(
                          "--register/--no-register",
                          help="add a registry version with alias @candidate")] = True,
                      epochs: Annotated[int | None, typer.Option(
                          help="voxel model: training epochs (default: the config's)")] = None,
                      lake: LakeOption = None, as_json: JsonOption = False,
                      quiet: QuietOption = False, verbose: VerboseOption = False) -> None:
        """Validate a model by nested cross-validation, fit it on all patients, track it
        (--model voxel: fit on a patient split, score the held-out patients)."""
        from theralake.modeling.dataset import DatasetError, load_modeling_config
        from theralake.modeling.train import train

        warnings.filterwarnings("ignore", category=UserWarning)
        if model == "voxel":
            _train_voxel(task, config, seed, register_model, epochs, lake, as_json)
            return
        try:
            res = train(Lake(lake, create=False), task, model, features,
                        load_modeling_config(config), seed, register_model,
                        progress=not as_json)
        except (DatasetError, LakeError, ValueError) as exc:
            _fail(exc)
        if as_json:
            print_json({**_trained(res, task, model, res.cv.metrics),
                        "dataset_hash": res.dataset.hash, "patients": len(res.dataset.X),
                        "events": res.dataset.n_events, "columns": list(res.dataset.X.columns)})
            return
        _metrics_table(res.cv.metrics, f"{task} / {model} ({len(res.dataset.X)} patients, "
                                        f"{res.dataset.n_events} events)")
        where = f"{res.model_name} version {res.version} @candidate" if res.version else "-"
        typer.echo(f"run {res.run_id}; registered: {where}; dataset {res.dataset.hash[:12]}")

    @app.command("evaluate")
    def evaluate_command(task: TaskOption, model: ModelOption, features: FeaturesOption = None,
                         against: Annotated[str | None, typer.Option(
                             help="a second feature set: paired bootstrap of the C-index "
                                  "difference (survival)")] = None,
                         config: ConfigOption = None, seed: int = 0,
                         lake: LakeOption = None, as_json: JsonOption = False,
                      quiet: QuietOption = False, verbose: VerboseOption = False) -> None:
        """Nested cross-validation only (nothing registered), optionally against a second
        feature set on the same patients."""
        from theralake.modeling.dataset import DatasetError, build_dataset, load_modeling_config
        from theralake.modeling.evaluation import cross_validate
        from theralake.modeling.metrics import paired_c_difference

        warnings.filterwarnings("ignore", category=UserWarning)
        cfg = load_modeling_config(config)
        try:
            the_lake = Lake(lake, create=False)
            ds = build_dataset(the_lake, task, features, cfg)
            cv = cross_validate(ds, model, cfg, seed, progress=not as_json)
            result = {"task": task, "model": model, "feature_set": ds.feature_set,
                      "metrics": cv.metrics}
            if not as_json:
                _metrics_table(cv.metrics, f"{task} / {model} / {ds.feature_set}")
            if against:
                other = build_dataset(the_lake, task, against, cfg)
                common = ds.X.index.intersection(other.X.index)
                cv2 = cross_validate(other, model, cfg, seed, progress=not as_json)
                keep = ds.X.index.isin(common)
                diff = paired_c_difference(
                    ds.y[keep], cv.predictions.loc[common, "risk"].to_numpy(),
                    cv2.predictions.loc[common, "risk"].to_numpy(),
                    cfg["validation"]["bootstrap"], seed)
                result["against"] = {"feature_set": other.feature_set, "metrics": cv2.metrics,
                                     "difference": diff}
                if not as_json:
                    _metrics_table(cv2.metrics, f"{task} / {model} / {other.feature_set}")
                    _metrics_table(diff, f"C({other.feature_set}) - C({ds.feature_set})")
        except (DatasetError, LakeError, ValueError) as exc:
            _fail(exc)
        if as_json:
            print_json(result)

    @models.command("list")
    def models_list(lake: LakeOption = None, as_json: JsonOption = False,
                      quiet: QuietOption = False, verbose: VerboseOption = False) -> None:
        """Registered models: versions, aliases and validation metrics."""
        from theralake.registry.models import list_models

        df = list_models(Lake(lake, create=False))
        if as_json:
            print_json(json.loads(df.to_json(orient="records")) if not df.empty else [])
            return
        typer.echo(df.to_string(index=False, float_format=lambda v: f"{v:.3f}")
                   if not df.empty else "no registered model")

    @models.command("promote")
    def models_promote(name: str, version: str, config: ConfigOption = None,
                       lake: LakeOption = None, as_json: JsonOption = False,
                      quiet: QuietOption = False, verbose: VerboseOption = False) -> None:
        """Set NAME@champion to VERSION if its validation metrics pass the gate."""
        from theralake.modeling.dataset import load_modeling_config
        from theralake.registry.models import PromotionRefused, promote
        from theralake.registry.tracking import ModelNotFoundError

        try:
            card = promote(Lake(lake, create=False), name, version, load_modeling_config(config))
        except (PromotionRefused, ModelNotFoundError, LakeError) as exc:
            _fail(exc)
        if as_json:
            print_json({"name": name, "version": version, "alias": "champion", "card": card})
            return
        typer.echo(f"{name} version {version} is @champion; model card: {card}")

    @models.command("card")
    def models_card(name: str, version: str, lake: LakeOption = None,
                    as_json: JsonOption = False, quiet: QuietOption = False,
                    verbose: VerboseOption = False) -> None:
        """Print the model card of a registered version."""
        from theralake.registry.models import model_card
        from theralake.registry.tracking import ModelNotFoundError

        try:
            card = model_card(Lake(lake, create=False), name, version)
            if as_json:
                print_json({"name": name, "version": version, "card_markdown": card})
            else:
                typer.echo(card)
        except (ModelNotFoundError, LakeError) as exc:
            _fail(exc)

    @app.command("recommend")
    def recommend_command(patient: Annotated[str, typer.Option(help="lake patient_id")],
                          cycle: Annotated[int, typer.Option(help="the cycle to plan")],
                          as_json: JsonOption = False,
                          force: Annotated[bool, typer.Option(
                              "--force", help="recommend even when the dosimetry of an organ "
                              "at risk failed its quality checks")] = False,
                          dry_run: Annotated[bool, typer.Option(
                              "--dry-run", help="print the recommendation without writing it "
                              "to the lake (works on a read-only lake)")] = False,
                          config: ConfigOption = None, lake: LakeOption = None,
                          quiet: QuietOption = False, verbose: VerboseOption = False) -> None:
        """Recommend the activity of the next cycle under the organ limits (champion models).

        Refused when the last measured cycle's dosimetry failed for an organ at risk (see
        the lake's quality table), unless --force."""
        from theralake.modeling.dataset import load_modeling_config
        from theralake.modeling.recommend import RecommendationError, recommend
        from theralake.registry.tracking import ModelNotFoundError

        warnings.filterwarnings("ignore", category=UserWarning)
        try:
            rec = recommend(Lake(lake, create=False), patient, cycle,
                            load_modeling_config(config), force=force, write=not dry_run)
        except (RecommendationError, ModelNotFoundError, LakeError) as exc:
            _fail(exc)
        if as_json:
            print_json({"patient_id": patient, "cycle": cycle,
                        "explanation": rec.explanation, **rec.details()})
            return
        typer.echo(rec.explanation)
        for b in rec.budgets:
            typer.echo(f"  {b.voi:<22} {b.quantity:<16} so far {b.prior_gy:6.1f} Gy, "
                       f"{b.dose_per_gbq_upper:.2f} Gy/GBq (upper), limit {b.limit_gy:g} Gy, "
                       f"allows {b.max_activity_gbq:g} GBq")
