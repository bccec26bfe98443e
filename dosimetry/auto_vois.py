"""Organ VOIs from CT when no contour of an organ exists for a patient-cycle.

A :class:`Segmenter` is what the dosimetry of a cycle is handed by its caller: a function
from a CT to organ masks, the ``vois.source`` and ``source_name`` its masks are stored under,
and the organs it knows. Imported RTSTRUCT/SEG/NIfTI contours always take precedence: only
organs that no CT of the patient carries are segmented.

Backends (``segmentation.backend`` in the dosimetry settings), loaded by the caller
(``theralake.pipelines.segmenters``):

- ``monai``: the project's organ segmenter (:mod:`theralake.dosimetry.segmentation`), from
  the user's weights folder (``segmentation.model``) or the lake's MLflow registry
  (``organ-segmenter@champion``, trained by ``theralake train-seg``).
- ``totalsegmentator``: TotalSegmentator (Wasserthal et al., Radiol Artif Intell 2023), used
  only when the package and its weights are installed (:func:`totalsegmentator_segmenter`).
  Each organ is asked of the task that has it (``TOTALSEGMENTATOR_CLASSES``: the abdominal
  organs of ``total``, the salivary glands of ``head_glands_cavities``, the body of ``body``);
  organs no task has (lacrimal glands, red marrow) are not offered, so they stay missing
  with the quality record's ``organ_missing`` warning.
- ``auto``: ``monai`` when the registry holds a champion, else ``totalsegmentator`` when
  installed, else none (organs without contours are then missing, with a warning).
- ``none``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from theralake.lake import Volume

__all__ = ["BACKENDS", "TOTALSEGMENTATOR_CLASSES", "LesionFinder", "Segmenter",
           "SegmentationUnavailable", "totalsegmentator_available", "totalsegmentator_segmenter"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "monai", "totalsegmentator", "none")
#: VOI -> (the TotalSegmentator task that has it, the classes whose union it is)
TOTALSEGMENTATOR_CLASSES: dict[str, tuple[str, tuple[str, ...]]] = {
    **{organ: ("total", (organ,)) for organ in (
        "liver", "spleen", "kidney_left", "kidney_right", "urinary_bladder")},
    **{gland: ("head_glands_cavities", (gland,)) for gland in (
        "parotid_gland_left", "parotid_gland_right", "submandibular_gland_left",
        "submandibular_gland_right")},
    "body": ("body", ("body_trunc", "body_extremities")),
}


class SegmentationUnavailable(RuntimeError):
    """The chosen segmentation backend cannot run here (no model, not installed)."""


@dataclass(frozen=True)
class Segmenter:
    """Organ masks from a CT, and how their ``vois`` rows are labelled."""

    source: str  # vois.source: ai | totalsegmentator
    name: str  # vois.source_name: the model and its version
    organs: tuple[str, ...]
    run: Callable[[Volume, list[str]], dict[str, np.ndarray]]

    def segment(self, ct: Volume, organs: Iterable[str]) -> dict[str, np.ndarray]:
        """Non-empty masks (on the CT's grid) of the asked organs this segmenter knows."""
        wanted = [o for o in organs if o in self.organs]
        if not wanted:
            return {}
        return {o: m for o, m in self.run(ct, wanted).items() if o in wanted and m.any()}


@dataclass(frozen=True)
class LesionFinder:
    """Lesions on a SPECT/CT by a network (``lesions.method: network``), with the PET's lesion
    probability as a prior; the ``vois`` rows get ``source`` lesion_network and ``name``.

    ``pet_probability(pet_ct, pet)`` is the lesion probability on the PET's CT;
    ``find(ct, spect, prior)`` the lesions on the CT's grid (``prior`` on that grid, or None).
    """

    name: str
    pet_probability: Callable[[Volume, Volume], Volume]
    find: Callable[[Volume, Volume, Volume | None], list]


def totalsegmentator_available() -> bool:
    """TotalSegmentator importable and its weights present (nothing is downloaded)."""
    if importlib.util.find_spec("totalsegmentator") is None:
        return False
    home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
    return any((home / "nnunet" / "results").glob("Dataset*")) if home.exists() else False


def totalsegmentator_segmenter(organs: Iterable[str]) -> Segmenter:
    """TotalSegmentator, each organ asked of the task that has it (``TOTALSEGMENTATOR_CLASSES``;
    the ``total`` task with a ``roi_subset``, the others whole).

    Raises:
        SegmentationUnavailable: not installed with its weights.
    """
    if not totalsegmentator_available():
        raise SegmentationUnavailable(
            "TotalSegmentator is not installed with its weights (pip install TotalSegmentator, "
            "then download the weights where TOTALSEG_HOME_DIR points)")
    from totalsegmentator.python_api import totalsegmentator  # optional dependency

    def run(ct: Volume, wanted: list[str]) -> dict[str, np.ndarray]:
        tasks: dict[str, list[str]] = {}
        for organ in wanted:
            tasks.setdefault(TOTALSEGMENTATOR_CLASSES[organ][0], []).append(organ)
        out = {}
        with tempfile.TemporaryDirectory(prefix="theralake-ts-") as tmp:
            src = Path(tmp) / "ct.nii.gz"
            sitk.WriteImage(ct.to_sitk(), str(src))
            for task, mine in tasks.items():
                dst = Path(tmp) / task
                classes = [c for o in mine for c in TOTALSEGMENTATOR_CLASSES[o][1]]
                try:
                    totalsegmentator(str(src), str(dst), task=task, quiet=True,
                                     roi_subset=classes if task == "total" else None)
                except Exception as exc:  # noqa: BLE001 - a task's weights or licence
                    log.warning("TotalSegmentator task %s failed (%s): %s not segmented",
                                task, exc, ", ".join(mine))
                    continue
                for organ in mine:
                    mask = _union(dst, TOTALSEGMENTATOR_CLASSES[organ][1], ct)
                    if mask is not None:
                        out[organ] = mask
        return out

    offered = tuple(o for o in organs if o in TOTALSEGMENTATOR_CLASSES)
    return Segmenter("totalsegmentator", "TotalSegmentator", offered, run)


def _union(folder: Path, classes: tuple[str, ...], ct: Volume) -> np.ndarray | None:
    """The union of a task's class masks (one NIfTI per class) on the CT's grid."""
    found = None
    for name in classes:
        path = folder / f"{name}.nii.gz"
        if not path.exists():
            continue
        mask = sitk.Resample(sitk.ReadImage(str(path)), ct.to_sitk(), sitk.Transform(),
                             sitk.sitkNearestNeighbor, 0)
        array = sitk.GetArrayFromImage(mask) > 0
        found = array if found is None else found | array
    return found
