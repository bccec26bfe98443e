"""Label codes of the phantom, their tissue properties and the VOIs built from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_LESIONS = 15
LESION_BASE = 100  # lesion i (1-based) has label LESION_BASE + i


@dataclass(frozen=True)
class Tissue:
    """Properties of one label of the phantom.

    Attributes:
        name: tissue name.
        hu: mean CT number.
        hu_sd: CT noise (HU).
        density: mass density (g/mL).
        compartment: kinetic compartment whose activity the voxel shares.
        weight: relative uptake of the voxel within its compartment.
    """

    name: str
    hu: float
    hu_sd: float
    density: float
    compartment: str
    weight: float = 1.0


TISSUES: dict[int, Tissue] = {
    0: Tissue("air", -1000.0, 5.0, 0.0012, "outside", 0.0),
    1: Tissue("soft_tissue", 40.0, 12.0, 1.04, "remainder", 1.0),
    2: Tissue("fat", -100.0, 12.0, 0.95, "remainder", 0.25),
    3: Tissue("lung_left", -780.0, 25.0, 0.26, "remainder", 0.15),
    4: Tissue("lung_right", -780.0, 25.0, 0.26, "remainder", 0.15),
    5: Tissue("bone", 750.0, 60.0, 1.60, "remainder", 0.5),
    6: Tissue("red_marrow", 220.0, 30.0, 1.10, "red_marrow", 1.0),
    7: Tissue("liver", 60.0, 10.0, 1.06, "liver", 1.0),
    8: Tissue("spleen", 48.0, 10.0, 1.06, "spleen", 1.0),
    9: Tissue("kidney_left_cortex", 40.0, 10.0, 1.05, "kidney_left", 1.0),
    10: Tissue("kidney_left_medulla", 30.0, 10.0, 1.05, "kidney_left", 0.35),
    11: Tissue("kidney_right_cortex", 40.0, 10.0, 1.05, "kidney_right", 1.0),
    12: Tissue("kidney_right_medulla", 30.0, 10.0, 1.05, "kidney_right", 0.35),
    13: Tissue("parotid_gland_left", 10.0, 10.0, 1.03, "parotid_gland_left", 1.0),
    14: Tissue("parotid_gland_right", 10.0, 10.0, 1.03, "parotid_gland_right", 1.0),
    15: Tissue("submandibular_gland_left", 45.0, 10.0, 1.04, "submandibular_gland_left", 1.0),
    16: Tissue("submandibular_gland_right", 45.0, 10.0, 1.04, "submandibular_gland_right", 1.0),
    17: Tissue("urinary_bladder", 8.0, 10.0, 1.01, "urinary_bladder", 1.0),
    18: Tissue("brain", 32.0, 10.0, 1.04, "remainder", 0.05),
}

#: Organ compartments with their own kinetics (lesions are added per patient).
ORGAN_COMPARTMENTS = (
    "kidney_left", "kidney_right", "liver", "spleen", "parotid_gland_left",
    "parotid_gland_right", "submandibular_gland_left", "submandibular_gland_right",
    "urinary_bladder", "red_marrow",
)

#: VOIs (DESIGN.md names) written to the SEG and the truth tables, as unions of labels.
ORGAN_VOIS: dict[str, tuple[int, ...]] = {
    "body": tuple(range(1, 19)),
    "lung_left": (3,), "lung_right": (4,),
    "liver": (7,), "spleen": (8,),
    "kidney_left": (9, 10), "kidney_right": (11, 12),
    "parotid_gland_left": (13,), "parotid_gland_right": (14,),
    "submandibular_gland_left": (15,), "submandibular_gland_right": (16,),
    "urinary_bladder": (17,), "red_marrow": (6,),
}

#: Extra truth-only masks (not in the SEG).
SUB_VOIS: dict[str, tuple[int, ...]] = {
    "kidney_left_cortex": (9,), "kidney_left_medulla": (10,),
    "kidney_right_cortex": (11,), "kidney_right_medulla": (12,),
    "bone": (5,),
}


def lesion_name(i: int) -> str:
    """VOI name of lesion i (1-based)."""
    return f"lesion_{i:03d}"


def lut(values: dict[int, float], default: float = 0.0) -> np.ndarray:
    """A lookup table indexed by label (lesion labels included)."""
    table = np.full(LESION_BASE + MAX_LESIONS + 1, default, dtype=np.float32)
    for k, v in values.items():
        table[k] = v
    return table


DENSITY_LUT = lut({k: t.density for k, t in TISSUES.items()}, default=1.04)
HU_LUT = lut({k: t.hu for k, t in TISSUES.items()}, default=40.0)
HU_SD_LUT = lut({k: t.hu_sd for k, t in TISSUES.items()}, default=12.0)
WEIGHT_LUT = lut({k: t.weight for k, t in TISSUES.items()}, default=1.0)
