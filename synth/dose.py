"""Truth absorbed dose and BED.

Method ``local_electrons+sphere_photon_af`` (recorded in the truth tables): all electron
energy (147.9 keV per Lu-177 decay) is deposited where the decay happens; the photon energy
(35.1 keV per decay) is absorbed within the decay's own VOI with the self-absorbed fraction of
a unit-density sphere of the same mass, phi = 1 - exp(-mu r), mu fitted to the OLINDA sphere
S-value at 116 g (REFERENCES.md). Photon cross-dose between VOIs is neglected (it is below
a few percent for Lu-177 in organs). The voxel dose map applies the same rule voxel by
voxel, so the mass-weighted mean of the dose map over a VOI equals the VOI dose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from theralake.synth.constants import KEV_TO_J, LU177_PHOTON_MU_PER_CM, Nuclide

DOSE_METHOD = "local_electrons+sphere_photon_af"
MBQH_TO_BQS = 3.6e9


@dataclass(frozen=True)
class Radiobiology:
    """Linear-quadratic parameters of a tissue."""

    alpha_beta_gy: float
    t_rep_h: float


#: Kidney values are REFERENCES.md's (Bodei et al.); salivary glands, marrow and tumour are
#: documented assumptions of the generator (synth/README.md).
RADIOBIOLOGY: dict[str, Radiobiology] = {
    "kidney": Radiobiology(2.6, 2.8),
    "salivary": Radiobiology(3.0, 1.5),
    "red_marrow": Radiobiology(10.0, 0.5),
    "tumour": Radiobiology(1.5, 1.5),
    "default": Radiobiology(3.0, 1.5),
}


def radiobiology_for(voi: str) -> Radiobiology:
    """LQ parameters used for a VOI name."""
    if voi.startswith("kidney"):
        return RADIOBIOLOGY["kidney"]
    if voi.startswith(("parotid", "submandibular")):
        return RADIOBIOLOGY["salivary"]
    if voi.startswith(("lesion", "tumor")):
        return RADIOBIOLOGY["tumour"]
    if voi == "red_marrow":
        return RADIOBIOLOGY["red_marrow"]
    return RADIOBIOLOGY["default"]


def photon_absorbed_fraction(mass_g: float, density: float = 1.0) -> float:
    """Self-absorbed fraction of the Lu-177 photons in a sphere of the given mass."""
    if mass_g <= 0:
        return 0.0
    r_cm = (3.0 * mass_g / density / (4.0 * math.pi)) ** (1.0 / 3.0)
    return 1.0 - math.exp(-LU177_PHOTON_MU_PER_CM * r_cm)


def energy_per_decay_j(nuclide: Nuclide, photon_af: float) -> float:
    """Energy absorbed locally per decay (J)."""
    return (nuclide.electron_kev + photon_af * nuclide.photon_kev) * KEV_TO_J


def absorbed_dose_gy(tia_mbq_h: float, mass_g: float, nuclide: Nuclide,
                     photon_af: float) -> float:
    """Mean absorbed dose of a VOI from its own time-integrated activity."""
    if mass_g <= 0:
        return 0.0
    return tia_mbq_h * MBQH_TO_BQS * energy_per_decay_j(nuclide, photon_af) / (mass_g / 1000.0)


def bed_gy(dose_gy: float, lambda_eff_per_h: float, rb: Radiobiology) -> float:
    """BED for a mono-exponentially decreasing dose rate (REFERENCES.md)."""
    mu = math.log(2.0) / rb.t_rep_h
    return dose_gy * (1.0 + dose_gy * lambda_eff_per_h / ((mu + lambda_eff_per_h)
                                                          * rb.alpha_beta_gy))


def eqd2_gy(bed: float, rb: Radiobiology) -> float:
    """EQD2 from BED."""
    return bed / (1.0 + 2.0 / rb.alpha_beta_gy)
