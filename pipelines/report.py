"""Per-patient HTML report (``theralake report --patient``) and the ``report`` command.

The report reads only the lake: administered activities, CT slices with the dose map and the
VOI contours of each cycle, the TAC fits with their data, the organ and lesion doses with BED,
EQD2 and the organ limits of the modelling config, the DVHs, and the latest activity
recommendation with every number it rests on. A section whose data the lake lacks says so.
The cohort report is :func:`theralake.pipelines.report_cohort.cohort_report`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.dosimetry.kinetics import TacFit
from theralake.dosimetry.voi_activity import mask_on, to_grid
from theralake.ingest.cli import LakeOption
from theralake.lake import Lake, LakeError, Volume, views
from theralake.modeling.cli import ConfigOption
from theralake.modeling.dataset import load_modeling_config
from theralake.modeling.recommend import ACTIVITY_RANGE
from theralake.pipelines import report_figures as figs
from theralake.pipelines.report_html import (
    Html,
    badge,
    esc,
    facts,
    figure,
    guarded,
    note,
    num,
    page,
    sig,
    subsection,
    table,
    unavailable,
    write,
)

LESION_PANELS = 3  # TAC panels for the lesions with the highest cycle-1 dose


class ReportError(ValueError):
    """A report cannot be written (unknown patient, ...); the message says why."""


def patient_report(lake: Lake, patient_id: str, out: Path, config: dict | None = None
                   ) -> Path:
    """Write the self-contained HTML report of one patient; returns ``out``.

    Raises:
        ReportError: the patient is not in the lake.
    """
    config = config or load_modeling_config()
    patient = lake.read("patients", "patient_id = ?", [patient_id])
    if patient.empty:
        raise ReportError(f"no patient {patient_id!r} in the lake at {lake.path}")
    od = views.dosimetry(lake, config["dosimetry_methods"], patient_id)
    admins = lake.read("administrations", "patient_id = ?", [patient_id])
    sections = [
        ("patient", "Patient", lambda: _patient(
            patient.iloc[0], lake.read("clinical", "patient_id = ?", [patient_id]), admins,
            od)),
        ("activities", "Administered activities", lambda: _activities(admins)),
        ("images", "Images: dose and VOIs", lambda: _images(lake, patient_id, od)),
        ("kinetics", "Time-activity curves", lambda: _kinetics(lake, patient_id, od, config)),
        ("doses", "Organ and lesion doses", lambda: _doses(od, admins, config)),
        ("quality", "Quality record", lambda: _quality(lake, patient_id, config)),
        ("limits", "Organ limits", lambda: _limits(od, config)),
        ("dvh", "Dose-volume histograms", lambda: _dvhs(lake, patient_id)),
        ("recommendation", "Recommendation", lambda: _recommendation(lake, patient_id)),
    ]
    built = [(a, t, guarded(f, t.lower())) for a, t, f in sections]
    return write(out, page(f"Dosimetry report: patient {patient_id}", lake.path, built,
                           "Radiopharmaceutical therapy: image-based dosimetry"))


# ------------------------------------------------------------------------ sections
def _therapy(admins: pd.DataFrame) -> pd.DataFrame:
    return admins[admins.purpose == "therapy"].sort_values(["cycle", "administration_h"])


def _patient(p: pd.Series, clinical: pd.DataFrame, admins: pd.DataFrame, od: pd.DataFrame
             ) -> Html:
    """Demographics (the patients table, else the clinical one), the treatment, and the
    baseline clinical variables."""
    values = {r.variable: r.value_text if pd.isna(r.value_num) else r.value_num
              for r in views.current(clinical, ["variable"]).itertuples()}
    height_m = p.height_m if pd.notna(p.height_m) else values.get("height_cm", np.nan) / 100
    therapy = _therapy(admins)
    head = facts([
        ("patient id", p.patient_id), ("sex", p.sex or values.get("sex") or "–"),
        ("age (y)", num(p.age_y if pd.notna(p.age_y) else values.get("age_y"), 0)),
        ("weight (kg)", num(p.weight_kg if pd.notna(p.weight_kg) else values.get("weight_kg"),
                            1)),
        ("height (m)", num(height_m, 2)), ("therapy cycles", len(therapy)),
        ("nuclide", ", ".join(sorted(therapy.nuclide.unique())) or "–"),
        ("dosimetry method", ", ".join(sorted(od.method.unique())) if not od.empty else "–")])
    shown = {"sex", "age_y", "weight_kg", "height_cm"}
    rest = [(k, v if isinstance(v, str) else sig(v, 4)) for k, v in values.items()
            if k not in shown]
    return Html(head + (subsection("Baseline clinical data", facts(rest)) if rest else ""))


def _activities(admins: pd.DataFrame) -> Html:
    if admins.empty:
        return unavailable("no administrations in the lake for this patient")
    a = admins.sort_values(["administration_h", "cycle"])
    rows = pd.DataFrame({
        "cycle": a.cycle.astype(int), "purpose": a.purpose, "nuclide": a.nuclide,
        "pharmaceutical": a.pharmaceutical.fillna("–"),
        "activity (MBq)": a.activity_mbq.map(lambda v: num(v, 0)),
        "activity (GBq)": a.activity_mbq.map(lambda v: num(v / 1000, 2)),
        "day (after first administration)": a.administration_h.map(lambda v: num(v / 24, 1))})
    therapy = _therapy(admins)
    total = f"Cumulative therapy activity: {num(therapy.activity_mbq.sum() / 1000, 2)} GBq " \
            f"over {len(therapy)} cycle(s)."
    return Html(table(rows, ["purpose", "nuclide", "pharmaceutical"]) + note(total))


def _dose_map_rows(lake: Lake, patient_id: str, od: pd.DataFrame) -> pd.DataFrame:
    """The dose map of each cycle: the method of the dosimetry rows shown, else the newest."""
    methods = sorted(set(od.method)) if not od.empty else []
    cycles = lake.sql("SELECT DISTINCT cycle FROM dose_maps WHERE patient_id = ? ORDER BY cycle",
                      [patient_id]).cycle
    rows = [views.dose_map(lake, patient_id, int(c), "dose", methods) for c in cycles]
    return pd.DataFrame([r for r in rows if r is not None])


@dataclass
class _View:
    """What the slices of one cycle show."""

    cycle: int
    method: str
    ct_time_h: float
    ct: Volume
    dose_gy: np.ndarray  # on the CT grid, zero outside the body
    masks: dict[str, np.ndarray]

    @property
    def voi_peak_gy(self) -> float:
        inside = np.logical_or.reduce(list(self.masks.values())) if self.masks else None
        return figs.peak_gy(self.dose_gy if inside is None else self.dose_gy[inside])


def _view(lake: Lake, dose_map: pd.Series, methods: list[str]) -> _View | None:
    """The reference CT of a dose map, the VOIs its dosimetry used and the dose on the CT's
    grid; None without such a CT."""
    ct_row = views.reference_ct(lake, dose_map.patient_id, int(dose_map.cycle), methods)
    if ct_row is None:
        return None
    ct = Volume.from_row(ct_row)
    dose = to_grid(Volume.from_row(dose_map.to_dict()), ct)
    masks = _masks(views.dosimetry_vois(lake, dose_map.patient_id, int(dose_map.cycle), methods),
                   ct)
    body = masks.pop("body", None)
    if body is not None:  # air at the skin: low density, no meaningful dose
        dose = np.where(np.logical_or.reduce([body, *masks.values()]), dose, 0.0)
    return _View(int(dose_map.cycle), dose_map.method, float(ct_row["time_h"]), ct, dose, masks)


def _images(lake: Lake, patient_id: str, od: pd.DataFrame) -> Html:
    maps = _dose_map_rows(lake, patient_id, od)
    if maps.empty:
        return unavailable("no dose map in the lake for this patient (run theralake dosimetry)")
    methods = sorted(set(od.method)) if not od.empty else []
    shown = {int(m.cycle): _view(lake, m, methods) for _, m in maps.iterrows()}
    vmax = max((v.voi_peak_gy for v in shown.values() if v), default=1.0)
    parts = []
    for cycle, v in shown.items():
        if v is None:
            parts.append(unavailable(f"cycle {cycle}: no CT in the dose map's frame of "
                                     "reference"))
            continue
        centre, where = _centre(v.masks, v.dose_gy)
        parts.append(figure(
            figs.slices(v.ct, v.dose_gy, v.masks, centre, f"Cycle {cycle}: reference CT at "
                        f"{num(v.ct_time_h, 1)} h with the {v.method} dose map", vmax),
            f"cycle {cycle} CT slices with dose and VOIs",
            f"Cycle {cycle}: slices through {where}; dose inside the body above "
            f"{num(100 * figs.DOSE_SHOWN, 0)} % of {num(vmax, 1)} Gy (the 99.5th percentile "
            "within the VOIs), square-root colour scale common to all cycles; CT window "
            f"W400/L40; contours: the {len(v.masks)} VOIs of the reference CT."))
    return Html("".join(parts))


def _masks(vois: pd.DataFrame, ct: Volume) -> dict[str, np.ndarray]:
    """VOI masks on the reference CT's grid."""
    out = {}
    for r in vois.to_dict("records"):
        vol = Volume.from_row(r)
        out[r["voi"]] = vol.array > 0 if vol.same_grid(ct) else mask_on(vol, ct)
    return out


