"""Shorter and quieter SPECT acquisitions: networks on the projections, before reconstruction.

- :class:`ViewSynthesizer` (fewer projections, after Rydén et al., Lu-177): the views between
  those acquired (one in ``factor`` of a 360 degree orbit). Each axial row's sinogram is first
  filled by linear interpolation along the angle (the baseline); the network corrects it. The
  acquired views are kept exactly.
- :class:`Denoiser` (fewer counts): views acquired with a fraction of the counts restored
  towards their expectation. Each full acquisition is split binomially into ``count_fraction``
  of its counts (the same Poisson statistics as a shorter acquisition: the input) and the
  rest, scaled to the same expectation (the target): two independent Poisson draws of one
  expectation, so the network learns that expectation (Noise2Noise) in the acquisition's own
  count scale.

Both are a 2D MONAI U-Net on each row's sinogram (angle x r, circular in the angle), with the
axial neighbours as extra channels, in units of the acquisition's mean count per view and bin,
predicting a correction of its input (initialised to none).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
WEIGHTS, CONFIG = "weights.pt", "config.json"
TASKS = ("views", "denoise")


@dataclass(frozen=True, kw_only=True)
class ProjectionNetworkConfig:
    """``task`` views (``factor``: one view acquired in factor) or denoise (trained on
    ``count_fraction`` of the counts); ``neighbours``: axial rows each side as channels;
    training stops after ``max_epochs`` or ``max_minutes``."""

    task: str = "views"
    factor: int = 4
    count_fraction: float = 0.25
    neighbours: int = 1
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
    max_epochs: int = 40
    max_minutes: float = 10.0
    batch_size: int = 16
    learning_rate: float = 1e-3
    min_row_counts: float = 1.0  # rows with fewer mean counts per bin are not trained on
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r}: one of {', '.join(TASKS)}")
        if self.factor < 2:
            raise ValueError(f"factor must be 2 or more, got {self.factor}")
        if not 0.0 < self.count_fraction < 1.0:
            raise ValueError(f"count_fraction must be in (0, 1), got {self.count_fraction}")


def interpolate_views(sparse: np.ndarray, factor: int) -> np.ndarray:
    """Views (angle, r, z) at ``factor`` times the angular sampling, by linear interpolation
    along the angle with wrap-around (360 degree orbits): the baseline the network corrects."""
    n = sparse.shape[0]
    out = np.empty((n * factor, *sparse.shape[1:]), np.float32)
    following = np.roll(sparse, -1, axis=0)
    for k in range(factor):
        w = k / factor
        out[k::factor] = (1 - w) * sparse + w * following
    return out


def sparse_of(views: np.ndarray, factor: int) -> np.ndarray:
    """Every ``factor``-th view of a full acquisition (the first one kept)."""
    if views.shape[0] % factor:
        raise ValueError(f"{views.shape[0]} views are not a multiple of {factor}")
    return views[::factor]


def thinned(views: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The counts a ``fraction`` of the acquisition time would have given (binomial
    thinning of Poisson counts is Poisson)."""
    counts = np.clip(np.rint(views), 0, None).astype(np.int64)
    return rng.binomial(counts, fraction).astype(np.float32)


def nrmse(estimate: np.ndarray, truth: np.ndarray, factor: int = 1) -> float:
    """RMS error over the truth's RMS; with ``factor`` over the views between every
    ``factor``-th (those synthesised)."""
    missing = np.ones(truth.shape[0], bool)
    if factor > 1:
        missing[::factor] = False
    diff = estimate[missing] - truth[missing]
    return float(np.sqrt((diff ** 2).mean()) / np.sqrt((truth[missing] ** 2).mean()))


def _pad(n: int) -> tuple[int, int]:
    """Circular padding (before, after) that makes ``n`` angles a multiple of 16 (the U-Net's
    four halvings) with at least one wrapped view on each side."""
    total = -n % 16 or 16
    total += 16 if total < 2 else 0
    return total // 2, total - total // 2


