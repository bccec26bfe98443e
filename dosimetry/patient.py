"""Dosimetry of one patient-cycle: serial SPECT/CT in the lake -> aligned activity maps, VOIs,
time-activity curves, TIA, dose maps, organ and lesion doses, BED -> the lake."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from theralake import __version__
from theralake.dosimetry import kinetics, radiobiology, registration
from theralake.dosimetry.auto_vois import BACKENDS as SEGMENTATION_BACKENDS
from theralake.dosimetry.auto_vois import SegmentationUnavailable, segment_missing_organs
from theralake.dosimetry.dose import hu_to_density, local_deposition_dose, vsv_dose
from theralake.dosimetry.kernels import voxel_s_kernel
from theralake.dosimetry.lesions import match_lesions, segment_lesions
from theralake.dosimetry.nuclides import get_nuclide
from theralake.dosimetry.sphere import sphere_self_s
from theralake.dosimetry.voi_activity import mask_on, to_grid, voi_activities_mbq
from theralake.dosimetry.voi_transfer import (
    carry_vois,
    missing_organs,
    organ_dice,
    organ_masks,
    registration_row,
)
from theralake.dosimetry.voxel_kinetics import fit_voxel_tacs
from theralake.lake import Lake, Volume, stable_hash
from theralake.settings import deep_merge, load_settings

log = logging.getLogger(__name__)

METHODS = ("ldm", "vsv", "vsv-density", "organ-s")
REGISTRATIONS = ("deformable", "rigid", "none", "ai")
S_PER_H = 3600.0


class DosimetryError(ValueError):
    """A patient-cycle that cannot be computed; the message says why."""


def load_config(path: str | Path | None = None, **overrides: object) -> dict:
    """The packaged default configuration, updated by a user YAML file and overrides."""
    try:
        config = load_settings("theralake.dosimetry", "data/dosimetry_default.yaml", path)
    except ValueError as exc:
        raise DosimetryError(str(exc)) from exc
    deep_merge(config, {k: v for k, v in overrides.items() if v is not None})
    _check_config(config)
    return config


def _check_config(config: dict) -> None:
    choices = {"method": METHODS, "registration": REGISTRATIONS, "tac_vois": ("own", "reference")}
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise DosimetryError(f"unknown {key} {config[key]!r}; one of {', '.join(allowed)}")
    backend = (config.get("segmentation") or {}).get("backend", "auto")
    if backend not in SEGMENTATION_BACKENDS:
        raise DosimetryError(f"unknown segmentation backend {backend!r}; one of "
                             f"{', '.join(SEGMENTATION_BACKENDS)}")
    pv = config.get("partial_volume") or {}
    if pv.get("method", "none") not in ("none", "gtm"):
        raise DosimetryError(f"unknown partial_volume method {pv['method']!r}; none or gtm")
    if pv.get("method") == "gtm" and not (pv.get("fwhm_mm") or 0) > 0:
        raise DosimetryError("partial_volume gtm needs the SPECT resolution fwhm_mm (> 0)")


def resolve_config(lake: Lake, config: dict) -> dict:
    """The settings with what they depend on pinned: for ``registration: ai``, the model folder
    (default: the lake's, from ``theralake train-reg``) and its weights' SHA-256.

    Raises:
        DosimetryError: ``ai`` registration without a trained model.
    """
    if config["registration"] != "ai" or config.get("registration_model_sha256"):
        return config
    from theralake.modeling.registration_training import default_model_dir, weights_sha256

    folder = Path(config.get("registration_model") or default_model_dir(lake)).resolve()
    try:
        sha = weights_sha256(folder)
    except OSError as exc:
        raise DosimetryError(f"registration 'ai' needs a trained model in {folder}: run "
                             "theralake train-reg, or set registration_model") from exc
    return {**config, "registration_model": str(folder), "registration_model_sha256": sha}


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def record_config(lake: Lake, config: dict) -> str:
    """Store the run's settings in the lake's ``configs`` table; returns their hash."""
    digest = config_hash(config)
    lake.append("configs", [{"id": digest, "kind": "dosimetry",
                             "yaml": yaml.safe_dump(config, sort_keys=True)}])
    return digest


@dataclass
class TimePoint:
    time_h: float
    spect_row: dict
    ct_row: dict
    spect: Volume
    ct: Volume


@dataclass
class CycleResult:
    """What one patient-cycle run produced (rows also written to the lake)."""

    patient_id: str
    cycle: int
    organ_rows: list[dict] = field(default_factory=list)
    tac_rows: list[dict] = field(default_factory=list)
    registration_rows: list[dict] = field(default_factory=list)
    voi_rows: list[dict] = field(default_factory=list)
    dose: Volume | None = None
    tia: Volume | None = None
    fits: dict[str, kinetics.TacFit] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went

    def lap(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - since
        return now


def _time_points(lake: Lake, patient_id: str, cycle: int) -> list[TimePoint]:
    images = lake.read("images", "patient_id = ? AND cycle = ? AND kind IN ('spect', 'ct')",
                       [patient_id, cycle])
    spects = images[(images.kind == "spect") & (images.units == "BQML")].sort_values("time_h")
    cts = images[images.kind == "ct"]
    if spects.empty:
        raise DosimetryError(f"patient {patient_id} cycle {cycle}: no quantitative SPECT")
    points = []
    for _, s in spects.iterrows():
        same = cts[cts.frame_of_reference_key == s.frame_of_reference_key]
        if same.empty:  # fall back to the CT acquired closest in time
            same = cts.iloc[(cts.time_h - s.time_h).abs().argsort()[:1]]
        if same.empty or abs(float(same.iloc[0].time_h) - float(s.time_h)) > 2.0:
            raise DosimetryError(f"patient {patient_id} cycle {cycle}: SPECT at "
                                 f"{s.time_h:.1f} h has no CT")
        c = same.iloc[0]
        points.append(TimePoint(float(s.time_h), s.to_dict(), c.to_dict(),
                                Volume.from_row(s.to_dict()), Volume.from_row(c.to_dict())))
    return points


def _check_overlap(tp: TimePoint, label: str) -> None:
    lo_s, hi_s = _extent(tp.spect)
    lo_c, hi_c = _extent(tp.ct)
    if np.any(np.minimum(hi_s, hi_c) - np.maximum(lo_s, lo_c) <= 0):
        raise DosimetryError(f"{label}: SPECT and CT at {tp.time_h:.1f} h do not overlap")


def _extent(vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k] for i in (0, vol.shape_xyz[0] - 1)
                        for j in (0, vol.shape_xyz[1] - 1) for k in (0, vol.shape_xyz[2] - 1)])
    world = vol.index_to_world(corners)
    return world.min(axis=0), world.max(axis=0)


def _exponential_terms(fit: kinetics.TacFit) -> tuple[list[float], list[float]]:
    """The fitted TAC as Σ c_i exp(-a_i t) (for the Lea-Catcheside factor)."""
    p = fit.params
    if fit.model == "mono":
        return [p[0]], [p[1]]
    if fit.model == "bi":
        return [p[0], -p[0]], [p[1], p[2]]
    if fit.model == "tri":
        return [p[0], p[2], -(p[0] + p[2])], [p[1], p[3], p[4]]
    lam = np.log(2) / fit.effective_half_life_h  # trapezoid: its tail's effective decay
    return [1.0], [lam]


def _bed(voi: str, dose_gy: float, fit: kinetics.TacFit) -> tuple[float, float]:
    tissue = radiobiology.get_tissue(voi) if _has_tissue(voi) else None
    if tissue is None or dose_gy <= 0:
        return (dose_gy, dose_gy) if tissue is None else (0.0, 0.0)
    c, a = _exponential_terms(fit)
    res = radiobiology.bed_exponential(dose_gy, c, a, tissue.alpha_beta_gy, tissue.t_rep_h)
    return res.bed_gy, res.eqd2_gy


def _has_tissue(voi: str) -> bool:
    try:
        radiobiology.get_tissue(voi)
        return True
    except ValueError:
        return False


def run_cycle(lake: Lake, patient_id: str, cycle: int, config: dict | None = None
              ) -> CycleResult:
    """Compute one patient-cycle and append its rows to the lake (idempotent).

    Raises:
        DosimetryError: too few time points, no CT, SPECT and CT not overlapping, VOIs
            outside the SPECT field of view, empty masks.
    """
    config = resolve_config(lake, config or load_config())
    label = f"patient {patient_id} cycle {cycle}"
    chash = config_hash(config)
    points = _time_points(lake, patient_id, cycle)
    if len(points) < 2:
        raise DosimetryError(f"{label}: {len(points)} SPECT time point(s); at least 2 are "
                             "needed for a fit (single-time-point methods: see "
                             "dosimetry.kinetics.tia_hanscheid)")
    for tp in points:
        _check_overlap(tp, label)
    admin = lake.read("administrations", "patient_id = ? AND cycle = ? AND purpose = 'therapy'",
                      [patient_id, cycle])
    if admin.empty:
        raise DosimetryError(f"{label}: no therapy administration")
    activity_mbq = float(admin.iloc[0].activity_mbq)
    nuclide = get_nuclide(str(points[0].spect_row.get("nuclide") or admin.iloc[0].nuclide))
    ref_index = _reference_index(points, config)
    ref = points[ref_index]
    grid = ref.spect
    result = CycleResult(patient_id, cycle)
    clock = time.perf_counter()
    # 1. activity maps aligned on the reference SPECT grid (MBq per voxel)
    maps = []
    fixed_masks = organ_masks(lake, ref.ct_row["id"], config["organs"])  # for organ Dice
    for i, tp in enumerate(points):
        if i == ref_index or config["registration"] == "none":
            conc = to_grid(tp.spect, grid) if not tp.spect.same_grid(grid) else \
                tp.spect.array.astype(np.float32)
        else:
            reg = _register(ref.ct, tp.ct, config)
            moved, err = registration.resample_activity(tp.spect, reg.transform, grid)
            conc = moved.array
            moving_masks = organ_masks(lake, tp.ct_row["id"], config["organs"])
            dice = tuple(organ_dice(fixed_masks, moving_masks, t, ref.ct, tp.ct)
                         for t in (None, reg.transform))
            result.registration_rows.append(registration_row(
                patient_id, cycle, ref.ct_row, tp.ct_row, reg, chash, err, dice))
        maps.append(np.clip(conc.astype(np.float64), 0, None) * grid.voxel_volume_ml / 1e6)
    maps = np.stack(maps)
    times = np.array([tp.time_h for tp in points])
    clock = result.lap("registration and resampling", clock)
    # 2. VOIs on the reference CT (organs without contours carried from the previous cycle's
    # reference CT, then segmented), density; the pre-therapy PET/CT gets cycle 1's organs
    earlier_lesions = _carry_vois(lake, patient_id, cycle, ref, config, chash)
    seg = config.get("segmentation") or {}
    for tp in points if config["tac_vois"] == "own" else [ref]:
        try:
            segment_missing_organs(lake, tp.ct_row, list(config["organs"]), seg)
        except SegmentationUnavailable as exc:
            raise DosimetryError(f"{label}: {exc}") from exc
    vois = _vois(lake, patient_id, ref, config, label, result, earlier_lesions)
    density_ct = hu_to_density(ref.ct.array, tuple(map(tuple, config["hu_density_calibration"])))
    density = np.clip(to_grid(ref.ct.like(density_ct.astype(np.float32)), grid, 0.001),
                      0.001, None)
    clock = result.lap("VOIs and density", clock)
    # 3. voxel TIA and dose maps
    body = maps.max(axis=0) > config["voxel_min_activity_fraction"] * maps.max()
    vox = fit_voxel_tacs(times, maps, model=config["voxel_model"],
                         decay_constant_per_h=nuclide.decay_constant_per_h, mask=body,
                         n_iter=int(config["voxel_fit_iterations"]), dtype=torch.float32)
    tia_map = vox.tia_map
    voxel_mm = np.array(grid.spacing_mm)
    method = config["method"]
    kernel = None
    if method == "ldm":
        dose_map = local_deposition_dose(tia_map, voxel_mm, nuclide.name, density,
                                         include_photons=config["include_photons_ldm"])
    else:
        if not np.allclose(voxel_mm, voxel_mm[0], rtol=1e-3):
            raise DosimetryError(f"{label}: voxel S-value kernels need cubic voxels, SPECT "
                                 f"has {tuple(voxel_mm)} mm")
        kernel = voxel_s_kernel(nuclide.name, float(voxel_mm[0]), int(config["kernel_size"]),
                                density_g_cm3=float(config["kernel_density_g_cm3"]))
        dose_map = vsv_dose(tia_map, kernel, density if method == "vsv-density" else None)
    result.tia, result.dose = grid.like(tia_map.astype(np.float32)), grid.like(
        dose_map.astype(np.float32))
    clock = result.lap("voxel TIA and dose maps", clock)
    # 4. per VOI: TAC (partial-volume corrected if configured), fit, TIA, mass, dose, BED
    masks = {name: mask_on(mask_ct, grid) for name, (mask_ct, _) in vois.items()}
    for name, mask in masks.items():
        if not mask.any():
            raise DosimetryError(f"{label}: VOI {name} is empty on the SPECT grid (outside "
                                 "its field of view?)")
    measured = _voi_tacs(lake, points, maps, ref_index, vois, config, label)
    earlier = _earlier_bed(lake, patient_id, cycle, method)
    for name, (mask_ct, voi_id) in vois.items():
        mask = masks[name]
        raw_tac = maps[:, mask].sum(axis=1)
        tac = measured[name]
        if name.startswith("lesion_") and config["recovery_coefficients"]:
            tac = tac / _recovery(config["recovery_coefficients"], mask_ct.array.sum()
                                  * mask_ct.voxel_volume_ml)
        sel = kinetics.select_tac_model(times, tac, tuple(config["tac_models"]),
                                        decay_constant_per_h=nuclide.decay_constant_per_h)
        fit = sel.chosen
        result.fits[name] = fit
        mass_g = float((density_ct * mask_ct.array).sum() * mask_ct.voxel_volume_ml)
        mean_gy = float(np.average(dose_map[mask], weights=density[mask]))
        dose_gy = mean_gy
        if not np.allclose(tac, raw_tac, rtol=1e-9):
            # partial-volume correction restores activity inside the VOI: it adds that
            # activity's self-dose (the map's self-dose per unit TIA), and the energy is
            # shared by the VOI's true CT mass: D = (E_map + (r - 1) E_self) / m
            raw_tia = kinetics.select_tac_model(
                times, raw_tac, tuple(config["tac_models"]),
                decay_constant_per_h=nuclide.decay_constant_per_h).chosen.tia_mbq_h
            ratio = fit.tia_mbq_h / max(raw_tia, 1e-12)
            self_gy = mean_gy if method == "ldm" else _self_dose_mean(
                tia_map, mask, kernel, density, method == "vsv-density")
            grid_mass_g = float(density[mask].sum() * grid.voxel_volume_ml)
            dose_gy = (mean_gy + (ratio - 1.0) * self_gy) * grid_mass_g / mass_g
        max_gy = float(dose_map[mask].max()) * dose_gy / max(mean_gy, 1e-30)
        if method == "organ-s":
            dose_gy = fit.tia_mbq_h * 1e6 * S_PER_H * _self_s(config, nuclide.name, name,
                                                              mass_g)
        bed, eqd2 = _bed(name, dose_gy, fit)
        for t, a, img in zip(times, tac, points, strict=True):
            result.tac_rows.append({
                "id": stable_hash("tac", patient_id, cycle, name, round(float(t), 4), chash,
                                  voi_id), "patient_id": patient_id, "cycle": cycle,
                "voi": name, "time_h": float(t), "activity_mbq": float(a),
                "activity_sigma_mbq": None, "image_id": img.spect_row["id"],
                "input_ids": [img.spect_row["id"], voi_id], "params_hash": chash})
        result.organ_rows.append({
            "id": stable_hash("organ", patient_id, cycle, name, method, chash, voi_id,
                              [p.spect_row["id"] for p in points]),
            "patient_id": patient_id, "cycle": cycle, "voi": name, "method": method,
            "mass_g": mass_g, "tia_mbq_h": fit.tia_mbq_h,
            "tia_sigma_mbq_h": fit.tia_sd_mbq_h if np.isfinite(fit.tia_sd_mbq_h) else None,
            "absorbed_dose_gy": dose_gy, "max_dose_gy": max_gy,
            "dose_per_activity_gy_per_gbq": dose_gy / (activity_mbq / 1000.0),
            "bed_gy": bed, "eqd2_gy": eqd2,
            "cumulative_bed_gy": bed + earlier.get(name, (0.0, 0.0))[0],
            "cumulative_eqd2_gy": eqd2 + earlier.get(name, (0.0, 0.0))[1],
            "fit_model": fit.model,
            "fit_parameters": json.dumps(fit.as_dict()),
            "input_ids": [p.spect_row["id"] for p in points] + [voi_id],
            "params_hash": chash})
    clock = result.lap("VOI TACs, fits, doses", clock)
    _write(lake, result, grid, method, chash, points)
    result.lap("lake writes", clock)
    return result


def _earlier_bed(lake: Lake, patient_id: str, cycle: int, method: str
                 ) -> dict[str, tuple[float, float]]:
    """Per VOI, BED and EQD2 summed over the earlier cycles in the lake (the newest result
    of each cycle for this method)."""
    rows = lake.sql(
        "SELECT voi, SUM(bed_gy) AS bed, SUM(eqd2_gy) AS eqd2 FROM ("
        " SELECT voi, cycle, bed_gy, eqd2_gy, row_number() OVER (PARTITION BY voi, cycle"
        "  ORDER BY created_utc DESC) AS k FROM organ_dosimetry"
        " WHERE patient_id = ? AND cycle < ? AND method = ?) WHERE k = 1 GROUP BY voi",
        [patient_id, cycle, method])
    return {r.voi: (float(r.bed), float(r.eqd2)) for r in rows.itertuples()}


def _reference_index(points: list[TimePoint], config: dict) -> int:
    return int({"first": 0, "last": len(points) - 1}.get(
        config["reference_time_point"], config["reference_time_point"]))


def _carry_vois(lake: Lake, patient_id: str, cycle: int, ref: TimePoint, config: dict,
                chash: str) -> dict[str, np.ndarray]:
    """Cycle 1: the reference CT registered onto each pre-therapy PET/CT, carrying the organs
    it lacks. Later cycles: the previous cycle's reference CT registered onto this one,
    carrying the organs this one lacks; returns the previous cycle's thresholded lesions on
    this reference CT (to keep their names), when lesions are thresholded."""
    organs = list(config["organs"])
    if cycle == 1:
        images = lake.read("images", "patient_id = ? AND kind IN ('pet', 'ct') AND "
                           "(cycle IS NULL OR cycle <= 1)", [patient_id])
        cts = images[images.kind == "ct"]
        for key in images[images.kind == "pet"].frame_of_reference_key.unique():
            pet_ct = cts[(cts.frame_of_reference_key == key) & (cts.id != ref.ct_row["id"])]
            if not pet_ct.empty:
                row = pet_ct.iloc[0].to_dict()
                reg = _register(Volume.from_row(row), ref.ct, config)
                carry_vois(lake, ref.ct_row, row, organs, reg, chash, cycle)
        return {}
    try:
        previous = _time_points(lake, patient_id, cycle - 1)
    except DosimetryError:
        return {}
    source = previous[_reference_index(previous, config)]
    lesions = lake.read("vois", "image_id = ? AND source = 'threshold'", [source.ct_row["id"]])
    imported = lake.read("vois", "image_id = ? AND voi LIKE 'lesion_%' AND source != "
                         "'threshold'", [ref.ct_row["id"]])
    name_lesions = config["lesions"]["segment"] and not lesions.empty and (
        imported.empty or not config["lesions"]["from_imported_vois"])
    if not name_lesions and not missing_organs(lake, source.ct_row["id"], ref.ct_row["id"],
                                               organs):
        return {}
    reg = _register(ref.ct, source.ct, config)
    carry_vois(lake, source.ct_row, ref.ct_row, organs, reg, chash, cycle)
    if not name_lesions:
        return {}
    return {r["voi"]: registration.resample_mask(Volume.from_row(r), reg.transform, ref.ct)
            for r in lesions.to_dict("records")}


def _register(fixed: Volume, moving: Volume, config: dict) -> registration.RegistrationResult:
    if config["registration"] == "ai":
        return _ai_model(config["registration_model"],
                         config["registration_model_sha256"]).register(fixed, moving)
    return registration.register_ct(fixed, moving,
                                    deformable=config["registration"] == "deformable")


@functools.lru_cache(maxsize=2)
def _ai_model(folder: str, sha256: str):  # noqa: ANN202 (torch model, imported lazily)
    """A trained AI registration, loaded once per folder and weights hash."""
    from theralake.dosimetry.registration_ai import AiRegistration

    return AiRegistration.load(folder)


def _voi_tacs(lake: Lake, points: list[TimePoint], maps: np.ndarray, ref_index: int,
              vois: dict[str, tuple[Volume, str]], config: dict, label: str
              ) -> dict[str, np.ndarray]:
    """Activity (MBq) per VOI and time point, partial-volume corrected when configured.

    With ``tac_vois: own`` the VOIs that a time point's CT carries (per-time-point contours
    or AI segmentation) are measured on its own SPECT, free of registration error; the others
    (and all of them with ``tac_vois: reference``) on the registered map with the reference
    VOIs.
    """
    names = list(vois)
    out = {n: np.zeros(len(points)) for n in names}
    reference = {n: v for n, (v, _) in vois.items()}
    for i, tp in enumerate(points):
        own = _own_vois(lake, tp, names) if config["tac_vois"] == "own" and i != ref_index \
            else {}
        jobs = []  # (image MBq/voxel, its grid, VOIs to solve together, VOIs to keep)
        if own:
            image = np.clip(tp.spect.array.astype(np.float64), 0, None) \
                * tp.spect.voxel_volume_ml / 1e6
            jobs.append((image, tp.spect, own, set(own)))
        if set(names) - set(own):  # e.g. lesions thresholded on the reference only
            jobs.append((maps[i], points[ref_index].spect, reference, set(names) - set(own)))
        for image, grid, masks, keep in jobs:
            try:
                activity = voi_activities_mbq(image, grid, masks, config.get("partial_volume"))
            except ValueError as exc:
                raise DosimetryError(f"{label}, time point {tp.time_h:.1f} h: {exc}") from exc
            for n in keep:
                out[n][i] = activity[n]
    return out


def _own_vois(lake: Lake, tp: TimePoint, names: list[str]) -> dict[str, Volume]:
    """The VOIs among ``names`` that a time point's own CT carries (the body included, so
    that the partial-volume solve has the remainder), or none."""
    rows = lake.read("vois", "image_id = ?", [tp.ct_row["id"]]).drop_duplicates("voi")
    rows = rows[rows.voi.isin(names)]
    if "body" in names and "body" not in set(rows.voi):
        return {}
    return {r.voi: Volume.from_row(r.to_dict()) for _, r in rows.iterrows()}


def _self_dose_mean(tia_map: np.ndarray, mask: np.ndarray, kernel, density: np.ndarray,
                    density_correction: bool) -> float:
    """Density-weighted mean dose (Gy) in a VOI from the VOI's own TIA only (VSV kernel)."""
    half = np.array(kernel.values_mgy_per_mbq_s.shape) // 2
    idx = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - h, 0), int(i.max()) + h + 1)
                for i, h in zip(idx, half, strict=True))
    own = np.where(mask[box], tia_map[box], 0.0)
    dose = vsv_dose(own, kernel, density[box] if density_correction else None)
    return float(np.average(dose[mask[box]], weights=density[box][mask[box]]))