def _centre(masks: dict[str, np.ndarray], dose: np.ndarray) -> tuple[tuple[int, ...], str]:
    kidneys = [m for k, m in masks.items() if k.startswith("kidney")]
    if kidneys and np.any(kidneys):
        zyx = np.argwhere(np.logical_or.reduce(kidneys)).mean(axis=0)
        return tuple(int(round(v)) for v in zyx), "the kidneys' centre"
    return tuple(int(v) for v in np.unravel_index(np.argmax(dose), dose.shape)), \
        "the dose maximum"


def _order(vois: list[str], config: dict) -> list[str]:
    """Organs at risk first (the config's limits), other organs, then lesions."""
    limited = [v for s in config["recommend"]["limits"].values() for v in s["vois"]]
    organs = [v for v in figs.ORGAN_COLOURS if v not in limited]
    rank = {v: i for i, v in enumerate(limited + organs)}
    return sorted(vois, key=lambda v: (rank.get(v, len(rank) + v.startswith("lesion_")), v))


def _kinetics(lake: Lake, patient_id: str, od: pd.DataFrame, config: dict) -> Html:
    tacs = lake.read("tacs", "patient_id = ?", [patient_id])
    if tacs.empty:
        return unavailable("no time-activity curves in the lake for this patient")
    organs = _order([v for v in tacs.voi.unique() if not v.startswith("lesion_")
                     and v != "body"], config)
    first = od[(od.cycle == od.cycle.min()) & od.voi.str.startswith("lesion_")] \
        if not od.empty else od
    lesions = list(first.sort_values("absorbed_dose_gy", ascending=False).voi[:LESION_PANELS]) \
        if not first.empty else []
    panels, rows = [], []
    for voi in organs + lesions:
        curves = []
        for cycle, points in tacs[tacs.voi == voi].groupby("cycle"):
            fit_row = od[(od.voi == voi) & (od.cycle == cycle)] if not od.empty else od
            if not fit_row.empty:
                mine = points[points.params_hash == fit_row.params_hash.iloc[0]]
                points = mine if not mine.empty else points
            points = views.current(points, ["time_h"]).sort_values("time_h")
            sigma = points.activity_sigma_mbq.to_numpy(float)
            fit = figs.fit_from_json(fit_row.fit_parameters.iloc[0], points.time_h,
                                     points.activity_mbq) if not fit_row.empty else None
            curves.append({"cycle": int(cycle), "time_h": points.time_h.to_numpy(),
                           "activity_mbq": points.activity_mbq.to_numpy(),
                           "sigma_mbq": sigma if np.isfinite(sigma).any() else None,
                           "fit": fit})
            if fit is not None:
                rows.append(_fit_row(voi, int(cycle), fit))
        panels.append((voi, curves))
    has_sigma = tacs.activity_sigma_mbq.notna().any()
    caption = ("Points: VOI activity at each SPECT time point" + (
        " with ±1 SD error bars" if has_sigma else " (no per-point uncertainty recorded)") +
        "; lines: the fitted model of the dosimetry; bands: ±1 SD of the curve from the "
        "parameters' standard deviations (drawn independently: the lake keeps no correlations).")
    return Html(figure(figs.tac_grid(panels), "time-activity curves", caption)
                + subsection("Fitted models", table(pd.DataFrame(rows), ["VOI", "model",
                                                                         "check"],
                                                    wrap=["parameters ± SD"])))


