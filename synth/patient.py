"""Simulate one patient's truth (anatomy, kinetics, doses), without writing any image.

``simulate_patient`` draws everything that defines a synthetic patient and computes the true
activities, TIAs and absorbed doses per VOI; ``render`` (imaging.py) turns it into images.
Keeping the two apart lets cohort statistics run fast on truth alone.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np

from theralake.synth import physiology as phys
from theralake.synth.anatomy import (
    SPINE_R,
    SPINE_Z,
    Anatomy,
    AnatomyParams,
    rasterize,
    sample_anatomy,
)
from theralake.synth.clinical import Clinical, sample_body, sample_clinical
from theralake.synth.config import SynthConfig
from theralake.synth.constants import GA68, LU177
from theralake.synth.dose import (
    MBQH_TO_BQS,
    absorbed_dose_gy,
    bed_gy,
    energy_per_decay_j,
    eqd2_gy,
    photon_absorbed_fraction,
    radiobiology_for,
)
from theralake.synth.grid import ct_grid
from theralake.synth.kinetics import ExpSum, fit_effective_half_life
from theralake.synth.outcomes import draw_outcomes
from theralake.synth.tissues import (
    LESION_BASE,
    ORGAN_COMPARTMENTS,
    ORGAN_VOIS,
    SUB_VOIS,
    TISSUES,
    lesion_name,
)

CAMERAS = {"SYNCAM01": 9.6, "SYNCAM02": 11.3}  # DeviceSerialNumber -> cps/MBq (Lu-177 208 keV)
#: the cameras' nominal reconstructed SPECT resolution (FWHM, mm) given in calibration.csv;
#: each patient's actual resolution scatters around it (sd 0.4 mm)
SPECT_FWHM_NOMINAL_MM = 11.0
N_PROJECTIONS = 120
FIRST_DAY = dt.datetime(2024, 1, 8, 8, 30)


@dataclass(frozen=True)
class Pose:
    """Patient position at an imaging session relative to the cycle's reference frame."""

    translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    deform_seed: int = 0
    deform_mm: float = 0.0

    @property
    def is_identity(self) -> bool:
        return not any(self.translation_mm) and not any(self.rotation_deg) and not self.deform_mm


@dataclass
class TimePoint:
    """One SPECT/CT session of a cycle."""

    index: int
    nominal_h: float
    time_h: float
    imaged: bool
    pose: Pose
    frame_duration_ms: float
    acquisition: dt.datetime


@dataclass
class PetSession:
    """The pre-therapy Ga-68 PSMA-11 PET/CT."""

    activity_mbq: float
    injection: dt.datetime
    acquisition: dt.datetime
    suv: dict[str, float]
    fwhm_mm: float
    pose: Pose

    @property
    def delay_h(self) -> float:
        return (self.acquisition - self.injection).total_seconds() / 3600.0


@dataclass
class CycleTruth:
    """Truth of one therapy cycle."""

    cycle: int
    activity_mbq: float
    administration: dt.datetime
    params: AnatomyParams
    anatomy: Anatomy | None
    kinetics: dict[str, ExpSum]
    time_points: list[TimePoint]
    voi_fractions: dict[str, dict[str, float]]  # voi -> compartment -> share of its activity
    voi_mass_g: dict[str, float]
    voi_volume_ml: dict[str, float]
    comp_mass_g: dict[str, float]
    tia_mbq_h: dict[str, float] = field(default_factory=dict)
    dose_gy: dict[str, float] = field(default_factory=dict)
    bed_gy: dict[str, float] = field(default_factory=dict)
    lambda_eff_per_h: dict[str, float] = field(default_factory=dict)

    def activity_mbq_at(self, voi: str, t_h: np.ndarray | float) -> np.ndarray:
        """True activity of a VOI at times after administration (decayed)."""
        lam = LU177.decay_const_per_h
        out = np.zeros_like(np.asarray(t_h, dtype=float))
        for comp, f in self.voi_fractions[voi].items():
            out = out + f * self.kinetics[comp].fraction(t_h, lam)
        return self.activity_mbq * out


@dataclass
class PatientTruth:
    """Everything known about a synthetic patient."""

    index: int
    patient_id: str
    patient_name: str
    clinical: Clinical
    lesion_info: list[dict]
    pet: PetSession
    cycles: list[CycleTruth]
    camera: str
    cps_per_mbq: float
    spect_fwhm_mm: float
    outcome: dict = field(default_factory=dict)
    outcome_truth: dict = field(default_factory=dict)

    @property
    def lesion_names(self) -> list[str]:
        return [d["voi"] for d in self.lesion_info]


def patient_id(index: int) -> str:
    return f"SYN{index + 1:04d}"


