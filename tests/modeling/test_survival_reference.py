"""The project's survival API against lifelines on its bundled Rossi data (REFERENCES.md)."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from sksurv.util import Surv

from theralake.modeling.dataset import load_modeling_config
from theralake.modeling.estimators import _base_model
from theralake.modeling.metrics import survival_metrics

ROSSI_CONCORDANCE = 0.6403  # lifelines CoxPHFitter, all covariates, Efron ties


def test_cox_matches_lifelines_on_rossi():
    df = load_rossi()
    X = df.drop(columns=["week", "arrest"]).astype(float)
    y = Surv.from_arrays(df.arrest.astype(bool), df.week.astype(float), "event", "time_d")
    ours = _base_model("survival", "cox", {"alpha": 0.0}, 0).fit(X, y)
    ref = CoxPHFitter().fit(df, duration_col="week", event_col="arrest")
    np.testing.assert_allclose(ours.coef_, ref.params_[X.columns].to_numpy(), atol=1e-4)
    assert ref.concordance_index_ == pytest.approx(ROSSI_CONCORDANCE, abs=5e-5)
    times = np.array([10.0, 20.0, 30.0, 40.0])
    surv = np.vstack([f(times) for f in ours.predict_survival_function(X)])
    m = survival_metrics(y, ours.predict(X), surv, times, 30.0, resamples=20)
    assert m["harrell_c"] == pytest.approx(ROSSI_CONCORDANCE, abs=5e-5)


def test_config_models_exist():
    cfg = load_modeling_config()
    for kind, models in cfg["models"].items():
        for name, spec in models.items():
            _base_model(kind, name, dict(spec.get("params") or {}), 0)
    with pytest.raises(ValueError, match="unknown survival model 'cax'"):
        _base_model("survival", "cax", {}, 0)


def test_brier_score_and_calibration_on_a_dense_grid_at_the_horizon():
    """WHAS500: the integrated Brier score on the evaluation grid equals scikit-survival's on
    a dense one (8 points gave 0.1420 for 0.1450), and calibration is read at the configured
    horizon, not the nearest of 8 points (281 d for 180 d; issue 20, item 12)."""
    from sksurv.datasets import load_whas500
    from sksurv.metrics import integrated_brier_score

    from theralake.modeling.metrics import evaluation_times

    X, y = load_whas500()
    X = X.select_dtypes("number").astype(float)
    model = _base_model("survival", "cox", {"alpha": 1e-4}, 0).fit(X, y)
    event, time = y["fstat"], y["lenfol"]
    times = evaluation_times(y, horizon=180.0)
    assert 180.0 in times and len(times) >= 50
    surv = np.vstack([f(times) for f in model.predict_survival_function(X)])
    ours = survival_metrics(y, model.predict(X), surv, times, 180.0, resamples=0)
    dense = np.linspace(times.min(), times.max(), 400)
    dense_surv = np.vstack([f(dense) for f in model.predict_survival_function(X)])
    reference = integrated_brier_score(y, y, dense_surv, dense)
    assert ours["ibs"] == pytest.approx(reference, abs=5e-4)
    assert ours["horizon_d"] == 180.0
    coarse = np.linspace(times.min(), times.max(), 8)  # the old grid
    coarse_surv = np.vstack([f(coarse) for f in model.predict_survival_function(X)])
    assert abs(integrated_brier_score(y, y, coarse_surv, coarse) - reference) > 1e-3
    assert event.sum() > 100 and time.max() > 180
