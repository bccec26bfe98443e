"""``tumor_total``: the union of a patient-cycle's lesions, from their own results.

The union's TIA and mass are the lesions' sums; its absorbed dose is their mass-weighted
mean (exactly the mean dose over the union's mass), and so are its dose-map mean, BED and
EQD2 (the mean BED over the tumour mass: BED is not linear in dose, so this is not the BED of
the mean dose). Lesions are measured independently, so uncertainties add in quadrature; a
lesion without one leaves the union without one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["TUMOUR_TOTAL", "tumour_total"]

TUMOUR_TOTAL = "tumor_total"
_MEANS = ("absorbed_dose_gy", "map_mean_dose_gy", "bed_gy", "eqd2_gy")
_SIGMAS = ("absorbed_dose_sigma_gy", "bed_sigma_gy", "eqd2_sigma_gy")


def tumour_total(lesions: Sequence[Mapping[str, object]], activity_mbq: float) -> dict:
    """The values of the ``tumor_total`` row from the lesions' rows (mass_g, tia_mbq_h,
    absorbed_dose_gy and their uncertainties, ...).

    Raises:
        ValueError: no lesion, or a lesion without a positive mass.
    """
    if not lesions:
        raise ValueError("tumor_total needs at least one lesion")
    mass = [float(r["mass_g"]) for r in lesions]
    if not all(m > 0 for m in mass):
        raise ValueError("every lesion needs a positive mass for tumor_total")
    total = sum(mass)
    out: dict[str, object] = {"mass_g": total,
                              "tia_mbq_h": sum(float(r["tia_mbq_h"]) for r in lesions),
                              "tia_sigma_mbq_h": _quadrature([r.get("tia_sigma_mbq_h")
                                                              for r in lesions])}
    for key in _MEANS:
        values = [r.get(key) for r in lesions]
        out[key] = None if any(v is None for v in values) else \
            sum(m * float(v) for m, v in zip(mass, values, strict=True)) / total
    for sigma in _SIGMAS:
        parts = [None if r.get(sigma) is None else m * float(r[sigma])
                 for m, r in zip(mass, lesions, strict=True)]
        spread = _quadrature(parts)
        out[sigma] = None if spread is None else spread / total
    out["max_dose_gy"] = max(float(r["max_dose_gy"]) for r in lesions)
    out["dose_per_activity_gy_per_gbq"] = float(out["absorbed_dose_gy"]) / (activity_mbq / 1e3)
    return out


def _quadrature(values: Sequence[object]) -> float | None:
    if any(v is None or not math.isfinite(float(v)) for v in values):
        return None
    return math.sqrt(sum(float(v) ** 2 for v in values))
