"""Voxel-level dose prediction from the pre-therapy PET/CT: a MONAI network trained on the lake.

- :func:`voxel_samples` pairs each patient's pre-therapy PET (SUVbw), its CT and the lesions
  drawn on that PET/CT, registered rigidly onto the cycle-1 reference CT, with the cycle-1 dose
  map divided by the cycle-1 administered activity (Gy/GBq) and the cycle-1 VOI masks, on the
  dose map's grid cropped to the body (the working grid).
- :class:`SuvScaledDose` is the baseline a physicist would use: dose per GBq = k x SUV with a
  single factor k fit on the training patients' body voxels.
- :class:`VoxelDoseModel` refines that baseline voxel by voxel: dose per GBq = k x SUV x
  exp(f), where f is a MONAI 3D U-Net's output from log(1 + SUV) and HU / 1000 (the log of a
  tissue's dose per unit uptake relative to the body's: its kinetics, learnt from context).
  With the lesion channel (the default) the PET's lesion occupancy is a third input, and in
  every voxel a PET lesion touches the factor is k_lesion / k, k_lesion the training lesions'
  dose per GBq over their SUV; the network refines the rest (the lesion voxels carry no loss).
  From PET/CT context alone the network could not tell a lesion from a kidney or the bladder,
  and on lesions of a few SPECT voxels its own refinement was noisier than the lesions'
  common dose per SUV (benchmark in the README). The prediction is never negative; the
  network is trained on random patches with an L1 loss on log dose per GBq (relative errors
  weigh alike in a kidney and the body) and applied with sliding-window inference. Without
  the lesion channel training is lesion-weighted: half the patches look for a lesion (centred
  on one two times in three, as :func:`random_patch` does) and a lesion voxel's error weighs
  ``LESION_WEIGHT`` times a body voxel's.
- :func:`evaluate_voxel` scores predictors per patient and VOI against the dosimetry of the
  same patients (mean dose per GBq in each VOI, relative error, voxel MAE);
  :func:`summarise_voxel` condenses that per predictor and VOI group.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from theralake import __version__
from theralake.dosimetry.registration import RegistrationResult, register_ct, resample_map
from theralake.dosimetry.segmentation import pad_to, random_patch
from theralake.dosimetry.voi_activity import mask_on, occupancy_on, to_grid
from theralake.lake import Lake, Volume, views

log = logging.getLogger(__name__)

__all__ = ["SuvScaledDose", "VoxelDataError", "VoxelDoseModel", "VoxelSample", "evaluate_voxel",
           "summarise_voxel", "voxel_samples"]

AIR_HU = -1000.0
BODY_HU = -500.0  # body outline from the CT when the lake has no body VOI
MARGIN_VOXELS = 2  # around the body's bounding box on the working grid
HOT_QUANTILE = 0.9  # two patches in three are centred on body voxels above this dose quantile
LOG_FACTOR_BOUND = 5.0  # |f|: the network scales the baseline by exp(-5) .. exp(5) at most
LOG_OFFSET = 0.01  # the loss compares log(dose + offset), offset = this x 99th body percentile
LESION_PATCH_SHARE = 0.9  # without the lesion channel: patches centred on a lesion voxel
LESION_WEIGHT = 100.0  # without the lesion channel: a lesion voxel's loss weight (body: 1)
WEIGHTS, CONFIG = "weights.pt", "config.json"


class VoxelDataError(ValueError):
    """A patient that cannot give a voxel sample; the message names the patient and why."""


@dataclass
class VoxelSample:
    """One patient's inputs and target on the working grid (all volumes share it)."""

    patient_id: str
    pet_suv: Volume  # pre-therapy PET, SUVbw, registered onto the grid
    ct_hu: Volume  # the PET's CT, HU, registered onto the grid
    dose_gy_per_gbq: Volume  # cycle-1 dose map / cycle-1 administered activity
    masks: dict[str, np.ndarray]  # cycle-1 VOIs on the grid (boolean)
    pet_lesions: Volume  # the PET/CT's lesion VOIs on the grid (occupancy 0..1)
    method: str  # the dose engine of the map (ldm, vsv, ...)
    activity_gbq: float
    pet_image_id: str
    dose_map_id: str
    registration: RegistrationResult | None = None  # None: PET on the dose map's frame

    @property
    def body(self) -> np.ndarray:
        """The body VOI, or the CT above -500 HU where the lake has none."""
        return self.masks["body"] if "body" in self.masks else self.ct_hu.array > BODY_HU


