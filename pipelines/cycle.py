"""One patient-cycle's dosimetry as ``theralake dosimetry`` and ``theralake run`` do it: read
its inputs, load the segmenter and the AI registration its settings ask for, compute, write."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from theralake.dosimetry.auto_vois import SegmentationUnavailable
from theralake.dosimetry.cycle import CycleResult, compute_cycle
from theralake.dosimetry.cycle_io import read_cycle, write_cycle
from theralake.dosimetry.patient import ai_registrar
from theralake.dosimetry.settings import DosimetryError, load_config, resolve_config
from theralake.lake import Lake
from theralake.pipelines.segmenters import load_lesion_finder, load_segmenter_backend

__all__ = ["dosimetry_cycle", "dosimetry_settings"]


def dosimetry_settings(lake: Lake, path: str | Path | None = None, **overrides: object) -> dict:
    """The dosimetry settings (packaged default, a user YAML, overrides) with the AI
    registration model pinned by its weights' hash.

    Raises:
        DosimetryError: bad settings, ``ai`` registration without a trained model.
    """
    settings = resolve_config(lake, load_config(path, **overrides))
    try:
        finder = load_lesion_finder(lake, settings)
    except SegmentationUnavailable as exc:
        raise DosimetryError(f"lesions.method network: {exc}") from exc
    if finder is None:
        return settings
    # the model's version is part of the settings (and of their hash): a new one recomputes
    return {**settings, "lesions": {**settings["lesions"], "model_version": finder.name}}


def dosimetry_cycle(lake: Lake, patient_id: str, cycle: int, settings: dict,
                    on_stage: Callable[[str], None] | None = None) -> CycleResult:
    """Compute one patient-cycle and append its rows (idempotent); ``on_stage`` hears the
    name of each stage as it starts.

    Raises:
        DosimetryError: the cycle cannot be computed (the message says why).
        SegmentationUnavailable: an explicitly chosen segmentation backend cannot run.
    """
    stage = on_stage or (lambda _: None)
    stage("reading the lake")
    inputs = read_cycle(lake, patient_id, cycle)
    segmenter = load_segmenter_backend(lake, settings)
    result = compute_cycle(inputs, settings, segmenter, ai_registrar(settings), on_stage,
                           lesion_finder=load_lesion_finder(lake, settings))
    stage("writing the lake")
    write_cycle(lake, result)
    return result
