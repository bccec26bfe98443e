"""Cohort HTML report (``theralake report --cohort``): counts, Kaplan-Meier curves by predicted
risk and by tumour-dose tertile, the registered models' validation metrics and calibration,
feature importance, and the distributions of the organ and lesion doses."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sksurv.util import Surv

from theralake.lake import Lake, views
from theralake.modeling import plots
from theralake.modeling.dataset import build_dataset, load_modeling_config
from theralake.modeling.estimators import unwrap
from theralake.pipelines import report_figures as figs
from theralake.pipelines.report_html import (
    Html,
    facts,
    figure,
    figures_row,
    guarded,
    note,
    num,
    page,
    png_file,
    sig,
    subsection,
    table,
    unavailable,
    with_ci,
    write,
)
from theralake.registry import tracking
from theralake.registry.models import CHAMPION, list_models, load_model

MIN_KM_PATIENTS = 9  # three per tertile
HIDDEN_METRICS = ("tau_d", "horizon_d")
FIGURES = {"survival": ("calibration.png",), "binary": ("calibration.png", "decision_curve.png"),
           "regression": ("dose_predicted_vs_measured.png",)}
COEFFICIENT_UNIT = {"survival": "log hazard ratio per SD", "binary": "log odds ratio per SD",
                    "regression": "change of ln(Gy/GBq) per SD"}


def cohort_report(lake: Lake, out: Path, config: dict | None = None) -> Path:
    """Write the self-contained HTML report of the lake's cohort; returns ``out``."""
    config = config or load_modeling_config()
    od = views.dosimetry(lake, config["dosimetry_methods"])
    models = list_models(lake)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sections = [
            ("cohort", "Cohort", lambda: _counts(lake, od, models)),
            ("survival", "Survival by predicted risk and tumour dose",
             lambda: _survival(lake, od, config, folder)),
            ("models", "Models: validation and calibration",
             lambda: _models(lake, models, config, folder)),
            ("importance", "Feature importance",
             lambda: _importance(lake, models, config, folder)),
            ("doses", "Dose distributions", lambda: _doses(od)),
            ("quality", "Quality record", lambda: _quality(lake)),
        ]
        built = [(a, t, guarded(f, t.lower())) for a, t, f in sections]
    return write(out, page("Cohort report", lake.path, built,
                           "Radiopharmaceutical therapy: dosimetry, outcomes and models"))


# ------------------------------------------------------------------------ counts
def _counts(lake: Lake, od: pd.DataFrame, models: pd.DataFrame) -> Html:
    one = lambda q: int(lake.sql(q).iloc[0, 0])  # noqa: E731
    cycles = one("SELECT count(*) FROM (SELECT DISTINCT patient_id, cycle FROM "
                 "administrations WHERE purpose = 'therapy')")
    block = facts([
        ("patients", one("SELECT count(DISTINCT patient_id) FROM patients")),
        ("therapy cycles", cycles),
        ("patients with images", one("SELECT count(DISTINCT patient_id) FROM images")),
        ("images", one("SELECT count(*) FROM images")),
        ("patient-cycles with dosimetry",
         len(od[["patient_id", "cycle"]].drop_duplicates()) if not od.empty else 0),
        ("dose maps", one("SELECT count(*) FROM dose_maps")),
        ("recommendations", one("SELECT count(*) FROM recommendations")),
        ("registered model versions", len(models))])
    images = lake.sql("SELECT kind AS image, count(*) AS n, count(DISTINCT patient_id) AS "
                      "patients FROM images GROUP BY kind ORDER BY kind")
    outcomes = lake.sql("SELECT endpoint, count(DISTINCT patient_id) AS patients, "
                        "coalesce(sum(CAST(event AS INTEGER)), sum(CAST(value >= 1 AS "
                        "INTEGER))) AS events, median(time_d) AS median_d FROM outcomes "
                        "GROUP BY endpoint ORDER BY endpoint")
    activity = lake.sql("SELECT median(activity_mbq) AS med, min(activity_mbq) AS lo, "
                        "max(activity_mbq) AS hi FROM administrations WHERE purpose = 'therapy'")
    parts = [block]
    if activity.med.notna().any():
        a = activity.iloc[0]
        parts.append(note(f"Administered therapy activity per cycle: median "
                          f"{num(a.med / 1000, 2)} GBq (range {num(a.lo / 1000, 2)}–"
                          f"{num(a.hi / 1000, 2)} GBq)."))
    parts.append(subsection("Images", table(images.astype(str), ["image"]) if not images.empty
                            else unavailable("no images in the lake")))
    parts.append(subsection("Outcomes", table(pd.DataFrame({
        "endpoint": outcomes.endpoint, "patients": outcomes.patients.astype(str),
        "events or positives": outcomes.events.map(lambda v: num(v, 0)),
        "median time (d)": outcomes.median_d.map(lambda v: num(v, 0))}),
        ["endpoint"]) if not outcomes.empty else unavailable("no outcomes in the lake")))
    return Html("".join(parts))


