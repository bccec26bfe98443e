"""Forward models: CT, Ga-68 PET and quantitative Lu-177 SPECT of a simulated patient.

``render_sessions`` turns a :class:`PatientTruth` into imaging sessions one at a time (to keep
memory bounded): the PET/CT, then one SPECT/CT per imaged time point of every cycle.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from theralake.ingest.spect_system import hu_to_mu
from theralake.synth.anatomy import Anatomy, _displacement
from theralake.synth.constants import LU177
from theralake.synth.dose import MBQH_TO_BQS
from theralake.synth.grid import Grid, spect_grid
from theralake.synth.patient import (
    N_PROJECTIONS,
    CycleTruth,
    PatientTruth,
    Pose,
    TimePoint,
    _comp_of_label,
    comp_energy_j,
    pet_concentration_scale,
    voi_labels,
)
from theralake.synth.projections import PHOTOPEAK_KEV, Acquisition, acquire
from theralake.synth.tissues import HU_LUT, HU_SD_LUT, LESION_BASE, ORGAN_VOIS

log = logging.getLogger(__name__)
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
PET_NOISE_COV_LIVER = 0.10


@dataclass
class Session:
    """One imaging session: a CT plus a PET or a SPECT, with its truth."""

    kind: str  # "PET" or "SPECT"
    patient_id: str
    cycle: int | None
    time_point: TimePoint | None
    acquisition: dt.datetime
    ct_grid: Grid
    ct_hu: np.ndarray  # int16 HU (z, y, x)
    labels: np.ndarray  # int16 true labels on the CT grid, in this session's pose
    image_grid: Grid
    image: np.ndarray  # PET Bq/mL (float32) or SPECT counts (uint16)
    duration_s: float = 0.0
    noise_free: np.ndarray | None = None  # SPECT expected counts
    pv: pd.DataFrame = field(default_factory=pd.DataFrame)
    projections: Acquisition | None = None  # the raw acquisition, when one is written

    @property
    def tag(self) -> str:
        if self.kind == "PET":
            return "PET0"
        tp = self.time_point
        assert tp is not None
        return f"C{self.cycle}TP{tp.index}"


def _rotation(deg: tuple[float, float, float]) -> np.ndarray:
    a, b, c = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def warp(anatomy: Anatomy, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Labels and weights of the anatomy seen in another pose (rigid motion + deformation).

    A voxel at x in the session shows the reference point R^T (x - c - t) + c + d(x), with c
    the grid centre, R the rotation, t the translation and d a smooth displacement field.
    """
    if pose.is_identity:
        return anatomy.labels, anatomy.weights
    g = anatomy.grid
    c = (np.asarray(g.origin) + g.extent_max) / 2.0
    r = _rotation(pose.rotation_deg)
    d = _displacement(g, pose.deform_seed, pose.deform_mm)
    x = g.axis(0)[None, None, :] - c[0] - pose.translation_mm[0]
    y = g.axis(1)[None, :, None] - c[1] - pose.translation_mm[1]
    z = g.axis(2)[:, None, None] - c[2] - pose.translation_mm[2]
    idx = []
    for k in (2, 1, 0):  # z, y, x index order
        src = r[0, k] * x + r[1, k] * y + r[2, k] * z + c[k] + d[k]
        idx.append((src - g.origin[k]) / g.spacing[k])
    coords = np.stack([np.broadcast_to(a, g.shape) for a in idx]).astype(np.float32)
    labels = ndimage.map_coordinates(anatomy.labels, coords, order=0, mode="constant", cval=0)
    weights = ndimage.map_coordinates(anatomy.weights, coords, order=1, mode="constant", cval=0)
    return labels.astype(np.int16), weights.astype(np.float32)


def ct_image(labels: np.ndarray, lesion_hu: dict[int, float], rng: np.random.Generator
             ) -> np.ndarray:
    """CT numbers (HU, int16) per tissue with Gaussian noise."""
    mean = HU_LUT[labels].copy()
    for lab, hu in lesion_hu.items():
        mean[labels == lab] = hu
    noise = rng.standard_normal(labels.shape, dtype=np.float32)
    hu = mean + HU_SD_LUT[labels] * noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _comp_index(cyc: CycleTruth) -> tuple[list[str], np.ndarray]:
    names = sorted(cyc.kinetics)
    pos = {n: i for i, n in enumerate(names)}
    table = np.full(LESION_BASE + 16, -1, dtype=np.int32)
    for lab, comp in _comp_of_label().items():
        if comp in pos:
            table[lab] = pos[comp]
    return names, table


