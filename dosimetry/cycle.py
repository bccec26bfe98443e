"""The dosimetry of one patient-cycle, computed from its inputs without touching the lake.

``compute_cycle(inputs, settings, segmenter=None, registrar=None) -> CycleResult``:

1. every time point's SPECT onto the reference SPECT grid (CT-to-CT registration onto the
   reference time point's CT; activity conserved);
2. the VOIs on the reference CT (:mod:`theralake.dosimetry.cycle_vois`);
3. the voxel TIA map (voxel fits; one time point: Hänscheid's factor) and the dose map;
4. per VOI: its activity at each time point that saw it (:mod:`~theralake.dosimetry.cycle_tacs`),
   its TIA (:mod:`~theralake.dosimetry.time_integration`), mass, dose
   (:mod:`~theralake.dosimetry.voi_dose`), BED and EQD2, each with its uncertainty; then
   ``tumor_total``, the union of the lesions (:mod:`~theralake.dosimetry.tumour_total`);
5. the rows of every table, and the quality record: a finding for every drop, fallback or
   doubt, and a pass row for each VOI without one.

The segmenter and an AI registration are loaded by the caller and passed in.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from theralake.dosimetry import registration
from theralake.dosimetry.auto_vois import LesionFinder, Segmenter
from theralake.dosimetry.cycle_io import CycleInputs, TimePoint
from theralake.dosimetry.cycle_tacs import Measured, measure_tacs
from theralake.dosimetry.cycle_vois import (
    Registrar,
    Voi,
    VoiSet,
    assemble_vois,
    choose_reference,
    pet_ct_vois,
)
from theralake.dosimetry.dose import hu_to_density, local_deposition_dose, vsv_dose
from theralake.dosimetry.kernels import voxel_s_kernel
from theralake.dosimetry.nuclides import get_nuclide
from theralake.dosimetry.quality import Finding, sphere_recovery, worst
from theralake.dosimetry.settings import MEASURED_RECOVERY, DosimetryError, config_hash
from theralake.dosimetry.time_integration import LN2, Integration, integrate
from theralake.dosimetry.tumour_total import TUMOUR_TOTAL, tumour_total
from theralake.dosimetry.voi_activity import mask_on, to_grid
from theralake.dosimetry.voi_dose import bed_of, dose_sigma, recovery, voi_dose
from theralake.dosimetry.voi_transfer import organ_dice
from theralake.dosimetry.voxel_kinetics import fit_voxel_tacs
from theralake.lake import Volume
from theralake.lake.rows import (
    dose_map_row,
    organ_dosimetry_row,
    quality_row,
    registration_row,
    tac_row,
)
from theralake.lake.views import bed_sums

__all__ = ["CycleResult", "compute_cycle", "default_registrar"]


@dataclass
class CycleResult:
    """What one patient-cycle produced: the rows of every table and the quality record."""

    patient_id: str
    cycle: int
    params_hash: str
    reference_ct: dict
    organ_rows: list[dict] = field(default_factory=list)
    tac_rows: list[dict] = field(default_factory=list)
    registration_rows: list[dict] = field(default_factory=list)
    voi_rows: list[dict] = field(default_factory=list)
    map_rows: list[dict] = field(default_factory=list)
    quality_rows: list[dict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    dose: Volume | None = None
    tia: Volume | None = None
    fits: dict[str, Integration] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went

    @property
    def status(self) -> str:
        """The worst finding: pass, warn or fail."""
        return worst(f.status for f in self.findings)

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.status != "pass"]

    def lap(self, step: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[step] = self.seconds.get(step, 0.0) + now - since
        return now

    def add(self, found: VoiSet) -> None:
        self.voi_rows.extend(found.new_rows)
        self.registration_rows.extend(found.registration_rows)
        self.findings.extend(found.findings)


def default_registrar(settings: dict) -> Registrar:
    """The classical registration of the settings (``ai`` is loaded by the caller)."""
    mode = settings["registration"]
    if mode == "ai":
        raise DosimetryError("registration 'ai': the caller loads the trained model and passes "
                             "its register method (registrar=)")
    if mode == "none":
        return registration.no_registration
    return lambda fixed, moving: registration.register_ct(fixed, moving,
                                                         deformable=mode == "deformable")


def _memo(registrar: Registrar) -> Registrar:
    """The registrar, computed once per (fixed, moving) pair of images within a cycle."""
    done: dict[tuple[int, int], registration.RegistrationResult] = {}

    def register(fixed: Volume, moving: Volume) -> registration.RegistrationResult:
        key = (id(fixed), id(moving))
        if key not in done:
            done[key] = registrar(fixed, moving)
        return done[key]

    return register


def compute_cycle(inputs: CycleInputs, settings: dict, segmenter: Segmenter | None = None,
                  registrar: Registrar | None = None,
                  on_stage: Callable[[str], None] | None = None, *,
                  lesion_finder: LesionFinder | None = None) -> CycleResult:
    """The dosimetry of one patient-cycle (rows not written); ``on_stage`` hears the name of
    each stage as it starts (a progress display); ``lesion_finder`` segments the lesions when
    ``lesions.method`` is network.

    Raises:
        DosimetryError: no quantitative SPECT, a SPECT without CT or not overlapping it, no
            therapy administration, no VOI at all, voxel S-values on non-cubic voxels.
    """
    label = inputs.label
    points = inputs.time_points
    _check_inputs(inputs)
    admin = inputs.administration
    nuclide = get_nuclide(str(points[0].spect_row.get("nuclide") or admin["nuclide"]))
    register = _memo(registrar or default_registrar(settings))
    chash = config_hash(settings)
    try:
        ref_index = choose_reference(points, settings)
    except ValueError as exc:
        raise DosimetryError(f"{label}: {exc}") from exc
    ref = points[ref_index]
    grid = ref.spect
    result = CycleResult(inputs.patient_id, inputs.cycle, chash, ref.ct.row)
    result.findings.extend(_protocol_findings(points, ref_index, settings))
    result.findings.extend(_duplicate_findings(inputs))
    stage = on_stage or (lambda _: None)
    clock = time.perf_counter()
    stage("registering the time points")
    moved, maps = _align(inputs, ref_index, settings, register, result)
    times = np.array([tp.time_h for tp in points])
    clock = result.lap("registration and resampling", clock)
    stage("VOIs")
    if settings["lesions"]["method"] == "network" and lesion_finder is None:
        raise DosimetryError(f"{label}: lesions.method network needs the lesion segmenter "
                             "(train one with theralake train-lesion-seg, or set lesions.model)")
    found = assemble_vois(inputs, ref_index, moved, settings, register, segmenter, chash,
                          lesion_finder)
    result.add(found)
    result.add(pet_ct_vois(inputs, ref.ct, found.vois, settings, register, chash))
    if not found.vois:
        raise DosimetryError(f"{label}: no VOI on any CT (import RTSTRUCT/SEG, or train the "
                             "organ segmenter)")
    density_ct = hu_to_density(ref.ct.volume.array,
                               tuple(map(tuple, settings["hu_density_calibration"])))
    density = np.clip(to_grid(ref.ct.volume.like(density_ct.astype(np.float32)), grid, 0.001),
                      0.001, None)
    clock = result.lap("VOIs and density", clock)
    stage("voxel fits and dose map")
    tia_map, dose_map, kernel = _voxel_maps(times, maps, density, grid, nuclide, settings,
                                            label, result)
    clock = result.lap("voxel TIA and dose maps", clock)
    vois = found.vois
    stage("VOI activities, fits and doses")
    measured = measure_tacs(inputs, ref_index, maps, moved, vois, settings, segmenter, register,
                            chash)
    result.voi_rows.extend(measured.new_rows)
    result.registration_rows.extend(measured.registration_rows)
    result.findings.extend(measured.findings)
    spect_ids = [p.spect_row["id"] for p in points]
    earlier = bed_sums(inputs.earlier, settings["method"])
    for name, voi in vois.items():
        _voi_rows(inputs, name, voi, times, maps, measured, tia_map, dose_map, kernel, density,
                  density_ct, grid, nuclide, settings, spect_ids, earlier, result)
    _tumour_total_row(inputs, vois, settings, spect_ids, earlier, result)
    clock = result.lap("VOI TACs, fits, doses", clock)
    result.map_rows = [
        dose_map_row(inputs.patient_id, inputs.cycle, q, m, u, v, ref.ct.row, spect_ids, chash)
        for q, m, u, v in (("tia", "voxel-fit", "MBQH", result.tia),
                           ("dose", settings["method"], "GY", result.dose))]
    _quality_rows(result, vois)
    return result


def _check_inputs(inputs: CycleInputs) -> None:
    label = inputs.label
    if not inputs.time_points:
        raise DosimetryError(f"{label}: no quantitative SPECT")
    for tp in inputs.time_points:
        if tp.ct is None:
            raise DosimetryError(f"{label}: SPECT at {tp.time_h:.1f} h has no CT")
        lo_s, hi_s = _extent(tp.spect)
        lo_c, hi_c = _extent(tp.ct.volume)
        if np.any(np.minimum(hi_s, hi_c) - np.maximum(lo_s, lo_c) <= 0):
            raise DosimetryError(f"{label}: SPECT and CT at {tp.time_h:.1f} h do not overlap")
    if inputs.administration is None:
        raise DosimetryError(f"{label}: no therapy administration")


def _extent(vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k] for i in (0, vol.shape_xyz[0] - 1)
                        for j in (0, vol.shape_xyz[1] - 1) for k in (0, vol.shape_xyz[2] - 1)])
    world = vol.index_to_world(corners)
    return world.min(axis=0), world.max(axis=0)


def _duplicate_findings(inputs: CycleInputs) -> list[Finding]:
    """An acquisition reconstructed more than once: which SPECT was used, which was not."""
    def name(row: dict) -> str:
        made = "theralake's reconstruction" if row.get("params_hash") else "imported SPECT"
        return f"{made} {row.get('description') or row.get('series_key') or ''} ({row['id'][:12]})"

    return [Finding("spect_duplicate", "warn", f"two SPECTs of the {kept['time_h']:g} h "
                    f"acquisition: {name(kept)} used, {name(left)} left out", image_id=left["id"])
            for kept, left in inputs.duplicates]


def _protocol_findings(points: list[TimePoint], ref_index: int, settings: dict
                       ) -> list[Finding]:
    """What the protocol itself means for the numbers."""
    out = [Finding("ct_paired_by_time", "warn", f"the {p.time_h:g} h SPECT has no CT of its "
                   f"frame of reference: paired with the CT acquired at {p.ct.row['time_h']:g} "
                   "h (its VOIs and attenuation may not match)", image_id=p.spect_row["id"])
           for p in points if p.ct.row.get("frame_of_reference_key")
           != p.spect_row.get("frame_of_reference_key")]
    if len(points) == 1:
        stp = settings["single_time_point"]["method"]
        out.append(Finding("single_time_point", "pass", f"one SPECT/CT ({points[0].time_h:g} "
                           f"h): TIA by the {stp} single-time-point method"))
    grids = {(tuple(p.spect.shape_xyz), tuple(np.round(p.spect.spacing_mm, 3)))
             for p in points}
    if len(grids) > 1:
        out.append(Finding("grids_differ", "pass", f"the SPECTs have {len(grids)} different "
                           "grids: each is resampled onto the reference time point's "
                           f"({points[ref_index].time_h:g} h)"))
    return out


def _align(inputs: CycleInputs, ref_index: int, settings: dict, register: Registrar,
           result: CycleResult
           ) -> tuple[dict[int, registration.RegistrationResult], np.ndarray]:
    """Every time point's activity (MBq per voxel) on the reference SPECT grid, and the
    registration of each other time point's CT onto the reference CT."""
    points = inputs.time_points
    ref = points[ref_index]
    grid = ref.spect
    moved: dict[int, registration.RegistrationResult] = {}
    maps = []
    fixed_masks = _organ_masks(ref)
    reference = np.clip(grid.array.astype(np.float64), 0, None)
    for i, tp in enumerate(points):
        if i == ref_index:
            conc = reference
        else:
            reg = register(ref.ct.volume, tp.ct.volume)
            moved[i] = reg
            conserve = _covers(grid, tp.spect, reg.transform)
            vol, err = registration.resample_activity(tp.spect, reg.transform, grid,
                                                      conserve=conserve)
            conc = vol.array
            if not conserve:
                result.findings.extend(_outside(tp, reg, grid, reference))
            dice = tuple(organ_dice(fixed_masks, _organ_masks(tp), t, ref.ct.volume,
                                    tp.ct.volume) for t in (None, reg.transform))
            result.registration_rows.append(registration_row(
                inputs.patient_id, inputs.cycle, ref.ct.row, tp.ct.row, reg, result.params_hash,
                err, dice))
            if reg.failed:
                result.findings.append(Finding(
                    "registration_failed", "warn", f"the {tp.time_h:g} h CT onto the reference "
                    f"CT: {'; '.join(reg.reasons)}", image_id=tp.ct.id))
        maps.append(np.clip(conc.astype(np.float64), 0, None) * grid.voxel_volume_ml / 1e6)
    return moved, np.stack(maps)


