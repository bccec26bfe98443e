"""Lesions on the therapy SPECT/CT, learned on the diagnostic PET/CT (PET-to-SPECT transfer).

Two MONAI 3D U-Nets of one architecture take three channels on the CT's grid, resampled to
``spacing_mm``: the CT (an abdominal HU window), the uptake and a prior lesion probability.

1. The **PET network** learns lesion contours on PET/CT, where lesions are well seen. Half of its
   patches show the PET smoothed to the SPECT's resolution (domain adaptation), and its prior
   channel is empty.
2. The **SPECT network** starts from the PET network's weights and is fine-tuned on SPECT/CT
   lesion contours. Its prior channel carries the PET network's lesion probability, registered
   from the PET/CT onto the SPECT's CT. For a fraction of the patches (``prior_dropout``) the
   prior is left empty, so a patient without a PET is segmented too.

Uptake of any unit (SUV, Bq/mL, counts) becomes ``log1p(uptake / background) /
log1p(MAX_CONTRAST)``, the background being the median uptake inside the body (CT above
-500 HU). The PET and the SPECT thus look alike up to resolution and noise.

:func:`lesion_scores` scores found lesions against contoured ones by lesion: detected when a
found component overlaps it with Dice 0.1 or more (by size, :data:`SIZE_BINS_ML`), plus the
found components touching no contoured lesion (false positives) and the Dice of the unions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from theralake.dosimetry.lesions import Lesion
from theralake.dosimetry.segmentation import (
    balanced_patch,
    label_voxels,
    pad_to,
    read_config,
    resample_to,
    save_networks,
)
from theralake.lake import Volume

__all__ = ["MAX_CONTRAST", "SIZE_BINS_ML", "LesionCase", "LesionScores", "LesionSegmenter",
           "LesionSegmenterConfig", "lesion_components", "lesion_scores", "size_bin"]

log = logging.getLogger(__name__)

BODY_HU = -500.0
MAX_CONTRAST = 50.0  # uptake / background mapped onto [0, 1]
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: lesion volume bins (mL) of the detection rate: [0, 2), [2, 5), [5, 10), [10, inf)
SIZE_BINS_ML = (2.0, 5.0, 10.0)
DETECTED_DICE = 0.1
NETWORKS = ("pet", "spect")


@dataclass(kw_only=True)
class LesionSegmenterConfig:
    """Hyper-parameters of the PET-to-SPECT lesion segmenter."""

    spacing_mm: float = 4.0
    patch_voxels: int = 32
    channels: tuple[int, ...] = (16, 32, 64)
    hu_window: tuple[float, float] = (-250.0, 350.0)
    learning_rate: float = 2e-3
    pet_epochs: int = 100
    pet_minutes: float = 5.0
    spect_epochs: int = 100
    spect_minutes: float = 5.0
    patches_per_case: int = 4
    batch_size: int = 2
    foreground_fraction: float = 0.7  # patches centred on a lesion
    smoothed_fraction: float = 0.5  # PET patches smoothed to the SPECT resolution
    spect_fwhm_mm: float = 15.0  # SPECT resolution the PET is smoothed to (no recorded one)
    prior_dropout: float = 0.3  # SPECT patches trained without the PET prior
    probability: float = 0.5  # a voxel is lesion at this probability or more
    min_volume_ml: float = 1.0
    seed: int = 0
    extra: dict = field(default_factory=dict)


class LesionCase(NamedTuple):
    """A CT with its uptake (PET or SPECT), prior (probability or None) and lesion mask, all
    on the CT's grid; ``fwhm_mm`` is the uptake's resolution (NaN unknown)."""

    patient_id: str
    ct: Volume
    uptake: Volume
    labels: Volume
    prior: Volume | None = None
    fwhm_mm: float = float("nan")


def background(uptake: np.ndarray, ct: np.ndarray) -> float:
    """The median uptake over the body (CT above -500 HU, uptake positive)."""
    body = uptake[(ct > BODY_HU) & (uptake > 0)]
    return float(np.median(body)) if body.size else 1.0


def normalised_uptake(uptake: np.ndarray, ct: np.ndarray) -> np.ndarray:
    """``log1p(uptake / background) / log1p(MAX_CONTRAST)`` (see the module docstring)."""
    ratio = np.clip(uptake, 0, None) / background(uptake, ct)
    return (np.log1p(ratio) / np.log1p(MAX_CONTRAST)).astype(np.float32)


def smoothed(uptake: np.ndarray, spacing_mm: float, from_fwhm_mm: float,
             to_fwhm_mm: float) -> np.ndarray:
    """The uptake blurred from one Gaussian resolution to a coarser one (NaN ``from``: 0)."""
    start = 0.0 if not np.isfinite(from_fwhm_mm) else from_fwhm_mm
    extra = np.sqrt(max(to_fwhm_mm ** 2 - start ** 2, 0.0))
    if extra == 0:
        return uptake
    return ndimage.gaussian_filter(uptake, extra * FWHM_TO_SIGMA / spacing_mm)


class LesionSegmenter:
    """The PET and SPECT lesion networks (scikit-learn style: ``fit_pet``, ``fit_spect``,
    ``probability``, ``segment``; ``save`` and ``load``)."""

    def __init__(self, config: LesionSegmenterConfig | None = None):
        self.config = config or LesionSegmenterConfig()
        self.networks_: dict[str, torch.nn.Module] = {}
        self.history_: dict[str, list[float]] = {}
        self.train_seconds_: dict[str, float] = {}
        self.epochs_: dict[str, int] = {}

    def _build(self) -> torch.nn.Module:
        from monai.networks.nets import UNet  # MONAI is slow to import: only when needed

        c = self.config
        return UNet(spatial_dims=3, in_channels=3, out_channels=2, channels=c.channels,
                    strides=(2,) * (len(c.channels) - 1), num_res_units=1)

    # -- inputs ---------------------------------------------------------------------------
    def _grid(self, ct: Volume) -> Volume:
        return resample_to(ct.like(ct.array.astype(np.float32)), self.config.spacing_mm)

    def _on(self, vol: Volume | None, grid: Volume, nearest: bool = False) -> np.ndarray:
        if vol is None:
            return np.zeros(grid.array.shape, np.float32)
        out = sitk.Resample(sitk.Cast(vol.to_sitk(), sitk.sitkFloat32), grid.to_sitk(),
                            sitk.Transform(), sitk.sitkNearestNeighbor if nearest
                            else sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out)

    def _channels(self, grid: Volume, uptake: np.ndarray, prior: np.ndarray) -> np.ndarray:
        lo, hi = self.config.hu_window
        hu = (np.clip(grid.array, lo, hi) - lo) / (hi - lo)
        return np.stack([hu, normalised_uptake(uptake, grid.array),
                         np.clip(prior, 0, 1)]).astype(np.float32)

    def _training_data(self, cases: list[LesionCase], smooth: bool
                       ) -> list[tuple[np.ndarray, ...]]:
        c = self.config
        out = []
        for case in cases:
            grid = self._grid(case.ct)
            uptake = np.clip(self._on(case.uptake, grid), 0, None)
            x = self._channels(grid, uptake, self._on(case.prior, grid))
            variants = [x]
            if smooth:
                blurred = smoothed(uptake, c.spacing_mm, case.fwhm_mm, c.spect_fwhm_mm)
                variants.append(self._channels(grid, blurred, x[2]))
            y = (self._on(case.labels, grid, nearest=True) > 0).astype(np.uint8)
            y = pad_to(y, c.patch_voxels, 0)
            variants = [np.stack([pad_to(ch, c.patch_voxels, 0.0) for ch in v]) for v in variants]
            out.append((*variants, y, label_voxels(y, 1)))
        return out

    # -- training -------------------------------------------------------------------------
    def fit_pet(self, cases: list[LesionCase]) -> LesionSegmenter:
        """Train the PET network on PET/CT cases (their priors are ignored)."""
        if not cases:
            raise ValueError("fit_pet needs at least one PET/CT case with lesion contours")
        cases = [case._replace(prior=None) for case in cases]
        self._fit("pet", self._training_data(cases, smooth=True), self._build())
        return self

    def fit_spect(self, cases: list[LesionCase]) -> LesionSegmenter:
        """Fine-tune the SPECT network from the PET network on SPECT/CT cases with priors."""
        if "pet" not in self.networks_:
            raise RuntimeError("fit_pet first: the SPECT network starts from the PET network")
        if not cases:
            raise ValueError("fit_spect needs at least one SPECT/CT case with lesion contours")
        net = self._build()
        net.load_state_dict(self.networks_["pet"].state_dict())
        self._fit("spect", self._training_data(cases, smooth=False), net)
        return self

    def _fit(self, which: str, data: list[tuple], net: torch.nn.Module) -> None:
        from monai.losses import DiceCELoss

        c = self.config
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        epochs, minutes = ((c.pet_epochs, c.pet_minutes) if which == "pet"
                           else (c.spect_epochs, c.spect_minutes))
        opt = torch.optim.Adam(net.parameters(), lr=c.learning_rate)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        history: list[float] = []
        start = time.monotonic()
        net.train()
        done = 0
        for epoch in range(epochs):
            done = epoch + 1
            order = [i for i in range(len(data)) for _ in range(c.patches_per_case)]
            rng.shuffle(order)
            for b in range(0, len(order), c.batch_size):
                xs, ys = [], []
                for i in order[b:b + c.batch_size]:
                    *variants, y, voxels = data[i]
                    sl = balanced_patch(voxels, y.shape, c.patch_voxels,
                                        c.foreground_fraction, rng)
                    pick = 1 if len(variants) > 1 and rng.random() < c.smoothed_fraction else 0
                    x = variants[pick][(slice(None), *sl)].copy()
                    if which == "spect" and rng.random() < c.prior_dropout:
                        x[2] = 0.0
                    xs.append(x)
                    ys.append(y[sl][None])
                opt.zero_grad()
                loss = loss_fn(net(torch.from_numpy(np.stack(xs))),
                               torch.from_numpy(np.stack(ys).astype(np.int64)))
                loss.backward()
                opt.step()
                history.append(loss.item())
            if (time.monotonic() - start) / 60 > minutes:
                log.info("%s lesion network stopped after epoch %d (time limit)", which, done)
                break
        self.networks_[which] = net.eval()
        self.history_[which] = history
        self.train_seconds_[which] = time.monotonic() - start
        self.epochs_[which] = done

    # -- inference ------------------------------------------------------------------------
    def probability(self, ct: Volume, uptake: Volume, prior: Volume | None = None,
                    network: str = "spect") -> Volume:
        """The lesion probability on the CT's grid (``network`` pet or spect)."""
        from monai.inferers import sliding_window_inference

        if network not in self.networks_:
            raise RuntimeError(f"the {network} lesion network is not trained or loaded")
        grid = self._grid(ct)
        x = self._channels(grid, np.clip(self._on(uptake, grid), 0, None),
                           self._on(prior, grid) if network == "spect" else
                           np.zeros(grid.array.shape, np.float32))
        p = self.config.patch_voxels
        with torch.no_grad():
            logits = sliding_window_inference(torch.from_numpy(x)[None], (p,) * 3, 4,
                                              self.networks_[network], overlap=0.25,
                                              mode="gaussian")
        prob = torch.softmax(logits, 1)[0, 1].numpy().astype(np.float32)
        return ct.like(np.clip(self._on(grid.like(prob), ct), 0, 1))

    def segment(self, ct: Volume, uptake: Volume, prior: Volume | None = None,
                exclude: np.ndarray | None = None) -> list[Lesion]:
        """The lesions of the SPECT network on the CT's grid, largest first (inside the
        SPECT's field of view only)."""
        prob = self.probability(ct, uptake, prior).array
        value = self._on(uptake, ct)
        inside = self._on(uptake.like(np.ones(uptake.array.shape, np.float32)), ct,
                          nearest=True) > 0
        return lesion_components((prob >= self.config.probability) & inside, value,
                                 ct.voxel_volume_ml, self.config.min_volume_ml, exclude)

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        return save_networks(folder, self.config, self.networks_)

    @classmethod
    def load(cls, folder: str | Path) -> LesionSegmenter:
        """Networks saved by :meth:`save` (``pet.pt``, ``spect.pt``, ``config.json``)."""
        folder = Path(folder)
        seg = cls(LesionSegmenterConfig(**read_config(folder, ("spect.pt",),
                                                      "lesion segmenter")))
        for which in NETWORKS:
            if (folder / f"{which}.pt").exists():
                net = seg._build()
                net.load_state_dict(torch.load(folder / f"{which}.pt", map_location="cpu"))
                seg.networks_[which] = net.eval()
        return seg