def activity_map(cyc: CycleTruth, labels: np.ndarray, weights: np.ndarray, t_h: float,
                 grid: Grid) -> np.ndarray:
    """True activity concentration (Bq/mL) at t_h after administration, on a CT grid."""
    names, table = _comp_index(cyc)
    ci = table[labels]
    inside = ci >= 0
    wsum = np.bincount(ci[inside], weights=weights[inside], minlength=len(names))
    lam = LU177.decay_const_per_h
    act_bq = np.array([cyc.activity_mbq * 1e6 * float(cyc.kinetics[n].fraction(t_h, lam))
                       for n in names])
    per_w = np.divide(act_bq, wsum, out=np.zeros_like(act_bq), where=wsum > 0)
    out = np.zeros(labels.shape, dtype=np.float32)
    out[inside] = per_w[ci[inside]] * weights[inside] / grid.voxel_volume_ml
    return out


def tia_map(cyc: CycleTruth) -> np.ndarray:
    """True time-integrated activity (MBq h per voxel) in the cycle's reference frame."""
    assert cyc.anatomy is not None
    names, table = _comp_index(cyc)
    lab, w = cyc.anatomy.labels, cyc.anatomy.weights
    ci = table[lab]
    inside = ci >= 0
    wsum = np.bincount(ci[inside], weights=w[inside], minlength=len(names))
    lam = LU177.decay_const_per_h
    tia = np.array([cyc.activity_mbq * cyc.kinetics[n].integral_h(lam) for n in names])
    per_w = np.divide(tia, wsum, out=np.zeros_like(tia), where=wsum > 0)
    out = np.zeros(lab.shape, dtype=np.float32)
    out[inside] = per_w[ci[inside]] * w[inside]
    return out


def dose_map(cyc: CycleTruth, tia: np.ndarray) -> np.ndarray:
    """True absorbed dose (Gy) per voxel, same rule as the VOI doses (dose.py)."""
    assert cyc.anatomy is not None
    names, table = _comp_index(cyc)
    e = comp_energy_j(cyc)
    e_lut = np.array([e[n] for n in names])
    ci = table[cyc.anatomy.labels]
    inside = ci >= 0
    mass_kg = cyc.anatomy.density * cyc.anatomy.grid.voxel_volume_ml / 1000.0
    out = np.zeros(tia.shape, dtype=np.float32)
    out[inside] = tia[inside] * MBQH_TO_BQS * e_lut[ci[inside]] / mass_kg[inside]
    return out


def resample(src: np.ndarray, src_grid: Grid, dst_grid: Grid, order: int) -> np.ndarray:
    """Sample a volume at the voxel centres of another axis-aligned grid."""
    idx = []
    for k in (2, 1, 0):
        a = (dst_grid.axis(k) - src_grid.origin[k]) / src_grid.spacing[k]
        idx.append(a)
    zz, yy, xx = np.meshgrid(*idx, indexing="ij", sparse=False)
    coords = np.stack([zz, yy, xx]).astype(np.float32)
    return ndimage.map_coordinates(src, coords, order=order, mode="constant", cval=0)


def spect_expected_counts(conc: np.ndarray, ct: Grid, sp: Grid, fwhm_mm: float,
                          cps_per_mbq: float, duration_s: float) -> np.ndarray:
    """Noise-free reconstructed counts: resolution blur, resampling, calibration."""
    sigma = [fwhm_mm * FWHM_TO_SIGMA / s for s in ct.spacing[::-1]]
    blurred = ndimage.gaussian_filter(conc, sigma, mode="constant")
    on_sp = resample(blurred, ct, sp, order=1)
    return on_sp * np.float32(sp.voxel_volume_ml * cps_per_mbq * 1e-6 * duration_s)


def partial_volume_table(pt: PatientTruth, cyc: CycleTruth, tp: TimePoint,
                         labels_sp: np.ndarray, expected: np.ndarray, cal: float,
                         duration: float) -> pd.DataFrame:
    """Activity recovered by the noise-free SPECT in each true VOI vs the true activity."""
    counts_per_mbq = cal * duration
    rows = []
    vois = voi_labels(pt.lesion_names)
    names = list(ORGAN_VOIS) + pt.lesion_names + (["tumor_total"] if pt.lesion_names else [])
    for voi in names:
        mask = np.isin(labels_sp, vois[voi])
        true = float(cyc.activity_mbq_at(voi, tp.time_h))
        rec = float(expected[mask].sum()) / counts_per_mbq
        rows.append({"voi": voi, "true_activity_mbq": true, "spect_activity_mbq": rec,
                     "recovery": rec / true if true > 0 else np.nan})
    rows.append({"voi": "field_of_view", "true_activity_mbq":
                 float(cyc.activity_mbq_at("body", tp.time_h)),
                 "spect_activity_mbq": float(expected.sum()) / counts_per_mbq})
    rows[-1]["recovery"] = rows[-1]["spect_activity_mbq"] / rows[-1]["true_activity_mbq"]
    df = pd.DataFrame(rows)
    df.insert(0, "PatientID", pt.patient_id)
    df.insert(1, "cycle", cyc.cycle)
    df.insert(2, "time_point", tp.index)
    df.insert(3, "time_h", tp.time_h)
    return df


