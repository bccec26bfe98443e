"""VOIs carried from one CT of a patient to another by CT-to-CT registration, and the Dice of
organ masks that registration brings into line.

- A cycle whose reference CT lacks an organ's contour takes it from the previous cycle's
  reference CT (physician-approved contours are drawn once, on cycle 1).
- The pre-therapy PET/CT takes the cycle-1 reference CT's organs it lacks, so that its SUV
  metrics and radiomics have VOIs.

Carried masks are stored in ``vois`` with source ``transferred``, ``source_name`` naming where
they came from, and the registration (with its quality) in ``registrations``. Imported
contours of the target CT always win; carried contours win over AI segmentation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from theralake.dosimetry import registration
from theralake.lake import Lake, Volume, stable_hash

log = logging.getLogger(__name__)

__all__ = ["SOURCE", "carry_vois", "label_map", "missing_organs", "organ_dice", "organ_masks",
           "registration_row"]

SOURCE = "transferred"
#: VOI sources that are carried: contours, AI and earlier carried masks (not thresholds,
#: which each cycle finds on its own SPECT)
CARRIED_SOURCES = ("rtstruct", "seg", "nifti", "ai", SOURCE)

def label_map(masks: Mapping[str, Volume], names: list[str], grid: Volume) -> np.ndarray:
    """Label ``i + 1`` where ``masks[names[i]]`` is set (later names win), on ``grid``."""
    out = np.zeros(grid.array.shape, np.uint8)
    for value, name in enumerate(names, start=1):
        mask = masks[name]
        if not mask.same_grid(grid):
            raise ValueError(f"mask {name} is not on the CT's grid")
        out[mask.array > 0] = value
    return out


def organ_dice(fixed_masks: Mapping[str, Volume], moving_masks: Mapping[str, Volume],
               transform: sitk.Transform | None, fixed: Volume, moving: Volume
               ) -> float | None:
    """Mean Dice over the organs contoured on both CTs, of the fixed CT's masks and the
    moving CT's carried through ``transform`` (None: as they lie in the world, before
    registration). None when no organ is contoured on both."""
    names = sorted(set(fixed_masks) & set(moving_masks) - {"body"})
    if not names:
        return None
    ref = label_map(fixed_masks, names, fixed)
    moved = registration.resample_labels(
        moving.like(label_map(moving_masks, names, moving)),
        transform or sitk.Transform(3, sitk.sitkIdentity), fixed)
    scores = []
    for value in range(1, len(names) + 1):
        a, b = ref == value, moved == value
        total = a.sum() + b.sum()
        if total:
            scores.append(2.0 * np.logical_and(a, b).sum() / total)
    return float(np.mean(scores)) if scores else None


def registration_row(patient_id: str, cycle: int, fixed_row: dict, moving_row: dict,
                     reg: registration.RegistrationResult, chash: str,
                     activity_error: float | None = None,
                     dice: tuple[float | None, float | None] = (None, None)) -> dict:
    """A ``registrations`` row: the pair, its similarity before and after, its Jacobian
    range, the organ Dice before and after and its flags."""
    return {"id": stable_hash("registration", fixed_row["id"], moving_row["id"], chash),
            "patient_id": patient_id, "cycle": cycle, "fixed_image_id": fixed_row["id"],
            "moving_image_id": moving_row["id"], "time_h": moving_row.get("time_h"),
            "ncc_before": reg.ncc_before, "ncc_after": reg.ncc_after,
            "mi_before": reg.mi_before, "mi_after": reg.mi_after,
            "jacobian_min": reg.jacobian_min, "jacobian_max": reg.jacobian_max,
            "organ_dice_before": dice[0], "organ_dice_after": dice[1],
            "activity_error": activity_error, "failed": reg.failed,
            "reasons": "; ".join(reg.reasons), "input_ids": [fixed_row["id"], moving_row["id"]],
            "params_hash": chash}


def _carried(lake: Lake, ct_id: str, organs: list[str]) -> dict[str, dict]:
    """The organ VOIs of a CT that can be carried, one per organ (imported first)."""
    rows = lake.read("vois", "image_id = ?", [ct_id])
    rows = rows[rows.voi.isin(organs) & rows.source.isin(CARRIED_SOURCES)]
    rank = {s: i for i, s in enumerate(CARRIED_SOURCES)}
    rows = rows.assign(_r=rows.source.map(rank)).sort_values(["voi", "_r", "id"])
    return {r["voi"]: r for r in rows.drop_duplicates("voi").to_dict("records")}


def organ_masks(lake: Lake, ct_id: str, organs: list[str]) -> dict[str, Volume]:
    """The carriable organ masks of a CT (the body aside), one per organ."""
    return {n: Volume.from_row(r)
            for n, r in _carried(lake, ct_id, [o for o in organs if o != "body"]).items()}


def missing_organs(lake: Lake, source_id: str, target_id: str, organs: list[str]) -> list[str]:
    """The organs of ``organs`` that the source CT has (carriable) and the target CT lacks."""
    have = set(lake.read("vois", "image_id = ?", [target_id]).voi)
    return [n for n in _carried(lake, source_id, [o for o in organs if o != "body"])
            if n not in have]


def carry_vois(lake: Lake, source_row: dict, target_row: dict, organs: list[str],
               reg: registration.RegistrationResult, chash: str, cycle: int) -> list[dict]:
    """Carry the organs the target CT lacks from the source CT through ``reg`` (the source CT
    registered onto the target CT), and record the registration with the organ Dice of the
    organs contoured on both.

    Appends the ``vois`` rows (nearest-neighbour resampled masks) and the ``registrations``
    row; returns the ``vois`` rows.
    """
    target, source = Volume.from_row(target_row), Volume.from_row(source_row)
    source_vois = _carried(lake, source_row["id"], [o for o in organs if o != "body"])
    rows = []
    for name in missing_organs(lake, source_row["id"], target_row["id"], organs):
        src = source_vois[name]
        moved = registration.resample_mask(Volume.from_row(src), reg.transform, target)
        if not moved.any():
            log.warning("VOI %s carried from CT %s falls outside CT %s", name, source_row["id"],
                        target_row["id"])
            continue
        vol = target.like(moved.astype(np.uint8))
        row = {"patient_id": target_row["patient_id"], "voi": name, "image_id": target_row["id"],
               "cycle": target_row["cycle"], "time_h": target_row["time_h"], "source": SOURCE,
               "source_name": f"{src['source']} {name} of CT {source_row['id']}",
               "volume_ml": float(moved.sum() * target.voxel_volume_ml),
               "voxel_count": int(moved.sum()),
               "frame_of_reference_key": target_row["frame_of_reference_key"],
               **vol.geometry_columns(),
               "input_ids": [src["id"], source_row["id"], target_row["id"]]}
        row["id"] = vol.content_hash(target_row["patient_id"], name, target_row["id"], SOURCE,
                                     src["id"])
        rows.append(row)
    fixed_masks = organ_masks(lake, target_row["id"], organs)
    moving_masks = {n: Volume.from_row(r) for n, r in source_vois.items()}
    dice = tuple(organ_dice(fixed_masks, moving_masks, t, target, source)
                 for t in (None, reg.transform))
    lake.append("vois", rows)
    lake.append("registrations", [registration_row(
        str(target_row["patient_id"]), cycle, target_row, source_row, reg, chash, dice=dice)])
    if rows:
        log.info("carried %d VOI(s) from CT %s to CT %s", len(rows), source_row["id"],
                 target_row["id"])
    return rows