def _recovery(path: str, volume_ml: float) -> float:
    table = pd.read_csv(path).sort_values("volume_ml")
    return float(np.interp(volume_ml, table.volume_ml, table.recovery))


def _self_s(config: dict, nuclide: str, voi: str, mass_g: float) -> float:
    """Self S-value (Gy/(Bq s)): the configured organ table scaled by mass, else the sphere."""
    if config["s_table"]:
        from theralake.dosimetry.organ_s import load_s_table

        table = load_s_table(config["s_table"])
        key = (nuclide, voi, voi)
        if key in table.values:
            ref_mass = table.reference_mass_g.get(key)
            s = table.values[key]
            return s * ref_mass / mass_g if ref_mass else s
    return sphere_self_s(nuclide, mass_g).s_gy_per_bq_s


def _vois(lake: Lake, patient_id: str, ref: TimePoint, config: dict, label: str,
          result: CycleResult, earlier_lesions: dict[str, np.ndarray] | None = None
          ) -> dict[str, tuple[Volume, str]]:
    """VOIs on the reference CT: imported ones first, then threshold lesions (named after
    the previous cycle's lesions they match)."""
    rows = lake.read("vois", "patient_id = ? AND image_id = ?", [patient_id, ref.ct_row["id"]])
    out: dict[str, tuple[Volume, str]] = {}
    for _, r in rows.iterrows():
        if r.voi in config["organs"] or (r.voi.startswith("lesion_")
                                         and config["lesions"]["from_imported_vois"]):
            vol = Volume.from_row(r.to_dict())
            if not vol.array.any():
                raise DosimetryError(f"{label}: imported VOI {r.voi} is empty")
            out[r.voi] = (vol, r.id)
    has_lesions = any(k.startswith("lesion_") for k in out)
    if not has_lesions and config["lesions"]["segment"]:
        out.update(_threshold_lesions(patient_id, ref, out, config, result,
                                      earlier_lesions or {}))
    if not out:
        raise DosimetryError(f"{label}: no VOIs on the reference CT (import RTSTRUCT/SEG or "
                             "train the organ segmenter)")
    return out