def _lesion_hu(pt: PatientTruth, cyc: CycleTruth) -> dict[int, float]:
    return {LESION_BASE + les.index: les.hu for les in cyc.params.lesions}


def spect_variant(spect_grids: str, index: int, n_time_points: int) -> str:
    """The SPECT grid of a time point (1-based ``index``): with ``varied`` the second time
    point has finer voxels and the last a limited axial field of view."""
    if spect_grids == "same":
        return "standard"
    if index == n_time_points and n_time_points >= 2:
        return "limited"
    return "fine" if index == 2 else "standard"


def render_sessions(pt: PatientTruth, seed: int, small: bool, spect_grids: str = "same",
                    views: int = 0) -> Iterator[Session]:
    """Yield the PET/CT and every imaged SPECT/CT of a patient; with ``views`` each SPECT
    also carries its acquisition (that many projections)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, pt.index, 7]))
    c1 = pt.cycles[0]
    assert c1.anatomy is not None, "render needs a rasterised anatomy"
    grid = c1.anatomy.grid
    # PET/CT before therapy
    labels, weights = warp(c1.anatomy, pt.pet.pose)
    yield Session("PET", pt.patient_id, None, None, pt.pet.acquisition, grid,
                  ct_image(labels, _lesion_hu(pt, c1), rng), labels, grid,
                  pet_image(pt, c1, labels, weights, rng))
    for cyc in pt.cycles:
        assert cyc.anatomy is not None
        for tp in cyc.time_points:
            if not tp.imaged:
                continue
            labels, weights = warp(cyc.anatomy, tp.pose)
            conc = activity_map(cyc, labels, weights, tp.time_h, grid)
            sp_grid = spect_grid(small, spect_variant(spect_grids, tp.index,
                                                      len(cyc.time_points)))
            duration = tp.frame_duration_ms / 1000.0 * N_PROJECTIONS
            expected = spect_expected_counts(conc, grid, sp_grid, pt.spect_fwhm_mm,
                                             pt.cps_per_mbq, duration)
            counts = rng.poisson(expected)
            if counts.max() > 65535:
                log.warning("%s: SPECT counts clipped at 65535", pt.patient_id)
            labels_sp = resample(labels, grid, sp_grid, order=0)
            pv = partial_volume_table(pt, cyc, tp, labels_sp, expected, pt.cps_per_mbq,
                                      duration)
            acquisition = None
            if views:
                mbq = resample(conc, grid, sp_grid, order=1) * (sp_grid.voxel_volume_ml * 1e-6)
                mu = resample(hu_to_mu(HU_LUT[labels], PHOTOPEAK_KEV), grid, sp_grid, order=1)
                acquisition = acquire(mbq, mu, sp_grid, views=views,
                                      frame_duration_s=tp.frame_duration_ms / 1000.0,
                                      cps_per_mbq=pt.cps_per_mbq, rng=rng)
            yield Session("SPECT", pt.patient_id, cyc.cycle, tp, tp.acquisition, grid,
                          ct_image(labels, _lesion_hu(pt, cyc), rng), labels, sp_grid,
                          np.clip(counts, 0, 65535).astype(np.uint16), duration, expected, pv,
                          acquisition)


def pet_image(pt: PatientTruth, cyc: CycleTruth, labels: np.ndarray, weights: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Ga-68 PET activity concentration (Bq/mL at acquisition start), blurred and noisy."""
    grid = cyc.anatomy.grid  # type: ignore[union-attr]
    names, table = _comp_index(cyc)
    ci = table[labels]
    inside = ci >= 0
    n = len(names)
    wsum = np.bincount(ci[inside], weights=weights[inside], minlength=n)
    cnt = np.bincount(ci[inside], minlength=n)
    mean_w = np.divide(wsum, cnt, out=np.ones(n), where=cnt > 0)
    k = pet_concentration_scale(pt.pet, pt.clinical.weight_kg)
    suv = np.array([pt.pet.suv[nm] for nm in names])
    conc = np.zeros(labels.shape, dtype=np.float32)
    conc[inside] = (suv[ci[inside]] * k / mean_w[ci[inside]]) * weights[inside]
    sigma = [pt.pet.fwhm_mm * FWHM_TO_SIGMA / s for s in grid.spacing[::-1]]
    blurred = ndimage.gaussian_filter(conc, sigma, mode="constant")
    ref = 5.0 * k
    noise = ndimage.gaussian_filter(rng.standard_normal(conc.shape, dtype=np.float32), 0.7)
    noise /= max(float(noise.std()), 1e-6)
    img = blurred + PET_NOISE_COV_LIVER * np.sqrt(np.maximum(blurred, 0) * ref) * noise
    img[labels == 0] *= 0.2
    return np.clip(img, 0, None).astype(np.float32)
