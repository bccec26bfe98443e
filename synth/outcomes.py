"""Outcome model: tumour dose and organ BED drive response, survival and toxicity.

Equations (documented in synth/README.md; parameters in OUTCOME_PARAMS):

- x_dose = ln(D_tumour,1 / 20 Gy), D_tumour,1 the cycle-1 mean absorbed dose of tumor_total
  (0 when the patient has no lesion);
- PSA50 ~ Bernoulli(sigmoid(b0 + b_dose x_dose + b . z)), z the standardised covariates;
- PFS, OS: Weibull proportional hazards, S(t) = exp(-(t/scale)^shape exp(lp)),
  lp = g_dose x_dose + g . z + frailty (shared by PFS and OS); PFS <= OS;
- censoring: administrative (study cut-off 900 days after 2024-01-08) and random drop-out;
- kidney (salivary) toxicity grade: ordinal logistic on the cumulative kidney (parotid)
  BED over all cycles plus covariates.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from theralake.synth.patient import PatientTruth

STUDY_START = dt.datetime(2024, 1, 8)
STUDY_CUTOFF_D = 900.0

OUTCOME_PARAMS: dict[str, float] = {
    "dose_ref_gy": 20.0,
    "psa50_b0": 0.3, "psa50_dose": 2.0, "psa50_psa": -0.3, "psa50_ldh": -0.3,
    "psa50_ecog": -0.3,
    "pfs_b0": -1.1, "pfs_dose": -1.6, "pfs_psa": 0.3, "pfs_ldh": 0.35, "pfs_alp": 0.25,
    "pfs_hb": -0.25,
    "pfs_ecog": 0.35, "pfs_docetaxel": 0.2, "pfs_lesions": 0.15, "pfs_no_lesion": -0.6,
    "pfs_shape": 1.3, "pfs_median_d": 200.0,
    "os_b0": -0.6, "os_pfs_lp": 0.8, "os_age": 0.02, "os_shape": 1.4, "os_median_d": 450.0,
    "frailty_sd": 0.3, "dropout_mean_d": 1500.0,
    "kid_b0": -4.0, "kid_bed": 0.12, "kid_age": 0.03, "kid_egfr": -0.02,
    "kid_cuts": (0.0, 2.5, 4.5),
    "sal_b0": -2.2, "sal_bed": 0.09, "sal_cuts": (0.0, 2.5, 5.0),
}


def _weibull(rng: np.random.Generator, lp: float, shape: float, median: float) -> float:
    scale = median / math.log(2.0) ** (1.0 / shape)
    return scale * (-math.log(rng.random()) / math.exp(lp)) ** (1.0 / shape)


def covariates(pt: PatientTruth) -> dict[str, float]:
    """Standardised covariates and dose features used by the outcome model."""
    c = pt.clinical
    p = OUTCOME_PARAMS
    c1 = pt.cycles[0]
    d1 = c1.dose_gy.get("tumor_total", 0.0)
    kid = sum(0.5 * (cy.bed_gy["kidney_left"] + cy.bed_gy["kidney_right"]) for cy in pt.cycles)
    par = sum(0.5 * (cy.bed_gy["parotid_gland_left"] + cy.bed_gy["parotid_gland_right"])
              for cy in pt.cycles)
    return {
        "x_dose": math.log(d1 / p["dose_ref_gy"]) if d1 > 0 else 0.0,
        "no_lesion": float(d1 <= 0),
        "tumour_dose_c1_gy": d1,
        "z_psa": (math.log(c.psa_ng_ml) - math.log(80.0)) / 1.2,
        "z_ldh": (math.log(c.ldh_u_l) - math.log(220.0)) / 0.35,
        "z_alp": (math.log(c.alp_u_l) - math.log(130.0)) / 0.5,
        "z_hb": (c.hb_g_dl - 12.5) / 1.3,
        "ecog": float(c.ecog),
        "docetaxel": float(c.prior_docetaxel),
        "log_lesions": math.log1p(len(pt.lesion_info)),
        "kidney_bed_gy": kid,
        "parotid_bed_gy": par,
    }


def draw_outcomes(pt: PatientTruth, rng: np.random.Generator) -> tuple[dict, dict]:
    """Draw the outcomes of a patient; returns (outcomes row, truth of the model)."""
    p = OUTCOME_PARAMS
    z = covariates(pt)
    c = pt.clinical
    lin = (p["psa50_b0"] + p["psa50_dose"] * z["x_dose"] + p["psa50_psa"] * z["z_psa"]
           + p["psa50_ldh"] * z["z_ldh"] + p["psa50_ecog"] * z["ecog"])
    p_psa50 = 1.0 / (1.0 + math.exp(-lin))
    psa50 = int(rng.random() < p_psa50)
    lp = (p["pfs_dose"] * z["x_dose"] + p["pfs_psa"] * z["z_psa"] + p["pfs_ldh"] * z["z_ldh"]
          + p["pfs_alp"] * z["z_alp"] + p["pfs_hb"] * z["z_hb"] + p["pfs_ecog"] * z["ecog"]
          + p["pfs_docetaxel"] * z["docetaxel"] + p["pfs_lesions"] * z["log_lesions"]
          + p["pfs_no_lesion"] * z["no_lesion"])
    frailty = rng.normal(0.0, p["frailty_sd"])
    lp_os = p["os_b0"] + p["os_pfs_lp"] * lp + p["os_age"] * (c.age_y - 70.0) + frailty
    lp_pfs = p["pfs_b0"] + lp + frailty
    t_os = _weibull(rng, lp_os, p["os_shape"], p["os_median_d"])
    t_pfs = min(_weibull(rng, lp_pfs, p["pfs_shape"], p["pfs_median_d"]), t_os)
    first = pt.cycles[0].administration
    admin_cens = STUDY_CUTOFF_D - (first - STUDY_START).total_seconds() / 86400.0
    cens = min(admin_cens, rng.exponential(p["dropout_mean_d"]))
    cens = max(cens, 30.0)
    k_lat = (p["kid_b0"] + p["kid_bed"] * z["kidney_bed_gy"] + p["kid_age"] * (c.age_y - 70)
             + p["kid_egfr"] * (c.egfr_ml_min - 80) + rng.logistic())
    s_lat = p["sal_b0"] + p["sal_bed"] * z["parotid_bed_gy"] + rng.logistic()
    row = {
        "PatientID": pt.patient_id,
        "pfs_time_d": round(min(t_pfs, cens), 1), "pfs_event": int(t_pfs <= cens),
        "os_time_d": round(min(t_os, cens), 1), "os_event": int(t_os <= cens),
        "psa50": psa50,
        "kidney_toxicity_grade": int(np.digitize(k_lat, p["kid_cuts"])),
        "salivary_toxicity_grade": int(np.digitize(s_lat, p["sal_cuts"])),
    }
    truth = {**z, "p_psa50": p_psa50, "lp_pfs": lp_pfs, "lp_os": lp_os,
             "pfs_uncensored_d": t_pfs, "os_uncensored_d": t_os, "censoring_d": cens,
             "kidney_latent": k_lat, "salivary_latent": s_lat}
    return row, truth