class DosePredictor(Protocol):
    def predict(self, pet_suv: Volume, ct: Volume, lesions: Volume | None = None
                ) -> Volume: ...


# -- samples from the lake -------------------------------------------------------------------
def voxel_samples(lake: Lake, patient_ids: Iterable[str] | None = None,
                  method: str | None = None) -> list[VoxelSample]:
    """Voxel samples of the patients with a pre-therapy PET/CT and a cycle-1 dose map.

    Args:
        lake: the lake.
        patient_ids: these patients (an error when one lacks data); default every patient of
            the lake with images or dose maps (one lacking data is skipped, the reason logged).
        method: the dose engine whose maps are the targets; default the lake's only one.

    Raises:
        VoxelDataError: a listed patient without a PET, its CT, a cycle-1 dose map, its
            reference CT or a therapy administration; several methods and none chosen.
    """
    methods = sorted(lake.sql("SELECT DISTINCT method FROM dose_maps WHERE quantity = 'dose' "
                              "AND cycle = 1").method)
    if method is None and len(methods) > 1:
        raise VoxelDataError(f"the lake has cycle-1 dose maps of several methods {methods}; "
                             "choose one (method=...)")
    method = method or (methods[0] if methods else "ldm")
    strict = patient_ids is not None
    ids = list(patient_ids) if strict else sorted(lake.sql(
        "SELECT patient_id FROM images UNION SELECT patient_id FROM dose_maps").patient_id)
    out = []
    for pid in ids:
        try:
            out.append(_sample(lake, pid, method))
        except VoxelDataError as exc:
            if strict:
                raise
            log.info("skipped: %s", exc)
    return out


def _found(row: dict | None, what: str, label: str) -> pd.Series:
    if row is None:
        raise VoxelDataError(f"{label}: no {what}")
    return pd.Series(row)


def _sample(lake: Lake, pid: str, method: str) -> VoxelSample:
    label = f"patient {pid}"
    found = views.dose_map(lake, pid, 1, "dose", (method,))
    dose_row = _found(found if found and found["method"] == method else None,
                      f"cycle-1 dose map ({method})", label)
    pet_row = _found(views.pre_therapy_pet(lake, pid), "pre-therapy PET with an SUVbw factor",
                     label)
    admin = _found(views.therapy_administration(lake, pid, 1), "cycle-1 therapy administration",
                   label)
    ref_ct = _found(views.reference_ct(lake, pid, 1, (method,)),
                    "CT in the dose map's frame of reference", label)
    pet_ct_row = _found(views.frame_ct(lake, pid, pet_row.frame_of_reference_key),
                        "CT in the PET's frame of reference", label)
    activity_gbq = float(admin.activity_mbq) / 1000.0
    if not activity_gbq > 0:
        raise VoxelDataError(f"{label}: cycle-1 therapy activity is {admin.activity_mbq} MBq")
    dose = Volume.from_row(dose_row.to_dict())
    ct = Volume.from_row(ref_ct.to_dict())
    vois = views.dosimetry_vois(lake, pid, 1, (method,))
    full = {r["voi"]: mask_on(Volume.from_row(r), dose) for r in vois.to_dict("records")}
    body = full["body"] if "body" in full else to_grid(ct, dose, AIR_HU) > BODY_HU
    crop = _crop(body)
    grid = _cropped(dose, crop)
    pet = Volume.from_row(pet_row.to_dict())
    pet_ct = Volume.from_row(pet_ct_row.to_dict())
    reg = None
    if pet_ct_row.id != ref_ct.id:  # the PET/CT is another session: rigid CT-to-CT
        reg = register_ct(ct, pet_ct, deformable=False)
        if reg.failed:
            log.warning("%s: PET/CT registration flagged (%s)", label, "; ".join(reg.reasons))
    transform = reg.transform if reg else sitk.Transform()
    suv = pet.like(pet.array.astype(np.float32) * float(pet_row.suvbw_per_bqml))
    lesions = pet.like(pet_lesions(lake, pet_ct_row.id, pet, label))
    return VoxelSample(
        pid, grid.like(np.clip(resample_map(suv, transform, grid, 0.0).array, 0, None)),
        grid.like(resample_map(pet_ct, transform, grid, AIR_HU).array),
        grid.like((dose.array[crop] / activity_gbq).astype(np.float32)),
        {name: m[crop] for name, m in full.items()},
        grid.like(np.clip(resample_map(lesions, transform, grid, 0.0).array, 0, 1)), method,
        activity_gbq, str(pet_row.id), str(dose_row.id), reg)


