"""What a patient's features are computed from, read from the lake: ``read_features``.

Which rows count is decided by :mod:`theralake.lake.views`: each cycle's reference CT and its
current dose map (the VOIs its dosimetry used), the SPECT time points and the PET, the VOIs
of each image's CT, the kinetics behind each VOI's BED, the therapy activity of each cycle
and the patient's weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from theralake.lake import Lake, Volume
from theralake.lake.views import (
    current,
    current_run,
    dose_map,
    dosimetry_vois,
    pair_time_points,
    reference_ct,
    therapy_administration,
    vois_on_image,
)

__all__ = ["FeatureImage", "FeatureInputs", "read_features"]


@dataclass
class FeatureImage:
    """One image features are computed on, with the VOI masks that go with it."""

    kind: str  # ct | pet | spect | dose
    row: dict  # the image's (or dose map's) row, voxels included
    vois: dict[str, Volume]  # VOI masks on the CT of its frame (the body left out)


@dataclass
class FeatureInputs:
    """A patient's images, VOIs and the numbers features need besides them."""

    patient_id: str
    images: list[FeatureImage] = field(default_factory=list)
    #: per (cycle, VOI): BED = D + k D^2 with k = G / (alpha/beta) of its dosimetry
    bed_k_per_gy: dict[tuple[int, str], float] = field(default_factory=dict)
    #: per cycle: (therapy activity MBq, nuclide)
    therapy: dict[int, tuple[float, str]] = field(default_factory=dict)
    weight_kg: float | None = None


def _masks(vois: pd.DataFrame) -> dict[str, Volume]:
    return {r["voi"]: Volume.from_row(r) for r in vois.to_dict("records") if r["voi"] != "body"}


def read_features(lake: Lake, patient_id: str) -> FeatureInputs:
    """The rows one patient's features are computed from."""
    out = FeatureInputs(patient_id)
    images = lake.read("images", "patient_id = ? AND kind IN ('ct', 'pet', 'spect')",
                       [patient_id])
    pet_frames = set(images[images.kind == "pet"].frame_of_reference_key)
    by_id = {r["id"]: r for r in images.to_dict("records")}
    cycles = sorted(int(c) for c in images[images.kind == "spect"].cycle.dropna().unique())
    for cycle in cycles:
        mine = images[(images.cycle == cycle) & ~images.frame_of_reference_key.isin(pet_frames)]
        for spect, ct in pair_time_points(mine):
            vois = _masks(vois_on_image(lake, ct["id"])) if ct else {}
            out.images.append(FeatureImage("spect", spect, vois))
        ref = reference_ct(lake, patient_id, cycle)
        if ref is not None:
            out.images.append(FeatureImage("ct", by_id.get(ref["id"], ref),
                                           _masks(vois_on_image(lake, ref["id"]))))
        found = dose_map(lake, patient_id, cycle)
        if found is not None:
            out.images.append(FeatureImage("dose", {**found, "time_h": None},
                                           _masks(dosimetry_vois(lake, patient_id, cycle))))
            _bed_factors(lake, found, out)
        admin = therapy_administration(lake, patient_id, cycle)
        if admin is not None:
            out.therapy[cycle] = (float(admin["activity_mbq"]), str(admin["nuclide"]))
    for pet in images[images.kind == "pet"].sort_values(["cycle", "time_h", "id"]
                                                        ).to_dict("records"):
        cts = images[(images.kind == "ct")
                     & (images.frame_of_reference_key == pet["frame_of_reference_key"])]
        vois = _masks(vois_on_image(lake, cts.iloc[0].id)) if not cts.empty else {}
        out.images.append(FeatureImage("pet", pet, vois))
    out.weight_kg = _weight_kg(lake, patient_id)
    return out


def _bed_factors(lake: Lake, found: dict, out: FeatureInputs) -> None:
    """k = G / (alpha/beta) of each VOI of the dosimetry run that made the dose map."""
    od = current_run(lake.read("organ_dosimetry", "patient_id = ? AND cycle = ? AND "
                               "params_hash = ?", [found["patient_id"], found["cycle"],
                                                   found["params_hash"]]))
    for r in od.to_dict("records"):
        g, ab = r.get("lea_catcheside_g"), r.get("alpha_beta_gy")
        key = (int(r["cycle"]), r["voi"])
        if _finite(g) and _finite(ab):
            out.bed_k_per_gy[key] = float(g) / float(ab)
        elif not _finite(ab) and r.get("bed_gy") == r.get("absorbed_dose_gy"):
            out.bed_k_per_gy[key] = 0.0  # no LQ parameters: BED is the dose, as stored


def _finite(value: object) -> bool:
    return value is not None and bool(np.isfinite(value))


def _weight_kg(lake: Lake, patient_id: str) -> float | None:
    rows = current(lake.read("clinical", "patient_id = ? AND variable = 'weight_kg'",
                             [patient_id]), ["variable"])
    return float(rows.iloc[0].value_num) if not rows.empty and pd.notna(rows.iloc[0].value_num) \
        else None
