"""The settings of a patient-cycle's dosimetry: the packaged default, a user's YAML and
overrides, checked once, hashed into every row they produce."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from theralake.dosimetry import MODEL_VERSION
from theralake.dosimetry.auto_vois import BACKENDS as SEGMENTATION_BACKENDS
from theralake.dosimetry.registration_files import default_model_dir, weights_sha256
from theralake.lake import Lake
from theralake.settings import deep_merge, load_settings

__all__ = ["METHODS", "MODEL_VERSION", "REGISTRATIONS", "DosimetryError", "config_hash",
           "load_config", "record_config", "resolve_config"]


METHODS = ("ldm", "vsv", "vsv-density", "organ-s")
REGISTRATIONS = ("deformable", "rigid", "none", "ai")
SINGLE_TIME_POINT = ("hanscheid", "madsen")


class DosimetryError(ValueError):
    """A patient-cycle that cannot be computed; the message says why."""


#: ``recovery_coefficients``: the sphere recovery curve of each SPECT's camera calibration
MEASURED_RECOVERY = "measured"
#: ``lesions.method``: thresholds on the reference SPECT, or the PET-to-SPECT lesion network
LESION_METHODS = ("adaptive", "percent_max", "network")


def load_config(path: str | Path | None = None, **overrides: object) -> dict:
    """The packaged default configuration, updated by a user YAML file and overrides."""
    try:
        config = load_settings("theralake.dosimetry", "data/dosimetry_default.yaml", path)
    except ValueError as exc:
        raise DosimetryError(str(exc)) from exc
    deep_merge(config, {k: v for k, v in overrides.items() if v is not None})
    _check(config)
    return config


def _check(config: dict) -> None:
    choices = {"method": METHODS, "registration": REGISTRATIONS, "tac_vois": ("own", "reference")}
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise DosimetryError(f"unknown {key} {config[key]!r}; one of {', '.join(allowed)}")
    ref = config["reference_time_point"]
    if ref not in ("auto", "first", "last") and not isinstance(ref, int):
        raise DosimetryError(f"reference_time_point {ref!r}: auto, first, last or an index")
    backend = (config.get("segmentation") or {}).get("backend", "auto")
    if backend not in SEGMENTATION_BACKENDS:
        raise DosimetryError(f"unknown segmentation backend {backend!r}; one of "
                             f"{', '.join(SEGMENTATION_BACKENDS)}")
    lesion_method = config["lesions"]["method"]
    if lesion_method not in LESION_METHODS:
        raise DosimetryError(f"unknown lesions method {lesion_method!r}; one of "
                             f"{', '.join(LESION_METHODS)}")
    pv = config.get("partial_volume") or {}
    if pv.get("method", "none") not in ("none", "gtm"):
        raise DosimetryError(f"unknown partial_volume method {pv['method']!r}; none or gtm")
    rc = config.get("recovery_coefficients")
    if rc and rc != MEASURED_RECOVERY and not Path(rc).is_file():
        raise DosimetryError(f"recovery_coefficients {rc!r}: no such CSV (volume_ml, recovery), "
                             f"or {MEASURED_RECOVERY!r} for the cameras' calibrations")
    if rc and pv.get("method", "none") == "gtm":
        raise DosimetryError("recovery_coefficients and partial_volume gtm both correct the "
                             "lesions' partial volume (twice): set partial_volume method none "
                             "to use the recovery coefficients, or recovery_coefficients null")
    if pv.get("fwhm_mm") is not None and not float(pv["fwhm_mm"]) > 0:
        raise DosimetryError("partial_volume fwhm_mm must be > 0 (or null: the camera's, from "
                             "the calibration table)")
    stp = config["single_time_point"]
    if stp["method"] not in SINGLE_TIME_POINT:
        raise DosimetryError(f"unknown single_time_point method {stp['method']!r}; one of "
                             f"{', '.join(SINGLE_TIME_POINT)}")
    for key in ("activity_relative_sd",):
        if not 0 <= float(config[key]) < 1:
            raise DosimetryError(f"{key} must be in [0, 1)")


def resolve_config(lake: Lake, config: dict) -> dict:
    """The settings with what they depend on pinned: for ``registration: ai``, the model folder
    (default: the lake's, from ``theralake train-reg``) and its weights' SHA-256.

    Raises:
        DosimetryError: ``ai`` registration without a trained model.
    """
    if config["registration"] != "ai" or config.get("registration_model_sha256"):
        return config
    folder = Path(config.get("registration_model") or default_model_dir(lake)).resolve()
    try:
        sha = weights_sha256(folder)
    except OSError as exc:
        raise DosimetryError(f"registration 'ai' needs a trained model in {folder}: run "
                             "theralake train-reg, or set registration_model") from exc
    return {**config, "registration_model": str(folder), "registration_model_sha256": sha}


def _versioned(config: dict) -> dict:
    return {**config, "model_version": MODEL_VERSION}


def config_hash(config: dict) -> str:
    """The settings' hash, with :data:`MODEL_VERSION` (the rows' ``params_hash``)."""
    return hashlib.sha256(json.dumps(_versioned(config), sort_keys=True).encode()
                          ).hexdigest()[:16]


def record_config(lake: Lake, config: dict) -> str:
    """Store the run's settings (and the model version) in the lake's ``configs`` table;
    returns their hash."""
    digest = config_hash(config)
    lake.append("configs", [{"id": digest, "kind": "dosimetry",
                             "yaml": yaml.safe_dump(_versioned(config), sort_keys=True)}])
    return digest
