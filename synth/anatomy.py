"""Parametric anatomy of a synthetic patient, rasterised on a CT grid.

Organs are ellipsoids (rotated, with a smooth analytic surface roughness) placed in a body
contour whose cross-section varies along z; a smooth random displacement field deforms the
whole patient. Lesions are rough ellipsoids with heterogeneous uptake and an optional
necrotic core. Everything is analytic in the parameters, so an anatomy can be re-rasterised
on any grid and a lesion can shrink without changing its shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from theralake.synth.grid import Grid
from theralake.synth.tissues import DENSITY_LUT, LESION_BASE, WEIGHT_LUT

SOFT_TISSUE, FAT = 1, 2  # tissue labels (synth.tissues.TISSUES)

N_WAVES = 6


@dataclass
class Blob:
    """A rough ellipsoid.

    Attributes:
        label: label code it paints (shell label when ``shell_mm`` > 0).
        center: (x, y, z) mm.
        semi: semi-axes (mm).
        rot: 3x3 rotation (columns are the blob axes in LPS).
        rough: surface roughness (fraction of the radius).
        waves: (N_WAVES, 3) wave vectors in normalised coordinates.
        phases: (N_WAVES,) phases.
        shell_mm: cortical shell thickness; the interior gets ``inner_label``.
        inner_label: label of the interior of a shell.
        capsule_fat_mm: thickness of a fat capsule around the blob (the perirenal fat of a
            kidney); it replaces only soft tissue, never another organ.
    """

    label: int
    center: np.ndarray
    semi: np.ndarray
    rot: np.ndarray
    rough: float = 0.0
    waves: np.ndarray = field(default_factory=lambda: np.zeros((N_WAVES, 3)))
    phases: np.ndarray = field(default_factory=lambda: np.zeros(N_WAVES))
    shell_mm: float = 0.0
    inner_label: int = 0
    capsule_fat_mm: float = 0.0

    @property
    def volume_ml(self) -> float:
        return 4.0 / 3.0 * math.pi * float(np.prod(self.semi)) / 1000.0


@dataclass
class Lesion:
    """A metastasis: its shape and its uptake pattern."""

    index: int  # 1-based
    kind: str  # "bone" or "lymph_node"
    site: str
    blob: Blob
    hetero: float  # amplitude of the uptake heterogeneity
    necrosis: float  # depth of the central uptake defect (0-0.8)
    hu: float
    density: float


@dataclass
class AnatomyParams:
    """Everything that defines a patient's anatomy (one therapy cycle)."""

    lat_scale: float
    ap_scale: float
    z_scale: float
    fat_mm: float
    organs: list[Blob]
    lesions: list[Lesion]
    deform_seed: int
    deform_mm: float

    def with_lesion_scales(self, volume_factors: dict[int, float]) -> AnatomyParams:
        """A copy whose lesions have their volumes multiplied by the given factors."""
        lesions = []
        for les in self.lesions:
            f = volume_factors.get(les.index, 1.0) ** (1.0 / 3.0)
            lesions.append(replace(les, blob=replace(les.blob, semi=les.blob.semi * f)))
        return replace(self, lesions=lesions)

    def with_organ_scales(self, factors: dict[int, float]) -> AnatomyParams:
        """A copy whose organs (by label) have their volumes multiplied by the factors."""
        organs = []
        for b in self.organs:
            f = factors.get(b.label, 1.0) ** (1.0 / 3.0)
            organs.append(replace(b, semi=b.semi * f))
        return replace(self, organs=organs)


@dataclass
class Anatomy:
    """A rasterised anatomy: labels and within-compartment uptake weights."""

    grid: Grid
    labels: np.ndarray  # int16 (z, y, x)
    weights: np.ndarray  # float32 (z, y, x)
    density: np.ndarray  # float32 (z, y, x), g/mL

    def mass_g(self, labels: tuple[int, ...]) -> float:
        mask = np.isin(self.labels, labels)
        return float(self.density[mask].sum() * self.grid.voxel_volume_ml)


# -- sampling ------------------------------------------------------------------------------


