"""XGBSurvival and DeepSurv on simulated survival data with a known truth."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy.stats import spearmanr
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sksurv.functions import StepFunction
from sksurv.metrics import concordance_index_censored, integrated_brier_score
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from theralake.modeling.survival_estimators import (
    AFTFunction,
    DeepSurv,
    XGBSurvival,
    cox_partial_nll,
)

BETA = np.array([0.8, -0.5, 0.3, 0.0, 0.0])

ESTIMATORS = {
    "xgb-cox": XGBSurvival(),
    # Weibull times: the extreme-value AFT is the correctly specified family
    "xgb-aft": XGBSurvival(objective="survival:aft", aft_distribution="extreme"),
    "deepsurv": DeepSurv(),
}


def simulate_weibull(n: int, rng: np.random.Generator):
    """Cox model with Weibull (shape 1.5) times, exponential censoring (~30 %)."""
    X = rng.standard_normal((n, BETA.size))
    eta = X @ BETA
    t = (-np.log(rng.uniform(size=n)) / (0.1 * np.exp(eta))) ** (1 / 1.5)
    c = rng.exponential(12.0, size=n)
    return X, eta, Surv.from_arrays(t <= c, np.minimum(t, c))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X, _, y = simulate_weibull(1000, rng)
    X_test, eta_test, y_test = simulate_weibull(500, rng)
    assert 0.2 < 1 - y["event"].mean() < 0.4
    return X, y, X_test, eta_test, y_test


@pytest.fixture(scope="module", params=list(ESTIMATORS))
def fitted(request, data):
    X, y, *_ = data
    return clone(ESTIMATORS[request.param]).fit(X, y)


def test_concordance_close_to_oracle(fitted, data):
    *_, X_test, eta_test, y_test = data
    oracle = concordance_index_censored(y_test["event"], y_test["time"], eta_test)[0]
    assert fitted.score(X_test, y_test) == pytest.approx(oracle, abs=0.03)


def test_survival_functions_are_monotone_probabilities(fitted, data):
    *_, X_test, _, _ = data
    grid = np.linspace(0, fitted.unique_times_[-1], 200)
    funcs = fitted.predict_survival_function(X_test[:50])
    assert all(isinstance(f, StepFunction) for f in funcs)
    surv = np.vstack([f(grid) for f in funcs])
    assert ((surv >= 0) & (surv <= 1)).all()
    assert (np.diff(surv, axis=1) <= 1e-12).all()
    arr = fitted.predict_survival_function(X_test[:50], return_array=True)
    assert arr.shape == (50, fitted.unique_times_.size)
    cum_hazard = fitted.predict_cumulative_hazard_function(X_test[:50], return_array=True)
    assert_allclose(np.exp(-cum_hazard), arr, rtol=1e-6, atol=1e-12)


def test_integrated_brier_score_beats_kaplan_meier(fitted, data):
    X, y, X_test, _, y_test = data
    keep = y_test["time"] < y["time"].max()  # the censoring KM (from y) must cover them
    X_test, y_test = X_test[keep], y_test[keep]
    times = np.quantile(y_test["time"][y_test["event"]], np.linspace(0.1, 0.8, 15))
    surv = np.vstack([f(times) for f in fitted.predict_survival_function(X_test)])
    km = StepFunction(*kaplan_meier_estimator(y["event"], y["time"]))(times)
    ibs_km = integrated_brier_score(y, y_test, np.tile(km, (len(X_test), 1)), times)
    assert integrated_brier_score(y, y_test, surv, times) < ibs_km


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_clone_pipeline_pickle_and_seed_reproducibility(name, data):
    X, y, X_test, _, _ = data
    est = ESTIMATORS[name]
    assert clone(est).get_params() == est.get_params()
    pipe = Pipeline([("scale", StandardScaler()), ("model", clone(est))]).fit(X, y)
    restored = pickle.loads(pickle.dumps(pipe))
    assert_array_equal(restored.predict(X_test), pipe.predict(X_test))
    assert_array_equal(restored.predict_survival_function(X_test, return_array=True),
                       pipe.predict_survival_function(X_test, return_array=True))
    again = Pipeline([("scale", StandardScaler()), ("model", clone(est))]).fit(X, y)
    assert_array_equal(again.predict(X_test), pipe.predict(X_test))
    other = clone(est).set_params(random_state=1).fit(StandardScaler().fit_transform(X), y)
    assert not np.array_equal(other.predict(pipe[0].transform(X_test)), pipe.predict(X_test))


@pytest.mark.parametrize(("est", "grid"), [
    (XGBSurvival(n_estimators=30), {"max_depth": [1, 2]}),
    (DeepSurv(epochs=30), {"hidden_layers": [(8,), (16, 8)]}),
], ids=["xgb", "deepsurv"])
def test_grid_search(est, grid, data):
    X, y, *_ = data
    search = GridSearchCV(est, grid, cv=3).fit(X[:300], y[:300])
    assert 0.55 < search.best_score_ < 1
    assert search.best_estimator_.predict(X[:5]).shape == (5,)


def test_xgb_aft_normal_recovers_lognormal_median():
    rng = np.random.default_rng(1)

    def simulate(n):
        X = rng.standard_normal((n, 2))
        t = np.exp(5 + 0.5 * X[:, 0] + 0.5 * rng.standard_normal(n))
        c = rng.exponential(400.0, size=n)
        return X, Surv.from_arrays(t <= c, np.minimum(t, c))

    X, y = simulate(1000)
    X_test, _ = simulate(200)
    est = XGBSurvival(objective="survival:aft", aft_sigma=0.5).fit(X, y)
    grid = np.geomspace(1, 1e4, 4000)
    funcs = est.predict_survival_function(X_test)
    assert all(isinstance(f, AFTFunction) for f in funcs)
    median = grid[np.array([(f(grid) > 0.5).sum() for f in funcs])]
    true_median = np.exp(5 + 0.5 * X_test[:, 0])
    assert np.mean(np.abs(median / true_median - 1)) < 0.15
    assert_allclose(median, np.exp(-est.predict(X_test)), rtol=5e-3)  # exact: median = e^mu


def test_deepsurv_ranks_follow_linear_predictor(data):
    X, y, X_test, eta_test, _ = data
    assert spearmanr(DeepSurv().fit(X, y).predict(X_test), eta_test)[0] > 0.9


def test_deepsurv_leaves_torch_global_state_alone(data):
    X, y, *_ = data
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    DeepSurv(epochs=5).fit(X, y).predict(X)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_cox_partial_nll_matches_naive_breslow():
    rng = np.random.default_rng(2)
    scores, time = rng.standard_normal(40), rng.integers(1, 8, 40).astype(float)  # many ties
    event = (rng.uniform(size=40) < 0.7).astype(float)
    naive = -sum(scores[i] - np.log(np.exp(scores[time >= time[i]]).sum())
                 for i in np.flatnonzero(event)) / event.sum()
    got = cox_partial_nll(*(torch.from_numpy(a) for a in (scores, time, event)))
    assert got.item() == pytest.approx(naive, rel=1e-10)


def test_xgb_handles_missing_values(data):
    X, y, X_test, _, _ = data
    X = X.copy()
    X[np.random.default_rng(3).uniform(size=X.shape) < 0.1] = np.nan
    est = XGBSurvival(n_estimators=30).fit(X, y)
    X_test = X_test.copy()
    X_test[:, 0] = np.nan
    assert np.isfinite(est.predict(X_test)).all()


@pytest.mark.parametrize("est", [XGBSurvival(n_estimators=5), DeepSurv(epochs=2)],
                         ids=["xgb", "deepsurv"])
def test_rejects_unstructured_y(est, data):
    X, y, *_ = data
    with pytest.raises(ValueError, match="structured array"):
        est.fit(X, y["time"])


def test_deepsurv_rejects_nan(data):
    X, y, *_ = data
    X = X.copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        DeepSurv(epochs=2).fit(X, y)
    est = DeepSurv(epochs=2).fit(data[0], y)
    with pytest.raises(ValueError, match="contains NaN"):
        est.predict(X)


@pytest.mark.parametrize(("params", "match"), [
    ({"objective": "survival:foo"}, "objective must be"),
    ({"objective": "survival:aft", "aft_distribution": "weibull"}, "aft_distribution must be"),
])
def test_xgb_rejects_bad_hyperparameters(params, match, data):
    X, y, *_ = data
    with pytest.raises(ValueError, match=match):
        XGBSurvival(n_estimators=5, **params).fit(X, y)


def _sparse_cox_data(n: int = 300, p: int = 30, seed: int = 0):  # noqa: ANN202
    """Two true log-hazard coefficients (1.0, -0.8) among ``p`` features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    t = rng.exponential(np.exp(-(1.0 * X[:, 0] - 0.8 * X[:, 1])))
    c = rng.exponential(2.0, size=n)
    return X, Surv.from_arrays(t <= c, np.minimum(t, c))


