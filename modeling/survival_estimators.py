"""Survival estimators beyond scikit-survival: gradient-boosted trees and DeepSurv.

Both follow scikit-survival's conventions: ``fit(X, y)`` with ``y`` a structured array
(``sksurv.util.Surv.from_arrays(event, time)``), ``predict`` returns a risk score (higher =
shorter survival), ``score`` is Harrell's C, and ``predict_survival_function`` /
``predict_cumulative_hazard_function`` return :class:`~sksurv.functions.StepFunction` objects,
or with ``return_array=True`` an array over ``unique_times_`` (what
:func:`sksurv.metrics.integrated_brier_score` needs).

- :class:`XGBSurvival`: XGBoost with a Cox (``survival:cox``, Breslow baseline) or an
  accelerated failure time (``survival:aft``, exact parametric survival) objective.
- :class:`DeepSurv`: a Cox-loss MLP (Katzman et al. 2018, BMC Med Res Methodol 18:24).
- :class:`CoxnetAt`: the elastic-net Cox model at one penalty, ``alpha_ratio`` times the
  data's ``alpha_max`` (the weakest penalty that keeps every coefficient at zero), so that
  the penalty is a hyper-parameter the inner cross-validation tunes. scikit-survival's
  ``CoxnetSurvivalAnalysis`` fits a whole path and predicts with its last, weakest alpha:
  effectively unpenalised unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import xgboost as xgb
from scipy import special
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from sksurv.base import SurvivalAnalysisMixin
from sksurv.functions import StepFunction
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.util import check_array_survival
from torch import nn

__all__ = ["AFTBaseline", "AFTFunction", "CoxnetAt", "DeepSurv", "XGBSurvival",
           "cox_partial_nll"]

# log survival function ln(1 - F(z)) of the standardised log-time error, by XGBoost's names
_AFT_DISTRIBUTIONS = {
    "normal": lambda z: special.log_ndtr(-z),
    "logistic": lambda z: -np.logaddexp(0.0, z),
    "extreme": lambda z: -np.exp(z),  # minimum Gumbel: Weibull times
}


class CoxnetAt(SurvivalAnalysisMixin, BaseEstimator):
    """Elastic-net Cox regression at the penalty ``alpha_ratio * alpha_max``.

    Args:
        l1_ratio: the elastic-net mixing (1: lasso).
        alpha_ratio: the penalty as a fraction of ``alpha_max``, the data's smallest penalty
            with every coefficient zero (scikit-survival's first alpha of a path).

    Fitted attributes: ``alpha_max_``, ``alpha_`` (the penalty used), ``coef_``, and
    ``model_`` (scikit-survival's model fitted at ``alpha_`` alone, with its baseline).
    """

    def __init__(self, l1_ratio: float = 0.5, alpha_ratio: float = 0.1):
        self.l1_ratio = l1_ratio
        self.alpha_ratio = alpha_ratio

    def fit(self, X: np.ndarray, y: np.ndarray) -> CoxnetAt:
        if not 0 < self.alpha_ratio <= 1:
            raise ValueError(f"alpha_ratio must be in (0, 1], got {self.alpha_ratio}")
        path = CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, n_alphas=2).fit(X, y)
        self.alpha_max_ = float(path.alphas_[0])
        self.alpha_ = self.alpha_ratio * self.alpha_max_
        self.model_ = CoxnetSurvivalAnalysis(l1_ratio=self.l1_ratio, alphas=[self.alpha_],
                                             fit_baseline_model=True).fit(X, y)
        self.coef_ = self.model_.coef_[:, 0]
        self.n_features_in_ = self.model_.n_features_in_
        if hasattr(self.model_, "feature_names_in_"):
            self.feature_names_in_ = self.model_.feature_names_in_
        self.unique_times_ = self.model_.unique_times_
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Risk scores (the linear predictor) at ``alpha_``."""
        check_is_fitted(self, "model_")
        return self.model_.predict(X, alpha=self.alpha_)

    def predict_survival_function(self, X: np.ndarray, return_array: bool = False
                                  ) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict_survival_function(X, alpha=self.alpha_,
                                                     return_array=return_array)

    def predict_cumulative_hazard_function(self, X: np.ndarray, return_array: bool = False
                                           ) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict_cumulative_hazard_function(X, alpha=self.alpha_,
                                                              return_array=return_array)


def _seed(random_state: int | None) -> int:
    """An int seed: ``random_state`` itself if an int, else one drawn from it."""
    if isinstance(random_state, int | np.integer):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class AFTFunction(StepFunction):
    """Survival (or cumulative hazard) function of one subject under an AFT model.

    ``ln T = mu + sigma * W`` with ``W`` from ``distribution``, so
    ``S(t) = 1 - F((ln t - mu) / sigma)`` and ``H(t) = -ln S(t)``. ``x``/``y`` tabulate the
    function at the training times like a :class:`StepFunction`; calling it is exact at any
    ``t >= 0``.
    """

    def __init__(
        self, x: np.ndarray, mu: float, sigma: float, distribution: str, *,
        cumulative_hazard: bool = False,
    ) -> None:
        self.mu, self.sigma, self.distribution = float(mu), float(sigma), distribution
        self.cumulative_hazard = cumulative_hazard
        super().__init__(x, self._evaluate(x), domain=(0, np.inf))

    def _evaluate(self, t: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            z = (np.log(t) - self.mu) / self.sigma
        log_s = _AFT_DISTRIBUTIONS[self.distribution](z)
        return -log_s if self.cumulative_hazard else np.exp(log_s)

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        """Evaluate at time(s) ``x`` (finite, non-negative)."""
        t = np.atleast_1d(np.asarray(x, dtype=float))
        if not np.isfinite(t).all() or (t < 0).any():
            raise ValueError("x must be finite and non-negative")
        value = self._evaluate(t)
        return value[0] if value.shape[0] == 1 else value


class AFTBaseline:
    """Exact AFT survival functions with :class:`BreslowEstimator`'s interface.

    Args:
        distribution: ``"normal"``, ``"logistic"`` or ``"extreme"`` (XGBoost's names).
        sigma: Scale of the log-time error.
    """

    def __init__(self, distribution: str, sigma: float) -> None:
        self.distribution, self.sigma = distribution, sigma

    def fit(self, event: np.ndarray, time: np.ndarray) -> AFTBaseline:
        """Record the unique training times (the grid of ``return_array=True``)."""
        self.unique_times_ = np.unique(time)
        return self

    def _functions(self, mu: np.ndarray, cumulative_hazard: bool) -> np.ndarray:
        funcs = np.empty(len(mu), dtype=object)
        for i, m in enumerate(mu):
            funcs[i] = AFTFunction(self.unique_times_, m, self.sigma, self.distribution,
                                   cumulative_hazard=cumulative_hazard)
        return funcs

    def get_survival_function(self, mu: np.ndarray) -> np.ndarray:
        """Survival functions for predicted log-time locations ``mu``."""
        return self._functions(mu, cumulative_hazard=False)

    def get_cumulative_hazard_function(self, mu: np.ndarray) -> np.ndarray:
        """Cumulative hazard functions for predicted log-time locations ``mu``."""
        return self._functions(mu, cumulative_hazard=True)


class XGBSurvival(SurvivalAnalysisMixin, BaseEstimator):
    """Gradient-boosted trees (XGBoost) for right-censored survival data.

    With ``objective="survival:cox"`` the trees model the log hazard ratio, ``predict``
    returns it and survival functions come from Breslow's estimator on the training margins.
    With ``objective="survival:aft"`` they model ``mu`` in ``ln T = mu + aft_sigma * W``,
    ``predict`` returns ``-mu`` (minus the log predicted time) and survival functions are the
    exact parametric ones. Missing values (NaN) in ``X`` are handled by XGBoost.

    Args:
        objective: ``"survival:cox"`` or ``"survival:aft"``.
        n_estimators: Boosting rounds.
        learning_rate: Shrinkage (XGBoost ``eta``).
        max_depth: Maximum tree depth.
        min_child_weight: Minimum hessian sum in a leaf.
        subsample: Row fraction per tree.
        colsample_bytree: Column fraction per tree.
        reg_lambda: L2 penalty on leaf weights.
        aft_distribution: AFT error distribution: ``"normal"``, ``"logistic"`` or
            ``"extreme"``.
        aft_sigma: AFT error scale.
        random_state: Seed of the row/column sampling.
        n_jobs: XGBoost threads.

    Attributes:
        booster_: The trained :class:`xgboost.Booster`.
        baseline_model_: :class:`BreslowEstimator` (Cox) or :class:`AFTBaseline` (AFT).
        unique_times_: Unique training times, the grid of ``return_array=True``.
        n_features_in_: Number of features seen in ``fit``.
    """

    def __init__(
        self,
        objective: str = "survival:cox",
        n_estimators: int = 200,
        learning_rate: float = 0.05,
        max_depth: int = 3,
        min_child_weight: float = 1.0,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        aft_distribution: str = "normal",
        aft_sigma: float = 1.0,
        random_state: int | None = 0,
        n_jobs: int = 1,
    ) -> None:
        self.objective = objective
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.aft_distribution = aft_distribution
        self.aft_sigma = aft_sigma
        self.random_state = random_state
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        """Tags: NaN allowed in ``X``."""
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X, y) -> XGBSurvival:
        """Fit the boosted trees and the baseline (Breslow or parametric) survival model.

        Args:
            X: Features, shape ``(n_samples, n_features)``; NaN means missing.
            y: Structured array of (event indicator, time), times > 0.

        Returns:
            The fitted estimator.
        """
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan")
        event, time = check_array_survival(X, y)
        if self.objective not in ("survival:cox", "survival:aft"):
            raise ValueError(f"objective must be 'survival:cox' or 'survival:aft', "
                             f"got {self.objective!r}")
        if (time <= 0).any():
            raise ValueError("survival times must be positive")
        params = {
            "objective": self.objective, "eta": self.learning_rate, "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight, "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree, "lambda": self.reg_lambda,
            "tree_method": "hist", "nthread": self.n_jobs, "seed": _seed(self.random_state),
            "verbosity": 0,
        }
        if self.objective == "survival:cox":
            dtrain = self._dmatrix(X, label=np.where(event, time, -time))
        else:
            if self.aft_distribution not in _AFT_DISTRIBUTIONS:
                raise ValueError(f"aft_distribution must be one of {sorted(_AFT_DISTRIBUTIONS)}, "
                                 f"got {self.aft_distribution!r}")
            params |= {"aft_loss_distribution": self.aft_distribution,
                       "aft_loss_distribution_scale": self.aft_sigma}
            dtrain = self._dmatrix(X, label_lower_bound=time,
                                   label_upper_bound=np.where(event, time, np.inf))
        self.booster_ = xgb.train(params, dtrain, num_boost_round=self.n_estimators)
        margin = self.booster_.predict(dtrain, output_margin=True).astype(np.float64)
        if self.objective == "survival:cox":
            self.baseline_model_ = BreslowEstimator().fit(margin, event, time)
        else:
            self.baseline_model_ = AFTBaseline(self.aft_distribution, self.aft_sigma).fit(
                event, time)
        self.unique_times_ = self.baseline_model_.unique_times_
        return self

    def _dmatrix(self, X: np.ndarray, **labels) -> xgb.DMatrix:
        return xgb.DMatrix(X, missing=np.nan, nthread=self.n_jobs, **labels)

    def _margin(self, X) -> np.ndarray:
        """Raw booster output: log hazard ratio (Cox) or ``mu`` of log time (AFT)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        return self.booster_.predict(self._dmatrix(X), output_margin=True).astype(np.float64)

    def predict(self, X) -> np.ndarray:
        """Risk score (higher = shorter survival).

        Returns:
            Log hazard ratio (Cox) or minus the predicted log time (AFT), shape ``(n_samples,)``.
        """
        margin = self._margin(X)
        return margin if self.objective == "survival:cox" else -margin

    def predict_survival_function(self, X, return_array: bool = False) -> np.ndarray:
        """Survival functions: StepFunctions, or an array over ``unique_times_``."""
        return self._predict_survival_function(self.baseline_model_, self._margin(X),
                                               return_array)

    def predict_cumulative_hazard_function(self, X, return_array: bool = False) -> np.ndarray:
        """Cumulative hazard functions: StepFunctions, or an array over ``unique_times_``."""
        return self._predict_cumulative_hazard_function(self.baseline_model_, self._margin(X),
                                                        return_array)


@contextmanager
def _torch_single_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the caller's setting.

    A small MLP gains nothing from intra-op threads, which moreover fight XGBoost's OpenMP
    pool on small machines (10x slower fits); one thread also makes fits machine-independent.
    """
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)


def _mlp(n_features: int, hidden_layers: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Linear-ReLU-Dropout blocks and a bias-free linear output (the log risk)."""
    layers: list[nn.Module] = []
    for width in hidden_layers:
        layers += [nn.Linear(n_features, width), nn.ReLU(), nn.Dropout(dropout)]
        n_features = width
    layers.append(nn.Linear(n_features, 1, bias=False))
    return nn.Sequential(*layers)


def cox_partial_nll(scores: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Mean negative Cox partial log-likelihood (Breslow ties) per event.

    Args:
        scores: Log-risk, shape ``(n,)``.
        time: Event/censoring times, shape ``(n,)``.
        event: Event indicators (0/1, float), shape ``(n,)``.
    """
    order = torch.argsort(time, descending=True, stable=True)
    scores, time, event = scores[order], time[order], event[order]
    log_risk_set = torch.logcumsumexp(scores, dim=0)
    neg_time = -time.contiguous()
    last_tied = torch.searchsorted(neg_time, neg_time, right=True) - 1  # risk set includes ties
    return -((scores - log_risk_set[last_tied]) * event).sum() / event.sum().clamp(min=1.0)


class DeepSurv(SurvivalAnalysisMixin, BaseEstimator):
    """DeepSurv: a multilayer perceptron trained on the Cox partial likelihood.

    Katzman et al. (2018), BMC Med Res Methodol 18:24. Hidden blocks are Linear-ReLU-Dropout,
    the output a bias-free linear unit (log risk); training is Adam with weight decay on the
    negative Cox partial log-likelihood (Breslow ties). Survival functions come from Breslow's
    estimator on the training outputs. Torch runs on one thread inside ``fit``/``predict``
    (restored afterwards). ``X`` should be standardised beforehand (e.g. a
    ``StandardScaler`` in a pipeline) and must not contain NaN.

    Args:
        hidden_layers: Widths of the hidden layers.
        dropout: Dropout probability after each hidden layer.
        learning_rate: Adam learning rate.
        weight_decay: Adam (L2) weight decay.
        epochs: Passes over the training data.
        batch_size: Mini-batch size; ``None`` trains on the full batch (exact partial
            likelihood).
        random_state: Seed of initialisation, dropout and batch order.

    Attributes:
        state_dict_: Trained weights (tensors) of the network rebuilt from ``hidden_layers_``.
        hidden_layers_: Architecture the weights belong to.
        loss_curve_: Training loss per epoch (mean over batches).
        baseline_model_: :class:`BreslowEstimator` on the training outputs.
        unique_times_: Unique training times, the grid of ``return_array=True``.
        n_features_in_: Number of features seen in ``fit``.
    """

    def __init__(
        self,
        hidden_layers: tuple[int, ...] = (32, 16),
        dropout: float = 0.1,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int = 200,
        batch_size: int | None = None,
        random_state: int | None = 0,
    ) -> None:
        self.hidden_layers = hidden_layers
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.random_state = random_state

    def fit(self, X, y) -> DeepSurv:
        """Train the network, then Breslow's baseline hazard on its training outputs.

        Args:
            X: Standardised features, shape ``(n_samples, n_features)``, no NaN.
            y: Structured array of (event indicator, time).

        Returns:
            The fitted estimator.
        """
        X = self._validate_X(X, reset=True)
        event, time = check_array_survival(X, y)
        x_t, time_t = torch.from_numpy(X), torch.from_numpy(time.astype(np.float64))
        event_t = torch.from_numpy(event.astype(np.float32))
        n = len(X)
        batch_size = n if self.batch_size is None else int(self.batch_size)
        hidden = tuple(int(w) for w in self.hidden_layers)
        # seed locally (the global RNG is left as it was), on one thread
        with torch.random.fork_rng(devices=[]), _torch_single_thread():
            torch.manual_seed(_seed(self.random_state))
            net = _mlp(X.shape[1], hidden, self.dropout)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate,
                                         weight_decay=self.weight_decay)
            net.train()
            self.loss_curve_ = []
            for _ in range(self.epochs):
                order = torch.randperm(n) if batch_size < n else torch.arange(n)
                losses = []
                for batch in order.split(batch_size):
                    optimizer.zero_grad()
                    loss = cox_partial_nll(net(x_t[batch]).squeeze(1), time_t[batch],
                                           event_t[batch])
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
                self.loss_curve_.append(float(np.mean(losses)))
        self.hidden_layers_ = hidden
        self.state_dict_ = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.baseline_model_ = BreslowEstimator().fit(self._forward(X), event, time)
        self.unique_times_ = self.baseline_model_.unique_times_
        return self

    def _validate_X(self, X, reset: bool) -> np.ndarray:
        X = validate_data(self, X, dtype=np.float32, ensure_all_finite=False, reset=reset)
        if not np.isfinite(X).all():
            raise ValueError("DeepSurv: X contains NaN or infinite values; impute them first "
                             "(XGBSurvival handles missing values)")
        return X

    def _forward(self, X: np.ndarray) -> np.ndarray:
        with torch.device("meta"):  # no init, no draw from the global RNG
            net = _mlp(X.shape[1], self.hidden_layers_, 0.0)
        net.load_state_dict(self.state_dict_, assign=True)
        net.eval()
        with torch.no_grad(), _torch_single_thread():
            return net(torch.from_numpy(X)).squeeze(1).double().numpy()

    def predict(self, X) -> np.ndarray:
        """Log risk (network output), shape ``(n_samples,)``; higher = shorter survival."""
        check_is_fitted(self)
        return self._forward(self._validate_X(X, reset=False))

    def predict_survival_function(self, X, return_array: bool = False) -> np.ndarray:
        """Survival functions: StepFunctions, or an array over ``unique_times_``."""
        return self._predict_survival_function(self.baseline_model_, self.predict(X),
                                               return_array)

    def predict_cumulative_hazard_function(self, X, return_array: bool = False) -> np.ndarray:
        """Cumulative hazard functions: StepFunctions, or an array over ``unique_times_``."""
        return self._predict_cumulative_hazard_function(self.baseline_model_, self.predict(X),
                                                        return_array)
