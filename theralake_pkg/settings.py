"""Layered settings: a packaged YAML default, updated by a user's YAML file and overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml


def deep_merge(config: dict, update: dict) -> None:
    """Update settings in place; nested sections are merged key by key."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            deep_merge(config[key], value)
        else:
            config[key] = value


def load_settings(package: str, resource: str, path: str | Path | None = None) -> dict:
    """The packaged ``resource`` of ``package`` merged with the user's YAML ``path``.

    Raises:
        ValueError: the user file has top-level settings the default does not know.
    """
    config = yaml.safe_load(resources.files(package).joinpath(resource).read_text())
    if path:
        user = yaml.safe_load(Path(path).read_text()) or {}
        unknown = set(user) - set(config)
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        deep_merge(config, user)
    return config
