"""Organ segmentation from CT with a MONAI 3D U-Net (train on labelled cases, sliding-window
inference on CPU, largest-component and left/right post-processing)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from theralake.lake import Volume

log = logging.getLogger(__name__)

DEFAULT_ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")


@dataclass
class SegmenterConfig:
    """Hyper-parameters of the organ segmenter."""

    organs: tuple[str, ...] = DEFAULT_ORGANS
    spacing_mm: float = 4.0
    patch_voxels: int = 48
    channels: tuple[int, ...] = (16, 32, 64, 128)
    hu_window: tuple[float, float] = (-250.0, 350.0)  # abdominal window (channel 1)
    # a narrow window as a second channel: organs differ from their surroundings by ~10 HU
    soft_window: tuple[float, float] | None = (-20.0, 100.0)
    learning_rate: float = 2e-3
    max_epochs: int = 200
    max_minutes: float = 10.0
    patches_per_case: int = 4
    batch_size: int = 2  # patches per optimiser step
    foreground_fraction: float = 0.8  # patches centred on an organ (each organ equally often)
    intensity_jitter: float = 0.05  # random HU scale and shift, as a fraction of the window
    seed: int = 0
    extra: dict = field(default_factory=dict)


def resample_to(vol: Volume, spacing: float, nearest: bool = False) -> Volume:
    """A volume on an isotropic grid of ``spacing`` mm over the same extent (linear, or
    nearest neighbour for labels; air outside)."""
    img = vol.to_sitk()
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(img.GetSize(), img.GetSpacing(),
                                                                   strict=True)]
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkNearestNeighbor if nearest
                        else sitk.sitkLinear, img.GetOrigin(), (spacing,) * 3,
                        img.GetDirection(), -1000.0 if not nearest else 0.0, img.GetPixelID())
    return Volume.from_sitk(out)


class OrganSegmenter:
    """A MONAI U-Net for organ labels on CT (scikit-learn style: fit, predict).

    Labels: 0 background, then ``config.organs`` in order.
    """

    def __init__(self, config: SegmenterConfig | None = None):
        self.config = config or SegmenterConfig()
        self.network_ = None
        self.history_: list[float] = []
        self.train_seconds_: float = 0.0

    # -- model ----------------------------------------------------------------------------
    def _build(self) -> torch.nn.Module:
        from monai.networks.nets import UNet

        c = self.config
        return UNet(spatial_dims=3, in_channels=len(self._windows()),
                    out_channels=len(c.organs) + 1,
                    channels=c.channels, strides=(2,) * (len(c.channels) - 1), num_res_units=1)

    def _windows(self) -> list[tuple[float, float]]:
        c = self.config
        return [c.hu_window] + ([c.soft_window] if c.soft_window else [])

    def _normalise(self, arr: np.ndarray) -> np.ndarray:
        """One channel per HU window, each mapped onto [0, 1]: (channels, z, y, x)."""
        return np.stack([((np.clip(arr, lo, hi) - lo) / (hi - lo)).astype(np.float32)
                         for lo, hi in self._windows()])

    def _prepare(self, ct: Volume) -> tuple[Volume, np.ndarray]:
        res = resample_to(ct.like(ct.array.astype(np.float32)), self.config.spacing_mm)
        return res, self._normalise(res.array)

    # -- training -------------------------------------------------------------------------
    def fit(self, cts: list[Volume], label_maps: list[Volume]) -> OrganSegmenter:
        """Train on CTs with label maps on the same grids (values 0..len(organs))."""
        from monai.losses import DiceCELoss

        if not cts or len(cts) != len(label_maps):
            raise ValueError("fit needs as many label maps as CTs (at least one)")
        c = self.config
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        data = []
        for ct, lab in zip(cts, label_maps, strict=True):
            if not ct.same_grid(lab):
                raise ValueError("a label map is not on its CT's grid")
            res, x = self._prepare(ct)
            y = resample_to(lab.like(lab.array.astype(np.uint8)), c.spacing_mm,
                            nearest=True).array
            y = pad_to(y, c.patch_voxels, 0)
            x = np.stack([pad_to(ch, c.patch_voxels, ch.min()) for ch in x])
            data.append((x, y, label_voxels(y, len(c.organs))))
        net = self._build()
        opt = torch.optim.Adam(net.parameters(), lr=c.learning_rate)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        start = time.monotonic()
        net.train()
        stop = False
        self.epochs_ = 0
        for epoch in range(c.max_epochs):  # an epoch: patches_per_case patches of every case
            self.epochs_ = epoch + 1
            order = [(i, k) for i in range(len(data)) for k in range(c.patches_per_case)]
            rng.shuffle(order)
            for b in range(0, len(order), c.batch_size):
                xs, ys = [], []
                for i, _ in order[b:b + c.batch_size]:
                    x, y, voxels = data[i]
                    sl = balanced_patch(voxels, y.shape, c.patch_voxels, c.foreground_fraction,
                                        rng)
                    xs.append(self._jitter(x[(slice(None), *sl)], rng))
                    ys.append(y[sl][None])
                opt.zero_grad()
                loss = loss_fn(net(torch.from_numpy(np.stack(xs))),
                               torch.from_numpy(np.stack(ys).astype(np.int64)))
                loss.backward()
                opt.step()
                self.history_.append(loss.item())
                if (time.monotonic() - start) / 60 > c.max_minutes:
                    log.info("segmenter training stopped in epoch %d (time limit)", epoch + 1)
                    stop = True
                    break
            if stop:
                break
        self.train_seconds_ = time.monotonic() - start
        self.network_ = net.eval()
        return self

    def _jitter(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random intensity scale and shift (scanner and reconstruction variation)."""
        j = self.config.intensity_jitter
        if not j:
            return x
        return (x * (1 + rng.uniform(-j, j)) + rng.uniform(-j, j)).astype(np.float32)

    # -- inference ------------------------------------------------------------------------
    def predict(self, ct: Volume) -> Volume:
        """Label map on the CT's own grid (sliding-window inference, post-processed)."""
        from monai.inferers import sliding_window_inference

        if self.network_ is None:
            raise RuntimeError("the segmenter is not trained or loaded")
        res, x = self._prepare(ct)
        p = self.config.patch_voxels
        with torch.no_grad():
            logits = sliding_window_inference(torch.from_numpy(x)[None], (p, p, p), 4,
                                              self.network_, overlap=0.25, mode="gaussian")
        labels = logits.argmax(1)[0].numpy().astype(np.uint8)
        labels = self._postprocess(labels, res)
        back = sitk.Resample(res.like(labels).to_sitk(), ct.to_sitk(), sitk.Transform(),
                             sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return ct.like(sitk.GetArrayFromImage(back))

    def _postprocess(self, labels: np.ndarray, grid: Volume) -> np.ndarray:
        """Largest connected component per organ; kidneys re-split into left and right."""
        organs = self.config.organs
        out = np.zeros_like(labels)
        kidneys = [i + 1 for i, o in enumerate(organs) if o.startswith("kidney_")]
        for i, _organ in enumerate(organs, start=1):
            if i in kidneys:
                continue
            out[_largest(labels == i)] = i
        if len(kidneys) == 2:
            both = np.isin(labels, kidneys)
            comps, n = ndimage.label(both)
            if n:
                sizes = ndimage.sum(both, comps, range(1, n + 1))
                keep = np.argsort(sizes)[::-1][:2] + 1
                for k in keep:
                    comp = comps == k
                    # patient left = +x in LPS: the component whose centre lies at larger x
                    x_world = grid.index_to_world(np.array(
                        ndimage.center_of_mass(comp))[::-1])[0]
                    other = [comps == j for j in keep if j != k]
                    x_other = grid.index_to_world(np.array(ndimage.center_of_mass(
                        other[0]))[::-1])[0] if other else None
                    left = organs.index("kidney_left") + 1
                    right = organs.index("kidney_right") + 1
                    if x_other is None:
                        votes = labels[comp]
                        out[comp] = left if (votes == left).sum() >= (votes == right).sum() \
                            else right
                    else:
                        out[comp] = left if x_world > x_other else right
        return out

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        return save_networks(folder, self.config, {"weights": self.network_})

    @classmethod
    def load(cls, folder: str | Path) -> OrganSegmenter:
        """Load weights saved by :meth:`save` (or the user's own, with a config.json)."""
        folder = Path(folder)
        raw = read_config(folder, ("weights.pt",), "organ segmenter")
        raw.setdefault("soft_window", None)  # saved before the second channel existed
        seg = cls(SegmenterConfig(**raw))
        net = seg._build()
        net.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu"))
        seg.network_ = net.eval()
        return seg


def save_networks(folder: str | Path, config: object, networks: dict[str, torch.nn.Module]
                  ) -> Path:
    """A saved model: each network's weights as ``<name>.pt`` and the config (a dataclass) as
    ``config.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, net in networks.items():
        torch.save(net.state_dict(), folder / f"{name}.pt")
    (folder / "config.json").write_text(json.dumps(asdict(config), indent=2))
    return folder


def read_config(folder: Path, required: tuple[str, ...], what: str) -> dict:
    """The config a saved model's folder holds (lists as tuples), after checking it holds
    ``required`` files too."""
    for name in (*required, "config.json"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder}: no {name} (not a saved {what})")
    raw = json.loads((folder / "config.json").read_text())
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def _largest(mask: np.ndarray) -> np.ndarray:
    comps, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum(mask, comps, range(1, n + 1))
    return comps == (int(np.argmax(sizes)) + 1)


def pad_to(arr: np.ndarray, size: int, value: float) -> np.ndarray:
    pads = [(0, max(0, size - n)) for n in arr.shape]
    return np.pad(arr, pads, constant_values=value) if any(p[1] for p in pads) else arr


def random_patch(labels: np.ndarray, size: int, rng: np.random.Generator
                  ) -> tuple[slice, slice, slice]:
    """A patch centred on an organ voxel two times in three, anywhere otherwise."""
    fg = np.argwhere(labels > 0)
    if fg.size and rng.random() < 2 / 3:
        centre = fg[rng.integers(len(fg))]
    else:
        centre = np.array([rng.integers(n) for n in labels.shape])
    start = [int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, labels.shape,
                                                                       strict=True)]
    return tuple(slice(s, s + size) for s in start)


def label_voxels(labels: np.ndarray, n_labels: int) -> list[np.ndarray]:
    """Flat indices of the voxels of each label 1..n_labels (empty arrays for absent ones)."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, n_labels + 2))
    return [order[bounds[k]:bounds[k + 1]] for k in range(n_labels)]


def balanced_patch(voxels: list[np.ndarray], shape: tuple[int, ...], size: int,
                   foreground_fraction: float, rng: np.random.Generator
                   ) -> tuple[slice, slice, slice]:
    """A patch centred on a voxel of a label drawn uniformly among the present labels (with
    probability ``foreground_fraction``), anywhere otherwise: small organs are seen as often
    as large ones (as MONAI's ``RandCropByLabelClasses``)."""
    present = [v for v in voxels if v.size]
    if present and rng.random() < foreground_fraction:
        pick = present[rng.integers(len(present))]
        centre = np.unravel_index(pick[rng.integers(pick.size)], shape)
    else:
        centre = [rng.integers(n) for n in shape]
    start = [int(np.clip(c - size // 2, 0, n - size)) for c, n in zip(centre, shape, strict=True)]
    return tuple(slice(s, s + size) for s in start)


def dice_per_label(truth: np.ndarray, pred: np.ndarray, organs: tuple[str, ...]
                   ) -> dict[str, float]:
    """Dice of every organ label (NaN where the organ is absent from both)."""
    out = {}
    for i, organ in enumerate(organs, start=1):
        a, b = truth == i, pred == i
        denom = a.sum() + b.sum()
        out[organ] = float(2 * (a & b).sum() / denom) if denom else float("nan")
    return out
