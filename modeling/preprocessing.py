"""Preprocessing steps that run inside the cross-validation (scikit-learn transformers).

``LogSkewed`` (log1p of skewed non-negative columns), ``CorrelationPruner`` and
``FeatureSelector`` (univariate filter, LASSO or stability selection) learn from the training
folds only; ``preprocessing_steps`` chains them after imputation and scaling. ``y`` may be a
survival structured array (event, time), binary labels or a continuous target.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_selection import SelectorMixin
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted


def is_survival(y: object) -> bool:
    return isinstance(y, np.ndarray) and y.dtype.names is not None and len(y.dtype.names) == 2


def _survival_fields(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    event, time = y.dtype.names
    return y[event].astype(bool), y[time].astype(float)


class LogSkewed(TransformerMixin, BaseEstimator):
    """``log1p`` of the columns that are non-negative with a skewness above ``skewness``
    on the training data (PSA, LDH, doses and volumes are log-normal-like)."""

    def __init__(self, skewness: float = 1.0):
        self.skewness = skewness

    def fit(self, X: pd.DataFrame | np.ndarray, y: object = None) -> LogSkewed:
        a = np.asarray(X, dtype=float)
        with np.errstate(all="ignore"):
            skew = stats.skew(a, axis=0, nan_policy="omit")
        self.columns_ = np.flatnonzero((np.nanmin(a, axis=0) >= 0)
                                       & (np.asarray(skew) > self.skewness))
        self.n_features_in_ = a.shape[1]
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        return self

    def transform(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame | np.ndarray:
        check_is_fitted(self, "columns_")
        out = X.copy() if hasattr(X, "iloc") else np.array(X, dtype=float)
        if hasattr(out, "iloc"):
            cols = out.columns[self.columns_]
            out[cols] = np.log1p(np.clip(out[cols].to_numpy(float), 0, None))
        else:
            out[:, self.columns_] = np.log1p(np.clip(out[:, self.columns_], 0, None))
        return out

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        return np.asarray(getattr(self, "feature_names_in_", input_features), dtype=object)


class CorrelationPruner(SelectorMixin, BaseEstimator):
    """Of two columns whose absolute Pearson correlation exceeds ``threshold``, keep the first."""

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold

    def fit(self, X: pd.DataFrame | np.ndarray, y: object = None) -> CorrelationPruner:
        a = np.asarray(X, dtype=float)
        self.n_features_in_ = a.shape[1]
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        with np.errstate(all="ignore"):
            r = np.abs(np.corrcoef(a, rowvar=False)) if a.shape[1] > 1 else np.zeros((1, 1))
        r = np.nan_to_num(np.atleast_2d(r))
        keep = np.ones(a.shape[1], bool)
        for j in range(a.shape[1]):
            if keep[j] and j + 1 < a.shape[1]:
                keep[j + 1:] &= r[j, j + 1:] <= self.threshold
        self.support_ = keep
        return self

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_


def univariate_scores(X: np.ndarray, y: object) -> np.ndarray:
    """Strength of each column alone: |Harrell's C - 0.5| (survival), |AUC - 0.5| (binary)
    or |Spearman rho| (continuous)."""
    a = np.asarray(X, dtype=float)
    if is_survival(y):
        from sksurv.metrics import concordance_index_censored

        event, time = _survival_fields(y)
        return np.array([abs(concordance_index_censored(event, time, a[:, j])[0] - 0.5)
                         for j in range(a.shape[1])])
    yv = np.asarray(y, dtype=float)
    if yv.ndim == 1 and set(np.unique(yv)) <= {0.0, 1.0}:
        from sklearn.metrics import roc_auc_score

        return np.array([abs(roc_auc_score(yv, a[:, j]) - 0.5) for j in range(a.shape[1])])
    yv = yv if yv.ndim == 1 else np.nanmean(yv, axis=1)
    return np.array([abs(np.nan_to_num(stats.spearmanr(a[:, j], yv)[0]))
                     for j in range(a.shape[1])])


def _l1_coefficients(X: np.ndarray, y: object, strength: float) -> np.ndarray:
    """L1-penalised coefficients (Coxnet, logistic or LASSO by the kind of y)."""
    if is_survival(y):
        from sksurv.linear_model import CoxnetSurvivalAnalysis

        m = CoxnetSurvivalAnalysis(l1_ratio=1.0, alphas=[strength], max_iter=10000).fit(X, y)
        return np.asarray(m.coef_).ravel()
    yv = np.asarray(y, dtype=float)
    if yv.ndim == 1 and set(np.unique(yv)) <= {0.0, 1.0}:
        from sklearn.linear_model import LogisticRegression

        m = LogisticRegression(penalty="l1", C=1.0 / (strength * len(yv)), solver="liblinear")
        return m.fit(X, yv).coef_.ravel()
    from sklearn.linear_model import Lasso

    yv = yv if yv.ndim == 1 else np.nanmean(yv, axis=1)
    return Lasso(alpha=strength, max_iter=10000).fit(X, yv).coef_


class FeatureSelector(SelectorMixin, BaseEstimator):
    """Keep at most ``max_features`` columns.

    Methods: ``none``; ``univariate`` (the strongest alone, :func:`univariate_scores`);
    ``lasso`` (the first columns to enter an L1 path); ``stability`` (Meinshausen and
    Buehlmann 2010: columns chosen by the L1 fit on at least ``threshold`` of ``resamples``
    half-samples). Expects scaled columns.
    """

    def __init__(self, method: str = "univariate", max_features: int = 10,
                 resamples: int = 30, fraction: float = 0.5, threshold: float = 0.6,
                 random_state: int = 0):
        self.method = method
        self.max_features = max_features
        self.resamples = resamples
        self.fraction = fraction
        self.threshold = threshold
        self.random_state = random_state

    def fit(self, X: pd.DataFrame | np.ndarray, y: object) -> FeatureSelector:
        a = np.asarray(X, dtype=float)
        self.n_features_in_ = a.shape[1]
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        k = min(self.max_features, a.shape[1])
        if self.method == "none" or k == a.shape[1]:
            scores = np.ones(a.shape[1])
        elif self.method == "univariate":
            scores = univariate_scores(a, y)
        elif self.method == "lasso":
            scores = self._entry_order(a, y)
        elif self.method == "stability":
            scores = self._stability(a, y)
        else:
            raise ValueError(f"unknown selection {self.method!r}: none, univariate, lasso, "
                             "stability")
        self.scores_ = scores
        order = np.argsort(-scores, kind="stable")[:k]
        support = np.zeros(a.shape[1], bool)
        support[order] = True
        if self.method == "stability":
            support &= scores >= self.threshold
            if not support.any():
                support[order[0]] = True
        self.support_ = support
        return self

    def _entry_order(self, a: np.ndarray, y: object) -> np.ndarray:
        """Score = the largest L1 strength at which a column's coefficient is non-zero."""
        scores = np.zeros(a.shape[1])
        for strength in np.geomspace(1.0, 1e-3, 12):
            nonzero = np.abs(_l1_coefficients(a, y, strength)) > 1e-10
            scores = np.where(nonzero & (scores == 0), strength, scores)
        return scores

    def _stability(self, a: np.ndarray, y: object) -> np.ndarray:
        rng = np.random.default_rng(self.random_state)
        n = len(a)
        strength = self._stability_strength(a, y)
        hits = np.zeros(a.shape[1])
        for _ in range(self.resamples):
            idx = rng.choice(n, size=max(2, int(self.fraction * n)), replace=False)
            hits += np.abs(_l1_coefficients(a[idx], y[idx], strength)) > 1e-10
        return hits / self.resamples

    def _stability_strength(self, a: np.ndarray, y: object) -> float:
        """The L1 strength at which the full-data fit keeps about ``max_features`` columns."""
        for strength in np.geomspace(1.0, 1e-3, 12):
            if (np.abs(_l1_coefficients(a, y, strength)) > 1e-10).sum() >= self.max_features:
                return float(strength)
        return 1e-3

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_


def preprocessing_steps(settings: dict, random_state: int = 0) -> list[tuple[str, object]]:
    """Imputation (median, with missing-value indicators), log of skewed columns, scaling,
    correlation pruning and selection, as pipeline steps."""
    stab = settings.get("stability", {})
    return [
        ("impute", SimpleImputer(strategy="median", add_indicator=True)),
        ("log", LogSkewed()),
        ("scale", StandardScaler()),
        ("prune", CorrelationPruner(settings.get("correlation_threshold", 0.9))),
        ("select", FeatureSelector(settings.get("selection", "univariate"),
                                   settings.get("max_features", 10),
                                   stab.get("resamples", 30), stab.get("fraction", 0.5),
                                   stab.get("threshold", 0.6), random_state)),
    ]
