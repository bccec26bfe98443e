"""A recommendation never rests silently on a failed dosimetry of an organ at risk."""

from __future__ import annotations

import pytest

from theralake.lake.rows import organ_dosimetry_row, quality_row
from theralake.modeling.recommend import RecommendationError, recommend

AT_RISK = ("kidney_left", "kidney_right", "parotid_gland_left", "parotid_gland_right",
           "red_marrow")


def _measured(lake, failed: str | None, kidney_gy: float = 3.0) -> None:
    lake.append("patients", [{"id": "p", "patient_id": "P"}])
    rows, findings = [], []
    for voi in AT_RISK:
        if voi == failed:
            findings.append(quality_row("P", 1, "dosimetry", "voi_outside_fov", "fail",
                                        "no time point's SPECT covers it: no TIA", "h", voi))
            continue
        dose = 0.1 if voi == "red_marrow" else kidney_gy if voi.startswith("kidney") else 3.0
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


def test_the_range_binds_and_the_words_say_so(lake):
    """Every organ allows more than the range: no limiting organ, the range named, and the
    closest organ's projection in the organ table's figures (issue 18, item 4)."""
    _measured(lake, failed=None)
    rec = recommend(lake, "P", 2, write=False)
    assert rec.activity_mbq == 10000 and rec.limiting_organ is None
    assert rec.binding == "activity_range" and rec.details()["binding"] == "activity_range"
    assert rec.explanation.startswith("10 GBq: the top of the activity range (3-10 GBq); no "
                                      "organ limits it")
    closest = max(rec.budgets, key=lambda b: b.quantity_at(10) / b.limit_gy)
    words = rec.explanation.split("Closest to its limit: ")[1]
    assert words.startswith(f"{closest.voi}: cumulative")
    prior, this = closest.prior_gy, closest.this_cycle_at(10)
    assert f"{prior:.1f} Gy in cycle 1 + {this:.1f} Gy in cycle 2 at 10 GBq" in words
    assert f"= {prior + this:.1f} of its {closest.limit_gy:g} Gy limit" in words


def test_an_organ_binds_with_its_projected_total(lake):
    """The kidneys stop the next step: they are named with the cycle-1 BED the organ table
    shows, this cycle's, their sum and the limit, and the next step's total is over it."""
    _measured(lake, failed=None, kidney_gy=15.0)
    rec = recommend(lake, "P", 2, write=False)
    assert rec.limiting_organ == "kidneys" and rec.binding.startswith("kidney_")
    kidney = next(b for b in rec.budgets if b.voi == rec.binding)
    gbq = rec.activity_mbq / 1000
    assert kidney.prior_gy == pytest.approx(15.0 * 1.1)  # the cycle-1 BED of the organ table
    assert f"limited by kidneys, {kidney.voi}: cumulative BED 16.5 Gy in cycle 1 + " \
        f"{kidney.this_cycle_at(gbq):.1f} Gy in cycle 2 at {gbq:g} GBq" in rec.explanation
    total = kidney.quantity_at(gbq)
    assert f"= {total:.1f} of its 40 Gy limit" in rec.explanation
    assert total <= 40 < kidney.quantity_at(gbq + 0.25)
    assert f"{gbq + 0.25:g} GBq would give {kidney.quantity_at(gbq + 0.25):.1f} Gy" in \
        rec.explanation