def test_coxnet_at_a_penalty_equals_scikit_survivals_path_there():
    """CoxnetAt is scikit-survival's elastic-net Cox at alpha_ratio x alpha_max: the same
    coefficients as the reference path at that alpha; at alpha_max every one is zero."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    from theralake.modeling.survival_estimators import CoxnetAt

    X, y = _sparse_cox_data()
    ours = CoxnetAt(l1_ratio=1.0, alpha_ratio=0.1).fit(X, y)
    reference = CoxnetSurvivalAnalysis(l1_ratio=1.0, alphas=[ours.alpha_max_, ours.alpha_],
                                       tol=1e-9, max_iter=1_000_000).fit(X, y)
    assert_allclose(ours.coef_, reference.coef_[:, 1], atol=1e-3)  # default vs tight tol
    assert not np.any(reference.coef_[:, 0])  # alpha_max zeros every coefficient
    assert not np.any(CoxnetAt(l1_ratio=1.0, alpha_ratio=1.0).fit(X, y).coef_)
    shift = ours.predict(X) - X @ ours.coef_  # the linear predictor up to its centring
    assert np.ptp(shift) < 1e-10


def test_coxnet_tunes_its_penalty():
    """The inner cross-validation tunes alpha_ratio with l1_ratio; the chosen model is
    penalised. Before, Coxnet fitted a path and predicted with its weakest alpha: all 30
    coefficients non-zero, effectively unpenalised (issue 20, item 11)."""
    import pandas as pd
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    from theralake.modeling.dataset import load_modeling_config
    from theralake.modeling.estimators import make_estimator, unwrap

    config = load_modeling_config()
    config["preprocessing"].update(selection="none", correlation_threshold=1.0)
    X, y = _sparse_cox_data()
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    tuned = make_estimator("survival", "coxnet", config, seed=0).fit(frame, y)
    assert set(tuned.best_params_) == {"model__l1_ratio", "model__alpha_ratio"}
    model = unwrap(tuned)[-1]
    assert model.alpha_ == pytest.approx(tuned.best_params_["model__alpha_ratio"]
                                         * model.alpha_max_)
    weakest = CoxnetSurvivalAnalysis(l1_ratio=1.0).fit(X, y)
    assert np.count_nonzero(weakest.coef_[:, -1]) == X.shape[1]
    assert np.count_nonzero(model.coef_) < X.shape[1] // 2
    assert abs(model.coef_[0]) > 0.5 and abs(model.coef_[1]) > 0.4  # the true effects stay