def _fit_row(voi: str, cycle: int, fit: TacFit) -> dict:
    params = Html("<br>".join(esc(f"{n} {p:.4g} ± {s:.2g}" if math.isfinite(s) else
                                  f"{n} {p:.4g} (not identifiable)") for n, p, s in
                              zip(fit.param_names, fit.params, fit.param_sd, strict=True)))
    return {"VOI": figs.label(voi), "cycle": cycle, "model": fit.model, "parameters ± SD": params,
            "T½eff (h)": num(fit.effective_half_life_h, 1),
            "TIA (MBq·h)": f"{num(fit.tia_mbq_h, 0)} ± {num(fit.tia_sd_mbq_h, 0)}",
            "extrapolated (%)": num(100 * fit.extrapolated_fraction, 1),
            "check": badge("plausible", "ok") if fit.plausible else
            badge("; ".join(fit.reasons) or "implausible", "warn")}


DOSE_COLUMNS = {  # organ_dosimetry column -> (header, decimals)
    "mass_g": ("mass (g)", 1), "tia_mbq_h": ("TIA (MBq·h)", 0),
    "absorbed_dose_gy": ("absorbed dose (Gy)", 2),
    "dose_per_activity_gy_per_gbq": ("dose per activity (Gy/GBq)", 2),
    "max_dose_gy": ("max dose (Gy)", 2), "bed_gy": ("BED (Gy)", 2), "eqd2_gy": ("EQD2 (Gy)", 2),
    "cumulative_bed_gy": ("cumulative BED (Gy)", 2),
    "cumulative_eqd2_gy": ("cumulative EQD2 (Gy)", 2),
}