# ------------------------------------------------------------------------ survival
def _outcome(lake: Lake, endpoint: str) -> pd.DataFrame:
    out = lake.read("outcomes", "endpoint = ? AND time_d IS NOT NULL AND event IS NOT NULL",
                    [endpoint])
    return views.current(out, ["patient_id"]).set_index("patient_id")[["event", "time_d"]]


def _km(outcome: pd.DataFrame, groups: pd.Series, title: str, path: Path) -> tuple[Html, float]:
    """Kaplan-Meier figure (modeling.plots) of the patients in both ``outcome`` and ``groups``."""
    common = outcome.index.intersection(groups.dropna().index)
    o = outcome.loc[common]
    y = Surv.from_arrays(o.event.astype(bool).to_numpy(), o.time_d.to_numpy(float))
    p = plots.km_by_group(y, groups.loc[common].astype(str), title, path)
    return png_file(path, title), p


def _survival(lake: Lake, od: pd.DataFrame, config: dict, folder: Path) -> Html:
    tasks = {t: s for t, s in config["tasks"].items() if s["kind"] == "survival"}
    preds = lake.read("predictions", "target = 'risk'")
    tumour = od[(od.cycle == 1) & (od.voi == "tumor_total")].set_index("patient_id") \
        .absorbed_dose_gy if not od.empty else pd.Series(dtype=float)
    parts = []
    for task, spec in tasks.items():
        outcome = _outcome(lake, spec["endpoint"])
        if outcome.empty:
            parts.append(subsection(task, unavailable(f"no {spec['endpoint']} outcomes")))
            continue
        figures, notes = [], []
        mine = preds[preds.task == task]
        if mine.empty:
            notes.append(unavailable(f"no out-of-fold {task} predictions (run theralake train "
                                     f"--task {task})"))
        else:
            run = views.current(mine, ["task"]).model_uri.iloc[0]
            risk = mine[mine.model_uri == run].set_index("patient_id").value
            if len(risk.index.intersection(outcome.index)) < MIN_KM_PATIENTS:
                notes.append(unavailable(f"fewer than {MIN_KM_PATIENTS} patients with {task} "
                                         "predictions and outcomes"))
            else:
                groups = plots.tertiles(risk, ("low risk", "mid risk", "high risk"))
                fig, p = _km(outcome, groups, f"{task}: predicted risk",
                             folder / f"km_{task}_risk.png")
                figures.append(fig)
                notes.append(note(f"{task}: tertiles of the out-of-fold risk of {run}; "
                                  f"log-rank p = {p:.3g}."))
        dose = tumour[tumour.index.isin(outcome.index)].dropna()
        if len(dose) < MIN_KM_PATIENTS:
            notes.append(unavailable(f"fewer than {MIN_KM_PATIENTS} patients with a cycle-1 "
                                     f"tumour dose and {spec['endpoint']} outcomes"))
        else:
            groups = plots.tertiles(dose, ("low dose", "mid dose", "high dose"))
            fig, p = _km(outcome, groups, f"{task}: tumour dose tertile",
                         folder / f"km_{task}_dose.png")
            figures.append(fig)
            edges = dose.quantile([1 / 3, 2 / 3]).to_numpy()
            notes.append(note(f"{task}: cycle-1 tumour (tumor_total) absorbed dose tertiles, "
                              f"cut at {num(edges[0], 1)} and {num(edges[1], 1)} Gy; log-rank "
                              f"p = {p:.3g}."))
        parts.append(subsection(f"{task} ({spec['endpoint']})", figures_row(*figures),
                                *notes))
    return Html("".join(parts)) if parts else unavailable("no survival task in the config")


# ------------------------------------------------------------------------ models
def _run_id(lake: Lake, name: str, version: int) -> str:
    return tracking.client(lake).get_model_version(name, str(version)).run_id


def _shown_version(rows: pd.DataFrame) -> pd.Series:
    """The @champion version of a registered model, else its newest."""
    champion = rows[rows.aliases.str.contains(f"@{CHAMPION}", regex=False)]
    return (champion if not champion.empty else rows).sort_values("version").iloc[-1]


def _kind(lake: Lake, run_id: str) -> str:
    return tracking.client(lake).get_run(run_id).data.tags.get("kind", "")