def _outside(tp: TimePoint, reg: registration.RegistrationResult, grid: Volume,
             reference: np.ndarray) -> list[Finding]:
    """A time point whose field of view misses part of the body on the reference grid."""
    seen = registration.resample_mask(tp.spect.like(np.ones(tp.spect.array.shape, np.uint8)),
                                      reg.transform, grid)
    body = reference > 1e-3 * reference.max()
    missed = float(1.0 - seen[body].mean()) if body.any() else 0.0
    if missed < 0.01:
        return []
    return [Finding("fov_differs", "warn", f"the {tp.time_h:g} h SPECT's field of view misses "
                    f"{100 * missed:.0f} % of the body on the reference grid: the dose map's "
                    "voxel fits there lack that time point (the VOIs it misses are measured on "
                    "the other time points and their doses scaled to their own TIAs)",
                    value=missed, image_id=tp.spect_row["id"])]


def _organ_masks(tp: TimePoint) -> dict[str, Volume]:
    return {n: c.mask for n, c in tp.ct.contours.items()
            if not n.startswith("lesion_") and n != "body"}


def _covers(grid: Volume, spect: Volume, transform: sitk.Transform) -> bool:
    """Whether the reference grid, mapped through ``transform``, lies in ``spect``'s field of
    view (then resampling conserves its total activity)."""
    lo, hi = _extent(grid)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])])
    lo_s, hi_s = _extent(spect)
    mapped = np.array([transform.TransformPoint(tuple(map(float, c))) for c in corners])
    return bool(np.all(mapped.min(0) >= lo_s - 1.0) and np.all(mapped.max(0) <= hi_s + 1.0)) \
        or bool(np.all(lo_s <= lo + 1.0) and np.all(hi_s >= hi - 1.0))


