"""PSMA-ligand uptake: Ga-68 PET SUVs and Lu-177 kinetics per compartment.

The Lu-177 uptake fraction of a target scales with its Ga-68 PET SUV (exponent 1) times a
log-normal noise, which is what makes the therapy uptake predictable from the PET.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from theralake.synth.kinetics import ExpSum


@dataclass(frozen=True)
class UptakeRef:
    """Population reference of a compartment.

    Attributes:
        suv: Ga-68 PSMA-11 PET SUVmean at 60 min.
        fraction: Lu-177 peak-scale uptake fraction of the administered activity (organs),
            or per mL (lesions).
        t_uptake_h: uptake half-time.
        t_washout_h: biological washout half-time.
        sd: between-patient log-sd of the SUV.
        volume_ml: reference volume; organ uptake scales with SUV x volume (total PET uptake).
    """

    suv: float
    fraction: float
    t_uptake_h: float
    t_washout_h: float
    sd: float = 0.25
    volume_ml: float = 0.0


REFS: dict[str, UptakeRef] = {
    "kidney_left": UptakeRef(28.0, 0.022, 1.5, 55.0, sd=0.12, volume_ml=150.0),
    "kidney_right": UptakeRef(28.0, 0.022, 1.5, 55.0, sd=0.12, volume_ml=150.0),
    "liver": UptakeRef(5.5, 0.035, 2.0, 80.0, volume_ml=1650.0),
    "spleen": UptakeRef(7.0, 0.004, 1.5, 60.0, volume_ml=180.0),
    "parotid_gland_left": UptakeRef(14.0, 0.008, 1.0, 45.0, sd=0.15, volume_ml=25.0),
    "parotid_gland_right": UptakeRef(14.0, 0.008, 1.0, 45.0, sd=0.15, volume_ml=25.0),
    "submandibular_gland_left": UptakeRef(13.0, 0.0025, 1.0, 45.0, sd=0.15, volume_ml=8.0),
    "submandibular_gland_right": UptakeRef(13.0, 0.0025, 1.0, 45.0, sd=0.15, volume_ml=8.0),
    "urinary_bladder": UptakeRef(40.0, 0.15, 1.5, 4.0, sd=0.3),
    "red_marrow": UptakeRef(1.6, 0.008, 0.25, 12.0),
    "lesion": UptakeRef(14.0, 0.0004, 3.0, 150.0, sd=0.6),
    "remainder": UptakeRef(0.7, 1.0, 0.0, 0.0, sd=0.2),
}

#: log-sd of the Lu-177 uptake around the PET prediction, and of the washout half-times.
LU_PET_NOISE_SD = 0.12
WASHOUT_SD = 0.12
#: Paired organs share most of their variability (same patient, same physiology).
PAIRED_SD = 0.06


def pair_of(compartment: str) -> str | None:
    """The partner of a paired organ ("kidney_left" -> "kidney_right"), else None."""
    for a, b in (("_left", "_right"), ("_right", "_left")):
        if compartment.endswith(a):
            return compartment[: -len(a)] + b
    return None
#: Remainder (blood and soft tissue): fast renal clearance and slow tissue retention.
REMAINDER_FAST = (0.55, 0.07)  # mean, sd of the fast fraction
REMAINDER_T_FAST_H = 2.0
REMAINDER_T_SLOW_H = 60.0


def ref_for(compartment: str) -> UptakeRef:
    return REFS["lesion" if compartment.startswith("lesion") else compartment]


def sample_suvs(rng: np.random.Generator, compartments: list[str]) -> dict[str, float]:
    """Patient-specific PET SUVmean per compartment (paired organs correlated)."""
    out: dict[str, float] = {}
    for c in compartments:
        partner = pair_of(c)
        if partner in out:
            out[c] = out[partner] * math.exp(rng.normal(0.0, PAIRED_SD))
        else:
            r = ref_for(c)
            out[c] = r.suv * math.exp(rng.normal(0.0, r.sd))
    return out


def lu_kinetics(
    rng: np.random.Generator, compartment: str, suv: float, volume_ml: float = 1.0,
    uptake_factor: float = 1.0, shared: tuple[float, float] | None = None,
) -> ExpSum:
    """Lu-177 kinetics of a compartment correlated with its PET SUV.

    Args:
        rng: random generator.
        compartment: compartment name.
        suv: its Ga-68 PET SUVmean.
        volume_ml: organ or lesion volume (uptake scales with SUV x volume).
        uptake_factor: cycle-dependent change (organ damage, lesion response).
        shared: (uptake noise, washout factor) log-normal draws shared by paired organs;
            drawn here when None.
    """
    if compartment == "remainder":
        a_fast = float(np.clip(rng.normal(*REMAINDER_FAST), 0.35, 0.75))
        t_fast = REMAINDER_T_FAST_H * math.exp(rng.normal(0, 0.2))
        t_slow = REMAINDER_T_SLOW_H * math.exp(rng.normal(0, WASHOUT_SD))
        return ExpSum((a_fast, 1.0 - a_fast), (math.log(2) / t_fast, math.log(2) / t_slow))
    r = ref_for(compartment)
    noise, wash = shared if shared is not None else draw_shared(rng)
    frac = r.fraction * (suv / r.suv) * noise
    if compartment.startswith("lesion"):
        frac *= volume_ml
    elif r.volume_ml > 0:
        frac *= volume_ml / r.volume_ml
    t_up = r.t_uptake_h * math.exp(rng.normal(0, 0.2))
    t_wash = max(r.t_washout_h * wash, 1.5 * t_up)
    return ExpSum.uptake_washout(frac * uptake_factor, t_up, t_wash)


def draw_shared(rng: np.random.Generator) -> tuple[float, float]:
    """Log-normal factors of the Lu uptake around the PET prediction and of the washout."""
    return math.exp(rng.normal(0.0, LU_PET_NOISE_SD)), math.exp(rng.normal(0.0, WASHOUT_SD))
