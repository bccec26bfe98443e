"""Baseline clinical variables of a synthetic mCRPC patient."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Clinical:
    """Baseline clinical data (column names carry their units)."""

    age_y: float
    height_cm: float
    weight_kg: float
    psa_ng_ml: float
    alp_u_l: float
    ldh_u_l: float
    hb_g_dl: float
    ecog: int
    prior_therapies: int
    prior_docetaxel: int
    prior_arpi: int
    egfr_ml_min: float

    def as_row(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def sample_body(rng: np.random.Generator) -> tuple[float, float, float]:
    """Age (y), height (cm) and weight (kg)."""
    age = float(np.clip(rng.normal(71.0, 7.5), 48.0, 90.0))
    height = float(np.clip(rng.normal(176.0, 7.0), 158.0, 195.0))
    bmi = float(np.clip(rng.normal(27.0, 3.8), 18.5, 40.0))
    return age, height, bmi * (height / 100.0) ** 2


def sample_clinical(
    rng: np.random.Generator, age: float, height: float, weight: float,
    tumour_ml: float, bone_ml: float,
) -> Clinical:
    """Laboratory values and history, correlated with the tumour burden."""
    lv, lb = math.log1p(tumour_ml), math.log1p(bone_ml)
    psa = math.exp(math.log(25.0) + 0.55 * lv + rng.normal(0, 1.0))
    alp = math.exp(math.log(85.0) + 0.30 * lb + rng.normal(0, 0.35))
    ldh = math.exp(math.log(190.0) + 0.10 * lv + rng.normal(0, 0.30))
    hb = float(np.clip(rng.normal(13.2 - 0.25 * lb, 1.2), 8.0, 16.5))
    latent = 0.04 * (age - 70) + 0.25 * lv - 0.3 * (hb - 12.5) + rng.logistic()
    ecog = int(np.digitize(latent, [0.3, 3.0]))
    prior = int(np.clip(1 + rng.poisson(1.1), 1, 5))
    doc = int(rng.random() < 0.55 + 0.08 * (prior - 2))
    egfr = float(np.clip(rng.normal(85.0 - 0.6 * (age - 70), 15.0), 35.0, 130.0))
    return Clinical(age, height, weight, psa, alp, ldh, hb, ecog, prior, doc, 1, egfr)