def _voxel_maps(times: np.ndarray, maps: np.ndarray, density: np.ndarray, grid: Volume,
                nuclide: object, settings: dict, label: str, result: CycleResult
                ) -> tuple[np.ndarray, np.ndarray, object | None]:
    """The voxel TIA map (MBq h) and the dose map (Gy) on the reference SPECT grid."""
    if times.size == 1:  # Hänscheid's factor for every voxel; VOIs get their own method
        tia_map = maps[0] * 2.0 * times[0] / LN2
    else:
        body = maps.max(axis=0) > settings["voxel_min_activity_fraction"] * maps.max()
        model = settings["voxel_model"] if times.size > 2 else "mono"
        vox = fit_voxel_tacs(times, maps, model=model,
                             decay_constant_per_h=nuclide.decay_constant_per_h, mask=body,
                             n_iter=int(settings["voxel_fit_iterations"]), dtype=torch.float32)
        tia_map = vox.tia_map
    voxel_mm = np.array(grid.spacing_mm)
    method = settings["method"]
    kernel = None
    if method == "ldm":
        dose_map = local_deposition_dose(tia_map, voxel_mm, nuclide.name, density,
                                         include_photons=settings["include_photons_ldm"])
    else:
        if not np.allclose(voxel_mm, voxel_mm[0], rtol=1e-3):
            raise DosimetryError(f"{label}: voxel S-value kernels need cubic voxels, the "
                                 f"reference SPECT has {tuple(voxel_mm)} mm")
        kernel = voxel_s_kernel(nuclide.name, float(voxel_mm[0]), int(settings["kernel_size"]),
                                density_g_cm3=float(settings["kernel_density_g_cm3"]),
                                photon_reach_mm=float(settings["photon_reach_mm"]))
        dose_map = vsv_dose(tia_map, kernel, density if method == "vsv-density" else None)
    result.tia = grid.like(tia_map.astype(np.float32))
    result.dose = grid.like(dose_map.astype(np.float32))
    return tia_map, dose_map, kernel


