"""A VOI's absorbed dose from the cycle's dose map, its TIA and its CT mass; BED and EQD2.

The dose map holds each voxel's dose from the voxel TIA map (its own fits, no partial-volume
correction). A VOI's dose is the map's density-weighted mean inside it, scaled to the VOI's
best TIA: when the VOI's curve differs from the map's (partial-volume correction, its own CT's
contours, a time point left out) the difference is activity inside the VOI, which adds its
self-dose, and the energy is shared by the VOI's true CT mass:
``D = (E_map + (r - 1) E_self) / m`` with ``r`` the ratio of the two TIAs (same method).
``organ-s`` uses the TIA with the organ or sphere self S-value instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from theralake.dosimetry import radiobiology
from theralake.dosimetry.dose import vsv_dose
from theralake.dosimetry.organ_s import load_s_table
from theralake.dosimetry.sphere import sphere_self_s
from theralake.dosimetry.time_integration import Integration

__all__ = ["Bed", "DoseSigma", "VoiDose", "bed_of", "dose_sigma", "recovery",
           "self_s_gy_per_bq_s", "voi_dose"]

S_PER_H = 3600.0


@dataclass
class VoiDose:
    """A VOI's absorbed dose (Gy), the map's own means, and what the dose is."""

    dose_gy: float
    max_gy: float
    map_mean_gy: float  # the dose map's plain mean in the VOI (a DVH's Dmean)
    basis: str


def voi_dose(method: str, dose_map: np.ndarray, tia_map: np.ndarray, mask: np.ndarray,
             density: np.ndarray, voxel_ml: float, mass_g: float, tia: Integration,
             raw_tia_mbq_h: float | None, kernel: object | None, nuclide: str, voi: str,
             s_table: str | None, correction: str) -> VoiDose:
    """The dose of one VOI (``mask`` on the SPECT grid; ``raw_tia_mbq_h``: the TIA of the
    map's own curve in the VOI, None when the VOI's curve is the map's)."""
    weighted = float(np.average(dose_map[mask], weights=density[mask]))
    plain = float(dose_map[mask].mean())
    basis = f"{method} dose map, density-weighted mean in the VOI on the SPECT grid"
    dose = weighted
    if raw_tia_mbq_h is not None:
        ratio = tia.tia_mbq_h / max(raw_tia_mbq_h, 1e-12)
        own = weighted if method == "ldm" else _self_dose_mean(
            tia_map, mask, kernel, density, method == "vsv-density")
        grid_mass_g = float(density[mask].sum() * voxel_ml)
        dose = (weighted + (ratio - 1.0) * own) * grid_mass_g / mass_g
        basis += (f", its self-dose scaled to the VOI's TIA ({correction}) and shared by the "
                  "VOI's CT mass")
    max_gy = float(dose_map[mask].max()) * dose / max(weighted, 1e-30)
    if method == "organ-s":
        dose = tia.tia_mbq_h * 1e6 * S_PER_H * self_s_gy_per_bq_s(s_table, nuclide, voi,
                                                                    mass_g)
        basis = f"organ-s: the VOI's TIA ({correction}) x its self S-value at its CT mass"
    return VoiDose(dose, max_gy, plain, basis)


def _self_dose_mean(tia_map: np.ndarray, mask: np.ndarray, kernel: object,
                    density: np.ndarray, density_correction: bool) -> float:
    """Density-weighted mean dose (Gy) in a VOI from the VOI's own TIA only (VSV kernel)."""
    half = np.array(kernel.values_mgy_per_mbq_s.shape) // 2
    idx = np.nonzero(mask)
    box = tuple(slice(max(int(i.min()) - h, 0), int(i.max()) + h + 1)
                for i, h in zip(idx, half, strict=True))
    own = np.where(mask[box], tia_map[box], 0.0)
    dose = vsv_dose(own, kernel, density[box] if density_correction else None)
    return float(np.average(dose[mask[box]], weights=density[box][mask[box]]))


def recovery(path: str, volume_ml: float) -> float:
    """The recovery coefficient of a lesion's volume from a sphere calibration CSV."""
    table = pd.read_csv(path).sort_values("volume_ml")
    return float(np.interp(volume_ml, table.volume_ml, table.recovery))


def self_s_gy_per_bq_s(s_table: str | None, nuclide: str, voi: str, mass_g: float) -> float:
    """Self S-value (Gy/(Bq s)): the configured organ table scaled by mass, else the sphere."""
    if s_table:
        table = load_s_table(s_table)
        key = (nuclide, voi, voi)
        if key in table.values:
            ref_mass = table.reference_mass_g.get(key)
            s = table.values[key]
            return s * ref_mass / mass_g if ref_mass else s
    return sphere_self_s(nuclide, mass_g).s_gy_per_bq_s


@dataclass
class Bed:
    """BED and EQD2 of a VOI and the LQ parameters behind them; ``caveat`` says what they
    rest on when it is not a sourced tissue row (a quality finding of the cycle)."""

    bed_gy: float
    eqd2_gy: float
    g_factor: float | None
    alpha_beta_gy: float | None
    repair_half_time_h: float | None
    caveat: str | None = None


def bed_of(voi: str, dose_gy: float, tia: Integration) -> Bed:
    """BED and EQD2 of a VOI's dose with its kinetics (the dose itself for tissues without
    LQ parameters, said in ``caveat``; so are parameters whose source is still to verify)."""
    try:
        tissue = radiobiology.get_tissue(voi)
    except ValueError:
        return Bed(dose_gy, dose_gy, None, None, None,
                   "no linear-quadratic parameters for this tissue: BED and EQD2 equal the "
                   "absorbed dose (alpha/beta taken as infinite)")
    caveat = None if tissue.status == "reference" else (
        f"BED and EQD2 rest on conventional {tissue.name} parameters (alpha/beta "
        f"{tissue.alpha_beta_gy:g} Gy, repair half-time {tissue.t_rep_h:g} h) whose source is "
        "not verified (dosimetry/data/tissues.csv)")
    if dose_gy <= 0:
        return Bed(0.0, 0.0, None, tissue.alpha_beta_gy, tissue.t_rep_h, caveat)
    res = radiobiology.bed_exponential(dose_gy, tia.coefficients, tia.rates_per_h,
                                       tissue.alpha_beta_gy, tissue.t_rep_h)
    return Bed(res.bed_gy, res.eqd2_gy, res.g_factor, tissue.alpha_beta_gy, tissue.t_rep_h,
               caveat)


@dataclass
class DoseSigma:
    """Standard uncertainties (Gy) of a VOI's absorbed dose, BED and EQD2."""

    dose_gy: float | None
    bed_gy: float | None
    eqd2_gy: float | None


def dose_sigma(dose_gy: float, tia: Integration, bed: Bed) -> DoseSigma:
    """The TIA's relative uncertainty carried into the dose (a VOI's dose scales with its
    TIA), and through BED = D + G D^2 / (alpha/beta) by its derivative 1 + 2 G D / (alpha/beta).

    The TIA term dominates the dose's uncertainty (EANM 2018 guidance, Gear et al.); the mass
    and S-value terms are not included. None when the TIA has no uncertainty.
    """
    sd = tia.tia_sd_mbq_h
    if sd is None or not np.isfinite(sd) or not tia.tia_mbq_h > 0:
        return DoseSigma(None, None, None)
    sd_dose = float(dose_gy * sd / tia.tia_mbq_h)
    if bed.g_factor is None or not bed.alpha_beta_gy:
        return DoseSigma(sd_dose, sd_dose, sd_dose)
    sd_bed = sd_dose * (1.0 + 2.0 * bed.g_factor * dose_gy / bed.alpha_beta_gy)
    return DoseSigma(sd_dose, sd_bed, sd_bed / (1.0 + 2.0 / bed.alpha_beta_gy))