def _metric_tables(metrics: dict[str, float], targets: list[str]) -> tuple[dict, pd.DataFrame]:
    """The run's metrics as ``value (lower–upper)``: overall ones, and those of each target
    (``<target>_<metric>``) as a targets x metrics table."""
    overall, per_target = {}, {}
    for k in sorted(metrics):
        if k.endswith(("_lower", "_upper")) or k in HIDDEN_METRICS:
            continue
        text = sig(metrics[k]) if k.startswith("logrank_p") else with_ci(
            metrics[k], metrics.get(f"{k}_lower"), metrics.get(f"{k}_upper"))
        target = next((t for t in targets if k.startswith(f"{t}_")), None)
        if target:
            per_target.setdefault(figs.label(target), {})[k[len(target) + 1:]] = text
        else:
            overall[k] = text
    return overall, pd.DataFrame.from_dict(per_target, orient="index")


def _models(lake: Lake, models: pd.DataFrame, config: dict, folder: Path) -> Html:
    if models.empty:
        return unavailable("no registered model (run theralake train)")
    c = tracking.client(lake)
    targets = sorted({t for s in config["tasks"].values() for t in s.get("targets", [])},
                     key=len, reverse=True)
    by_kind: dict[str, dict[str, dict]] = {}
    per_target = []
    for m in models.itertuples():
        run = c.get_run(_run_id(lake, m.name, m.version))
        params = run.data.params
        overall, targets_table = _metric_tables(run.data.metrics, targets)
        column = f"{m.name} v{m.version}"
        by_kind.setdefault(run.data.tags.get("kind", "other"), {})[column] = {
            "aliases": m.aliases or "–", "algorithm": m.model, "feature set": m.feature_set,
            "patients": params.get("n_patients", "–"), "events": params.get("n_events", "–"),
            **overall}
        if not targets_table.empty:
            per_target.append(subsection(f"{column}: per target", table(
                targets_table.fillna("–").rename_axis("target").reset_index())))
    parts = [note("Validation metrics of each registered version from its MLflow run "
                  "(out-of-fold predictions of the nested cross-validation), with bootstrap "
                  "95 % intervals in brackets.")]
    for kind, columns in by_kind.items():
        df = pd.DataFrame(columns).fillna("–").rename_axis("metric").reset_index()
        parts.append(subsection(f"{kind} models", table(df)))
    parts += per_target
    figures = []
    for name, versions in models.groupby("name"):
        v = _shown_version(versions)
        run_id = _run_id(lake, name, v.version)
        for artifact in FIGURES.get(_kind(lake, run_id), ()):
            try:
                path = c.download_artifacts(run_id, f"validation/{artifact}", str(folder))
            except Exception:  # noqa: BLE001 - a run without the figure
                continue
            figures.append(png_file(Path(path), artifact, f"{name} v{v.version} "
                                    f"({v.aliases or 'no alias'}): {artifact[:-4]}"))
    parts.append(subsection("Calibration", *figures) if figures else subsection(
        "Calibration", unavailable("the model runs hold no calibration figures")))
    return Html("".join(parts))


# ------------------------------------------------------------------------ importance
def coefficients(model: object) -> pd.Series | pd.DataFrame | None:
    """Coefficients of a linear model per (preprocessed, standardised) feature: a Series, or
    a DataFrame (features x targets) for the multi-target dose model; None when not linear."""
    targets = getattr(model, "models_", None)
    if targets is not None:
        cols = {t: coefficients(unwrap(m.estimator_)) for t, m in targets.items()}
        if any(v is None for v in cols.values()):
            return None
        return pd.DataFrame(cols)
    pipe = unwrap(model)
    coef = getattr(pipe[-1] if hasattr(pipe, "steps") else pipe, "coef_", None)
    if coef is None:
        return None
    coef = np.asarray(coef)
    coef = coef[0] if coef.ndim == 2 and coef.shape[0] == 1 else \
        coef[:, -1] if coef.ndim == 2 else coef
    names = pipe[:-1].get_feature_names_out() if hasattr(pipe, "steps") else \
        np.asarray(getattr(pipe, "feature_names_in_", range(len(coef))))
    return pd.Series(coef, index=[str(n) for n in names])


def permutation(model: object, X: pd.DataFrame, y: object, kind: str, seed: int = 0
                ) -> pd.Series:
    """Mean drop of the model's score (C-index, AUC, or minus the mean absolute log error of
    the dose) when a feature is shuffled, over 5 repeats."""
    from sklearn.inspection import permutation_importance

    def log_error(est: object, X_: pd.DataFrame, y_: pd.DataFrame) -> float:
        return -float(np.nanmean(np.abs(np.log(est.predict(X_)) - np.log(np.asarray(y_)))))

    scoring = {"binary": "roc_auc", "regression": log_error}.get(kind)
    res = permutation_importance(model, X, y, scoring=scoring, n_repeats=5, random_state=seed)
    return pd.Series(res.importances_mean, index=X.columns)


