"""What every ``theralake`` command shares: ``--json`` for a machine-readable result,
``--quiet``/``-q`` (errors only, no progress) and ``--verbose``/``-v`` (INFO lines, third-party
libraries included), and log records printed on stderr above any progress display (never
through it), so that ``--json`` output on stdout stays clean."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.logging import RichHandler

__all__ = ["JsonOption", "QuietOption", "VerboseOption", "configure_logging", "print_json"]

#: known third-party chatter, kept off the console unless --verbose: MLflow's warning about the
#: pickle format theralake chooses on purpose (models hold torch and xgboost objects)
QUIET_LOGGERS = ("mlflow.sklearn",)
_HANDLER: list[RichHandler] = []


def configure_logging(level: str | int | None = None) -> None:
    """One handler on stderr at ``level`` (default ``$THERALAKE_LOG`` or WARNING): INFO lines
    of other libraries (pyradiomics, MLflow, alembic) stay off unless asked for."""
    root = logging.getLogger()
    if not _HANDLER:
        handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False,
                              markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
        _HANDLER.append(handler)
    handler = _HANDLER[0]
    handler.setLevel(level or os.environ.get("THERALAKE_LOG", "WARNING"))
    root.setLevel(min(handler.level, logging.WARNING))
    logging.getLogger("theralake").setLevel(handler.level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.ERROR if handler.level > logging.INFO else logging.NOTSET)


def _verbosity(level: str):  # noqa: ANN202 - a Typer callback
    def callback(value: bool) -> bool:
        if value:
            configure_logging(level)
        return value
    return callback


JsonOption = Annotated[bool, typer.Option(
    "--json", help="print the result as JSON (machine-readable) instead of text")]
QuietOption = Annotated[bool, typer.Option(
    "--quiet", "-q", help="no progress display; only errors on the console",
    callback=_verbosity("ERROR"))]
VerboseOption = Annotated[bool, typer.Option(
    "--verbose", "-v", help="INFO log lines too (third-party libraries included)",
    callback=_verbosity("INFO"))]


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _finite(value: object) -> object:
    """NaN and infinities as null (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def print_json(result: object) -> None:
    """The result as indented JSON on stdout (dataclasses, paths, numpy and dates included;
    NaN as null)."""
    text = json.dumps(result, default=_plain)
    typer.echo(json.dumps(_finite(json.loads(text)), indent=2))