def _doses(od: pd.DataFrame, admins: pd.DataFrame, config: dict) -> Html:
    if od.empty:
        return unavailable("no organ dosimetry in the lake for this patient")
    therapy = _therapy(admins).groupby("cycle").activity_mbq.sum()
    parts = []
    for cycle, rows in od.groupby("cycle"):
        rows = rows.set_index("voi").loc[_order(list(rows.voi), config)].reset_index()
        out = pd.DataFrame({"VOI": rows.voi.map(figs.label)})
        for col, (head, digits) in DOSE_COLUMNS.items():
            sigma = rows.get(SIGMA_COLUMNS.get(col, ""), pd.Series(index=rows.index,
                                                                   dtype=float))
            out[head] = [_with_sd(v, sd, digits) for v, sd in zip(rows[col], sigma,
                                                                  strict=True)]
        out["TIA from"] = [_tia_from(r) for r in rows.to_dict("records")]
        out["dose map mean (Gy)"] = rows.get("map_mean_dose_gy", pd.Series(
            index=rows.index, dtype=float)).map(lambda v: num(v, 2))
        out["quality"] = [badge(q, QUALITY_LEVEL[q]) if isinstance(q, str) else "–"
                          for q in rows.get("quality", pd.Series([None] * len(rows)))]
        activity = therapy.get(cycle)
        parts.append(subsection(
            f"Cycle {cycle}" + (f": {num(activity / 1000, 2)} GBq" if activity else ""),
            table(out, caption=f"method {', '.join(sorted(rows.method.unique()))}; ± one "
                               "standard uncertainty (the TIA's, carried into dose, BED and "
                               "EQD2; none shown where none is recorded); cumulative: this and "
                               "the earlier cycles; tumor total: the union of the lesions "
                               "(TIA and mass summed, doses mass-weighted)")))
    basis = od.dose_basis.dropna().iloc[0] if "dose_basis" in od and \
        od.dose_basis.notna().any() else None
    return Html(note("Absorbed dose: " + (basis or "the dosimetry's VOI dose") + ". The dose "
                     "map mean is the map's own mean in the VOI, without that scaling (what a "
                     "DVH of the exported RTDOSE gives). BED and EQD2 from the linear-quadratic "
                     "model with the VOI's α/β and repair half-time and its kinetics.")
                + "".join(parts))


QUALITY_LEVEL = {"pass": "ok", "warn": "warn", "fail": "bad"}
SIGMA_COLUMNS = {"tia_mbq_h": "tia_sigma_mbq_h", "absorbed_dose_gy": "absorbed_dose_sigma_gy",
                 "bed_gy": "bed_sigma_gy", "eqd2_gy": "eqd2_sigma_gy"}


def _with_sd(value: object, sd: object, digits: int) -> str:
    """``value ± sd``, or the value alone where no uncertainty is recorded."""
    text = num(value, digits)
    if text == num(None) or sd is None or pd.isna(sd) or not np.isfinite(float(sd)):
        return text
    return f"{text} ± {num(sd, digits)}"


def _tia_from(row: dict) -> str:
    points = row.get("time_points_h")
    n = len(points) if points is not None and not isinstance(points, float) else None
    how = row.get("tia_method") or "fit"
    what = row.get("fit_model") if how == "fit" else how
    correction = row.get("partial_volume")
    return f"{what}" + (f", {n} time points" if n else "") + (
        f", {correction}" if isinstance(correction, str) and correction != "none" else "")


