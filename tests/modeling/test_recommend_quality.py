"""A recommendation never rests silently on a failed dosimetry of an organ at risk."""

from __future__ import annotations

import pytest

from theralake.lake.rows import organ_dosimetry_row, quality_row
from theralake.modeling.recommend import RecommendationError, recommend

AT_RISK = ("kidney_left", "kidney_right", "parotid_gland_left", "parotid_gland_right",
           "red_marrow")


def _measured(lake, failed: str | None) -> None:
    lake.append("patients", [{"id": "p", "patient_id": "P"}])
    rows, findings = [], []
    for voi in AT_RISK:
        if voi == failed:
            findings.append(quality_row("P", 1, "dosimetry", "voi_outside_fov", "fail",
                                        "no time point's SPECT covers it: no TIA", "h", voi))
            continue
        dose = 0.1 if voi == "red_marrow" else 3.0
        rows.append(organ_dosimetry_row(
            "P", 1, voi, "vsv", f"v-{voi}", ["s1"], "h", absorbed_dose_gy=dose,
            dose_per_activity_gy_per_gbq=dose / 7.4, bed_gy=dose * 1.1, eqd2_gy=dose,
            tia_mbq_h=100.0,
            tia_sigma_mbq_h=5.0, lea_catcheside_g=0.3, alpha_beta_gy=2.6, quality="pass"))
    findings.append(quality_row("P", 1, "dosimetry", "voi_small", "warn", "12 SPECT voxels",
                                "h", "kidney_right"))
    lake.append("organ_dosimetry", rows)
    lake.append("quality", findings)


def test_a_failed_organ_at_risk_refuses_unless_forced(lake):
    _measured(lake, failed="kidney_left")
    with pytest.raises(RecommendationError, match="kidney_left.*--force"):
        recommend(lake, "P", 2, write=False)
    with pytest.raises(RecommendationError, match="kidney_left: no measured dose"):
        recommend(lake, "P", 2, write=False, force=True)  # nothing to rest on: still no


def test_warnings_of_organs_at_risk_are_shown_with_the_activity(lake):
    _measured(lake, failed=None)
    rec = recommend(lake, "P", 2, write=False)
    assert rec.activity_mbq is not None
    assert "kidney_right warn in cycle 1 (voi_small" in rec.explanation
    # BED from the stored kinetics: k = G / (alpha/beta)
    kidney = next(b for b in rec.budgets if b.voi == "kidney_left")
    assert kidney.bed_k_per_gy == pytest.approx(0.3 / 2.6)
