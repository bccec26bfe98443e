"""Learned CT-to-CT deformable registration (``--registration ai``).

A MONAI VoxelMorph network (:class:`monai.networks.nets.VoxelMorph`: a
:class:`~monai.networks.nets.VoxelMorphUNet` backbone predicting a stationary velocity field,
integrated by scaling and squaring into a displacement, :class:`monai.networks.blocks.Warp`) is
trained without labels on pairs of CTs: loss = image dissimilarity
(:class:`monai.losses.LocalNormalizedCrossCorrelationLoss`, or
:class:`monai.losses.GlobalMutualInformationLoss`) + ``smoothness`` x
:class:`monai.losses.BendingEnergyLoss`.

Every pair is first aligned rigidly with the classical
:func:`theralake.dosimetry.registration.register_ct` (``deformable=False``); the network only
learns the residual deformation. Both CTs are resampled onto a fixed *working grid*: ``size``
voxels (x, y, z) of ``spacing_mm``, centred on the fixed CT and oriented like it, intensities
clipped to ``hu_window`` and scaled to [0, 1].

Two choices keep training affordable on a CPU: the backbone runs at 1/``stride`` of the working
resolution on a lossless space-to-depth rearrangement of the images (the velocity field is
upsampled trilinearly, the loss is computed at full working resolution), and with
``force_features`` it also sees the image difference and the difference times the image
gradients (the demons force), which it otherwise has to learn to form from the two images.

:meth:`AiRegistration.register` returns the classical
:class:`~theralake.dosimetry.registration.RegistrationResult` (as its subclass
:class:`AiRegistrationResult`), whose ``transform`` is a SimpleITK composite transform
mapping fixed-space points to moving-space points: the predicted displacement field (mm, on
the working grid, a :class:`SimpleITK.DisplacementFieldTransform`) followed by the rigid one.
:func:`~theralake.dosimetry.registration.resample_activity` and
:func:`~theralake.dosimetry.registration.resample_mask` take it unchanged.

Limits: the displacement is zero outside the working grid, and it is tapered to zero over its
outer ``taper_voxels`` voxels so that the field stays continuous there (no folding at the
border); anatomy beyond the working grid is aligned rigidly only. Choose ``size`` x
``spacing_mm`` to cover the CTs' field of view (the default, 480 x 384 x 384 mm, covers an
abdominal SPECT/CT).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from theralake import __version__
from theralake.dosimetry import registration
from theralake.dosimetry.registration import RegistrationResult
from theralake.dosimetry.registration_files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
)
from theralake.lake import Lake, Volume

log = logging.getLogger(__name__)

FORMAT = "theralake-ai-registration/1"
SIMILARITIES = ("lncc", "mi")


class ModelMissingError(RuntimeError):
    """``--registration ai`` was asked for without a trained model."""


@dataclass
class AiRegistrationResult(RegistrationResult):
    """A :class:`RegistrationResult` with the rigid stage and the predicted field kept apart.

    ``rigid`` maps fixed to moving points (the pre-alignment alone); ``ncc_rigid`` is the NCC
    after it; ``displacement_mm`` (z, y, x, 3; x, y, z components in mm, patient axes) is the
    learned displacement on ``working_grid`` (a fixed-space volume holding the windowed fixed
    CT).
    """

    rigid: sitk.Transform | None = None
    ncc_rigid: float = float("nan")
    displacement_mm: np.ndarray | None = field(default=None, repr=False)
    working_grid: Volume | None = field(default=None, repr=False)


class AiRegistration:
    """Unsupervised learned deformable CT registration (scikit-learn style).

    Parameters
    ----------
    spacing_mm:
        Isotropic voxel size of the working grid.
    size:
        Working grid in voxels (x, y, z); each must suit the network's pooling (checked).
    channels:
        ``VoxelMorphUNet`` channels, in (down, up) pairs from the top level.
    stride:
        The backbone works at 1/``stride`` of the working resolution (space-to-depth input).
    force_features:
        Add the difference image and the demons force (difference x gradients) as inputs.
    integration_steps:
        Scaling-and-squaring steps turning the velocity field into a displacement (0: the
        network predicts the displacement directly, no diffeomorphism guarantee).
    epochs, batch_size, lr:
        Adam training schedule; one epoch visits every pair once (in random order).
    smoothness:
        Weight of the bending energy of the displacement (voxel units).
    similarity:
        ``"lncc"`` (local normalised cross-correlation, window ``lncc_kernel`` voxels) or
        ``"mi"`` (global mutual information).
    hu_window:
        HU range mapped to [0, 1] (outside: clipped).
    taper_voxels:
        Width of the border over which the velocity field is brought to zero.
    augment:
        Present each training pair in a random direction (fixed and moving swapped).
    rigid:
        Pre-align with the classical rigid registration (else: the images' own geometry).
    preset:
        Classical registration preset (rigid stage and quality thresholds); ``None``: the
        packaged default.
    seed:
        Seed of weights, batches and augmentation.
    max_minutes:
        Stop training after this wall time (checked between batches); ``None``: no limit.
    device:
        ``"auto"`` (CUDA when there is one), ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, *, spacing_mm: float = 6.0, size: tuple[int, int, int] = (80, 64, 64),
                 channels: tuple[int, ...] = (16, 32, 32, 32, 32, 32), stride: int = 2,
                 force_features: bool = True, integration_steps: int = 7,
                 epochs: int = 100, batch_size: int = 2, lr: float = 1e-3,
                 smoothness: float = 0.5, similarity: str = "lncc", lncc_kernel: int = 7,
                 hu_window: tuple[float, float] = (-200.0, 300.0), taper_voxels: int = 3,
                 augment: bool = True, rigid: bool = True, preset: dict | None = None,
                 seed: int = 0, max_minutes: float | None = None, device: str = "auto"):
        self.spacing_mm = spacing_mm
        self.size = size
        self.channels = channels
        self.stride = stride
        self.force_features = force_features
        self.integration_steps = integration_steps
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.smoothness = smoothness
        self.similarity = similarity
        self.lncc_kernel = lncc_kernel
        self.hu_window = hu_window
        self.taper_voxels = taper_voxels
        self.augment = augment
        self.rigid = rigid
        self.preset = preset
        self.seed = seed
        self.max_minutes = max_minutes
        self.device = device

    # -- scikit-learn conventions ---------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The hyper-parameters given to ``__init__``."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        fitted = "fitted" if hasattr(self, "net_") else "not fitted"
        return (f"AiRegistration(spacing_mm={self.spacing_mm}, size={tuple(self.size)}, "
                f"channels={tuple(self.channels)}, {fitted})")

    # -- training -------------------------------------------------------------------------
    def fit(self, pairs: list[tuple[Volume, Volume]]) -> AiRegistration:
        """Train on (fixed CT, moving CT) pairs in HU; returns ``self``.

        Fitted attributes: ``net_`` (the torch module, on the CPU, in eval mode),
        ``history_`` (mean loss per epoch), ``n_pairs_``, ``epochs_run_``,
        ``training_seconds_`` (excluding the rigid pre-alignment),
        ``preparation_seconds_``.
        """
        self._check_params()
        pairs = list(pairs)
        if not pairs:
            raise ValueError("AiRegistration.fit needs at least one (fixed, moving) CT pair")
        with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG untouched
            torch.manual_seed(int(self.seed))
            net = self._build_net()  # also checks the working grid against the network
        t0 = time.perf_counter()
        fixed_t, moving_t = [], []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, tuple | list) and len(pair) == 2
                    and all(isinstance(v, Volume) for v in pair)):
                raise TypeError(f"pair {i}: expected a (fixed Volume, moving Volume) tuple, got "
                                f"{type(pair).__name__}")
            fixed, moving = pair
            self._check_inputs(fixed, moving, f"pair {i}")
            rigid = self._rigid(fixed, moving)
            f, m = self._working_pair(fixed, moving, rigid)
            fixed_t.append(f)
            moving_t.append(m)
        self.preparation_seconds_ = time.perf_counter() - t0
        device = self._torch_device()
        rng = np.random.default_rng(int(self.seed))
        net = net.to(device)
        fixed_all = torch.from_numpy(np.stack(fixed_t)[:, None]).to(device)
        moving_all = torch.from_numpy(np.stack(moving_t)[:, None]).to(device)
        sim_loss, bending = self._losses()
        opt = torch.optim.Adam(net.parameters(), lr=float(self.lr))
        history: list[float] = []
        deadline = None if self.max_minutes is None else t0 + 60.0 * float(self.max_minutes)
        t1 = time.perf_counter()
        net.train()
        stop = False
        for epoch in range(int(self.epochs)):
            order = rng.permutation(len(pairs))
            losses = []
            for start in range(0, len(order), int(self.batch_size)):
                idx = torch.as_tensor(order[start:start + int(self.batch_size)], device=device)
                f, m = fixed_all[idx], moving_all[idx]
                if self.augment:
                    swap = torch.as_tensor(rng.random(len(idx)) < 0.5, device=device)
                    swap = swap.view(-1, 1, 1, 1, 1)
                    f, m = torch.where(swap, m, f), torch.where(swap, f, m)
                with _quiet_monai():
                    warped, ddf = net(m, f)
                    loss = sim_loss(warped, f) + float(self.smoothness) * bending(ddf)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if deadline is not None and time.perf_counter() > deadline:
                    stop = True
                    break
            history.append(float(np.mean(losses)))
            log.debug("ai registration epoch %d: loss %.4f", epoch + 1, history[-1])
            if stop:
                log.warning("ai registration: stopped after %d of %d epochs (max_minutes=%s)",
                            epoch + 1, self.epochs, self.max_minutes)
                break
        net.eval()
        self.net_ = net.cpu()
        self.history_ = history
        self.n_pairs_ = len(pairs)
        self.epochs_run_ = len(history)
        self.training_seconds_ = time.perf_counter() - t1
        log.info("ai registration: %d pairs, %d epochs, loss %.4f -> %.4f, %.1f s training",
                 self.n_pairs_, self.epochs_run_, history[0], history[-1],
                 self.training_seconds_)
        return self

    # -- inference ------------------------------------------------------------------------
    def register(self, fixed: Volume, moving: Volume,
                 initial_transform: sitk.Transform | None = None) -> AiRegistrationResult:
        """Register ``moving`` CT onto ``fixed`` CT (both HU).

        ``initial_transform`` (fixed to moving points) replaces the rigid pre-alignment when
        given. Quality flags follow the classical ones (NCC fell, Jacobian outside the
        preset's range) plus one when the learned stage lowers NCC below the rigid one.
        """
        self._check_fitted()
        self._check_inputs(fixed, moving, "register")
        rigid = initial_transform if initial_transform is not None else self._rigid(fixed, moving)
        grid = self._working_grid(fixed)
        f, m = self._working_pair(fixed, moving, rigid)
        with torch.no_grad(), _quiet_monai():
            _, ddf = self.net_(torch.from_numpy(m[None, None]), torch.from_numpy(f[None, None]))
        ddf_vox = ddf[0].numpy().astype(np.float64)  # (3: z, y, x components, z, y, x)
        disp = self._to_physical(ddf_vox, grid)
        transform = _composite(rigid, disp, grid)
        ncc0, mi0 = registration.similarity(fixed, moving)
        ncc_r, _ = registration.similarity(fixed, moving, rigid)
        ncc1, mi1 = registration.similarity(fixed, moving, transform)
        jac = registration.jacobian_determinant(transform, fixed)
        result = AiRegistrationResult(
            transform, ncc0, ncc1, mi0, mi1, float(jac.min()), float(jac.max()), rigid=rigid,
            ncc_rigid=ncc_r, displacement_mm=disp.astype(np.float32),
            working_grid=grid.like(f))
        extra = [f"learned stage lowered NCC from {ncc_r:.3f} (rigid) to {ncc1:.3f}: the "
                 "pair may lie outside the training data"] if ncc1 < ncc_r - 0.01 else []
        q = (self.preset or registration.load_preset())["quality"]
        return registration.flag_quality(result, q, extra)

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``ai_registration.json`` (parameters, training record) and ``weights.pt``."""
        import monai

        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        params = self.get_params()
        params["size"], params["channels"] = list(self.size), list(self.channels)
        params["hu_window"] = list(self.hu_window)
        config = {"format": FORMAT, "params": params,
                  "fitted": {"history": self.history_, "n_pairs": self.n_pairs_,
                             "epochs_run": self.epochs_run_,
                             "training_seconds": self.training_seconds_},
                  "versions": {"theralake": __version__, "torch": torch.__version__,
                               "monai": monai.__version__}}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        torch.save(self.net_.state_dict(), tmp)
        tmp.replace(folder / WEIGHTS_FILE)
        tmp = folder / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(folder / CONFIG_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AiRegistration:
        """A fitted model from a folder written by :meth:`save`."""
        folder = Path(folder)
        cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights.is_file():
            raise ModelMissingError(f"{folder} holds no trained AI registration model "
                                    f"({CONFIG_FILE} and {WEIGHTS_FILE}); train one with "
                                    "AiRegistration(...).fit(pairs).save(folder)")
        config = json.loads(cfg_path.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{cfg_path}: format {config.get('format')!r}, expected {FORMAT!r}")
        params = config["params"]
        for key in ("size", "channels", "hu_window"):
            params[key] = tuple(params[key])
        model = cls(**params)
        model._check_params()
        net = model._build_net()
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net.eval()
        model.net_ = net
        fitted = config["fitted"]
        model.history_ = list(fitted["history"])
        model.n_pairs_ = int(fitted["n_pairs"])
        model.epochs_run_ = int(fitted["epochs_run"])
        model.training_seconds_ = float(fitted["training_seconds"])
        return model

    # -- internals ------------------------------------------------------------------------
    def _check_params(self) -> None:
        if len(self.size) != 3 or min(self.size) < 8:
            raise ValueError(f"size must be three voxel counts >= 8 (x, y, z), got {self.size}")
        if self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity {self.similarity!r}: one of {', '.join(SIMILARITIES)}")
        lo, hi = self.hu_window
        if not hi > lo:
            raise ValueError(f"hu_window must be (low, high) with high > low, got {self.hu_window}")
        if int(self.stride) < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and "
                             f"{self.batch_size}")
        if 2 * int(self.taper_voxels) >= min(self.size):
            raise ValueError(f"taper_voxels={self.taper_voxels} leaves no interior in {self.size}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "net_"):
            raise ModelMissingError("this AiRegistration is not fitted: call fit(pairs) or "
                                    "AiRegistration.load(folder) first")

    def _check_inputs(self, fixed: Volume, moving: Volume, label: str) -> None:
        for name, vol in (("fixed", fixed), ("moving", moving)):
            if not isinstance(vol, Volume):
                raise TypeError(f"{label}: {name} must be a Volume, got {type(vol).__name__}")
            if vol.array.dtype == bool or min(vol.array.shape) < 2:
                raise ValueError(f"{label}: {name} is not a CT volume (shape "
                                 f"{vol.array.shape}, dtype {vol.array.dtype})")
            lo, hi = self.hu_window
            windowed = np.clip(vol.array[::2, ::2, ::2], lo, hi)
            if float(windowed.std()) < 0.01 * (hi - lo):
                raise ValueError(f"{label}: {name} shows no contrast in the HU window "
                                 f"{tuple(self.hu_window)}: is it a CT in HU?")
        (lo_f, hi_f), (lo_m, hi_m) = _extent(fixed), _extent(moving)
        overlap = np.minimum(hi_f, hi_m) - np.maximum(lo_f, lo_m)
        if np.any(overlap <= 0):
            raise ValueError(f"{label}: fixed and moving CTs do not overlap in space (fixed "
                             f"{lo_f.round(1)}-{hi_f.round(1)} mm, moving {lo_m.round(1)}-"
                             f"{hi_m.round(1)} mm)")

    def _torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _build_net(self) -> torch.nn.Module:
        from monai.networks.nets import VoxelMorph, VoxelMorphUNet

        channels = tuple(int(c) for c in self.channels)
        stride = int(self.stride)
        in_channels = (6 if self.force_features else 2) * stride ** 3
        unet = VoxelMorphUNet(spatial_dims=3, in_channels=in_channels,
                              unet_out_channels=channels[0], channels=channels,
                              final_conv_channels=(channels[0],))
        last = [m for m in unet.modules() if isinstance(m, torch.nn.Conv3d)][-1]
        torch.nn.init.normal_(last.weight, 0.0, 1e-5)  # start near the identity
        torch.nn.init.zeros_(last.bias)
        zyx = tuple(int(s) for s in self.size[::-1])
        backbone = _Backbone(unet, _taper(zyx, int(self.taper_voxels)), stride,
                             bool(self.force_features))
        with _quiet_monai():
            net = VoxelMorph(backbone, integration_steps=int(self.integration_steps))
        multiple = stride * 2 ** (len(channels) // 2)
        if any(n % multiple for n in zyx):
            raise ValueError(f"working grid size {tuple(self.size)} must be a multiple of "
                             f"{multiple} (stride {stride}, channels {channels})")
        with torch.no_grad():
            backbone(torch.zeros((1, 2, *zyx)))
        return net

    def _losses(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        from monai.losses import (
            BendingEnergyLoss,
            GlobalMutualInformationLoss,
            LocalNormalizedCrossCorrelationLoss,
        )

        sim = (LocalNormalizedCrossCorrelationLoss(spatial_dims=3,
                                                   kernel_size=int(self.lncc_kernel))
               if self.similarity == "lncc" else GlobalMutualInformationLoss())
        return sim, BendingEnergyLoss()

    def _rigid(self, fixed: Volume, moving: Volume) -> sitk.Transform:
        if not self.rigid:
            return sitk.Transform(3, sitk.sitkIdentity)
        coarse_f, coarse_m = (_coarsen(v, float(self.spacing_mm) / 2) for v in (fixed, moving))
        # one ITK thread: the threaded sampled metric makes runs differ by ~1 um, which
        # training amplifies; single-threaded, fit and register are reproducible
        with _itk_threads(1):
            return registration.register_ct(coarse_f, coarse_m, preset=self.preset,
                                            deformable=False).transform

    def _working_grid(self, fixed: Volume) -> Volume:
        """The working grid: ``size`` voxels of ``spacing_mm`` centred on the fixed CT."""
        centre = fixed.index_to_world((np.array(fixed.shape_xyz) - 1.0) / 2)
        size = np.array(self.size, dtype=float)
        spacing = np.full(3, float(self.spacing_mm))
        origin = centre - fixed.direction @ ((size - 1) / 2 * spacing)
        zyx = tuple(int(s) for s in self.size[::-1])
        return Volume(np.zeros(zyx, np.float32), tuple(spacing), tuple(origin),
                      fixed.direction.copy())

    def _working_pair(self, fixed: Volume, moving: Volume, rigid: sitk.Transform
                      ) -> tuple[np.ndarray, np.ndarray]:
        grid = self._working_grid(fixed)
        ref = grid.to_sitk()
        out = []
        for vol, transform in ((fixed, sitk.Transform(3, sitk.sitkIdentity)), (moving, rigid)):
            img = _antialias(sitk.Cast(vol.to_sitk(), sitk.sitkFloat32), float(self.spacing_mm))
            res = sitk.Resample(img, ref, transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
            out.append(self._normalise(sitk.GetArrayFromImage(res)))
        return out[0], out[1]

    def _normalise(self, hu: np.ndarray) -> np.ndarray:
        lo, hi = (float(v) for v in self.hu_window)
        return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)

    def _to_physical(self, ddf_vox: np.ndarray, grid: Volume) -> np.ndarray:
        """Voxel displacement (3: z, y, x; z, y, x) to mm along patient axes, (z, y, x, 3)."""
        xyz = np.moveaxis(ddf_vox[::-1], 0, -1) * np.asarray(grid.spacing_mm)
        return xyz @ grid.direction.T


class _Backbone(torch.nn.Module):
    """(moving, fixed) -> velocity field (voxels) at the working resolution.

    Optional demons-force channels, space-to-depth by ``stride``, the U-Net, trilinear
    upsampling back, and a border taper that brings the field to zero at the grid's edge.
    """

    def __init__(self, unet: torch.nn.Module, taper: np.ndarray, stride: int,
                 force_features: bool) -> None:
        super().__init__()
        self.net = unet
        self.stride = stride
        self.force_features = force_features
        self.register_buffer("taper", torch.from_numpy(taper)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        if self.force_features:
            moving, fixed = x[:, :1], x[:, 1:]
            diff = fixed - moving
            grad = torch.cat(torch.gradient(moving + fixed, dim=(2, 3, 4)), dim=1)
            x = torch.cat([x, diff, 2.0 * diff * grad], dim=1)  # 6 channels
        s = self.stride
        if s > 1:  # lossless space-to-depth: (b, c, D, H, W) -> (b, c s^3, D/s, H/s, W/s)
            b, c, d, h, w = x.shape
            x = x.reshape(b, c, d // s, s, h // s, s, w // s, s).permute(0, 1, 3, 5, 7, 2, 4, 6)
            x = x.reshape(b, c * s ** 3, d // s, h // s, w // s)
        v = self.net(x)
        if s > 1:  # coarse voxels -> working voxels
            v = torch.nn.functional.interpolate(v, size=size, mode="trilinear",
                                                align_corners=False) * s
        return v * self.taper


@contextlib.contextmanager
def _quiet_monai() -> Iterator[None]:
    """Silence MONAI's notices that carry no information here (CPU grid_sample, indexing)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
        warnings.filterwarnings("ignore", message=".*non-tuple sequence for multidimensional.*")
        yield