def _quality(lake: Lake, patient_id: str, config: dict) -> Html:
    found = views.quality(lake, patient_id)
    if found.empty:
        return unavailable("no quality record in the lake for this patient (run theralake "
                           "dosimetry)")
    shown = found[(found.status != "pass") & (found.check != "cycle")]
    summary = found[found.check == "cycle"]
    parts = [table(pd.DataFrame({
        "cycle": summary.cycle.astype(int),
        "status": [badge(s, QUALITY_LEVEL[s]) for s in summary.status],
        "summary": summary.message}), ["status"])]
    if shown.empty:
        parts.append(note("Every check passed."))
    else:
        parts.append(subsection("Warnings and failures", table(pd.DataFrame({
            "cycle": shown.cycle.astype(int), "VOI": shown.voi.fillna("(cycle)").map(figs.label),
            "status": [badge(s, QUALITY_LEVEL[s]) for s in shown.status],
            "check": shown.check, "reason": shown.message}), ["VOI", "status", "check"],
            wrap=["reason"])))
    return Html("".join(parts))


def _limits(od: pd.DataFrame, config: dict) -> Html:
    limits = config.get("recommend", {}).get("limits", {})
    if not limits:
        return unavailable("the modelling config has no organ limits (recommend.limits)")
    if od.empty:
        return unavailable("no organ dosimetry in the lake for this patient")
    cycles = sorted(od.cycle.unique())
    rows = []
    for organ, spec in limits.items():
        q = spec["quantity"]
        for voi in spec["vois"]:
            mine = od[od.voi == voi].set_index("cycle")[q]
            if mine.empty:
                rows.append({"organ": figs.label(organ), "VOI": figs.label(voi)})
                continue
            total, limit = float(mine.sum()), float(spec["limit_gy"])
            share = 100 * total / limit
            level = "bad" if share > 100 else "warn" if share >= 75 else "ok"
            rows.append({"organ": figs.label(organ), "VOI": figs.label(voi),
                         "quantity": QUANTITY[q],
                         **{f"cycle {c} (Gy)": num(mine.get(c), 2) for c in cycles},
                         "cumulative (Gy)": num(total, 2), "limit (Gy)": num(limit, 1),
                         "of limit (%)": num(share, 0),
                         "status": badge({"ok": "within", "warn": "≥ 75 %",
                                          "bad": "exceeded"}[level], level)})
    df = pd.DataFrame(rows).fillna("–")
    return Html(table(df, ["organ", "VOI", "quantity", "status"])
                + note("Limits from the modelling config (recommend.limits): " + "; ".join(
                    f"{figs.label(o)}: {QUANTITY[s['quantity']]} {s['limit_gy']:g} Gy"
                    for o, s in limits.items()) + ". Cumulative: the sum over the cycles in "
                    "the lake."))


QUANTITY = {"bed_gy": "BED", "eqd2_gy": "EQD2", "absorbed_dose_gy": "absorbed dose"}


def _dvhs(lake: Lake, patient_id: str) -> Html:
    dvhs = lake.read("dvhs", "patient_id = ?", [patient_id])
    if dvhs.empty:
        return unavailable("no DVHs in the lake for this patient (run theralake features)")
    maps = [views.dose_map(lake, patient_id, int(c)) for c in dvhs.cycle.dropna().unique()]
    dvhs = dvhs[dvhs.image_id.isin([m["id"] for m in maps if m])]
    dvhs = views.current(dvhs, ["cycle", "voi", "quantity"])
    dvhs = dvhs[dvhs.voi != "body"]
    return figure(figs.dvh_grid(dvhs), "dose-volume histograms",
                  "Cumulative DVHs of the dose map of each cycle (BED: the voxel dose with the "
                  "VOI's BED factor); organs coloured, lesions thin cyan.")