def _voi_rows(inputs: CycleInputs, name: str, voi: Voi, times: np.ndarray, maps: np.ndarray,
              measured: Measured, tia_map: np.ndarray, dose_map: np.ndarray,
              kernel: object | None, density: np.ndarray, density_ct: np.ndarray, grid: Volume,
              nuclide: object, settings: dict, spect_ids: list[str],
              earlier: dict[str, tuple[float, float]], result: CycleResult) -> None:
    """The TIA, dose, BED and rows of one VOI, or the finding that says why there are none."""
    q = settings["quality"]
    mask = mask_on(voi.mask, grid)
    if not mask.any():
        result.findings.append(Finding("voi_outside_fov", "fail", f"{voi.origin}: no voxel of "
                                       "the reference SPECT grid (outside its field of view)",
                                       name))
        return
    n_spect = int(mask.sum())
    volume_ml = float(voi.mask.array.astype(bool).sum() * voi.mask.voxel_volume_ml)
    if n_spect < q["min_spect_voxels"]:
        result.findings.append(Finding("voi_small", "warn", f"{volume_ml:.1f} mL: {n_spect} "
                                       f"SPECT voxels (fewer than {q['min_spect_voxels']})",
                                       name, n_spect))
    tac = measured.activity_mbq[name].copy()
    correction = measured.partial_volume
    if name.startswith("lesion_") and settings["recovery_coefficients"]:
        rc = _lesion_recovery(name, volume_ml, inputs, settings, result)
        if rc is not None:
            tac = tac / rc
            correction = "recovery"
    _recovery_finding(name, volume_ml, correction, inputs, settings, result)
    usable = measured.coverage[name] >= q["min_fov_coverage"]
    for i in np.flatnonzero(~usable):
        result.findings.append(Finding(
            "voi_outside_fov", "warn", f"{100 * measured.coverage[name][i]:.0f} % of it in the "
            f"field of view of the {times[i]:g} h SPECT: that time point is left out of its "
            "curve", name, float(measured.coverage[name][i]),
            inputs.time_points[i].spect_row["id"]))
    if not usable.any():
        result.findings.append(Finding("voi_outside_fov", "fail", "no time point's SPECT covers "
                                       "it: no TIA", name))
        return
    pharmaceutical = inputs.administration.get("pharmaceutical")
    decay = nuclide.decay_constant_per_h
    try:
        tia = integrate(times[usable], tac[usable], name, settings, decay, pharmaceutical,
                        nuclide.name)
        raw_tac = maps[:, mask].sum(axis=1)
        if not usable.all():  # the map's voxels saw no activity there: scale to the VOI's TIA
            raw = float(tia_map[mask].sum())
        elif np.allclose(tac, raw_tac, rtol=1e-9):
            raw = None
        else:
            raw = integrate(times, raw_tac, name, settings, decay, pharmaceutical,
                            nuclide.name).tia_mbq_h
    except ValueError as exc:
        result.findings.append(Finding("tia_failed", "fail", str(exc), name))
        return
    result.findings.extend(tia.findings)
    result.fits[name] = tia
    mass_g = float((density_ct * voi.mask.array).sum() * voi.mask.voxel_volume_ml)
    dose = voi_dose(settings["method"], dose_map, tia_map, mask, density, grid.voxel_volume_ml,
                    mass_g, tia, raw, kernel, nuclide.name, name, settings["s_table"],
                    correction)
    bed = bed_of(name, dose.dose_gy, tia)
    if bed.caveat:  # recorded; a warning where conventional parameters change the number
        result.findings.append(Finding("lq_parameters", "warn" if bed.g_factor else "pass",
                                       bed.caveat, name, bed.alpha_beta_gy))
    sigma = dose_sigma(dose.dose_gy, tia, bed)
    chash = result.params_hash
    for t, a, ok, tp in zip(times, tac, usable, inputs.time_points, strict=True):
        if ok:
            result.tac_rows.append(tac_row(inputs.patient_id, inputs.cycle, name, voi.id, t, a,
                                           tp.spect_row["id"], chash))
    previous = earlier.get(name, (0.0, 0.0))
    activity_mbq = float(inputs.administration["activity_mbq"])
    result.organ_rows.append(organ_dosimetry_row(
        inputs.patient_id, inputs.cycle, name, settings["method"], voi.id, spect_ids, chash,
        mass_g=mass_g, tia_mbq_h=tia.tia_mbq_h,
        tia_sigma_mbq_h=tia.tia_sd_mbq_h if tia.tia_sd_mbq_h is not None
        and math.isfinite(tia.tia_sd_mbq_h) else None,
        absorbed_dose_gy=dose.dose_gy, max_dose_gy=dose.max_gy,
        dose_per_activity_gy_per_gbq=dose.dose_gy / (activity_mbq / 1000.0),
        bed_gy=bed.bed_gy, eqd2_gy=bed.eqd2_gy, absorbed_dose_sigma_gy=sigma.dose_gy,
        bed_sigma_gy=sigma.bed_gy, eqd2_sigma_gy=sigma.eqd2_gy,
        cumulative_bed_gy=bed.bed_gy + previous[0],
        cumulative_eqd2_gy=bed.eqd2_gy + previous[1], fit_model=tia.model,
        fit_parameters=json.dumps(tia.parameters, default=float), tia_method=tia.method,
        time_points_h=tia.time_points_h, partial_volume=correction, dose_basis=dose.basis,
        map_mean_dose_gy=dose.map_mean_gy, effective_half_life_h=tia.effective_half_life_h,
        lea_catcheside_g=bed.g_factor, alpha_beta_gy=bed.alpha_beta_gy,
        repair_half_time_h=bed.repair_half_time_h))


