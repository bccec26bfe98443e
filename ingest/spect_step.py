"""Reconstruct a patient-cycle's SPECT acquisitions from the lake: read -> compute -> write.

The result is a SPECT of kind ``spect`` in Bq/mL on the acquisition's grid, in the frame of
reference of its CT, with a ``reconstructions`` row naming its settings and calibration; the
dosimetry uses it like an imported reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import SimpleITK as sitk

from theralake.ingest.projection_networks import ProjectionNetwork, interpolate_views
from theralake.ingest.reconstruction import (
    ReconSettings,
    ReconstructionError,
    counts_to_bq_per_ml,
    reconstruct,
    scatter_estimate,
)
from theralake.ingest.spect_system import Geometry, collimator_code, hu_to_mu
from theralake.lake import Lake, Volume, rows, stable_hash, views

STEP = "reconstruct"


@dataclass
class AcquisitionInputs:
    """One acquisition's windows (``projection_windows`` rows), their views, its CT and the
    camera's calibration."""

    patient_id: str
    cycle: int | None
    time_h: float | None
    windows: pd.DataFrame
    views: dict[str, np.ndarray]  # role -> (angle, r, z), for the chosen photopeak
    images: dict[str, dict]  # role -> the images row (voxels dropped)
    ct: dict | None
    calibration: dict | None
    recovery: pd.DataFrame = field(default_factory=pd.DataFrame)  # the calibration's curves

    @property
    def peak(self) -> dict:
        return self.windows[self.windows.role == "photopeak"].iloc[0].to_dict()

    @property
    def geometry(self) -> Geometry:
        p = self.peak
        return Geometry(angles_deg=np.asarray(p["angles_deg"]), radii_mm=np.asarray(
            p["radii_mm"]), bins=int(p["bins"]), rows=int(p["rows"]),
            pixel_mm=float(p["pixel_mm"]), origin_mm=tuple(p["grid_origin_mm"]))


@dataclass
class ReconResult:
    volume: Volume  # Bq/mL
    settings: ReconSettings
    cps_per_mbq: float
    scatter: str
    attenuation: str
    resolution_fwhm_mm: float | None = None
    calibration_id: str | None = None  # the camera calibration the sensitivity came from
    views: int = 0  # reconstructed from (acquired and synthesised)
    acquired_views: int = 0
    network: str | None = None  # the projection network applied (its registered name)
    network_task: str | None = None  # views | denoise
    findings: list[tuple[str, str, str]] = field(default_factory=list)  # check, status, message


def _pick_peak(windows: pd.DataFrame, photopeak_kev: float) -> pd.DataFrame:
    """The photopeak nearest ``photopeak_kev`` and its scatter windows."""
    peaks = windows[windows.role == "photopeak"]
    if peaks.empty:
        return peaks
    peak = peaks.iloc[int(np.argmin(np.abs(peaks.peak_kev - photopeak_kev)))]
    return windows[(windows.peak_kev == peak.peak_kev) & (windows.role != "other")]


def read_acquisitions(lake: Lake, patient_id: str, cycle: int, *, photopeak_kev: float = 208.4,
                      cps_per_mbq: float | None = None, collimator: str | None = None
                      ) -> list[AcquisitionInputs]:
    """Every SPECT acquisition of a patient-cycle with what its reconstruction needs.

    Raises:
        ReconstructionError: an acquisition without a photopeak of that energy, or with an
            unknown collimator (the message names it).
    """
    windows = views.acquisitions(lake, patient_id, cycle)
    if windows.empty:
        return []
    images = lake.read("images", "list_contains(?, id)", [list(windows.image_id)])
    by_id = {r["id"]: r for r in images.to_dict("records")}
    out = []
    for _, group in windows.groupby("series_key", sort=False):
        chosen = _pick_peak(group, photopeak_kev)
        if chosen.empty or abs(float(chosen[chosen.role == "photopeak"].peak_kev.iloc[0])
                               - photopeak_kev) > 1.0:
            raise ReconstructionError(
                f"patient {patient_id} cycle {cycle}, acquisition at "
                f"{group.time_h.iloc[0]:g} h: no {photopeak_kev:g} keV photopeak window "
                f"(windows: {', '.join(group.window_name.astype(str))})")
        peak = chosen[chosen.role == "photopeak"].iloc[0]
        code = collimator_code(collimator or peak.collimator_name, peak.manufacturer)
        nuclide = by_id[peak.image_id]["nuclide"]
        calibration = None if cps_per_mbq else views.camera_calibration(
            lake, peak.camera_key, nuclide, float(peak.peak_kev), code)
        ct_key = by_id[peak.image_id]["frame_of_reference_key"]
        inputs = AcquisitionInputs(
            patient_id, cycle, None if pd.isna(peak.time_h) else float(peak.time_h),
            chosen.assign(collimator=code),
            {r.role: Volume.from_row(by_id[r.image_id]).array.astype(np.float32)
             for r in chosen.itertuples()},
            {r.role: {k: v for k, v in by_id[r.image_id].items() if k != "voxels"}
             for r in chosen.itertuples()},
            views.frame_ct(lake, patient_id, ct_key) if ct_key else None, calibration,
            views.recovery_curve(lake, calibration["id"]) if calibration else pd.DataFrame())
        out.append(inputs)
    return out


