"""Datasets, survival/response/dose models and their validation on a truth-filled cohort lake."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from theralake.ingest.pseudonym import Pseudonymizer
from theralake.lake import Lake
from theralake.modeling.dataset import (
    DatasetError,
    build_dataset,
    load_modeling_config,
    patient_frame,
)
from theralake.modeling.evaluation import cross_validate, outer_folds
from theralake.modeling.metrics import net_benefit, paired_c_difference
from theralake.synth.config import SynthConfig
from theralake.synth.truth_lake import write_truth_lake

#: synth/README.md "Margin": Harrell's C of PFS with minus without the tumour dose.
DOCUMENTED_PFS_MARGIN = 0.056


@pytest.fixture(autouse=True)
def _quiet():
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=RuntimeWarning)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    lake = Lake(tmp_path_factory.mktemp("models") / "lake")
    write_truth_lake(lake, SynthConfig(patients=300, cycles=2, seed=11, small=True),
                     Pseudonymizer(key="models-test-key-0001"), dose_error_sd=0.05)
    return lake


@pytest.fixture
def config():
    cfg = load_modeling_config()
    cfg["validation"].update(bootstrap=100, outer_folds=4, inner_folds=2)
    for kind in cfg["models"].values():  # one grid point each: tests check wiring and numbers
        for spec in kind.values():
            spec["grid"] = {k: v[:1] for k, v in spec.get("grid", {}).items()}
    cfg["models"]["survival"]["cox"]["grid"] = {"alpha": [1.0]}
    cfg["models"]["binary"]["logistic"]["grid"] = {"C": [0.1]}
    return cfg


def test_dataset_one_row_per_patient_with_named_columns(cohort, config):
    frame = patient_frame(cohort, config)
    assert frame.index.is_unique and len(frame) == 300
    for col in ("clinical/psa_ng_ml", "dosimetry/tumor_total/absorbed_dose_gy",
                "dosimetry_total/kidney_left/bed_gy", "administration/activity_mbq",
                "pet/kidney_left/uptake/suvmean"):
        assert col in frame.columns
    assert not any("/lesion_" in c for c in frame.columns)
    ds = build_dataset(cohort, "pfs", "clinical+tumour_dose", config)
    assert ds.y.dtype.names == ("event", "time_d") and len(ds.y) == len(ds.X)
    assert ds.dropped["clinical/sex=M"].startswith("constant")
    again = build_dataset(cohort, "pfs", "clinical+tumour_dose", config)
    assert again.hash == ds.hash and len(ds.hash) == 64
    assert build_dataset(cohort, "pfs", "clinical", config).hash != ds.hash
    folds = outer_folds(ds, 4, 0)
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests) == list(range(len(ds.X)))  # every patient scored exactly once
    for train, test in folds:
        assert not set(ds.groups[train]) & set(ds.groups[test])


def test_dataset_refusals(cohort, config, tmp_path):
    with pytest.raises(DatasetError, match="unknown feature set 'radiomix'"):
        build_dataset(cohort, "pfs", "clinical+radiomix", config)
    with pytest.raises(DatasetError, match="unknown task 'pfs2'"):
        build_dataset(cohort, "pfs2", None, config)
    with pytest.raises(DatasetError, match="would leak the target"):
        build_dataset(cohort, "dose", "clinical+tumour_dose", config)
    named = tmp_path / "set.yaml"
    named.write_text("include: ['clinical/sex=M', 'clinical/age_y']\n")
    with pytest.raises(DatasetError, match=r"feature clinical/sex=M: constant"):
        build_dataset(cohort, "pfs", str(named), config)
    config["validation"]["min_events_per_feature"] = 50
    with pytest.raises(DatasetError, match="too few for 10 features"):
        build_dataset(cohort, "pfs", "clinical+tumour_dose", config)
    with pytest.raises(DatasetError, match="no clinical, dosimetry or feature rows"):
        build_dataset(Lake(tmp_path / "empty"), "pfs", None, config)


def test_a_feature_group_without_a_column_is_refused(cohort, config):
    """A named group that resolves to no usable column refuses the dataset with its name and
    why; before, the model trained on the other groups alone (issue 18, item 1)."""
    config["feature_sets"]["nodose"] = ["dosimetry/no_such_voi/absorbed_dose_gy"]
    with pytest.raises(DatasetError, match=r"feature group 'nodose' of 'clinical\+nodose' "
                                           r"gives no usable column \(no column of the lake"):
        build_dataset(cohort, "pfs", "clinical+nodose", config)
    config["feature_sets"]["drug"] = ["clinical/prior_therapies", "clinical/sex=*"]
    frame = patient_frame(cohort, config)
    assert frame["clinical/sex=M"].nunique() == 1  # the only sex level: constant, dropped
    ds = build_dataset(cohort, "pfs", "clinical+drug", config)  # one usable column is enough
    assert "clinical/prior_therapies" in ds.X.columns
    config["feature_sets"]["drug"] = ["clinical/sex=*"]
    with pytest.raises(DatasetError, match=r"'drug'.*clinical/sex=M: constant"):
        build_dataset(cohort, "pfs", "clinical+drug", config)


def test_lesion_summaries_feed_the_dataset(cohort, config):
    """Per-lesion rows reach the models through the cycle's lesion summaries."""
    frame = patient_frame(cohort, config)
    od = cohort.read("organ_dosimetry", "cycle = 1")
    lesions = od[od.voi.str.startswith("lesion_")].groupby("patient_id").absorbed_dose_gy
    pid = lesions.size().index[0]
    assert frame.loc[pid, "dosimetry/lesions/count"] == lesions.size()[pid]
    assert frame.loc[pid, "dosimetry/lesions/min_absorbed_dose_gy"] == pytest.approx(
        lesions.min()[pid])
    ds = build_dataset(cohort, "pfs", "clinical+lesion_dose", config)
    assert "dosimetry/lesions/min_absorbed_dose_gy" in ds.X.columns