def pet_lesions(lake: Lake, pet_ct_id: str, pet: Volume, label: str) -> np.ndarray:
    """The lesions drawn on the PET/CT (VOIs named ``lesion_*``) as occupancy of the PET's
    voxels (0..1; zero where it has none). A PET/CT without any VOI gets an empty map and a
    warning: its lesions look like background to the network."""
    vois = views.vois_on_image(lake, pet_ct_id)
    out = np.zeros(pet.array.shape, np.float32)
    if vois.empty:
        log.warning("%s: the PET/CT has no VOIs, so no lesion channel: the voxel dose network "
                    "sees its lesions as background", label)
        return out
    for row in vois[vois.voi.str.startswith("lesion_")].to_dict("records"):
        out = np.maximum(out, occupancy_on(Volume.from_row(row), pet))
    return out


def _crop(mask: np.ndarray) -> tuple[slice, ...]:
    """The (z, y, x) box of a mask's voxels and a margin."""
    idx = np.argwhere(mask)
    if not idx.size:
        return tuple(slice(None) for _ in mask.shape)
    lo = np.maximum(idx.min(axis=0) - MARGIN_VOXELS, 0)
    hi = np.minimum(idx.max(axis=0) + MARGIN_VOXELS + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _cropped(vol: Volume, box: tuple[slice, ...]) -> Volume:
    start_xyz = np.array([s.start or 0 for s in box][::-1], dtype=float)
    return Volume(vol.array[box].copy(), vol.spacing_mm, tuple(vol.index_to_world(start_xyz)),
                  vol.direction.copy())


# -- the network -----------------------------------------------------------------------------
def _inputs(suv: np.ndarray, hu: np.ndarray, lesions: np.ndarray | None = None
            ) -> np.ndarray:
    """The network's (2 or 3, z, y, x) input: log(1 + SUV), HU / 1000 (clipped to +-1) and,
    when given, the PET's lesion occupancy (0..1)."""
    channels = [np.log1p(np.clip(suv, 0, None)), np.clip(hu, AIR_HU, -AIR_HU) / -AIR_HU]
    if lesions is not None:
        channels.append(np.clip(lesions, 0, 1))
    return np.stack(channels).astype(np.float32)


class _SuvRefined(torch.nn.Module):
    """k x SUV x exp(g): the SUV-scaled baseline times a bounded factor (x: the :func:`_inputs`
    channels). Without the lesion channel g = f(x), the network's output; with it g = b in
    every voxel the PET's lesions touch (occupancy > 0), b = log(k_lesion / k), and f(x)
    elsewhere: in the lesions the dose per GBq is the training lesions' own dose per SUV times
    the SUV, the network refines the rest. k and b are buffers, saved with the weights."""

    def __init__(self, net: torch.nn.Module, gy_per_gbq_per_suv: float = 1.0,
                 lesion_log_factor: float | None = None):
        super().__init__()
        self.net = net
        self.register_buffer("k", torch.tensor(float(gy_per_gbq_per_suv)))
        self.lesion_channel = lesion_log_factor is not None
        if self.lesion_channel:
            self.register_buffer("b", torch.tensor(float(lesion_log_factor)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        suv = torch.expm1(x[:, :1]).clamp(min=0)
        f = self.net(x)
        if self.lesion_channel:
            f = torch.where(x[:, 2:3] > 0, self.b, f)
        return self.k * suv * torch.exp(f.clamp(-LOG_FACTOR_BOUND, LOG_FACTOR_BOUND))


class VoxelDoseModel:
    """Dose per GBq from PET SUV and CT: the SUV-scaled baseline refined by a MONAI 3D U-Net
    (scikit-learn style; see the module docstring).

    Args:
        channels: feature channels per U-Net level (strides 2 between levels).
        patch_voxels: edge of the cubic training patches and inference windows (a multiple of
            2 ** (levels - 1)).
        epochs: passes over the samples; each draws ``patches_per_sample`` patches of each.
        patches_per_sample: patches per sample and epoch.
        batch_size: patches per optimiser step.
        learning_rate: Adam's learning rate.
        lesion_channel: give the network the PET's lesion VOIs as a third input channel
            (:attr:`VoxelSample.pet_lesions` in training, ``lesions`` in :meth:`predict`).
        random_state: seed of the weights and the patches (same seed, same model).
        progress: show a progress bar over the epochs.
    """

    def __init__(self, *, channels: tuple[int, ...] = (16, 32, 64), patch_voxels: int = 32,
                 epochs: int = 100, patches_per_sample: int = 4, batch_size: int = 2,
                 learning_rate: float = 2e-3, lesion_channel: bool = True,
                 random_state: int = 0, progress: bool = True):
        self.channels = tuple(channels)
        self.patch_voxels = patch_voxels
        self.epochs = epochs
        self.patches_per_sample = patches_per_sample
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.lesion_channel = lesion_channel
        self.random_state = random_state
        self.progress = progress

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("channels", "patch_voxels", "epochs",
                                              "patches_per_sample", "batch_size",
                                              "learning_rate", "lesion_channel",
                                              "random_state", "progress")}

    def _build(self, gy_per_gbq_per_suv: float = 1.0, lesion_log_factor: float = 0.0
               ) -> torch.nn.Module:
        from monai.networks.nets import UNet

        if self.patch_voxels % 2 ** (len(self.channels) - 1):
            raise ValueError(f"patch_voxels {self.patch_voxels} is not a multiple of "
                             f"{2 ** (len(self.channels) - 1)} ({len(self.channels)} levels)")
        unet = UNet(spatial_dims=3, in_channels=3 if self.lesion_channel else 2, out_channels=1,
                    channels=self.channels, strides=(2,) * (len(self.channels) - 1),
                    num_res_units=1)
        return _SuvRefined(unet, gy_per_gbq_per_suv,
                           lesion_log_factor if self.lesion_channel else None)

    # -- training ---------------------------------------------------------------------------
    def fit(self, samples: list[VoxelSample]) -> VoxelDoseModel:
        """Train on samples: k from the samples' body voxels (:class:`SuvScaledDose`), then the
        U-Net on random patches (L1 loss on log(dose per GBq + ``log_offset_gy_per_gbq_``))."""
        from rich.progress import Progress

        if not samples:
            raise ValueError("fit needs at least one voxel sample")
        p = self.patch_voxels
        bodies = np.concatenate([s.dose_gy_per_gbq.array[s.body] for s in samples])
        self.log_offset_gy_per_gbq_ = LOG_OFFSET * float(np.quantile(bodies, 0.99)) or 1e-6
        self.gy_per_gbq_per_suv_ = SuvScaledDose().fit(samples).gy_per_gbq_per_suv_
        self.lesion_log_factor_ = _lesion_log_factor(samples, self.gy_per_gbq_per_suv_)
        data = []
        for s in samples:
            target = s.dose_gy_per_gbq.array
            x = _inputs(s.pet_suv.array, s.ct_hu.array,
                        s.pet_lesions.array if self.lesion_channel else None)
            hot = s.body & (target >= np.quantile(target[s.body], HOT_QUANTILE))
            lesions = np.zeros_like(s.body)  # patch centres: as random_patch does
            if self.lesion_channel:  # the PET's lesions get k_lesion x SUV: no loss there
                weights = (s.pet_lesions.array <= 0).astype(np.float32)
            else:
                for name, mask in s.masks.items():
                    if name.startswith("lesion_"):
                        lesions |= mask
                weights = 1.0 + (LESION_WEIGHT - 1.0) * lesions.astype(np.float32)
            data.append((np.stack([pad_to(c, p, c.min()) for c in x]),
                         pad_to(target.astype(np.float32), p, 0.0), pad_to(hot, p, False),
                         pad_to(lesions, p, False), pad_to(weights, p, 1.0)))
        self.spacing_mm_ = tuple(float(v) for v in np.mean(
            [s.dose_gy_per_gbq.spacing_mm for s in samples], axis=0))
        offset = self.log_offset_gy_per_gbq_
        self.history_: list[float] = []  # mean training loss per epoch
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # seeded without touching the global RNG
            torch.manual_seed(self.random_state)
            rng = np.random.default_rng(self.random_state)
            net = self._build(self.gy_per_gbq_per_suv_, self.lesion_log_factor_)
            opt = torch.optim.Adam(net.parameters(), lr=self.learning_rate)
            net.train()
            with Progress(transient=True, disable=not self.progress) as bar:
                task = bar.add_task("voxel dose model", total=self.epochs)
                for _ in range(self.epochs):
                    order = np.repeat(np.arange(len(data)), self.patches_per_sample)
                    rng.shuffle(order)
                    losses = []
                    for b in range(0, len(order), self.batch_size):
                        x, y, w = _patches([data[i] for i in order[b:b + self.batch_size]], p,
                                           rng)
                        opt.zero_grad()
                        error = torch.abs(torch.log(net(x) + offset) - torch.log(y + offset))
                        loss = (w * error).sum() / w.sum().clamp(min=1.0)
                        loss.backward()
                        opt.step()
                        losses.append(loss.item())
                    self.history_.append(float(np.mean(losses)))
                    bar.update(task, advance=1,
                               description=f"voxel dose model, loss {self.history_[-1]:.4f}")
        self.train_seconds_ = time.perf_counter() - start
        self.n_samples_ = len(samples)
        self.network_ = net.eval()
        return self

    # -- inference --------------------------------------------------------------------------
    def predict(self, pet_suv: Volume, ct: Volume, lesions: Volume | None = None) -> Volume:
        """Dose per GBq (Gy/GBq) on the PET's grid from its SUVbw, a CT of the same frame and
        (a model with the lesion channel) the lesions drawn on the PET (a mask or occupancy
        0..1 in the same frame; None: no lesions, said in a warning). Inference runs at the
        training spacing; a PET of another spacing is resampled to it and the prediction back.
        """
        from monai.inferers import sliding_window_inference

        if getattr(self, "network_", None) is None:
            raise RuntimeError("the voxel dose model is not fitted or loaded")
        work = _grid_at(pet_suv, self.spacing_mm_)
        same = work.same_grid(pet_suv)
        suv = pet_suv.array if same else to_grid(pet_suv, work)
        hu = ct.array if ct.same_grid(work) else to_grid(ct, work, AIR_HU)
        occupancy = None
        if self.lesion_channel and lesions is None:
            log.warning("the voxel dose network was trained with the PET's lesions as input and "
                        "got none: any lesion is predicted as background")
            occupancy = np.zeros_like(suv, dtype=np.float32)
        elif self.lesion_channel:
            mask = lesions.like(lesions.array.astype(np.float32))
            occupancy = mask.array if mask.same_grid(work) else to_grid(mask, work)
        p = self.patch_voxels
        with torch.no_grad():
            x = torch.from_numpy(_inputs(suv, hu, occupancy))[None]
            out = sliding_window_inference(x, (p, p, p), 4, self.network_, overlap=0.25,
                                           mode="gaussian")
        dose = out[0, 0].numpy()
        if not same:
            dose = np.clip(to_grid(work.like(dose), pet_suv), 0, None)
        return pet_suv.like(dose.astype(np.float32))

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``weights.pt`` and ``config.json`` to a folder (built aside, then renamed)."""
        if getattr(self, "network_", None) is None:
            raise RuntimeError("the voxel dose model is not fitted")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        old = path.parent / f".old-{uuid.uuid4().hex}"
        try:
            torch.save(self.network_.state_dict(), tmp / WEIGHTS)
            fitted = {k: v for k, v in vars(self).items() if k.endswith("_") and k != "network_"}
            (tmp / CONFIG).write_text(json.dumps(
                {"params": self.get_params(), "fitted": fitted, "theralake_version": __version__},
                indent=2))
            if path.exists():
                path.rename(old)
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VoxelDoseModel:
        """A model written by :meth:`save`."""
        path = Path(path)
        for name in (WEIGHTS, CONFIG):
            if not (path / name).exists():
                raise FileNotFoundError(f"{path}: no {name} (not a saved voxel dose model)")
        config = json.loads((path / CONFIG).read_text())
        model = cls(**{"lesion_channel": False, **config["params"]})  # saved before the channel
        for key, value in config["fitted"].items():
            setattr(model, key, tuple(value) if key == "spacing_mm_" else value)
        net = model._build()
        net.load_state_dict(torch.load(path / WEIGHTS, map_location="cpu"))
        model.network_ = net.eval()
        return model


def _patches(data: list[tuple[np.ndarray, ...]], size: int, rng: np.random.Generator
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of random patches (inputs, targets, loss weights) from (inputs, target, hot
    voxels, lesion voxels, loss weights): centred on a lesion ``LESION_PATCH_SHARE`` of the time
    where the patient has one, else as :func:`random_patch` does on the hot voxels."""
    boxes = [random_patch(item[3] if item[3].any() and rng.random() < LESION_PATCH_SHARE
                          else item[2], size, rng) for item in data]
    x = np.stack([item[0][(slice(None), *box)] for item, box in zip(data, boxes, strict=True)])
    y = np.stack([item[1][box][None] for item, box in zip(data, boxes, strict=True)])
    w = np.stack([item[4][box][None] for item, box in zip(data, boxes, strict=True)])
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w.astype(np.float32))


def _dose_per_suv(samples: list[VoxelSample], weight: Callable[[VoxelSample], np.ndarray]
                  ) -> tuple[float, float]:
    """The samples' dose per GBq and SUV, each summed with the voxel weights ``weight(s)``."""
    dose = sum(float((s.dose_gy_per_gbq.array * weight(s)).sum()) for s in samples)
    suv = sum(float((s.pet_suv.array * weight(s)).sum()) for s in samples)
    return dose, suv


def _lesion_log_factor(samples: list[VoxelSample], gy_per_gbq_per_suv: float) -> float:
    """log(k_lesion / k): the training lesions' dose per GBq summed over their SUV (weighted by
    the PET's lesion occupancy) against the body's k; 0 without lesions."""
    dose, suv = _dose_per_suv(samples, lambda s: s.pet_lesions.array)
    if not (dose > 0 and suv > 0):
        return 0.0
    return float(np.clip(np.log(dose / suv / gy_per_gbq_per_suv), -LOG_FACTOR_BOUND,
                         LOG_FACTOR_BOUND))


def _grid_at(vol: Volume, spacing_mm: tuple[float, ...]) -> Volume:
    """``vol``'s grid itself when its spacing is within 5 % of ``spacing_mm``, else an empty grid
    of that spacing over the same extent."""
    if np.allclose(vol.spacing_mm, spacing_mm, rtol=0.05):
        return vol
    size_zyx = [max(1, int(round(n * s / t))) for n, s, t in zip(
        vol.shape_xyz, vol.spacing_mm, spacing_mm, strict=True)][::-1]
    return Volume(np.zeros(size_zyx, np.float32), spacing_mm, vol.origin_mm, vol.direction)


# -- the baseline ----------------------------------------------------------------------------
@dataclass
class SuvScaledDose:
    """Baseline: dose per GBq = k x SUV, one k for every voxel (the training patients' body
    dose per GBq summed over their body SUV)."""

    gy_per_gbq_per_suv_: float = field(default=float("nan"))

    def fit(self, samples: list[VoxelSample]) -> SuvScaledDose:
        if not samples:
            raise ValueError("fit needs at least one voxel sample")
        dose, suv = _dose_per_suv(samples, lambda s: s.body)
        self.gy_per_gbq_per_suv_ = dose / suv
        return self

    def predict(self, pet_suv: Volume, ct: Volume, lesions: Volume | None = None) -> Volume:
        return pet_suv.like((self.gy_per_gbq_per_suv_ * np.clip(pet_suv.array, 0, None))
                            .astype(np.float32))


# -- evaluation ------------------------------------------------------------------------------
def evaluate_voxel(model: DosePredictor, samples: list[VoxelSample],
                   baseline: DosePredictor | None = None) -> pd.DataFrame:
    """Predicted vs measured dose per GBq of every patient and VOI.

    Returns one row per predictor (``network``, ``baseline``), patient and VOI: ``voxels``,
    ``measured_gy_per_gbq`` and ``predicted_gy_per_gbq`` (means inside the VOI),
    ``relative_error`` (of the means) and ``mae_gy_per_gbq`` (voxel mean absolute error inside
    the VOI; the ``body`` rows are the voxel-level error within the body).
    """
    predictors = {"network": model, **({"baseline": baseline} if baseline else {})}
    rows = []
    for s in samples:
        measured = s.dose_gy_per_gbq.array
        masks = {**s.masks, "body": s.body}
        for name, predictor in predictors.items():
            predicted = predictor.predict(s.pet_suv, s.ct_hu, s.pet_lesions).array
            for voi, mask in masks.items():
                if not mask.any():
                    continue
                m, p = float(measured[mask].mean()), float(predicted[mask].mean())
                rows.append({"predictor": name, "patient_id": s.patient_id, "voi": voi,
                             "voxels": int(mask.sum()), "measured_gy_per_gbq": m,
                             "predicted_gy_per_gbq": p,
                             "relative_error": (p - m) / m if m > 0 else float("nan"),
                             "mae_gy_per_gbq": float(np.abs(predicted[mask] - measured[mask])
                                                     .mean())})
    return pd.DataFrame(rows)


def summarise_voxel(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Per predictor and VOI group (``organ``, ``lesion``, ``body``): the median absolute
    relative error of the VOI means and the mean voxel MAE (Gy/GBq)."""
    group = np.where(evaluation.voi == "body", "body",
                     np.where(evaluation.voi.str.startswith("lesion_"), "lesion", "organ"))
    return (evaluation.assign(group=group, abs_relative_error=evaluation.relative_error.abs())
            .groupby(["predictor", "group"])
            .agg(median_abs_relative_error=("abs_relative_error", "median"),
                 mae_gy_per_gbq=("mae_gy_per_gbq", "mean"), vois=("voi", "size")))