def lesion_components(mask: np.ndarray, value: np.ndarray, voxel_ml: float,
                      min_volume_ml: float, exclude: np.ndarray | None = None) -> list[Lesion]:
    """Connected components (26-connectivity) of a mask as lesions, the small ones dropped."""
    if exclude is not None:
        mask = mask & ~exclude
    comps, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    out = []
    for idx, box in enumerate(ndimage.find_objects(comps), start=1):
        if box is None:
            continue
        full = comps == idx
        volume = float(full.sum()) * voxel_ml
        if volume < min_volume_ml:
            continue
        out.append(Lesion(full, volume, float(value[full].max()),
                          np.array(ndimage.center_of_mass(full))))
    return sorted(out, key=lambda les: -les.volume_ml)


def size_bin(volume_ml: float) -> str:
    """The :data:`SIZE_BINS_ML` bin of a volume: ``<2 mL``, ``2-5 mL``, ``5-10 mL``,
    ``>=10 mL``."""
    edges = SIZE_BINS_ML
    if volume_ml < edges[0]:
        return f"<{edges[0]:g} mL"
    for lo, hi in zip(edges, edges[1:], strict=False):
        if volume_ml < hi:
            return f"{lo:g}-{hi:g} mL"
    return f">={edges[-1]:g} mL"


@dataclass
class LesionScores:
    """One image's lesions scored: per contoured lesion (volume, detected, best Dice), the
    found components touching none, and the Dice of the unions."""

    volumes_ml: list[float]
    detected: list[bool]
    best_dice: list[float]
    false_positives: int
    dice: float


def lesion_scores(truth: list[np.ndarray], found: list[np.ndarray], voxel_ml: float
                  ) -> LesionScores:
    """Score found lesion masks against contoured ones (see the module docstring)."""
    best = []
    for t in truth:
        dices = [2 * float((t & f).sum()) / float(t.sum() + f.sum()) for f in found]
        best.append(max(dices, default=0.0))
    union_t = np.any(truth, axis=0) if truth else None
    union_f = np.any(found, axis=0) if found else None
    fp = sum(1 for f in found if not any((f & t).any() for t in truth))
    if union_t is None and union_f is None:
        dice = float("nan")
    elif union_t is None or union_f is None:
        dice = 0.0
    else:
        dice = 2 * float((union_t & union_f).sum()) / float(union_t.sum() + union_f.sum())
    return LesionScores([float(t.sum()) * voxel_ml for t in truth],
                        [d >= DETECTED_DICE for d in best], best, fp, dice)