@contextlib.contextmanager
def _itk_threads(n: int) -> Iterator[None]:
    """Temporarily set SimpleITK's default number of threads (restored afterwards)."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _taper(zyx: tuple[int, int, int], width: int) -> np.ndarray:
    """1 inside, sin^2 ramp to 0 on the outermost voxel, over ``width`` voxels per side."""
    out = np.ones(zyx, np.float32)
    if width <= 0:
        return out
    for axis, n in enumerate(zyx):
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(float)
        ramp = np.where(d < width, np.sin(0.5 * math.pi * d / width) ** 2, 1.0)
        shape = [1, 1, 1]
        shape[axis] = n
        out = out * ramp.reshape(shape).astype(np.float32)
    return out


def _composite(rigid: sitk.Transform, disp_mm: np.ndarray, grid: Volume) -> sitk.Transform:
    """Fixed point x -> rigid(x + u(x)) as a SimpleITK composite transform."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(disp_mm, dtype=np.float64),
                                 isVector=True)
    img.SetSpacing(grid.spacing_mm)
    img.SetOrigin(grid.origin_mm)
    img.SetDirection(tuple(grid.direction.ravel()))
    dfield = sitk.DisplacementFieldTransform(img)  # zero displacement outside the grid
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(rigid)
    composite.AddTransform(dfield)  # the last added acts first
    return composite


