"""Activity recommendation for the next cycle: ``theralake recommend``.

For each organ-at-risk VOI of the config's ``recommend.limits``, the dose per GBq of the
cycle to come is bounded from above: before cycle 1 by the upper end of the conformal
interval of the ``@champion`` dose model (from the pre-therapy PET), later by the measured
dose per GBq of the latest earlier cycle plus ``measured_z`` times its uncertainty (optionally
blended with the model). A dose D becomes BED = D + k D^2 with k = (BED - D)/D^2 of the same
VOI's measured kinetics (the earlier cycle; before cycle 1 the cohort median of the lake),
EQD2 = BED / (1 + 2/(alpha/beta)). The recommended activity is the highest step of the
configured range at which every VOI's cumulative quantity (earlier cycles + this one) stays
under its limit. What binds is said in the figures of the patient report's organ table: the
organ whose limit stops a step higher (``limiting_organ``), with its projected cumulative
quantity as the earlier cycles' sum plus this cycle's at the upper bound; or, when every organ
allows more, the top of the activity range (``limiting_organ`` empty, ``binding``
``activity_range``), with the organ closest to its limit. The ``@champion``
response model gives the response probability at that activity from the predicted tumour
dose. Every number it rests on is in ``details`` (JSON) of the ``recommendations`` row.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from theralake.dosimetry.radiobiology import get_tissue
from theralake.lake import Lake, stable_hash, views
from theralake.modeling.dataset import DatasetError, load_modeling_config, patient_frame
from theralake.registry import tracking
from theralake.registry.models import load_champion

TUMOUR_DOSE = "dosimetry/tumor_total/absorbed_dose_gy"
QUANTITY_WORDS = {"bed_gy": "cumulative BED", "eqd2_gy": "cumulative EQD2",
                  "absorbed_dose_gy": "cumulative absorbed dose"}
#: ``binding`` of a recommendation at the top of its range
ACTIVITY_RANGE = "activity_range"
ACTIVITY = "administration/activity_mbq"


class RecommendationError(ValueError):
    """No recommendation can be made (the message says what is missing)."""


@dataclass
class VoiBudget:
    """What one organ-at-risk VOI allows."""

    voi: str
    organ: str
    quantity: str
    limit_gy: float
    prior_gy: float  # cumulative quantity of the earlier cycles
    dose_per_gbq: float  # point estimate for this cycle
    dose_per_gbq_upper: float  # the bound used
    bed_k_per_gy: float
    alpha_beta_gy: float
    source: str
    max_activity_gbq: float = math.nan

    def this_cycle_at(self, activity_gbq: float) -> float:
        """This cycle's quantity at ``activity_gbq`` (upper bound)."""
        return self.quantity_at(activity_gbq) - self.prior_gy

    def projection(self, activity_gbq: float, cycle: int) -> str:
        """``<quantity> <prior> Gy (cycles 1-n) + <this> Gy (cycle c, at x GBq) = <total> of
        <limit> Gy``: the words of a recommendation, in the report's organ-table figures."""
        name = QUANTITY_WORDS[self.quantity]
        earlier = (f"{self.prior_gy:.1f} Gy in cycle{'s 1-' if cycle > 2 else ' '}{cycle - 1}"
                   f" + " if cycle > 1 else "")
        return (f"{self.voi}: {name} {earlier}{self.this_cycle_at(activity_gbq):.1f} Gy in "
                f"cycle {cycle} at {activity_gbq:g} GBq (upper bound "
                f"{self.dose_per_gbq_upper:.2f} Gy/GBq, {self.source}) = "
                f"{self.quantity_at(activity_gbq):.1f} of its {self.limit_gy:g} Gy limit")

    def quantity_at(self, activity_gbq: float, dose_per_gbq: float | None = None) -> float:
        """Cumulative quantity after this cycle at ``activity_gbq`` (upper bound by default)."""
        d = (self.dose_per_gbq_upper if dose_per_gbq is None else dose_per_gbq) * activity_gbq
        bed = d + self.bed_k_per_gy * d * d
        this = {"absorbed_dose_gy": d, "bed_gy": bed,
                "eqd2_gy": bed / (1.0 + 2.0 / self.alpha_beta_gy)}[self.quantity]
        return self.prior_gy + this