def _mu_map(ct: dict, geometry: Geometry, energy_kev: float) -> np.ndarray:
    """The CT resampled onto the reconstruction grid (air outside it), as mu (1/cm)."""
    grid = sitk.Image([geometry.bins, geometry.bins, geometry.rows], sitk.sitkFloat32)
    grid.SetSpacing([geometry.pixel_mm] * 3)
    grid.SetOrigin(list(geometry.origin_mm))
    image = Volume.from_row(ct).to_sitk()
    hu = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(),
                       sitk.sitkLinear, -1000.0)
    return hu_to_mu(sitk.GetArrayFromImage(hu), energy_kev)


@dataclass(frozen=True)
class NetworkModel:
    """A projection network and the name it is known by (registry name and version)."""

    network: ProjectionNetwork
    name: str


def _through_network(inputs: AcquisitionInputs, model: NetworkModel,
                     findings: list[tuple[str, str, str]]
                     ) -> tuple[dict[str, np.ndarray], Geometry]:
    """The views after the network: the photopeak's views synthesised between the acquired
    ones (the scatter windows' linearly: smooth, few counts) on the finer orbit, or the
    photopeak's views denoised (the scatter estimate is smooth already)."""
    net, n = model.network, len(inputs.geometry.angles_deg)
    if net.task == "denoise":
        findings.append(("denoising", "pass", f"photopeak views denoised by {model.name} "
                         f"(trained on {net.config.count_fraction:.0%} of the counts)"))
        return ({role: net.apply(v) if role == "photopeak" else v
                 for role, v in inputs.views.items()}, inputs.geometry)
    factor = net.config.factor
    try:
        geometry = inputs.geometry.finer(factor)
    except ValueError as exc:
        raise ReconstructionError(f"patient {inputs.patient_id} cycle {inputs.cycle}: {exc}"
                                  ) from exc
    findings.append(("view_synthesis", "pass", f"{n * factor - n} of {n * factor} views "
                     f"synthesised from the {n} acquired by {model.name}"))
    return ({role: net.apply(v) if role == "photopeak" else interpolate_views(v, factor)
             for role, v in inputs.views.items()}, geometry)


def compute_reconstruction(inputs: AcquisitionInputs, settings: ReconSettings,
                           cps_per_mbq: float | None = None,
                           network: NetworkModel | None = None) -> ReconResult:
    """Reconstruct one acquisition in Bq/mL (pure: no lake); with a ``network`` from its
    views and those it synthesises between them, or from its views denoised.

    Raises:
        ReconstructionError: no sensitivity for the camera, or no CT where attenuation
            correction is asked.
    """
    peak = inputs.peak
    settings = replace(settings, collimator=str(inputs.windows.collimator.iloc[0]),
                       photopeak_kev=float(peak["peak_kev"]))
    where = f"patient {inputs.patient_id} cycle {inputs.cycle}, acquisition at " \
            f"{inputs.time_h:g} h"
    calibration = None if cps_per_mbq else inputs.calibration
    sensitivity = cps_per_mbq or (calibration or {}).get("cps_per_mbq")
    if not sensitivity:
        raise ReconstructionError(
            f"{where}: no camera calibration for its camera, {settings.photopeak_kev:g} keV "
            f"and collimator {settings.collimator}: run `theralake calibrate` on a phantom "
            "acquisition of this camera, or give --cps-per-mbq")
    findings: list[tuple[str, str, str]] = []
    geometry, acquired = inputs.geometry, inputs.views
    if network is not None:
        acquired, geometry = _through_network(inputs, network, findings)
    mu = None
    if settings.attenuation:
        if inputs.ct is None:
            raise ReconstructionError(f"{where}: no CT in the acquisition's frame of reference "
                                      "for attenuation correction (--no-attenuation to "
                                      "reconstruct without it)")
        mu = _mu_map(inputs.ct, geometry, settings.photopeak_kev)
    else:
        findings.append(("attenuation_correction", "warn", "reconstructed without "
                         "attenuation correction: activities are underestimated"))
    scatter, how = None, "none"
    if settings.scatter:
        widths = {r.role: float(r.upper_kev - r.lower_kev) for r in inputs.windows.itertuples()}
        scatter, how, more = scatter_estimate(acquired, widths)
        findings += more
    counts = reconstruct(geometry, acquired["photopeak"], mu_per_cm=mu, scatter=scatter,
                         settings=settings)
    voxel_ml = (geometry.pixel_mm / 10.0) ** 3
    bq_ml = counts_to_bq_per_ml(counts, cps_per_mbq=float(sensitivity),
                                frame_duration_s=float(peak["frame_duration_s"]),
                                voxel_ml=voxel_ml)
    volume = Volume(bq_ml, (geometry.pixel_mm,) * 3, geometry.origin_mm)
    return ReconResult(
        volume, settings, float(sensitivity), how, "ct" if mu is not None else "none",
        resolution_fwhm_mm=_resolution(inputs.recovery, settings, findings),
        calibration_id=calibration["id"] if calibration else None,
        views=len(geometry.angles_deg), acquired_views=len(inputs.geometry.angles_deg),
        network=network.name if network else None,
        network_task=network.network.task if network else None, findings=findings)


