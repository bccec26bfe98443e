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
- ``auto``: ``monai`` when the registry holds a champion, else ``totalsegmentator`` when
  installed, else none (organs without contours are then missing, with a warning).
- ``none``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from theralake.lake import Volume

__all__ = ["BACKENDS", "Segmenter", "SegmentationUnavailable", "totalsegmentator_available",
           "totalsegmentator_segmenter"]

BACKENDS = ("auto", "monai", "totalsegmentator", "none")


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


def totalsegmentator_available() -> bool:
    """TotalSegmentator importable and its weights present (nothing is downloaded)."""
    if importlib.util.find_spec("totalsegmentator") is None:
        return False
    home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
    return any((home / "nnunet" / "results").glob("Dataset*")) if home.exists() else False


def totalsegmentator_segmenter(organs: Iterable[str]) -> Segmenter:
    """TotalSegmentator (its class names are the project's VOI names).

    Raises:
        SegmentationUnavailable: not installed with its weights.
    """
    if not totalsegmentator_available():
        raise SegmentationUnavailable(
            "TotalSegmentator is not installed with its weights (pip install TotalSegmentator, "
            "then download the weights where TOTALSEG_HOME_DIR points)")
    from totalsegmentator.python_api import totalsegmentator  # optional dependency

    def run(ct: Volume, wanted: list[str]) -> dict[str, np.ndarray]:
        out = {}
        with tempfile.TemporaryDirectory(prefix="theralake-ts-") as tmp:
            src, dst = Path(tmp) / "ct.nii.gz", Path(tmp) / "masks"
            sitk.WriteImage(ct.to_sitk(), str(src))
            totalsegmentator(str(src), str(dst), roi_subset=wanted, quiet=True)
            for organ in wanted:  # one NIfTI per class, named as the project names VOIs
                path = dst / f"{organ}.nii.gz"
                if path.exists():
                    mask = sitk.Resample(sitk.ReadImage(str(path)), ct.to_sitk(),
                                         sitk.Transform(), sitk.sitkNearestNeighbor, 0)
                    out[organ] = sitk.GetArrayFromImage(mask) > 0
        return out

    return Segmenter("totalsegmentator", "TotalSegmentator", tuple(organs), run)