def _rot(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation with angles up to max_deg about each axis."""
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _waves(rng: np.random.Generator, freq: float) -> tuple[np.ndarray, np.ndarray]:
    d = rng.standard_normal((N_WAVES, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * freq * rng.uniform(0.7, 1.3, (N_WAVES, 1)), rng.uniform(0, 2 * math.pi, N_WAVES)


def _organ(
    rng: np.random.Generator, label: int, center: tuple[float, float, float],
    semi: tuple[float, float, float], s: np.ndarray, *, size_sd: float = 0.06,
    pos_sd: float = 8.0, rot_deg: float = 10.0, rough: float = 0.06,
    size_factor: float | None = None, **kw: float,
) -> Blob:
    c = np.array(center) * s + rng.normal(0.0, pos_sd, 3)
    f = math.exp(rng.normal(0.0, size_sd)) if size_factor is None else size_factor
    ax = np.array(semi) * f * rng.normal(1.0, 0.04, 3)
    w, p = _waves(rng, 2.5)
    return Blob(label, c, ax, _rot(rng, rot_deg), rough, w, p, **kw)


#: Lymph-node sites: (name, centre x, y, z in mm before scaling, jitter mm).
_NODE_SITES = (
    ("para_aortic", (0.0, -10.0, 300.0), (25.0, 10.0, 60.0)),
    ("pelvic", (55.0, 0.0, 140.0), (15.0, 15.0, 25.0)),
    ("mediastinal", (0.0, -20.0, 520.0), (20.0, 10.0, 40.0)),
    ("supraclavicular", (55.0, 0.0, 660.0), (10.0, 10.0, 10.0)),
)


def sample_anatomy(
    rng: np.random.Generator, weight_kg: float, height_cm: float, n_lesions: int,
    bone_fraction: float,
) -> AnatomyParams:
    """Draw a patient's anatomy.

    Args:
        rng: random generator.
        weight_kg: body weight, scales the body cross-section and organ sizes.
        height_cm: height, scales the z positions.
        n_lesions: number of lesions (0-15).
        bone_fraction: probability that a lesion is a bone metastasis.
    """
    bmi = weight_kg / (height_cm / 100.0) ** 2
    size = (weight_kg / 85.0) ** 0.5
    lat, ap = size * rng.normal(1.0, 0.03), size * rng.normal(1.0, 0.04)
    zs = float(np.clip(height_cm / 176.0, 0.92, 1.04))
    s = np.array([1.0, 1.0, zs])
    org = (weight_kg / 85.0) ** 0.25  # organ size scaling with body size
    fat_mm = float(np.clip(6.0 + 1.2 * (bmi - 22.0) + rng.normal(0, 3), 4.0, 40.0))
    # perirenal fat grows with body fat (about 5 mm lean, up to 15 mm in obesity)
    perirenal_mm = float(np.clip(3.0 + 0.4 * fat_mm, 4.0, 15.0))
    o = []
    # lungs (right lung larger, as in adults)
    o.append(_organ(rng, 3, (80, 15, 530), (58 * org, 75, 115), s, rough=0.03))
    o.append(_organ(rng, 4, (-82, 15, 520), (62 * org, 78, 120), s, rough=0.03))
    # skull with brain inside
    o.append(_organ(rng, 5, (0, 5, 850), (66, 84, 80), s, size_sd=0.04, pos_sd=3, rot_deg=3,
                    rough=0.0, shell_mm=6.0, inner_label=18))
    # pelvis: iliac wings
    for sign in (1, -1):
        b = _organ(rng, 5, (sign * 85, 25, 165), (24, 14, 55), s, size_sd=0.04, pos_sd=4,
                   rot_deg=6, rough=0.04)
        b.rot = b.rot @ _rot_z(sign * 25.0)
        o.append(b)
    # organs
    o.append(_organ(rng, 7, (-62, -5, 395), (88 * org, 66 * org, 70 * org), s, rough=0.05))
    o.append(_organ(rng, 8, (88, 35, 405), (26 * org, 42 * org, 45 * org), s, size_sd=0.09))
    pair = {k: math.exp(rng.normal(0.0, sd)) for k, sd in
            (("kidney", 0.06), ("parotid", 0.08), ("submandibular", 0.07))}
    for sign, lab in ((1, 9), (-1, 11)):  # kidney_left at +x (LPS), cortex shell + medulla
        o.append(_organ(rng, lab, (sign * 70, 50, 330 - (1 - sign) * 8),
                        (29 * org, 25 * org, 53 * org), s, rot_deg=12, rough=0.03,
                        size_factor=pair["kidney"] * math.exp(rng.normal(0, 0.03)),
                        shell_mm=7.0, inner_label=lab + 1, capsule_fat_mm=perirenal_mm))
    for sign, lab in ((1, 13), (-1, 14)):
        o.append(_organ(rng, lab, (sign * 50, 18, 765), (13, 18, 25), s, pos_sd=4, rough=0.08,
                        size_factor=pair["parotid"] * math.exp(rng.normal(0, 0.04))))
    for sign, lab in ((1, 15), (-1, 16)):
        o.append(_organ(rng, lab, (sign * 38, -28, 722), (12, 14, 12), s, pos_sd=3, rough=0.06,
                        size_factor=pair["submandibular"] * math.exp(rng.normal(0, 0.04))))
    o.append(_organ(rng, 17, (0, -35, 95), (40, 35, 35), s, size_sd=0.12, pos_sd=5, rough=0.02))
    lesions: list[Lesion] = []
    for i in range(n_lesions):
        for _ in range(50):  # reject lesions that would overlap an earlier one
            les = _sample_lesion(rng, i + 1, s, bone_fraction)
            if all(np.linalg.norm(les.blob.center - o_.blob.center)
                   > 1.3 * (np.max(les.blob.semi) + np.max(o_.blob.semi)) for o_ in lesions):
                break
        lesions.append(les)
    return AnatomyParams(
        lat_scale=lat, ap_scale=ap, z_scale=zs, fat_mm=fat_mm, organs=o, lesions=lesions,
        deform_seed=int(rng.integers(2**31)), deform_mm=float(rng.uniform(3.0, 7.0)),
    )


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def spine_center_y(z: np.ndarray) -> np.ndarray:
    """Antero-posterior position (mm) of the vertebral bodies' axis along z (curvature)."""
    return 62.0 + 14.0 * np.sin(2.0 * np.pi * (np.asarray(z) - 120.0) / 900.0)


SPINE_Z = (110.0, 720.0)
SPINE_R = 19.0


def _sample_lesion(rng: np.random.Generator, index: int, s: np.ndarray, p_bone: float) -> Lesion:
    vol = float(np.clip(math.exp(rng.normal(math.log(4.0), 1.1)), 0.5, 60.0))
    aspect = np.exp(rng.normal(0.0, 0.2, 3))
    aspect /= np.prod(aspect) ** (1 / 3)
    r = (3.0 * vol * 1000.0 / (4.0 * math.pi)) ** (1 / 3)
    if rng.random() < p_bone:
        kind = "bone"
        if rng.random() < 0.65:
            site = "spine"
            z = rng.uniform(SPINE_Z[0] + 20, SPINE_Z[1] - 40)
            c = np.array([rng.normal(0, 6), float(spine_center_y(z)) + rng.normal(0, 6), z])
        else:
            site = "pelvis"
            sign = rng.choice([-1.0, 1.0])
            c = np.array([sign * rng.normal(85, 8), rng.normal(25, 6), rng.normal(165, 25) * s[2]])
        hu, dens = float(rng.uniform(350, 900)), 1.35
    else:
        kind = "lymph_node"
        site, (cx, cy, cz), jit = _NODE_SITES[int(rng.integers(len(_NODE_SITES)))]
        side = rng.choice([-1.0, 1.0]) if cx else 1.0
        c = np.array([side * cx, cy, cz * s[2]]) + rng.normal(0, 1, 3) * np.array(jit)
        hu, dens = float(rng.normal(40, 8)), 1.04
    w, p = _waves(rng, 3.0)
    blob = Blob(LESION_BASE + index, c, r * aspect, _rot(rng, 90.0), float(rng.uniform(0.08, 0.2)),
                w, p)
    necro = float(rng.uniform(0.3, 0.8)) if vol > 15 and rng.random() < 0.6 else 0.0
    return Lesion(index, kind, site, blob, float(rng.uniform(0.1, 0.35)), necro, hu, dens)


# -- rasterisation ---------------------------------------------------------------------------


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation weights (n_out x n_in), cell-centred ("grid mode") alignment."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def _displacement(grid: Grid, seed: int, amp_mm: float) -> np.ndarray:
    """A smooth random displacement field (3, nz, ny, nx) in mm, about 8 cm correlation.

    Random values on a coarse (about 8 cm) lattice, interpolated separably (fast).
    """
    rng = np.random.default_rng(seed)
    coarse_shape = tuple(max(3, int(round(n * sp / 80.0)) + 2)
                         for n, sp in zip(grid.shape, grid.spacing[::-1], strict=True))
    mz, my, mx = (_interp_matrix(n, c) for n, c in zip(grid.shape, coarse_shape, strict=True))
    out = np.empty((3, *grid.shape), dtype=np.float32)
    for k in range(3):
        coarse = rng.standard_normal(coarse_shape).astype(np.float32)
        t = np.tensordot(coarse, mx, axes=([2], [1]))  # (cz, cy, nx)
        t = np.tensordot(t, my, axes=([1], [1]))  # (cz, nx, ny)
        t = np.tensordot(t, mz, axes=([0], [1]))  # (nx, ny, nz)
        out[k] = t.transpose(2, 1, 0)
    return out * np.float32(amp_mm)


def _profile(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body semi-axes (lateral, antero-posterior) in mm along z (before patient scaling)."""
    kz = np.array([-50, 40, 120, 250, 420, 600, 650, 690, 725, 780, 1000.0])
    ka = np.array([140, 150, 168, 158, 160, 172, 140, 58, 64, 74, 74.0])
    kb = np.array([100, 105, 112, 108, 112, 118, 100, 58, 80, 96, 96.0])
    return np.interp(z, kz, ka), np.interp(z, kz, kb)


def rasterize(params: AnatomyParams, grid: Grid) -> Anatomy:
    """Paint the anatomy on a grid (labels, uptake weights and density)."""
    x = grid.axis(0)[None, None, :]
    y = grid.axis(1)[None, :, None]
    z = grid.axis(2)[:, None, None]
    disp = _displacement(grid, params.deform_seed, params.deform_mm)
    xd = x + disp[0]
    yd = y + disp[1]
    zd = z + disp[2]
    labels = np.zeros(grid.shape, dtype=np.int16)
    # body contour and subcutaneous fat
    a, b = _profile(zd / params.z_scale)
    a = a * params.lat_scale
    b = b * params.ap_scale
    rho = np.sqrt((xd / a) ** 2 + (yd / b) ** 2)
    body = rho <= 1.0
    labels[body] = FAT
    inner = rho <= 1.0 - params.fat_mm / (0.5 * (a + b))
    labels[inner & body] = SOFT_TISSUE
    # spine: cortical shell and red marrow
    zlo, zhi = SPINE_Z[0] * params.z_scale, SPINE_Z[1] * params.z_scale
    r_sp = np.sqrt(xd**2 + (yd - spine_center_y(zd / params.z_scale)) ** 2)
    in_z = (zd >= zlo) & (zd <= zhi)
    labels[in_z & (r_sp <= SPINE_R)] = 5
    labels[in_z & (r_sp <= SPINE_R - 4.0)] = 6
    weights = WEIGHT_LUT[labels]
    coords = (xd, yd, zd)
    for blob in params.organs:
        _paint(labels, weights, grid, coords, blob, body)
    for les in params.lesions:
        _paint(labels, weights, grid, coords, les.blob, body, lesion=les)
    for les in params.lesions:  # a lesion painted over by another keeps its central voxel
        if not (labels == les.blob.label).any():
            idx = np.clip(np.round(grid.world_to_index(les.blob.center)).astype(int), 0,
                          np.array(grid.shape[::-1]) - 1)[::-1]
            labels[tuple(idx)] = les.blob.label
            weights[tuple(idx)] = 1.0
    density = DENSITY_LUT[labels]
    for les in params.lesions:
        sl = _blob_slices(grid, les.blob)
        if sl is not None:
            sub = labels[sl] == les.blob.label
            density[sl][sub] = les.density
    return Anatomy(grid, labels, weights.astype(np.float32), density.astype(np.float32))


def _blob_slices(grid: Grid, blob: Blob) -> tuple[slice, slice, slice] | None:
    reach = float(np.max(blob.semi)) * (1.0 + blob.rough) + 25.0
    return grid.bbox(blob.center - reach, blob.center + reach)


def _paint(
    labels: np.ndarray, weights: np.ndarray, grid: Grid, coords: tuple[np.ndarray, ...],
    blob: Blob, body: np.ndarray, lesion: Lesion | None = None,
) -> None:
    sl = _blob_slices(grid, blob)
    if sl is None:
        return
    shp = labels[sl].shape
    rel = [np.broadcast_to(c, labels.shape)[sl] - blob.center[i] for i, c in enumerate(coords)]
    # local (blob-frame) coordinates: u_j = sum_i R_ij rel_i
    loc = [sum(blob.rot[i, j] * rel[i] for i in range(3)) for j in range(3)]
    u = [loc[j] / blob.semi[j] for j in range(3)]
    r = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)
    noise = _wave_noise(u, blob)
    inside = (r <= 1.0 + blob.rough * noise) & body[sl]
    if lesion is not None and not inside.any():
        # tiny lesion on a coarse grid: keep at least its central voxel
        idx = np.round(grid.world_to_index(blob.center)).astype(int)[::-1]
        start = np.array([s.start for s in sl])
        local = np.clip(idx - start, 0, np.array(shp) - 1)
        inside = np.zeros(shp, dtype=bool)
        inside[tuple(local)] = True
    lab = labels[sl]
    wts = weights[sl]
    if blob.capsule_fat_mm > 0:
        uf = [loc[j] / (blob.semi[j] + blob.capsule_fat_mm) for j in range(3)]
        rf = np.sqrt(uf[0] ** 2 + uf[1] ** 2 + uf[2] ** 2)
        capsule = (rf <= 1.0 + blob.rough * noise) & body[sl] & (lab == SOFT_TISSUE)
        lab[capsule] = FAT
        wts[capsule] = WEIGHT_LUT[FAT]
    if blob.shell_mm > 0:
        ui = [loc[j] / np.maximum(blob.semi[j] - blob.shell_mm, 1.0) for j in range(3)]
        ri = np.sqrt(ui[0] ** 2 + ui[1] ** 2 + ui[2] ** 2)
        core = inside & (ri <= 1.0 + blob.rough * noise)
        lab[inside] = blob.label
        lab[core] = blob.inner_label
        wts[inside] = WEIGHT_LUT[blob.label]
        wts[core] = WEIGHT_LUT[blob.inner_label]
        return
    lab[inside] = blob.label
    if lesion is None:
        wts[inside] = WEIGHT_LUT[blob.label]
        return
    het = 1.0 + lesion.hetero * _wave_noise([2.0 * v for v in u], blob)
    necro = 1.0 - lesion.necrosis * np.exp(-((r / 0.5) ** 2))
    wts[inside] = np.clip(het * necro, 0.05, None)[inside]


def _wave_noise(u: list[np.ndarray], blob: Blob) -> np.ndarray:
    acc = np.zeros_like(u[0])
    for k in range(N_WAVES):
        w = blob.waves[k]
        acc += np.cos(w[0] * u[0] + w[1] * u[1] + w[2] * u[2] + blob.phases[k])
    return acc * np.float32(math.sqrt(2.0 / N_WAVES))