def _tumour_total_row(inputs: CycleInputs, vois: dict[str, Voi], settings: dict,
                      spect_ids: list[str], earlier: dict[str, tuple[float, float]],
                      result: CycleResult) -> None:
    """The ``tumor_total`` row from the lesions with doses, and its finding (the worst of
    its lesions', naming any lesion left out of it)."""
    lesions = [r for r in result.organ_rows if r["voi"].startswith("lesion_")]
    missing = sorted(n for n in vois if n.startswith("lesion_")
                     and n not in {r["voi"] for r in lesions})
    if not lesions:
        if missing:
            result.findings.append(Finding("tumour_total", "fail", "no lesion has a dose "
                                           f"({', '.join(missing)}): no tumor_total", TUMOUR_TOTAL))
        return
    values = tumour_total(lesions, float(inputs.administration["activity_mbq"]))
    previous = earlier.get(TUMOUR_TOTAL, (0.0, 0.0))
    first = lesions[0]
    result.organ_rows.append(organ_dosimetry_row(
        inputs.patient_id, inputs.cycle, TUMOUR_TOTAL, settings["method"], None, spect_ids,
        result.params_hash, part_ids=[r["voi_id"] for r in lesions], **values,
        cumulative_bed_gy=values["bed_gy"] + previous[0],
        cumulative_eqd2_gy=values["eqd2_gy"] + previous[1], fit_model="sum of lesions",
        fit_parameters=json.dumps({"lesions": [r["voi"] for r in lesions]}),
        tia_method="sum of lesions",
        time_points_h=sorted({t for r in lesions for t in r["time_points_h"]}),
        partial_volume=",".join(sorted({r["partial_volume"] for r in lesions})),
        dose_basis=first["dose_basis"], alpha_beta_gy=first["alpha_beta_gy"],
        repair_half_time_h=first["repair_half_time_h"]))
    names = {r["voi"] for r in lesions}
    doubts = [f for f in result.findings if f.voi in names and f.status != "pass"]
    status = worst([*(f.status for f in doubts), "warn" if missing else "pass"])
    why = sorted({f"{f.voi} {f.check}" for f in doubts})
    result.findings.append(Finding(
        "tumour_total", status, f"the union of {len(lesions)} lesion(s): TIA and mass summed, "
        "dose, BED and EQD2 mass-weighted means" + (f"; without {', '.join(missing)} (no dose)"
                                                   if missing else "")
        + (f"; as doubtful as its lesions ({', '.join(why)})" if why else ""), TUMOUR_TOTAL,
        values["mass_g"]))


