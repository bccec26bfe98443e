"""Quantitative SPECT reconstruction (OSEM or BSREM, PyTomography) with triple-energy-window
scatter, and the camera calibration that turns it into Bq/mL. Pure: arrays and numbers."""

from __future__ import annotations

import contextlib
import io
from dataclasses import asdict, dataclass

import numpy as np
import torch
from pytomography.algorithms import BSREM, OSEM
from pytomography.likelihoods import PoissonLogLikelihood
from pytomography.priors import RelativeDifferencePrior

from theralake.ingest.spect_system import system_matrix

METHODS = ("osem", "bsrem")


class ReconstructionError(ValueError):
    """Settings or data a reconstruction cannot use."""


@dataclass(frozen=True, kw_only=True)
class ReconSettings:
    """How to reconstruct: ``method`` osem or bsrem (relative-difference prior of weight
    ``beta``), ``iterations`` x ``subsets``, the collimator-table code and photopeak."""

    method: str = "osem"
    iterations: int = 4
    subsets: int = 8
    beta: float = 0.3
    collimator: str = ""
    photopeak_kev: float = 208.4
    intrinsic_fwhm_mm: float = 3.8
    attenuation: bool = True
    scatter: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ReconstructionError(f"method {self.method!r}: one of {', '.join(METHODS)}")
        if self.iterations < 1 or self.subsets < 1:
            raise ReconstructionError("iterations and subsets must be at least 1")

    def as_dict(self) -> dict:
        return asdict(self)


def tew_scatter(lower: np.ndarray | None, upper: np.ndarray | None, widths_kev: dict[str, float]
                ) -> np.ndarray:
    """Triple-energy-window scatter in the photopeak: the trapezoid under the count densities
    of the lower and upper windows (a missing upper window counts as zero: dual window)."""
    if lower is None:
        raise ReconstructionError("TEW scatter needs at least the lower scatter window")
    density = lower / widths_kev["lower"]
    if upper is not None:
        density = density + upper / widths_kev["upper"]
    return (density * widths_kev["peak"] / 2.0).astype(np.float32)


def scatter_estimate(views: dict[str, np.ndarray], widths_kev: dict[str, float]
                     ) -> tuple[np.ndarray | None, str, list[tuple[str, str, str]]]:
    """The photopeak's scatter from the windows beside it (``views`` and ``widths_kev`` by
    role: photopeak, scatter_lower, scatter_upper): (estimate, tew | dew | none, findings)."""
    if "scatter_lower" not in views:
        return None, "none", [("scatter_correction", "warn", "no scatter window below the "
                               "photopeak: reconstructed without scatter correction "
                               "(activities overestimated)")]
    widths = {"peak": widths_kev["photopeak"], "lower": widths_kev["scatter_lower"],
              "upper": widths_kev.get("scatter_upper", 1.0)}
    estimate = tew_scatter(views["scatter_lower"], views.get("scatter_upper"), widths)
    if "scatter_upper" in views:
        return estimate, "tew", []
    return estimate, "dew", [("scatter_correction", "warn", "no upper scatter window: the "
                              "scatter estimate takes the upper edge as zero")]


def reconstruct(geometry, peak: np.ndarray, *, mu_per_cm: np.ndarray | None,  # noqa: ANN001
                scatter: np.ndarray | None, settings: ReconSettings) -> np.ndarray:
    """The object (counts per view per voxel, (z, y, x)) that explains the photopeak views
    ``peak`` (angle, r, z) with the additive ``scatter`` estimate."""
    if settings.subsets > peak.shape[0]:
        raise ReconstructionError(f"{settings.subsets} subsets for {peak.shape[0]} views")
    matrix = system_matrix(geometry, mu_per_cm=mu_per_cm if settings.attenuation else None,
                           collimator=settings.collimator, energy_kev=settings.photopeak_kev,
                           intrinsic_fwhm_mm=settings.intrinsic_fwhm_mm)
    views = torch.from_numpy(np.ascontiguousarray(peak, np.float32))
    additive = None if scatter is None else torch.from_numpy(
        np.ascontiguousarray(scatter, np.float32))
    likelihood = PoissonLogLikelihood(matrix, views, additive)
    if settings.method == "osem":
        algorithm = OSEM(likelihood)
    else:
        algorithm = BSREM(likelihood, prior=RelativeDifferencePrior(beta=settings.beta))
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        obj = algorithm(n_iters=settings.iterations, n_subsets=settings.subsets)
    return np.ascontiguousarray(np.transpose(obj.cpu().numpy(), (2, 1, 0)), np.float32)


def counts_to_bq_per_ml(counts_per_view: np.ndarray, *, cps_per_mbq: float,
                        frame_duration_s: float, voxel_ml: float) -> np.ndarray:
    """Activity concentration from a reconstruction in counts per view per voxel, with the
    camera's planar sensitivity (cps/MBq, one view)."""
    return (counts_per_view / (cps_per_mbq * 1e-6 * frame_duration_s) / voxel_ml
            ).astype(np.float32)
