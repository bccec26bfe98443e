"""The Dice of organ masks that a CT-to-CT registration brings into line (the quality of a
registration, in ``registrations.organ_dice_before/after``). Carrying VOIs from one CT to
another is :mod:`theralake.dosimetry.cycle_vois`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from theralake.dosimetry import registration
from theralake.lake import Volume

__all__ = ["label_map", "organ_dice"]


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