def _streams(seed: int, index: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([seed, index])
    return [np.random.default_rng(s) for s in ss.spawn(6)]


def _random_pose(rng: np.random.Generator, shift_sd: float, rot_sd: float) -> Pose:
    return Pose(
        tuple(float(v) for v in rng.normal(0, shift_sd, 3)),
        tuple(float(v) for v in rng.normal(0, rot_sd, 3)),
        int(rng.integers(2**31)), float(rng.uniform(1.0, 3.0)),
    )


def simulate_patient(cfg: SynthConfig, index: int, *, raster: bool = True) -> PatientTruth:
    """Draw a patient and compute its truth.

    Args:
        cfg: generator options.
        index: 0-based patient index (the seed stream is (cfg.seed, index)).
        raster: rasterise the anatomy (needed for images; masses then come from the voxels).
            Without it masses are the analytic volumes, much faster, for cohort statistics.
    """
    r_anat, r_kin, r_clin, r_img, r_out, r_date = _streams(cfg.seed, index)
    age, height, weight = sample_body(r_clin)
    n_les = int(np.clip(r_anat.negative_binomial(2, 2 / (2 + 6.0)), 0, 15))
    params = sample_anatomy(r_anat, weight, height, n_les, bone_fraction=0.65)
    tumour_ml = sum(les.blob.volume_ml for les in params.lesions)
    bone_ml = sum(les.blob.volume_ml for les in params.lesions if les.kind == "bone")
    clin = sample_clinical(r_clin, age, height, weight, tumour_ml, bone_ml)
    lesion_info = [
        {"voi": lesion_name(les.index), "kind": les.kind, "site": les.site,
         "baseline_volume_ml": les.blob.volume_ml} for les in params.lesions
    ]
    comps = list(ORGAN_COMPARTMENTS) + [lesion_name(les.index) for les in params.lesions]
    suv = phys.sample_suvs(r_kin, [*comps, "remainder"])
    # dates
    first = FIRST_DAY + dt.timedelta(days=int(r_date.integers(0, 540)),
                                     minutes=int(r_date.integers(0, 150)))
    pet_inj = first - dt.timedelta(days=int(r_date.integers(8, 22)),
                                   minutes=int(r_date.integers(-60, 120)))
    pet = PetSession(
        activity_mbq=float(np.clip(2.0 * weight * r_date.normal(1, 0.08), 90, 250)),
        injection=pet_inj,
        acquisition=pet_inj + dt.timedelta(minutes=float(r_date.normal(60, 6))),
        suv=suv, fwhm_mm=float(r_img.normal(5.0, 0.3)),
        pose=_random_pose(r_img, 8.0, 2.0),
    )
    camera = str(r_img.choice(sorted(CAMERAS)))
    pt = PatientTruth(
        index, patient_id(index), f"Synthetic^P{index + 1:04d}", clin, lesion_info, pet, [],
        camera, CAMERAS[camera], float(r_img.normal(SPECT_FWHM_NOMINAL_MM, 0.4)),
    )
    grid = ct_grid(cfg.small)
    reduced = r_kin.random() < (0.5 if (clin.egfr_ml_min < 50 or clin.hb_g_dl < 10) else 0.05)
    radiosens = 0.03 * math.exp(r_out.normal(0, 0.4))  # lesion shrinkage per Gy
    uptake = {c: 1.0 for c in comps}
    admin = first
    for c in range(1, cfg.cycles + 1):
        if c > 1:
            admin = admin + dt.timedelta(days=round(cfg.cycle_interval_d + r_date.normal(0, 2)),
                                         minutes=int(r_date.integers(-60, 60)))
        activity = cfg.activity_gbq * 1000.0 * (0.8 if reduced else 1.0) * r_kin.normal(1, 0.02)
        anatomy = rasterize(params, grid) if raster else None
        kin = {"remainder": phys.lu_kinetics(r_kin, "remainder", suv["remainder"])}
        vols = _analytic_volumes(params)
        shared: dict[str, tuple[float, float]] = {}
        for comp in comps:
            partner = phys.pair_of(comp)
            if partner in shared:  # paired organs: nearly the same noise
                n, w = shared[partner]
                sh = (n * math.exp(r_kin.normal(0, phys.PAIRED_SD)),
                      w * math.exp(r_kin.normal(0, phys.PAIRED_SD)))
            else:
                sh = phys.draw_shared(r_kin)
            shared[comp] = sh
            kin[comp] = phys.lu_kinetics(r_kin, comp, suv[comp], vols.get(comp, 1.0),
                                         uptake[comp], sh)
        _limit_whole_body(kin)
        tps = _time_points(cfg, r_img, admin)
        if anatomy is not None:
            fr, mass, vol, cmass = _voxel_tables(anatomy, comps)
        else:
            fr, mass, vol, cmass = _analytic_tables(params, comps, weight)
        cyc = CycleTruth(c, activity, admin, params, anatomy, kin, tps, fr, mass, vol, cmass)
        _doses(cyc)
        pt.cycles.append(cyc)
        # response and organ changes before the next cycle
        if c < cfg.cycles:
            factors = {}
            for les in params.lesions:
                name = lesion_name(les.index)
                d = cyc.dose_gy[name]
                f = math.exp(-radiosens * d + 0.004 * cfg.cycle_interval_d)
                f = max(f, 0.3 / max(les.blob.volume_ml, 1e-6))
                factors[les.index] = f
                uptake[name] *= math.exp(r_kin.normal(-0.05, 0.1))
            params = params.with_lesion_scales(factors)
            organ_f = {}
            for lab in (13, 14, 15, 16):
                name = TISSUES[lab].compartment
                organ_f[lab] = max(1.0 - 0.004 * cyc.dose_gy[name], 0.7)
                uptake[name] *= max(1.0 - 0.01 * cyc.dose_gy[name], 0.5)
            for name in ("kidney_left", "kidney_right"):
                uptake[name] *= max(1.0 - 0.004 * cyc.dose_gy[name], 0.7)
            params = params.with_organ_scales(organ_f)
    pt.outcome, pt.outcome_truth = draw_outcomes(pt, r_out)
    return pt


def _analytic_volumes(params: AnatomyParams) -> dict[str, float]:
    """Volumes (mL) of organs and lesions from their parameters (grid independent)."""
    vols = {TISSUES[b.label].compartment: b.volume_ml for b in params.organs
            if TISSUES[b.label].compartment in ORGAN_COMPARTMENTS}
    vols.update({lesion_name(les.index): les.blob.volume_ml for les in params.lesions})
    return vols


def _limit_whole_body(kin: dict[str, ExpSum]) -> None:
    """Scale organ uptake down if the body would hold more than the administered activity."""
    t = np.linspace(0.0, 400.0, 801)
    total = sum(k.fraction(t) for k in kin.values())
    peak = float(np.max(total))
    if peak > 1.0:
        rem = kin["remainder"].fraction(t)
        over = total > 1.0
        scale = 0.999 * float(np.min((1.0 - rem[over]) / (total - rem)[over]))
        for name in list(kin):
            if name != "remainder":
                kin[name] = kin[name].scaled(scale)


def _time_points(cfg: SynthConfig, rng: np.random.Generator, admin: dt.datetime
                 ) -> list[TimePoint]:
    out = []
    prev = 0.0
    for i, nominal in enumerate(cfg.time_points_h, start=1):
        t = nominal * math.exp(rng.normal(0, 0.03)) + rng.normal(0, 0.2)
        t = max(t, prev + 0.5, 0.5)
        prev = t
        imaged = i == 1 or rng.random() >= cfg.missing_prob
        pose = Pose() if i == 1 else _random_pose(rng, 6.0, 2.0)
        frame_ms = 10000.0 if nominal < 100 else 20000.0
        out.append(TimePoint(i, nominal, float(t), imaged, pose, frame_ms,
                             admin + dt.timedelta(hours=float(t))))
    return out


def _comp_of_label() -> dict[int, str]:
    m = {k: t.compartment for k, t in TISSUES.items()}
    for i in range(1, 16):
        m[LESION_BASE + i] = lesion_name(i)
    return m


def voi_labels(lesion_vois: list[str]) -> dict[str, tuple[int, ...]]:
    """Label sets of all VOIs (SEG VOIs, truth sub-VOIs, lesions, tumor_total)."""
    v = dict(ORGAN_VOIS)
    v.update(SUB_VOIS)
    les = [LESION_BASE + int(n.split("_")[1]) for n in lesion_vois]
    for n, lab in zip(lesion_vois, les, strict=True):
        v[n] = (lab,)
    if les:
        v["tumor_total"] = tuple(les)
        v["body"] = v["body"] + tuple(les)
    return v


def _voxel_tables(anatomy: Anatomy, comps: list[str]):  # noqa: ANN202
    n = LESION_BASE + 16
    lab = anatomy.labels.ravel()
    wsum = np.bincount(lab, weights=anatomy.weights.ravel(), minlength=n)
    vox = anatomy.grid.voxel_volume_ml
    msum = np.bincount(lab, weights=anatomy.density.ravel(), minlength=n) * vox
    cnt = np.bincount(lab, minlength=n) * anatomy.grid.voxel_volume_ml
    col = _comp_of_label()
    comp_w: dict[str, float] = {}
    comp_m: dict[str, float] = {}
    for label, comp in col.items():
        comp_w[comp] = comp_w.get(comp, 0.0) + wsum[label]
        comp_m[comp] = comp_m.get(comp, 0.0) + msum[label]
    lesions = [c for c in comps if c.startswith("lesion")]
    fractions, mass, vol = {}, {}, {}
    for voi, labels in voi_labels(lesions).items():
        share: dict[str, float] = {}
        for label in labels:
            comp = col[label]
            if comp_w.get(comp, 0.0) > 0 and wsum[label] > 0:
                share[comp] = share.get(comp, 0.0) + wsum[label] / comp_w[comp]
        fractions[voi] = share
        mass[voi] = float(sum(msum[label] for label in labels))
        vol[voi] = float(sum(cnt[label] for label in labels))
    return fractions, mass, vol, comp_m


def _analytic_tables(params: AnatomyParams, comps: list[str], weight_kg: float):  # noqa: ANN202
    mass, vol = {}, {}
    for b in params.organs:
        name = TISSUES[b.label].compartment
        if name in ORGAN_COMPARTMENTS:
            vol[name] = b.volume_ml
            mass[name] = b.volume_ml * TISSUES[b.label].density
    for les in params.lesions:
        name = lesion_name(les.index)
        vol[name] = les.blob.volume_ml
        mass[name] = les.blob.volume_ml * les.density
    marrow = math.pi * (SPINE_R - 4.0) ** 2 * (SPINE_Z[1] - SPINE_Z[0]) * params.z_scale / 1000
    vol["red_marrow"], mass["red_marrow"] = marrow, marrow * TISSUES[6].density
    mass["remainder"] = vol["remainder"] = 500.0 * weight_kg
    fractions = {c: {c: 1.0} for c in comps}
    fractions["remainder"] = {"remainder": 1.0}
    lesions = [c for c in comps if c.startswith("lesion")]
    if lesions:
        fractions["tumor_total"] = {c: 1.0 for c in lesions}
        mass["tumor_total"] = sum(mass[c] for c in lesions)
        vol["tumor_total"] = sum(vol[c] for c in lesions)
    fractions["body"] = {c: 1.0 for c in [*comps, "remainder"]}
    mass["body"] = sum(mass[c] for c in [*comps, "remainder"])
    vol["body"] = mass["body"]
    comp_m = {c: mass[c] for c in [*comps, "remainder"]}
    return fractions, mass, vol, comp_m


def comp_energy_j(cyc: CycleTruth) -> dict[str, float]:
    """Locally absorbed energy per decay (J) of each compartment (photon AF by its mass)."""
    return {c: energy_per_decay_j(LU177, photon_absorbed_fraction(cyc.comp_mass_g.get(c, 0.0)))
            for c in cyc.kinetics}


def _doses(cyc: CycleTruth) -> None:
    lam_p = LU177.decay_const_per_h
    comp_tia = {c: cyc.activity_mbq * k.integral_h(lam_p) for c, k in cyc.kinetics.items()}
    e = comp_energy_j(cyc)
    for voi, share in cyc.voi_fractions.items():
        tia = sum(f * comp_tia[c] for c, f in share.items())
        energy = sum(f * comp_tia[c] * MBQH_TO_BQS * e[c] for c, f in share.items())
        m = cyc.voi_mass_g.get(voi, 0.0)
        cyc.tia_mbq_h[voi] = tia
        d = energy / (m / 1000.0) if m > 0 else 0.0
        cyc.dose_gy[voi] = d
        # effective clearance: energy-weighted over the contributing compartments
        wts = {c: f * comp_tia[c] for c, f in share.items()}
        tot = sum(wts.values())
        lam = (sum(w * cyc.kinetics[c].effective_washout_per_h(lam_p) for c, w in wts.items())
               / tot) if tot > 0 else lam_p
        cyc.lambda_eff_per_h[voi] = lam
        cyc.bed_gy[voi] = bed_gy(d, lam, radiobiology_for(voi))


def whole_body_teff_h(cyc: CycleTruth) -> float:
    """Apparent whole-body effective half-life from a log-linear fit at the imaging times."""
    t = np.array([tp.time_h for tp in cyc.time_points])
    if len(t) < 2:
        t = np.array([4.0, 24.0, 48.0, 168.0])
    return fit_effective_half_life(t, cyc.activity_mbq_at("body", t))


def pet_concentration_scale(pet: PetSession, weight_kg: float) -> float:
    """Bq/mL per unit SUV at the PET acquisition start (decay-corrected to it)."""
    decayed = pet.activity_mbq * 1e6 * math.exp(-GA68.decay_const_per_h * pet.delay_h)
    return decayed / (weight_kg * 1000.0)


__all__ = [
    "CycleTruth", "PatientTruth", "PetSession", "Pose", "TimePoint", "absorbed_dose_gy",
    "eqd2_gy", "simulate_patient", "voi_labels", "whole_body_teff_h",
]
