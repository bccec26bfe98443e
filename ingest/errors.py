"""Errors raised while ingesting one input (they name the file and the problem)."""

from __future__ import annotations

from pathlib import Path


class IngestError(ValueError):
    """An input that cannot be ingested; the batch skips it and goes on."""

    def __init__(self, source: str | Path, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{source}: {problem}")
