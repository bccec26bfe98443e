"""Where a trained AI registration lives and its identity (no torch needed to ask)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from theralake.lake import Lake

__all__ = ["CONFIG_FILE", "MODEL_DIR", "WEIGHTS_FILE", "default_model_dir", "weights_sha256"]

CONFIG_FILE = "ai_registration.json"
WEIGHTS_FILE = "weights.pt"
MODEL_DIR = "models/registration-ai"


def default_model_dir(lake: Lake) -> Path:
    """Where a lake keeps its trained registration model."""
    return Path(lake.path) / MODEL_DIR


def weights_sha256(folder: str | Path) -> str:
    """SHA-256 of a saved model's weights and settings (its identity in run parameters)."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update((Path(folder) / name).read_bytes())
    return digest.hexdigest()
