"""The organ segmenter a dosimetry run asks for (``segmentation`` in its settings), loaded
from where it lives: a weights folder, the lake's MLflow registry, or TotalSegmentator; and the
lesion network (``lesions.method: network``, ``lesions.model``)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from theralake.dosimetry.auto_vois import (
    BACKENDS,
    LesionFinder,
    SegmentationUnavailable,
    Segmenter,
    totalsegmentator_available,
    totalsegmentator_segmenter,
)
from theralake.lake import Lake, Volume
from theralake.modeling.lesion_segmentation_training import load_lesion_segmenter
from theralake.modeling.segmentation_training import DEFAULT_NAME, load_segmenter
from theralake.registry.tracking import ModelNotFoundError

__all__ = ["load_lesion_finder", "load_segmenter_backend"]


@functools.lru_cache(maxsize=4)
def _monai(lake_path: str, model: str | None) -> Segmenter | str:
    """The MONAI segmenter, or why there is none (cached either way)."""
    try:
        if model and Path(model).is_dir():
            seg, name = load_segmenter(weights_dir=model), f"weights {Path(model).name}"
        else:
            base, _, alias = (model or f"{DEFAULT_NAME}@champion").partition("@")
            seg = load_segmenter(lake_path, name=base, alias=alias or "champion")
            name = f"{base} v{seg.registry_version_}"
    except (ModelNotFoundError, FileNotFoundError) as exc:
        return str(exc)
    organs = tuple(seg.config.organs)

    def run(ct: Volume, wanted: list[str]) -> dict[str, np.ndarray]:
        labels = seg.predict(ct).array
        return {o: labels == i for i, o in enumerate(organs, start=1) if o in wanted}

    return Segmenter("ai", name, organs, run)


def load_segmenter_backend(lake: Lake, settings: dict) -> Segmenter | None:
    """The segmenter of the dosimetry settings' ``segmentation`` section, or None.

    Raises:
        SegmentationUnavailable: an explicitly chosen backend cannot run here.
    """
    seg = settings.get("segmentation") or {}
    backend = seg.get("backend", "auto")
    if backend not in BACKENDS:
        raise SegmentationUnavailable(f"unknown segmentation backend {backend!r}; one of "
                                      f"{', '.join(BACKENDS)}")
    if backend == "none":
        return None
    if backend in ("monai", "auto"):
        found = _monai(str(Path(lake.path).resolve()), seg.get("model"))
        if isinstance(found, Segmenter):
            return found
        if backend == "monai":
            raise SegmentationUnavailable(found)
    if backend == "totalsegmentator" or totalsegmentator_available():
        return totalsegmentator_segmenter(settings["organs"])
    return None


@functools.lru_cache(maxsize=4)
def _lesion_finder(lake_path: str, model: str | None) -> LesionFinder:
    seg, name = load_lesion_segmenter(Lake(lake_path, create=False), model)

    def pet_probability(pet_ct: Volume, pet: Volume) -> Volume:
        return seg.probability(pet_ct, pet, network="pet")

    def find(ct: Volume, spect: Volume, prior: Volume | None) -> list:
        return seg.segment(ct, spect, prior)

    return LesionFinder(name, pet_probability, find)


def load_lesion_finder(lake: Lake, settings: dict) -> LesionFinder | None:
    """The lesion network of the settings (``lesions.method: network``), else None.

    Raises:
        SegmentationUnavailable: no such model in the registry or folder.
    """
    opts = settings["lesions"]
    if opts["method"] != "network":
        return None
    try:
        return _lesion_finder(str(Path(lake.path).resolve()), opts.get("model"))
    except (ModelNotFoundError, FileNotFoundError) as exc:
        raise SegmentationUnavailable(str(exc)) from exc