def _lesion_recovery(name: str, volume_ml: float, inputs: CycleInputs, settings: dict,
                     result: CycleResult) -> np.ndarray | None:
    """Each time point's recovery coefficient of a lesion's volume: from the settings' CSV, or
    (``measured``) from each SPECT's camera calibration (``theralake calibrate``). None, with
    a warning, when a time point's SPECT has no measured curve; a volume outside the curve's
    spheres takes the nearest sphere's coefficient, with a warning."""
    source = settings["recovery_coefficients"]
    points = inputs.time_points
    if source != MEASURED_RECOVERY:
        return np.full(len(points), recovery(source, volume_ml))
    lacking = [f"{p.time_h:g} h" for p in points if p.recovery is None]
    if lacking:
        result.findings.append(Finding(
            "recovery_curve_missing", "warn", "recovery_coefficients measured, but the SPECT "
            f"at {', '.join(lacking)} has no sphere recovery curve (not reconstructed by "
            "theralake with a calibrated camera): the lesion is not corrected", name))
        return None
    outside = [p for p in points if not p.recovery.volume_ml.min() <= volume_ml
               <= p.recovery.volume_ml.max()]
    if outside:
        curve = outside[0].recovery.volume_ml
        result.findings.append(Finding(
            "recovery_extrapolated", "warn", f"{volume_ml:.2f} mL lies outside the measured "
            f"spheres ({curve.min():.2f}-{curve.max():.1f} mL): the nearest sphere's recovery "
            "is used", name, volume_ml))
    return np.array([np.interp(volume_ml, p.recovery.volume_ml, p.recovery.recovery)
                     for p in points])