def _extent(vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k] for i in (0, vol.shape_xyz[0] - 1)
                        for j in (0, vol.shape_xyz[1] - 1) for k in (0, vol.shape_xyz[2] - 1)])
    world = vol.index_to_world(corners)
    return world.min(axis=0), world.max(axis=0)


def _antialias(img: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Gaussian blur before sampling at ``spacing_mm`` (sigma: half the missing resolution)."""
    sigmas = [0.5 * math.sqrt(max(spacing_mm ** 2 - s ** 2, 0.0)) for s in img.GetSpacing()]
    if max(sigmas) < 0.25 * min(img.GetSpacing()):
        return img
    # an axis already as coarse as the target keeps a negligible (but valid, > 0) sigma
    sigmas = [max(sg, 0.01 * s) for sg, s in zip(sigmas, img.GetSpacing(), strict=True)]
    return sitk.SmoothingRecursiveGaussian(img, sigmas)


def _coarsen(vol: Volume, spacing_mm: float) -> Volume:
    """The volume on its own extent at ``spacing_mm`` where it is finer (for the rigid stage)."""
    spacing = np.maximum(np.array(vol.spacing_mm), spacing_mm)
    if np.allclose(spacing, vol.spacing_mm):
        return vol
    size = np.maximum(np.round(np.array(vol.shape_xyz) * np.array(vol.spacing_mm) / spacing),
                      2).astype(int)
    img = _antialias(sitk.Cast(vol.to_sitk(), sitk.sitkFloat32), spacing_mm)
    first = np.array(vol.origin_mm) - vol.direction @ (np.array(vol.spacing_mm) / 2)
    origin = first + vol.direction @ (spacing / 2)
    out = sitk.Resample(img, [int(s) for s in size], sitk.Transform(3, sitk.sitkIdentity),
                        sitk.sitkLinear, tuple(origin), tuple(float(s) for s in spacing),
                        tuple(vol.direction.ravel()), -1000.0, sitk.sitkFloat32)
    return Volume.from_sitk(out)


def register_pair(fixed: Volume, moving: Volume,
                  model: AiRegistration | str | Path | None) -> AiRegistrationResult:
    """``--registration ai``: register with a trained model (or the folder holding one).

    There is no silent fallback to the classical registration: without a model this raises
    :class:`ModelMissingError`.
    """
    if model is None:
        raise ModelMissingError("registration 'ai' needs a trained model: train one with "
                                "theralake.dosimetry.registration_ai.AiRegistration(...)"
                                ".fit(pairs).save(folder) and pass that folder, or choose "
                                "registration 'deformable' or 'rigid'")
    if isinstance(model, str | Path):
        model = AiRegistration.load(model)
    if not isinstance(model, AiRegistration):
        raise TypeError(f"model must be an AiRegistration or a folder, got "
                        f"{type(model).__name__}")
    return model.register(fixed, moving)


def lake_ct_pairs(lake: Lake, patient_ids: list[str] | None = None,
                  max_pairs: int | None = None) -> list[tuple[Volume, Volume]]:
    """Training pairs from the lake: per patient and cycle, (first CT, each later CT)."""
    where, params = "kind = 'ct'", []
    if patient_ids:
        where += " AND patient_id IN (" + ", ".join("?" * len(patient_ids)) + ")"
        params = list(patient_ids)
    rows = lake.read("images", where, params)
    pairs: list[tuple[Volume, Volume]] = []
    if rows.empty:
        return pairs
    rows = rows.sort_values(["patient_id", "cycle", "time_h", "id"])
    for _, group in rows.groupby(["patient_id", "cycle"], sort=True, dropna=False):
        if len(group) < 2:
            continue
        records = group.to_dict("records")
        ref = Volume.from_row(records[0])
        for rec in records[1:]:
            pairs.append((ref, Volume.from_row(rec)))
            if max_pairs is not None and len(pairs) >= max_pairs:
                return pairs
    return pairs
