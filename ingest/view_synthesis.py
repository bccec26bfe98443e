"""Shorter SPECT acquisitions: a network that synthesises the views between those acquired
(every ``factor``-th of a full 360 degree orbit), after Rydén et al. (Lu-177, a U-Net on the
projections).

Each axial row's sinogram (angle x r) is first filled by linear interpolation along the angle
(the baseline); a 2D MONAI U-Net, given that sinogram and its axial neighbours, predicts the
correction, in units of the acquisition's mean count per view and bin. The acquired views are
kept exactly; the angle axis wraps around (circular padding).
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


@dataclass(frozen=True, kw_only=True)
class ViewSynthesisConfig:
    """``factor``: one view acquired in ``factor``; ``neighbours``: axial rows each side given
    as extra channels; training stops after ``max_epochs`` or ``max_minutes``."""

    factor: int = 4
    neighbours: int = 1
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
    max_epochs: int = 40
    max_minutes: float = 10.0
    batch_size: int = 16
    learning_rate: float = 1e-3
    min_row_counts: float = 1.0  # rows with fewer mean counts per bin are not trained on
    seed: int = 0

    def __post_init__(self) -> None:
        if self.factor < 2:
            raise ValueError(f"factor must be 2 or more, got {self.factor}")


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


def _pad(n: int) -> tuple[int, int]:
    """Circular padding (before, after) that makes ``n`` angles a multiple of 16 (the U-Net's
    four halvings) with at least one wrapped view on each side."""
    total = -n % 16 or 16
    total += 16 if total < 2 else 0
    return total // 2, total - total // 2


class ViewSynthesizer:
    """Fill the missing views of sparse SPECT acquisitions (fit, fill, save, load)."""

    def __init__(self, config: ViewSynthesisConfig | None = None) -> None:
        self.config = config or ViewSynthesisConfig()
        self.network_: torch.nn.Module | None = None
        self.history_: list[float] = []
        self.train_seconds_ = 0.0
        self.epochs_ = 0

    def _build(self) -> torch.nn.Module:
        from monai.networks.nets import BasicUNet

        c = self.config
        net = BasicUNet(spatial_dims=2, in_channels=2 * c.neighbours + 1, out_channels=1,
                        features=c.features)
        torch.nn.init.zeros_(net.final_conv.weight)  # starts as linear interpolation
        torch.nn.init.zeros_(net.final_conv.bias)
        return net

    def _inputs(self, sparse: np.ndarray) -> tuple[np.ndarray, float]:
        """Channels (z, 2n+1, angle, r) of the interpolated sinograms, scaled, and the scale."""
        c = self.config
        scale = max(float(sparse.mean()), 1e-6)
        full = np.transpose(interpolate_views(sparse, c.factor) / scale, (2, 0, 1))  # z, a, r
        rows = full.shape[0]
        idx = np.clip(np.arange(rows)[:, None] + np.arange(-c.neighbours, c.neighbours + 1),
                      0, rows - 1)
        return full[idx].astype(np.float32), scale

    def _forward(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The network on (batch, channels, angle, r), circular in angle; the centre channel
        plus the predicted correction."""
        before, after = _pad(x.shape[2])
        padded = torch.cat([x[:, :, x.shape[2] - before:], x, x[:, :, :after]], dim=2)
        padded = torch.nn.functional.pad(padded, (0, -x.shape[3] % 16))
        out = net(padded)[:, :, before:before + x.shape[2], :x.shape[3]]
        return x[:, self.config.neighbours:self.config.neighbours + 1] + out

    def fit(self, acquisitions: list[np.ndarray]) -> ViewSynthesizer:
        """Train on full acquisitions (views (angle, r, z), angles a multiple of ``factor``)."""
        c = self.config
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        xs, ys, masks = [], [], []
        for views in acquisitions:
            x, scale = self._inputs(sparse_of(views, c.factor))
            y = np.transpose(views / scale, (2, 0, 1)).astype(np.float32)[:, None]
            keep = views.mean(axis=(0, 1)) >= c.min_row_counts
            xs.append(x[keep])
            ys.append(y[keep])
        if not xs or not sum(len(x) for x in xs):
            raise ValueError("no acquisition row with counts to train the view synthesis on")
        x_all, y_all = np.concatenate(xs), np.concatenate(ys)
        missing = np.ones(x_all.shape[2], bool)
        missing[::c.factor] = False  # the loss is on the synthesised views only
        masks = torch.from_numpy(missing)[None, None, :, None]
        net = self._build()
        opt = torch.optim.Adam(net.parameters(), lr=c.learning_rate)
        start = time.monotonic()
        net.train()
        for epoch in range(c.max_epochs):
            self.epochs_ = epoch + 1
            order = rng.permutation(len(x_all))
            for b in range(0, len(order), c.batch_size):
                pick = order[b:b + c.batch_size]
                pred = self._forward(net, torch.from_numpy(x_all[pick]))
                err = (pred - torch.from_numpy(y_all[pick])) ** 2
                loss = (err * masks).sum() / (masks.sum() * len(pick) * err.shape[-1])
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.history_.append(loss.item())
            if (time.monotonic() - start) / 60 > c.max_minutes:
                log.info("view synthesis training stopped after epoch %d (time limit)",
                         epoch + 1)
                break
        self.train_seconds_ = time.monotonic() - start
        self.network_ = net.eval()
        return self

    def fill(self, sparse: np.ndarray) -> np.ndarray:
        """Views (angle, r, z) at ``factor`` times the sampling: the acquired ones as they are,
        the others synthesised (never negative)."""
        if self.network_ is None:
            raise RuntimeError("the view synthesis network is not trained or loaded")
        x, scale = self._inputs(np.asarray(sparse, np.float32))
        with torch.no_grad():
            out = torch.cat([self._forward(self.network_, torch.from_numpy(x[b:b + 32]))
                             for b in range(0, len(x), 32)]).numpy()[:, 0]
        views = np.clip(np.transpose(out, (1, 2, 0)) * scale, 0, None).astype(np.float32)
        views[::self.config.factor] = sparse
        return views

    def save(self, folder: Path) -> Path:
        if self.network_ is None:
            raise RuntimeError("nothing to save: the network is not trained")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.network_.state_dict(), folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps(asdict(self.config), indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> ViewSynthesizer:
        folder = Path(folder)
        if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
            raise FileNotFoundError(f"{folder}: not a saved view synthesis network "
                                    f"({WEIGHTS} + {CONFIG})")
        spec = json.loads((folder / CONFIG).read_text())
        spec["features"] = tuple(spec["features"])
        model = cls(ViewSynthesisConfig(**spec))
        net = model._build()
        net.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu"))
        model.network_ = net.eval()
        return model


def nrmse(estimate: np.ndarray, truth: np.ndarray, factor: int) -> float:
    """Root-mean-square error of the synthesised views over the true views' RMS."""
    missing = np.ones(truth.shape[0], bool)
    missing[::factor] = False
    diff = estimate[missing] - truth[missing]
    return float(np.sqrt((diff ** 2).mean()) / np.sqrt((truth[missing] ** 2).mean()))