def _recovery_finding(name: str, volume_ml: float, correction: str, inputs: CycleInputs,
                      settings: dict, result: CycleResult) -> None:
    """No partial-volume correction on a VOI a sphere of its volume would not recover."""
    if correction != "none" or name == "body":
        return
    spect = inputs.time_points[0].spect
    fwhm = (settings.get("partial_volume") or {}).get("fwhm_mm") \
        or inputs.time_points[0].spect_row.get("resolution_fwhm_mm")
    assumed = fwhm is None or not np.isfinite(fwhm)
    if assumed:
        fwhm = 2.0 * float(np.mean(spect.spacing_mm))
    rc = sphere_recovery(volume_ml, float(fwhm))
    if rc < settings["quality"]["min_recovery"]:
        result.findings.append(Finding(
            "no_partial_volume_correction", "warn", f"{volume_ml:.0f} mL without partial-volume "
            f"correction: a sphere of that volume keeps {100 * rc:.0f} % of its activity at "
            f"{fwhm:.1f} mm FWHM{' (assumed: 2 SPECT voxels)' if assumed else ''}, so its TIA "
            "and dose are about that much low", name, rc))


def _quality_rows(result: CycleResult, vois: dict[str, Voi]) -> None:
    """The quality record: every finding, a pass row for each VOI without one, and the
    patient-cycle's summary; each organ row gets its VOI's worst status."""
    by_voi: dict[str, list[Finding]] = {}
    for f in result.findings:
        if f.voi:
            by_voi.setdefault(f.voi, []).append(f)
    for name in vois:
        if not by_voi.get(name):
            result.findings.append(Finding("voi", "pass", "every check passed", name))
    for row in result.organ_rows:
        row["quality"] = worst(f.status for f in by_voi.get(row["voi"], []))
    counts = {s: sum(1 for f in result.findings if f.status == s) for s in ("warn", "fail")}
    result.findings.append(Finding(
        "cycle", worst(f.status for f in result.findings),
        f"{len(result.organ_rows)} VOIs with doses; {counts['warn']} warning(s), "
        f"{counts['fail']} failure(s)"))
    result.quality_rows = [
        quality_row(result.patient_id, result.cycle, "dosimetry", f.check, f.status, f.message,
                    result.params_hash, f.voi, f.value, f.image_id)
        for f in result.findings]