@dataclass
class Recommendation:
    patient_id: str
    cycle: int
    activity_mbq: float | None
    limiting_organ: str | None
    explanation: str
    budgets: list[VoiBudget]
    tumour_dose_gy: float | None = None
    response_probability: float | None = None
    models: dict[str, str] = field(default_factory=dict)
    binding: str | None = None  # the limiting VOI, or ACTIVITY_RANGE

    def details(self) -> dict:
        return {"activity_mbq": self.activity_mbq, "limiting_organ": self.limiting_organ,
                "binding": self.binding,
                "tumour_dose_gy": self.tumour_dose_gy,
                "response_probability": self.response_probability, "models": self.models,
                "budgets": [{**asdict(b), **self._projection(b)} for b in self.budgets]}

    def _projection(self, budget: VoiBudget) -> dict:
        """This cycle's quantity and the projected cumulative one at the recommended activity
        (what the report's budget table shows)."""
        if self.activity_mbq is None:
            return {"this_cycle_gy": None, "projected_gy": None}
        gbq = self.activity_mbq / 1000.0
        return {"this_cycle_gy": budget.this_cycle_at(gbq),
                "projected_gy": budget.quantity_at(gbq)}


def recommend(lake: Lake, patient_id: str, cycle: int, config: dict | None = None,
              write: bool = True, force: bool = False) -> Recommendation:
    """The recommended activity of ``cycle`` for a patient (written to ``recommendations``).

    Raises:
        RecommendationError: unknown patient, no champion dose model before cycle 1, no
            dosimetry of the earlier cycles, no kinetics to turn dose into BED, an organ at
            risk whose dosimetry failed its quality checks in the last measured cycle
            (unless ``force``).
    """
    config = config or load_modeling_config()
    rc = config["recommend"]
    if lake.read("patients", "patient_id = ?", [patient_id]).empty:
        raise RecommendationError(f"no patient {patient_id!r} in the lake at {lake.path}")
    measured = views.dosimetry(lake, config["dosimetry_methods"], patient_id, cycle)
    at_risk = [voi for spec in rc["limits"].values() for voi in spec["vois"]]
    doubts = _quality(lake, patient_id, measured, at_risk, force)
    frame = patient_frame(lake, config, patient_id=patient_id)
    row = frame if patient_id in frame.index else None
    models: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        predicted = _model_doses(lake, row, tmp, models, required=measured.empty)
        response = _champion_or_none(lake, "response", tmp, models)
    budgets = [_budget(lake, voi, organ, spec, measured, predicted, rc,
                       config["dosimetry_methods"])
               for organ, spec in rc["limits"].items() for voi in spec["vois"]]
    steps = np.arange(rc["activity_gbq"]["min"], rc["activity_gbq"]["max"] + 1e-9,
                      rc["activity_gbq"]["step"])
    for b in budgets:
        ok = [a for a in steps if b.quantity_at(a) <= b.limit_gy]
        b.max_activity_gbq = float(max(ok)) if ok else math.nan
    allowed = [b.max_activity_gbq for b in budgets]
    if any(math.isnan(a) for a in allowed):
        worst = next(b for b in budgets if math.isnan(b.max_activity_gbq))
        rec = Recommendation(patient_id, cycle, None, worst.organ, (
            f"no activity in {steps[0]:g}-{steps[-1]:g} GBq keeps {worst.voi} under its "
            f"{worst.quantity} limit of {worst.limit_gy:g} Gy: {worst.prior_gy:.1f} Gy so far, "
            f"{worst.quantity_at(steps[0]) - worst.prior_gy:.1f} Gy more at "
            f"{steps[0]:g} GBq ({worst.source})"), budgets, models=models)
    else:
        activity = min(allowed)
        tumour, p_response = _response(row, activity, measured, predicted, response)
        closest = max(budgets, key=lambda b: b.quantity_at(activity) / b.limit_gy)
        if activity < steps[-1]:
            limiting = min(budgets, key=lambda b: (b.max_activity_gbq,
                                                   -b.quantity_at(activity) / b.limit_gy))
            more = activity + float(rc["activity_gbq"]["step"])
            reason = (f"limited by {limiting.organ}, {limiting.projection(activity, cycle)}; "
                      f"{more:g} GBq would give {limiting.quantity_at(more):.1f} Gy")
            organ, binding = limiting.organ, limiting.voi
        else:
            reason = (f"the top of the activity range ({steps[0]:g}-{steps[-1]:g} GBq); no "
                      f"organ limits it. Closest to its limit: "
                      f"{closest.projection(activity, cycle)}")
            organ, binding = None, ACTIVITY_RANGE
        rec = Recommendation(patient_id, cycle, activity * 1000.0, organ,
                             f"{activity:g} GBq: {reason}", budgets, tumour, p_response, models,
                             binding)
        if doubts:
            rec.explanation += "; quality: " + "; ".join(doubts)
        if p_response is not None:
            rec.explanation += (f"; predicted tumour dose {tumour:.1f} Gy, response "
                                f"probability {p_response:.2f} ({models['response']})")
        elif "response" not in models:
            rec.explanation += "; no @champion response model: response probability not given"
    if write:
        details = json.dumps(rec.details(), default=float)
        lake.append("recommendations", [{
            "id": stable_hash("recommendation", patient_id, cycle, details),
            "patient_id": patient_id, "cycle": cycle, "activity_mbq": rec.activity_mbq,
            "limiting_organ": rec.limiting_organ, "explanation": rec.explanation,
            "details": details}], params_hash=stable_hash(config["recommend"]))
    return rec