class ProjectionNetwork:
    """The U-Net on sinograms: training loop, inference, save and load. Subclasses say what
    the input is (:meth:`_input_views`) and which views the loss counts."""

    task = ""

    def __init__(self, config: ProjectionNetworkConfig | None = None) -> None:
        self.config = config or ProjectionNetworkConfig(task=self.task)
        if self.config.task != self.task:
            raise ValueError(f"a {type(self).__name__} needs task {self.task!r}")
        self.network_: torch.nn.Module | None = None
        self.history_: list[float] = []
        self.train_seconds_ = 0.0
        self.epochs_ = 0

    # -- what a task changes --------------------------------------------------------------
    def _input_views(self, views: np.ndarray) -> np.ndarray:
        """The network's input views (all angles) from the views it is given."""
        raise NotImplementedError

    def _training_pair(self, views: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(views given at inference, their target) from a full acquisition."""
        raise NotImplementedError

    def _loss_views(self, n: int) -> np.ndarray:
        return np.ones(n, bool)

    # -- shared ----------------------------------------------------------------------------
    def _build(self) -> torch.nn.Module:
        from monai.networks.nets import BasicUNet

        c = self.config
        net = BasicUNet(spatial_dims=2, in_channels=2 * c.neighbours + 1, out_channels=1,
                        features=c.features)
        torch.nn.init.zeros_(net.final_conv.weight)  # starts as its input
        torch.nn.init.zeros_(net.final_conv.bias)
        return net

    def _channels(self, given: np.ndarray) -> tuple[np.ndarray, float]:
        """Channels (z, 2n+1, angle, r) of the input sinograms, scaled, and the scale."""
        c = self.config
        scale = max(float(given.mean()), 1e-6)
        full = np.transpose(self._input_views(given) / scale, (2, 0, 1))  # z, angle, r
        rows = full.shape[0]
        idx = np.clip(np.arange(rows)[:, None] + np.arange(-c.neighbours, c.neighbours + 1),
                      0, rows - 1)
        return full[idx].astype(np.float32), scale

    def _forward(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The network on (batch, channels, angle, r), circular in angle: the centre channel
        plus the predicted correction."""
        before, after = _pad(x.shape[2])
        padded = torch.cat([x[:, :, x.shape[2] - before:], x, x[:, :, :after]], dim=2)
        padded = torch.nn.functional.pad(padded, (0, -x.shape[3] % 16))
        out = net(padded)[:, :, before:before + x.shape[2], :x.shape[3]]
        return x[:, self.config.neighbours:self.config.neighbours + 1] + out

    def fit(self, acquisitions: list[np.ndarray]) -> ProjectionNetwork:
        """Train on full acquisitions (views (angle, r, z))."""
        c = self.config
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        xs, ys = [], []
        for views in acquisitions:
            given, target = self._training_pair(np.asarray(views, np.float32), rng)
            x, scale = self._channels(given)
            keep = views.mean(axis=(0, 1)) >= c.min_row_counts
            xs.append(x[keep])
            ys.append(np.transpose(target / scale, (2, 0, 1))[keep][:, None])
        if not sum(len(x) for x in xs):
            raise ValueError("no acquisition row with counts to train on")
        x_all, y_all = np.concatenate(xs), np.concatenate(ys).astype(np.float32)
        mask = torch.from_numpy(self._loss_views(x_all.shape[2]))[None, None, :, None]
        net = self._build()
        opt = torch.optim.Adam(net.parameters(), lr=c.learning_rate)
        start = time.monotonic()
        net.train()
        for epoch in range(c.max_epochs):
            self.epochs_ = epoch + 1
            order = rng.permutation(len(x_all))
            for b in range(0, len(order), c.batch_size):
                pick = order[b:b + c.batch_size]
                err = (self._forward(net, torch.from_numpy(x_all[pick]))
                       - torch.from_numpy(y_all[pick])) ** 2
                loss = (err * mask).sum() / (mask.sum() * len(pick) * err.shape[-1])
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.history_.append(loss.item())
            if (time.monotonic() - start) / 60 > c.max_minutes:
                log.info("%s training stopped after epoch %d (time limit)", self.task,
                         epoch + 1)
                break
        self.train_seconds_ = time.monotonic() - start
        self.network_ = net.eval()
        return self

    def apply(self, given: np.ndarray) -> np.ndarray:
        """The network's views for the views given (never negative)."""
        if self.network_ is None:
            raise RuntimeError(f"the {self.task} network is not trained or loaded")
        x, scale = self._channels(np.asarray(given, np.float32))
        with torch.no_grad():
            out = torch.cat([self._forward(self.network_, torch.from_numpy(x[b:b + 32]))
                             for b in range(0, len(x), 32)]).numpy()[:, 0]
        return np.clip(np.transpose(out, (1, 2, 0)) * scale, 0, None).astype(np.float32)

    def save(self, folder: Path) -> Path:
        if self.network_ is None:
            raise RuntimeError("nothing to save: the network is not trained")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.network_.state_dict(), folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps(asdict(self.config), indent=2))
        return folder


def load_network(folder: Path) -> ProjectionNetwork:
    """A saved :class:`ViewSynthesizer` or :class:`Denoiser` (its config says which)."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise FileNotFoundError(f"{folder}: not a saved projection network "
                                f"({WEIGHTS} + {CONFIG})")
    spec = json.loads((folder / CONFIG).read_text())
    spec["features"] = tuple(spec["features"])
    config = ProjectionNetworkConfig(**spec)
    model = {"views": ViewSynthesizer, "denoise": Denoiser}[config.task](config)
    net = model._build()
    net.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu"))
    model.network_ = net.eval()
    return model


class ViewSynthesizer(ProjectionNetwork):
    """Views between the acquired ones (``apply``: n views -> n x factor)."""

    task = "views"

    def _input_views(self, views: np.ndarray) -> np.ndarray:
        return interpolate_views(views, self.config.factor)

    def _training_pair(self, views: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
        return sparse_of(views, self.config.factor), views

    def _loss_views(self, n: int) -> np.ndarray:
        missing = np.ones(n, bool)
        missing[::self.config.factor] = False  # the loss is on the synthesised views
        return missing

    def apply(self, given: np.ndarray) -> np.ndarray:
        views = super().apply(given)
        views[::self.config.factor] = given
        return views

    fill = apply


class Denoiser(ProjectionNetwork):
    """Low-count views restored towards their expectation (``apply``: same views)."""

    task = "denoise"

    def _input_views(self, views: np.ndarray) -> np.ndarray:
        return views

    def _training_pair(self, views: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
        fraction = self.config.count_fraction
        given = thinned(views, fraction, rng)
        rest = np.clip(np.rint(views), 0, None) - given
        return given, rest * np.float32(fraction / (1.0 - fraction))
