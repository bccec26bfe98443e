"""Dosimetry of one patient-cycle in the lake: ``read_cycle -> compute_cycle -> write_cycle``.

:func:`run_cycle` is the three in a row, for a caller that has its segmenter (if any) at hand;
``theralake dosimetry`` and ``theralake run`` load the segmenter of the settings from the
lake's registry (``theralake.pipelines.cycle``) and call the same three.
"""

from __future__ import annotations

import functools

from theralake.dosimetry.auto_vois import LesionFinder, Segmenter
from theralake.dosimetry.cycle import CycleResult, compute_cycle
from theralake.dosimetry.cycle_io import read_cycle, write_cycle
from theralake.dosimetry.cycle_vois import Registrar
from theralake.dosimetry.registration_ai import AiRegistration
from theralake.dosimetry.settings import (
    METHODS,
    REGISTRATIONS,
    DosimetryError,
    config_hash,
    load_config,
    record_config,
    resolve_config,
)
from theralake.lake import Lake

__all__ = ["METHODS", "REGISTRATIONS", "CycleResult", "DosimetryError", "ai_registrar",
           "config_hash", "load_config", "record_config", "resolve_config", "run_cycle"]


def ai_registrar(settings: dict) -> Registrar | None:
    """The trained AI registration of resolved settings (``registration: ai``), else None."""
    if settings["registration"] != "ai":
        return None
    return _ai_model(settings["registration_model"],
                     settings["registration_model_sha256"]).register


@functools.lru_cache(maxsize=2)
def _ai_model(folder: str, sha256: str) -> AiRegistration:
    """A trained AI registration, loaded once per folder and weights hash."""
    return AiRegistration.load(folder)


def run_cycle(lake: Lake, patient_id: str, cycle: int, config: dict | None = None,
              segmenter: Segmenter | None = None, registrar: Registrar | None = None,
              lesion_finder: LesionFinder | None = None) -> CycleResult:
    """Compute one patient-cycle and append its rows to the lake (idempotent).

    Raises:
        DosimetryError: see :func:`~theralake.dosimetry.cycle.compute_cycle`.
    """
    config = resolve_config(lake, config or load_config())
    result = compute_cycle(read_cycle(lake, patient_id, cycle), config, segmenter,
                           registrar or ai_registrar(config), lesion_finder=lesion_finder)
    write_cycle(lake, result)
    return result