def test_tumour_dose_adds_the_documented_margin(cohort, config):
    """Cox with the tumour dose beats Cox without it; the paired bootstrap interval of the
    C-index difference excludes 0 and holds the generator's documented margin."""
    without = build_dataset(cohort, "pfs", "clinical", config)
    with_dose = build_dataset(cohort, "pfs", "clinical+tumour_dose", config)
    a = cross_validate(without, "cox", config, progress=False)
    b = cross_validate(with_dose, "cox", config, progress=False)
    diff = paired_c_difference(with_dose.y, a.predictions.risk.to_numpy(),
                               b.predictions.risk.to_numpy(), 200)
    assert b.metrics["harrell_c"] > a.metrics["harrell_c"]
    assert diff["delta_c_lower"] > 0
    assert diff["delta_c_lower"] <= DOCUMENTED_PFS_MARGIN <= diff["delta_c_upper"]
    m = b.metrics
    assert m["harrell_c_lower"] < m["harrell_c"] < m["harrell_c_upper"]
    assert 0.65 < m["uno_c"] < 0.85 and 0.65 < m["td_auc"] < 0.9
    assert 0.05 < m["ibs"] < 0.25  # Kaplan-Meier alone is about 0.2
    assert 0.7 < m["calibration_slope"] < 1.4


def test_shuffled_outcomes_give_chance_concordance(cohort, config):
    ds = build_dataset(cohort, "pfs", "clinical+tumour_dose", config)
    ds.y = ds.y[np.random.default_rng(0).permutation(len(ds.y))]
    res = cross_validate(ds, "cox", config, progress=False)
    assert abs(res.metrics["harrell_c"] - 0.5) < 0.06
    assert res.metrics["harrell_c_lower"] < 0.5 < res.metrics["harrell_c_upper"] + 0.02


@pytest.mark.parametrize("model", ["rsf", "xgb", "xgb-aft", "deepsurv", "coxnet"])
def test_other_survival_models_learn(cohort, config, model):
    config["models"]["survival"]["rsf"]["params"]["n_estimators"] = 60
    config["models"]["survival"]["deepsurv"]["params"]["epochs"] = 80
    config["validation"]["bootstrap"] = 20
    ds = build_dataset(cohort, "pfs", "clinical+tumour_dose", config)
    m = cross_validate(ds, model, config, progress=False).metrics
    assert m["harrell_c"] > 0.65, m
    assert np.isfinite(m["ibs"]) and m["ibs"] < 0.25


@pytest.mark.parametrize("selection", ["lasso", "stability"])
def test_selection_inside_cv_keeps_the_dose(cohort, config, selection):
    config["preprocessing"].update(selection=selection, max_features=4)
    config["preprocessing"]["stability"]["resamples"] = 10
    config["validation"]["bootstrap"] = 20
    ds = build_dataset(cohort, "pfs", "clinical+tumour_dose", config)
    from theralake.modeling.train import fit_final

    pipe = fit_final(ds, "cox", config)
    kept = pipe[:-1].get_feature_names_out()
    assert 1 <= len(kept) <= 4
    assert any("tumor_total" in k for k in kept)  # the strongest predictor survives


def test_binary_models_are_tuned_by_the_configured_scorer():
    from theralake.modeling.estimators import make_estimator

    cfg = load_modeling_config()  # the packaged grid: strong penalties, chosen by log loss
    tuned = make_estimator("binary", "logistic", cfg)
    assert tuned.scoring == "neg_log_loss" and min(tuned.param_grid["model__C"]) <= 0.01
    cfg["validation"]["binary_scoring"] = "roc_auc"
    assert make_estimator("binary", "xgb", cfg).scoring == "roc_auc"


def test_response_model_and_decision_curve(cohort, config):
    ds = build_dataset(cohort, "response", None, config)
    m = cross_validate(ds, "logistic", config, progress=False).metrics
    assert m["auc"] > 0.6 and m["auc_lower"] < m["auc"] < m["auc_upper"]
    y = np.array([1, 1, 0, 0])
    p = np.array([0.9, 0.4, 0.6, 0.1])
    nb = net_benefit(y, p, np.array([0.5])).iloc[0]
    assert nb.model == pytest.approx(1 / 4 - 1 / 4 * 1.0)  # one TP, one FP, odds 1
    assert nb.treat_all == pytest.approx(0.5 - 0.5)


def test_dose_prediction_reaches_what_the_pet_correlation_allows(cohort, config):
    """Kidney dose per GBq from the PET: the error is that of an oracle log-linear fit of the
    truth on the true SUV (the generator's irreducible noise), and the 90 % conformal
    intervals cover about 90 % of held-out patients."""
    ds = build_dataset(cohort, "dose", None, config)
    res = cross_validate(ds, "ridge", config, progress=False)
    m = res.metrics
    frame = patient_frame(cohort, config).loc[ds.X.index]
    for voi in ("kidney_left", "parotid_gland_left"):
        x = np.log(frame[f"pet/{voi}/uptake/suvmean"].to_numpy())
        y = np.log(ds.y[voi].to_numpy())
        fit = np.polyval(np.polyfit(x, y, 1), x)
        oracle = float(np.median(np.abs(np.exp(fit - y) - 1)))
        assert m[f"{voi}_median_abs_rel_error"] < oracle * 1.3 + 0.02, (voi, oracle)
        assert 0.8 <= m[f"{voi}_coverage"] <= 0.97
    assert 0.85 <= m["coverage"] <= 0.95