def _lesion_names(found: list, earlier: dict[str, np.ndarray], spacing_mm) -> list[str]:  # noqa: ANN001
    """A lesion matching one of the previous cycle's (centroids within 20 mm, Hungarian) keeps
    its name; the others get new numbers after the highest one used."""
    names: list[str | None] = [None] * len(found)
    previous = list(earlier)
    for i, j in match_lesions([les.mask for les in found], [earlier[n] for n in previous],
                              spacing_mm, max_distance_mm=20.0):
        names[i] = previous[j]
    used = [int(n.split("_")[1]) for n in previous if n.split("_")[1].isdigit()]
    number = max(used, default=0)
    for i, name in enumerate(names):
        if name is None:
            number += 1
            names[i] = f"lesion_{number:03d}"
    return names  # type: ignore[return-value]


def _threshold_lesions(patient_id: str, ref: TimePoint, organs: dict[str, tuple[Volume, str]],
                       config: dict, result: CycleResult, earlier: dict[str, np.ndarray]
                       ) -> dict[str, tuple[Volume, str]]:
    spect_on_ct = ref.ct.like(to_grid(ref.spect, ref.ct).clip(0, None))
    exclude = np.zeros(ref.ct.array.shape, bool)
    for name, (vol, _) in organs.items():
        if name != "body":
            exclude |= vol.array.astype(bool)
    opts = config["lesions"]
    found = segment_lesions(spect_on_ct.array, ref.ct.voxel_volume_ml, method=opts["method"],
                            fraction=opts["fraction"], exclude=exclude,
                            min_volume_ml=opts["min_volume_ml"])
    out = {}
    for les, name in zip(found, _lesion_names(found, earlier, ref.ct.spacing_mm), strict=True):
        vol = ref.ct.like(les.mask.astype(np.uint8))
        row = {"patient_id": patient_id, "voi": name, "image_id": ref.ct_row["id"],
               "cycle": ref.ct_row["cycle"], "time_h": ref.ct_row["time_h"],
               "source": "threshold", "source_name": f"{opts['method']} {opts['fraction']}",
               "volume_ml": les.volume_ml, "voxel_count": int(les.mask.sum()),
               "frame_of_reference_key": ref.ct_row["frame_of_reference_key"],
               **vol.geometry_columns(), "input_ids": [ref.spect_row["id"]]}
        row["id"] = vol.content_hash(patient_id, name, ref.ct_row["id"], "threshold")
        result.voi_rows.append(row)
        out[name] = (vol, row["id"])
    return out


def _write(lake: Lake, result: CycleResult, grid: Volume, method: str, chash: str,
           points: list[TimePoint]) -> None:
    inputs = [p.spect_row["id"] for p in points]
    maps = []
    for quantity, vol, units in (("tia", result.tia, "MBQH"), ("dose", result.dose, "GY")):
        row = {"patient_id": result.patient_id, "cycle": result.cycle, "quantity": quantity,
               "method": method if quantity == "dose" else "voxel-fit", "units": units,
               "frame_of_reference_key": points[0].spect_row["frame_of_reference_key"],
               **vol.geometry_columns(), "input_ids": inputs, "params_hash": chash}
        # derived: the same inputs and settings give the same id (floating-point noise aside)
        row["id"] = stable_hash("dose_map", result.patient_id, result.cycle, quantity, method,
                                chash, inputs)
        maps.append(row)
    lake.append("vois", result.voi_rows)
    lake.append("registrations", result.registration_rows)
    lake.append("dose_maps", maps)
    lake.append("tacs", result.tac_rows)
    lake.append("organ_dosimetry", result.organ_rows)
    log.info("patient %s cycle %d: %d VOIs, theralake %s", result.patient_id, result.cycle,
             len(result.organ_rows), __version__)
