"""Cohort-level checks of the generator: realism figures and the outcome-model margin.

Run ``python -m theralake.synth.validation`` to print the figures quoted in synth/README.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from theralake.synth.config import SynthConfig
from theralake.synth.patient import simulate_patient, whole_body_teff_h

log = logging.getLogger(__name__)

COVARIATES = ["z_psa", "z_ldh", "z_alp", "z_hb", "ecog", "docetaxel", "log_lesions",
              "no_lesion"]


def truth_frame(n: int, seed: int, cycles: int = 2, raster: bool = False,
                small: bool = True) -> pd.DataFrame:
    """One row per patient: doses per GBq, masses, half-lives, covariates and outcomes."""
    cfg = SynthConfig(patients=n, cycles=cycles, seed=seed, small=small)
    rows = []
    for i in range(n):
        pt = simulate_patient(cfg, i, raster=raster)
        c1 = pt.cycles[0]
        g = c1.activity_mbq / 1000.0
        row = {"PatientID": pt.patient_id, **pt.outcome,
               **{k: v for k, v in pt.outcome_truth.items() if not isinstance(v, str)},
               "wb_teff_h": whole_body_teff_h(c1)}
        for voi in ("kidney_left", "kidney_right", "parotid_gland_left", "parotid_gland_right",
                    "liver", "spleen", "submandibular_gland_left", "red_marrow", "tumor_total"):
            if voi in c1.dose_gy:
                row[f"{voi}_gy_per_gbq"] = c1.dose_gy[voi] / g
                row[f"{voi}_mass_g"] = c1.voi_mass_g[voi]
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class Margin:
    """Harrell's C of Cox models with and without the tumour dose (held-out half)."""

    endpoint: str
    c_without_dose: float
    c_with_dose: float
    n_train: int
    n_test: int

    @property
    def margin(self) -> float:
        return self.c_with_dose - self.c_without_dose


def outcome_margin(df: pd.DataFrame, endpoint: str = "pfs") -> Margin:
    """Fit Cox models on the first half, score Harrell's C on the second half."""
    from lifelines import CoxPHFitter
    from lifelines.utils import concordance_index

    d = df.copy()
    d["log_dose"] = np.where(d["tumour_dose_c1_gy"] > 0,
                             np.log(np.maximum(d["tumour_dose_c1_gy"], 1e-6)), 0.0)
    half = len(d) // 2
    train, test = d.iloc[:half], d.iloc[half:]
    out = {}
    for name, cols in (("without", COVARIATES), ("with", [*COVARIATES, "log_dose"])):
        cph = CoxPHFitter(penalizer=0.01)
        cph.fit(train[[*cols, f"{endpoint}_time_d", f"{endpoint}_event"]],
                duration_col=f"{endpoint}_time_d", event_col=f"{endpoint}_event")
        risk = cph.predict_partial_hazard(test[cols]).to_numpy()
        out[name] = concordance_index(test[f"{endpoint}_time_d"], -risk,
                                      test[f"{endpoint}_event"])
    return Margin(endpoint, out["without"], out["with"], len(train), len(test))


def main(n: int = 2000, seed: int = 2024) -> None:
    """Print the outcome-model margins on a large truth-only cohort."""
    df = truth_frame(n, seed)
    for ep in ("pfs", "os"):
        m = outcome_margin(df, ep)
        print(f"{ep}: C without dose {m.c_without_dose:.3f}, with dose {m.c_with_dose:.3f}, "
              f"margin {m.margin:+.3f} (train {m.n_train}, test {m.n_test})")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    d = df.assign(log_dose=np.log(np.maximum(df["tumour_dose_c1_gy"], 1e-6))
                  * (df["tumour_dose_c1_gy"] > 0))
    half = len(d) // 2
    for name, cols in (("without", COVARIATES), ("with", [*COVARIATES, "log_dose"])):
        lr = LogisticRegression(max_iter=1000).fit(d[cols][:half], d["psa50"][:half])
        auc = roc_auc_score(d["psa50"][half:], lr.predict_proba(d[cols][half:])[:, 1])
        print(f"psa50 AUC {name} dose: {auc:.3f}")
    print(f"psa50 rate {df['psa50'].mean():.2f}; pfs events {df['pfs_event'].mean():.2f}; "
          f"median pfs {df['pfs_uncensored_d'].median():.0f} d, os "
          f"{df['os_uncensored_d'].median():.0f} d; kidney tox>=1 "
          f"{(df['kidney_toxicity_grade'] >= 1).mean():.2f}; salivary tox>=1 "
          f"{(df['salivary_toxicity_grade'] >= 1).mean():.2f}")
    desc = df.filter(like="_gy_per_gbq").describe(percentiles=[0.05, 0.5, 0.95]).T
    print(desc[["mean", "5%", "50%", "95%"]].round(3).to_string())
    print(f"WB effective half-life: median {df['wb_teff_h'].median():.1f} h, "
          f"5-95% {df['wb_teff_h'].quantile(0.05):.1f}-{df['wb_teff_h'].quantile(0.95):.1f} h")


if __name__ == "__main__":
    main()
