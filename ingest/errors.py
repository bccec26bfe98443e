"""Errors raised while ingesting one input (they name the file and the problem)."""

from __future__ import annotations

from pathlib import Path


def printable(text: object) -> str:
    """``text`` as valid UTF-8: a file name's undecodable bytes (any encoding) as ``\\xNN``."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class IngestError(ValueError):
    """An input that cannot be ingested; the batch skips it and goes on."""

    def __init__(self, source: str | Path, problem: str):
        self.source = printable(source)
        self.problem = printable(problem)
        super().__init__(f"{self.source}: {self.problem}")