def _recommendation(lake: Lake, patient_id: str) -> Html:
    recs = lake.read("recommendations", "patient_id = ?", [patient_id])
    if recs.empty:
        return unavailable("no recommendation in the lake for this patient (run theralake "
                           "recommend)")
    recs = views.newest_first(recs)
    r = recs.iloc[0]
    d = json.loads(r.details) if isinstance(r.details, str) else {}
    activity = (f"{num(r.activity_mbq / 1000, 2)} GBq ({num(r.activity_mbq, 0)} MBq)"
                if pd.notna(r.activity_mbq) else "none within the range")
    parts = [Html(f'<div class="callout"><b>Cycle {int(r.cycle)}: {esc(activity)}</b><br>'
                  f"{esc(r.explanation or '')}</div>"),
             facts([("recommended activity", activity),
                    ("what binds", _binding(r, d)),
                    ("predicted tumour dose (Gy)", num(d.get("tumour_dose_gy"), 1)),
                    ("response probability", num(d.get("response_probability"), 2)),
                    ("date", f"{r.created_utc:%Y-%m-%d %H:%M}")])]
    budgets = pd.DataFrame(d.get("budgets", []))
    if budgets.empty:
        parts.append(unavailable("the recommendation holds no organ budgets"))
    else:
        for col in ("this_cycle_gy", "projected_gy"):  # recommendations older than these
            if col not in budgets:
                budgets[col] = None
        parts.append(subsection("What it rests on: organ budgets", table(pd.DataFrame({
            "VOI": budgets.voi.map(figs.label), "organ": budgets.organ.map(figs.label),
            "quantity": budgets.quantity.map(QUANTITY), "limit (Gy)": budgets.limit_gy.map(num),
            "earlier cycles (Gy)": budgets.prior_gy.map(num),
            "this cycle (Gy)": budgets.this_cycle_gy.map(num),
            "projected cumulative (Gy)": budgets.projected_gy.map(num),
            "dose per activity (Gy/GBq)": budgets.dose_per_gbq.map(num),
            "upper bound used (Gy/GBq)": budgets.dose_per_gbq_upper.map(num),
            "allows (GBq)": budgets.max_activity_gbq.map(num),
            "source": budgets.source}), ["VOI", "organ", "quantity"], wrap=["source"])))
    models = d.get("models") or {}
    parts.append(note("Models: " + (", ".join(f"{k} {v}" for k, v in models.items()) or
                                    "none (measured dosimetry only)") +
                      ". The highest activity step at which every organ's cumulative quantity "
                      "with the upper bound of this cycle's dose stays under its limit. Earlier "
                      "cycles: the organ table's cumulative BED (EQD2, dose) of the last cycle; "
                      "this cycle: at the recommended activity and the upper bound."))
    if len(recs) > 1:
        older = recs.iloc[1:]
        parts.append(subsection("Earlier recommendations", table(pd.DataFrame({
            "date": older.created_utc.map(lambda t: f"{t:%Y-%m-%d %H:%M}"),
            "cycle": older.cycle, "activity (GBq)": (older.activity_mbq / 1000).map(num),
            "limiting organ": older.limiting_organ.fillna("–").map(figs.label),
            "explanation": older.explanation}), ["limiting organ"], wrap=["explanation"])))
    return Html("".join(parts))


def _binding(r: pd.Series, details: dict) -> str:
    """What stops a higher activity: an organ (VOI), or the top of the activity range."""
    if details.get("binding") == ACTIVITY_RANGE:
        return "the top of the activity range"
    if r.limiting_organ:
        voi = details.get("binding")
        return figs.label(r.limiting_organ) + (f" ({figs.label(voi)})" if voi else "")
    return "–"


# ------------------------------------------------------------------------ CLI
def register(app: typer.Typer) -> None:
    """Add ``theralake report`` to the CLI."""

    @app.command("report")
    def report_command(
        out: Annotated[Path, typer.Option(help="the HTML file to write")],
        patient: Annotated[str | None, typer.Option(
            help="lake patient_id: the patient's report")] = None,
        cohort: Annotated[bool, typer.Option("--cohort", help="the cohort report")] = False,
        config: ConfigOption = None,
        lake: LakeOption = None,
        as_json: JsonOption = False,
        quiet: QuietOption = False,
        verbose: VerboseOption = False,
    ) -> None:
        """Write a self-contained HTML report of a patient (--patient) or the cohort."""
        from theralake.modeling.dataset import DatasetError
        from theralake.pipelines.report_cohort import cohort_report

        if (patient is None) == (not cohort):
            typer.echo("error: give exactly one of --patient P and --cohort", err=True)
            raise typer.Exit(2)
        try:
            the_lake = Lake(lake, create=False)
            cfg = load_modeling_config(config)
            path = (cohort_report(the_lake, out, cfg) if cohort else
                    patient_report(the_lake, patient, out, cfg))
        except (ReportError, LakeError, DatasetError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if as_json:
            print_json({"report": path})
        else:
            typer.echo(f"wrote {path}")