def _resolution(curves: pd.DataFrame, settings: ReconSettings,
                findings: list[tuple[str, str, str]]) -> float | None:
    """The resolution fitted to the camera's sphere recovery measured with these settings."""
    same = curves[(curves.method == settings.method) & (curves.iterations == settings.iterations)
                  & (curves.subsets == settings.subsets)] if not curves.empty else curves
    if same.empty or same.resolution_fwhm_mm.isna().all():
        findings.append(("resolution", "warn", f"no NEMA recovery curve of this camera "
                         f"reconstructed {settings.method.upper()} {settings.iterations}i"
                         f"{settings.subsets}s: the SPECT has no resolution for partial-volume "
                         "correction (set partial_volume.fwhm_mm, or calibrate a NEMA IEC "
                         "acquisition with these settings)"))
        return None
    return float(same.resolution_fwhm_mm.dropna().iloc[0])


def write_reconstruction(lake: Lake, inputs: AcquisitionInputs, result: ReconResult) -> dict:
    """The SPECT image, its ``reconstructions`` row and quality findings; returns the image
    row (without voxels)."""
    peak_image = inputs.images["photopeak"]
    s = result.settings
    calibration_id = result.calibration_id
    params = stable_hash(STEP, s.as_dict(), result.cps_per_mbq, calibration_id,
                         *([result.network] if result.network else []))
    sources = sorted(r["id"] for r in inputs.images.values())
    ct_id = inputs.ct["id"] if inputs.ct is not None and result.attenuation == "ct" else None
    pid, cycle, time_h = inputs.patient_id, inputs.cycle, inputs.time_h
    image = {
        "patient_id": pid, "modality": "NM", "kind": "spect", "units": "BQML",
        "cycle": cycle, "time_h": time_h, "acquisition_h": peak_image["acquisition_h"],
        "nuclide": peak_image["nuclide"], "calibration_cps_per_mbq": result.cps_per_mbq,
        "acquisition_duration_s": peak_image["acquisition_duration_s"],
        "series_key": peak_image["series_key"],
        "frame_of_reference_key": peak_image["frame_of_reference_key"],
        "resolution_fwhm_mm": result.resolution_fwhm_mm,
        "description": f"theralake {s.method.upper()} {s.iterations}i{s.subsets}s, AC "
                       f"{result.attenuation}, SC {result.scatter}, CDR {s.collimator}",
        **result.volume.geometry_columns(),
        "input_ids": sources + ([ct_id] if ct_id else []) +
        ([calibration_id] if calibration_id else []),
        "params_hash": params,
    }
    image["id"] = result.volume.content_hash(pid, "NM", "BQML", image["series_key"], cycle,
                                             time_h, params, result.resolution_fwhm_mm)
    peak = inputs.peak
    recon = {
        "id": stable_hash("reconstruction", image["id"]), "patient_id": pid,
        "image_id": image["id"], "cycle": cycle, "time_h": time_h,
        "camera_key": peak["camera_key"], "nuclide": peak_image["nuclide"],
        "photopeak_kev": s.photopeak_kev, "collimator": s.collimator, "method": s.method,
        "iterations": s.iterations, "subsets": s.subsets,
        "beta": s.beta if s.method == "bsrem" else None,
        "views": result.views, "acquired_views": result.acquired_views,
        "projection_network": result.network,
        "projection_network_task": result.network_task,
        "attenuation_correction": result.attenuation, "scatter_correction": result.scatter,
        "cps_per_mbq": result.cps_per_mbq, "calibration_id": calibration_id, "ct_id": ct_id,
        "input_ids": image["input_ids"], "params_hash": params,
    }
    quality = [rows.quality_row(pid, cycle, STEP, check, status,
                                f"acquisition at {time_h:g} h: {message}", params,
                                image_id=image["id"])
               for check, status, message in result.findings]
    with lake.batch():
        lake.append("images", [image])
        lake.append("reconstructions", [recon])
        if quality:
            lake.append("quality", quality)
    return {k: v for k, v in image.items() if k != "voxels"}