def _importance(lake: Lake, models: pd.DataFrame, config: dict, folder: Path) -> Html:
    if models.empty:
        return unavailable("no registered model (run theralake train)")
    parts = []
    for name, versions in models.groupby("name"):
        v = _shown_version(versions)
        alias = CHAMPION if CHAMPION in (v.aliases or "") else "candidate"
        title = f"{name} v{v.version} ({v.model}, {v.feature_set})"
        kind = _kind(lake, _run_id(lake, name, v.version))
        try:
            model, _ = load_model(lake, name, alias, folder / name)
        except (tracking.ModelNotFoundError, OSError, ValueError) as exc:
            parts.append(subsection(title, unavailable(f"the model cannot be loaded: {exc}")))
            continue
        coef = coefficients(model)
        if isinstance(coef, pd.DataFrame):
            fig = figs.importance_heatmap(coef.fillna(0.0), title, COEFFICIENT_UNIT[kind])
            what = (f"coefficients per target on standardised features, in "
                    f"{COEFFICIENT_UNIT[kind]} (0: not selected)")
        elif coef is not None:
            fig = figs.importance_bars(coef, title, COEFFICIENT_UNIT.get(kind, "coefficient"))
            what = (f"coefficients on standardised features after selection, in "
                    f"{COEFFICIENT_UNIT.get(kind, 'model units')}")
        else:
            ds = build_dataset(lake, v.task, v.feature_set, config)
            X = ds.X.reindex(columns=list(model.feature_names_in_))
            fig = figs.importance_bars(permutation(model, X, ds.y, kind), title,
                                       "score drop when shuffled")
            what = f"permutation importance on the lake's current {v.task} dataset"
        parts.append(subsection(title, figure(fig, f"{name} feature importance",
                                              f"{name}: {what}.")))
    return Html("".join(parts))


# ------------------------------------------------------------------------ doses
def _doses(od: pd.DataFrame) -> Html:
    if od.empty:
        return unavailable("no organ dosimetry in the lake")
    df = od[od.voi != "body"].assign(group=lambda d: d.voi.where(
        ~d.voi.str.startswith("lesion_"), "lesions (each)"))
    known = [v for v in figs.ORGAN_COLOURS if v in set(df.group)]
    order = known + sorted(set(df.group) - set(known) - {"lesions (each)"}) + (
        ["lesions (each)"] if (df.group == "lesions (each)").any() else [])
    summary = df.groupby("group").agg(
        n=("absorbed_dose_gy", "size"), median=("absorbed_dose_gy", "median"),
        q1=("absorbed_dose_gy", lambda s: s.quantile(0.25)),
        q3=("absorbed_dose_gy", lambda s: s.quantile(0.75)), top=("absorbed_dose_gy", "max"),
        per_gbq=("dose_per_activity_gy_per_gbq", "median")).loc[order]
    methods = df.groupby("method").size()
    return Html(
        figure(figs.dose_boxplot(df, order), "absorbed dose per VOI",
               "Absorbed dose per VOI and cycle (one dosimetry method per patient: "
               + ", ".join(f"{m} {n} rows" for m, n in methods.items()) + ").")
        + table(pd.DataFrame({
            "VOI": [figs.label(g) for g in summary.index], "patient-cycles": summary.n,
            "median (Gy)": summary["median"].map(num),
            "IQR (Gy)": [f"{num(a)}–{num(b)}" for a, b in zip(summary.q1, summary.q3,
                                                             strict=True)],
            "max (Gy)": summary.top.map(num),
            "median dose per activity (Gy/GBq)": summary.per_gbq.map(num)})))


# ------------------------------------------------------------------------ quality
def _quality(lake: Lake) -> Html:
    """Patient-cycles by dosimetry quality, and how often each check warned or failed."""
    found = views.quality(lake)
    if found.empty:
        return unavailable("no quality record in the lake (run theralake dosimetry)")
    cycles = found[found.check == "cycle"]
    problems = found[(found.status != "pass") & (found.check != "cycle")]
    counts = cycles.status.value_counts()
    head = facts([(f"patient-cycles {s}", int(counts.get(s, 0))) for s in ("pass", "warn",
                                                                         "fail")])
    if problems.empty:
        return Html(head + note("Every check passed."))
    by_check = problems.groupby(["check", "status"]).agg(
        findings=("id", "size"), patient_cycles=("patient_id", "nunique"),
        example=("message", "first")).reset_index()
    return Html(head + table(by_check.rename(columns={
        "patient_cycles": "patient-cycles", "example": "an example"}), ["check", "status"],
        wrap=["an example"]) + note("Each patient's report lists its own findings; the lake's "
                                    "quality table holds them all."))
