"""The models of each task kind, as tuned scikit-learn pipelines, and conformal intervals.

``make_estimator(kind, name, config)`` gives an unfitted estimator: preprocessing steps and the
model in a :class:`~sklearn.pipeline.Pipeline`, wrapped in a grid search over the config's
grid (the inner loop of the nested cross-validation). Survival models follow scikit-survival
(``fit(X, y)`` with y a structured (event, time) array, ``predict`` a risk score, higher =
worse); binary models give ``predict_proba``; the dose regressor predicts every target with
a conformal prediction interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline

from theralake.modeling.preprocessing import preprocessing_steps


def _base_model(kind: str, name: str, params: dict, seed: int) -> BaseEstimator:
    if kind == "survival":
        if name == "cox":
            from sksurv.linear_model import CoxPHSurvivalAnalysis

            return CoxPHSurvivalAnalysis(ties="efron", **params)
        if name == "coxnet":
            from theralake.modeling.survival_estimators import CoxnetAt

            return CoxnetAt(**params)
        if name == "rsf":
            from sksurv.ensemble import RandomSurvivalForest

            return RandomSurvivalForest(random_state=seed, n_jobs=1, **params)
        if name in ("xgb", "xgb-aft"):
            from theralake.modeling.survival_estimators import XGBSurvival

            return XGBSurvival(random_state=seed, **params)
        if name == "deepsurv":
            from theralake.modeling.survival_estimators import DeepSurv

            return DeepSurv(random_state=seed, **params)
    if kind == "binary":
        if name == "logistic":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(max_iter=2000, **params)
        if name == "xgb":
            from xgboost import XGBClassifier

            return XGBClassifier(random_state=seed, n_jobs=1, learning_rate=0.05,
                                 subsample=0.8, **params)
    if kind == "regression":
        if name == "ridge":
            from sklearn.linear_model import Ridge

            return Ridge(**params)
        if name == "xgb":
            from xgboost import XGBRegressor

            return XGBRegressor(random_state=seed, n_jobs=1, learning_rate=0.05,
                                subsample=0.8, **params)
    raise ValueError(f"unknown {kind} model {name!r}")


def model_names(config: dict, kind: str) -> list[str]:
    return sorted(config["models"][kind])


def make_estimator(kind: str, name: str, config: dict, seed: int = 0) -> BaseEstimator:
    """Preprocessing + model, tuned by an inner grid search (the config's ``models``)."""
    models = config["models"][kind]
    if name not in models:
        raise ValueError(f"unknown {kind} model {name!r}; known: {', '.join(sorted(models))}")
    spec = models[name] or {}
    pipe = Pipeline([*preprocessing_steps(config["preprocessing"], seed),
                     ("model", _base_model(kind, name, dict(spec.get("params") or {}), seed))])
    grid = {f"model__{k}": list(v) for k, v in (spec.get("grid") or {}).items()}
    inner = config["validation"]["inner_folds"]
    splitter = (StratifiedKFold if kind == "binary" else KFold)(inner, shuffle=True,
                                                                random_state=seed)
    scoring = config["validation"].get("binary_scoring", "roc_auc") if kind == "binary" else None
    tuned = GridSearchCV(pipe, grid, cv=splitter, scoring=scoring,
                         error_score="raise") if grid else pipe
    if kind == "regression":
        return MultiTargetConformal(tuned, coverage=config["validation"]["coverage"],
                                    cv=inner, random_state=seed)
    return tuned


def unwrap(estimator: BaseEstimator) -> BaseEstimator:
    """The fitted pipeline inside a fitted grid search (or the estimator itself)."""
    return getattr(estimator, "best_estimator_", estimator)


class ConformalRegressor(RegressorMixin, BaseEstimator):
    """Prediction intervals by cross-conformal residuals (Vovk 2015; CV+ without the
    per-fold models): the ``coverage`` quantile of the out-of-fold absolute residuals, with
    the finite-sample correction ceil((n+1) coverage)/n. With ``log_target`` the model fits
    ln y and the interval is multiplicative (positive targets such as dose per GBq)."""

    def __init__(self, estimator: BaseEstimator, coverage: float = 0.9, cv: int = 5,
                 log_target: bool = True, random_state: int = 0):
        self.estimator = estimator
        self.coverage = coverage
        self.cv = cv
        self.log_target = log_target
        self.random_state = random_state

    def _forward(self, y: np.ndarray) -> np.ndarray:
        if self.log_target and np.any(y <= 0):
            raise ValueError("log_target needs positive targets")
        return np.log(y) if self.log_target else y

    def _back(self, z: np.ndarray) -> np.ndarray:
        return np.exp(z) if self.log_target else z

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> ConformalRegressor:
        z = self._forward(np.asarray(y, dtype=float))
        self.estimator_ = clone(self.estimator).fit(X, z)
        # residuals of the tuned model (hyper-parameters fixed) on held-out folds
        folds = KFold(min(self.cv, len(z)), shuffle=True, random_state=self.random_state)
        oof = cross_val_predict(clone(unwrap(self.estimator_)), X, z, cv=folds)
        residuals = np.sort(np.abs(z - oof))
        n = len(residuals)
        rank = min(n, math.ceil((n + 1) * self.coverage))
        self.quantile_ = float(residuals[rank - 1])
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self._back(self.estimator_.predict(X))

    def predict_interval(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds with the asked coverage."""
        z = self.estimator_.predict(X)
        return self._back(z - self.quantile_), self._back(z + self.quantile_)


class MultiTargetConformal(RegressorMixin, BaseEstimator):
    """One :class:`ConformalRegressor` per column of a target DataFrame (rows where the column
    is missing are left out of that target's fit); ``predict`` gives an (n, targets) array."""

    def __init__(self, estimator: BaseEstimator, coverage: float = 0.9, cv: int = 5,
                 random_state: int = 0):
        self.estimator = estimator
        self.coverage = coverage
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: pd.DataFrame) -> MultiTargetConformal:
        y = pd.DataFrame(y)
        self.targets_ = [str(c) for c in y.columns]
        self.models_ = {}
        for target in self.targets_:
            have = y[target].notna().to_numpy()
            self.models_[target] = ConformalRegressor(
                self.estimator, self.coverage, self.cv, True, self.random_state
            ).fit(X[have], y[target].to_numpy()[have])
        self.n_features_in_ = X.shape[1]
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.column_stack([self.models_[t].predict(X) for t in self.targets_])

    def predict_interval(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        bounds = [self.models_[t].predict_interval(X) for t in self.targets_]
        return np.column_stack([b[0] for b in bounds]), np.column_stack([b[1] for b in bounds])
