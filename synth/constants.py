"""Physical constants and coded values used by the synthetic cohort.

Decay data follow REFERENCES.md (ICRP-107): Lu-177 half-life 6.647 d, 147.9 keV of
electrons and 35.1 keV of X and gamma photons per decay; Ga-68 half-life 67.71 min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KEV_TO_J = 1.602176634e-16


@dataclass(frozen=True)
class Nuclide:
    """Decay data and DICOM codes of a radionuclide."""

    name: str
    half_life_h: float
    electron_kev: float
    photon_kev: float
    snomed_code: str
    snomed_meaning: str

    @property
    def half_life_s(self) -> float:
        return self.half_life_h * 3600.0

    @property
    def decay_const_per_h(self) -> float:
        return math.log(2.0) / self.half_life_h


LU177 = Nuclide("Lu-177", 6.647 * 24.0, 147.9, 35.1, "C-145A4", "^177^Lutetium")
GA68 = Nuclide("Ga-68", 67.71 / 60.0, 0.0, 0.0, "C-131A3", "^68^Gallium")

NUCLIDES: dict[str, Nuclide] = {n.name: n for n in (LU177, GA68)}

#: Therapy nuclides the generator can simulate (kinetics and dose are Lu-177 specific).
THERAPY_NUCLIDES = ("Lu-177",)

#: Effective linear absorption coefficient (1/cm) of the Lu-177 photons in a unit-density
#: sphere, fitted so that 1 - exp(-mu r) reproduces the photon part of the OLINDA sphere
#: self-dose S-value at 116 g (REFERENCES.md: 2.07E-13 Gy/(Bq s) vs 2.04E-13 from electrons alone).
LU177_PHOTON_MU_PER_CM = 0.0191


def get_nuclide(name: str) -> Nuclide:
    """Look a nuclide up by name ("Lu-177", "Ga-68"), with a clear error if unknown."""
    try:
        return NUCLIDES[name]
    except KeyError:
        raise ValueError(
            f"unknown nuclide {name!r}; known: {', '.join(sorted(NUCLIDES))}"
        ) from None