def _quality(lake: Lake, patient_id: str, measured: pd.DataFrame, at_risk: list[str],
             force: bool) -> list[str]:
    """The quality findings of the organs at risk in the last measured cycle: a failure
    refuses the recommendation (unless ``force``); warnings are returned to be shown."""
    if measured.empty:
        return []
    last = int(measured.cycle.max())
    found = views.quality(lake, patient_id, last)
    if found.empty:
        return []
    mine = found[found.voi.isin(at_risk) & (found.status != "pass")]
    failed = mine[mine.status == "fail"]
    if not failed.empty and not force:
        raise RecommendationError(
            f"the dosimetry of cycle {last} failed for "
            + "; ".join(f"{r.voi} ({r.message})" for r in failed.itertuples())
            + ": fix it and re-run theralake dosimetry, or recommend with --force")
    return [f"{r.voi} {r.status} in cycle {last} ({r.check}: {r.message})"
            for r in mine.itertuples()]


def _champion_or_none(lake: Lake, task: str, tmp: str, models: dict) -> object | None:
    try:
        model, uri = load_champion(lake, task, f"{tmp}/{task}")
    except tracking.ModelNotFoundError:
        return None
    models[task] = uri
    return model


def _model_doses(lake: Lake, row: pd.DataFrame | None, tmp: str, models: dict,
                 required: bool) -> dict[str, tuple[float, float, float]]:
    """Dose per GBq (point, lower, upper) per target of the champion dose model."""
    model = None
    try:
        model, uri = load_champion(lake, "dose", f"{tmp}/dose")
        models["dose"] = uri
    except tracking.ModelNotFoundError as exc:
        if required:
            raise RecommendationError(f"no measured dosimetry before this cycle and {exc}"
                                      ) from None
    if model is None:
        return {}
    if row is None:
        if required:
            raise RecommendationError("the patient has no pre-therapy data for the dose model")
        return {}
    X = _model_input(model, row, "dose", required)
    point = model.predict(X)[0]
    lower, upper = (b[0] for b in model.predict_interval(X))
    return {t: (float(point[j]), float(lower[j]), float(upper[j]))
            for j, t in enumerate(model.targets_)}


def _model_input(model: object, row: pd.DataFrame, task: str, required: bool = True
                 ) -> pd.DataFrame:
    cols = list(model.feature_names_in_)
    missing = [c for c in cols if c not in row.columns or row[c].isna().all()]
    if len(missing) == len(cols) and required:
        raise RecommendationError(f"the patient has none of the {task} model's features "
                                  f"(e.g. {cols[:3]})")
    return row.reindex(columns=cols).astype(float)


def _budget(lake: Lake, voi: str, organ: str, spec: dict, measured: pd.DataFrame,
            predicted: dict, rc: dict, methods: list[str]) -> VoiBudget:
    quantity = spec["quantity"]
    ab = get_tissue(voi).alpha_beta_gy
    mine = measured[measured.voi == voi] if not measured.empty else measured
    prior = 0.0
    if not mine.empty:
        bed = float(mine.bed_gy.sum())
        prior = {"absorbed_dose_gy": float(mine.absorbed_dose_gy.sum()), "bed_gy": bed,
                 "eqd2_gy": bed / (1.0 + 2.0 / ab)}[quantity]
        last = mine.sort_values("cycle").iloc[-1]
        d = float(last.dose_per_activity_gy_per_gbq)
        rel = (float(last.tia_sigma_mbq_h) / float(last.tia_mbq_h)
               if pd.notna(last.get("tia_sigma_mbq_h")) and last.tia_mbq_h else 0.0)
        upper = d * (1.0 + rc["measured_z"] * rel)
        source = f"measured in cycle {int(last.cycle)}"
        w = rc.get("model_weight", 0.0)
        if w and voi in predicted:
            p, _, pu = predicted[voi]
            d, upper = (1 - w) * d + w * p, (1 - w) * upper + w * pu
            source += f", blended {w:g} with the dose model"
        k = _bed_k(last)
    elif voi in predicted:
        d, _, upper = predicted[voi]
        source = "the @champion dose model (upper end of its interval)"
        k = _cohort_bed_k(lake, voi, methods)
    else:
        raise RecommendationError(f"{voi}: no measured dose of an earlier cycle and the dose "
                                  "model does not predict it")
    return VoiBudget(voi, organ, quantity, float(spec["limit_gy"]), prior, d, upper, k, ab,
                     source)


def _bed_k(row: pd.Series) -> float:
    """BED = D + k D^2 with k = G / (alpha/beta) of the VOI's measured kinetics."""
    g, ab = row.get("lea_catcheside_g"), row.get("alpha_beta_gy")
    if pd.notna(g) and pd.notna(ab) and ab > 0:
        return float(g) / float(ab)
    raise RecommendationError(f"{row.voi}: organ_dosimetry of cycle {int(row.cycle)} holds no "
                              "kinetics for BED (lea_catcheside_g): re-run theralake dosimetry")


def _cohort_bed_k(lake: Lake, voi: str, methods: list[str]) -> float:
    """Median BED factor k of the VOI over the lake's measured cycles (current rows)."""
    df = views.dosimetry(lake, methods)
    if not df.empty:
        df = df[(df.voi == voi) & df.lea_catcheside_g.notna() & (df.alpha_beta_gy > 0)]
    if df.empty:
        raise RecommendationError(f"{voi}: no measured kinetics in the lake to turn a "
                                  "predicted dose into BED")
    return float(np.median(df.lea_catcheside_g / df.alpha_beta_gy))


def _response(row: pd.DataFrame | None, activity_gbq: float, measured: pd.DataFrame,
              predicted: dict, model: object | None) -> tuple[float | None, float | None]:
    """Predicted tumour dose (Gy) at the activity and the response probability."""
    tumour = measured[measured.voi == "tumor_total"] if not measured.empty else measured
    if not tumour.empty:
        per_gbq = float(tumour.sort_values("cycle").iloc[-1].dose_per_activity_gy_per_gbq)
    elif "tumor_total" in predicted:
        per_gbq = predicted["tumor_total"][0]
    else:
        return None, None
    dose = per_gbq * activity_gbq
    if model is None or row is None:
        return dose, None
    X = _model_input(model, row.assign(**{TUMOUR_DOSE: dose, ACTIVITY: activity_gbq * 1e3}),
                     "response", required=False)
    return dose, float(model.predict_proba(X)[0, 1])


__all__ = ["DatasetError", "Recommendation", "RecommendationError", "VoiBudget", "recommend"]
