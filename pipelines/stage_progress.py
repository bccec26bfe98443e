"""A progress display that says which stage of which patient-cycle is running: a full-size
patient-cycle takes a minute, which a bar advancing per patient-cycle leaves silent."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["StageProgress"]


class StageProgress:
    """One bar over ``total`` items whose text names the current item and its stage; lines
    printed with :meth:`echo` (and log records, on the same console) appear above it."""

    def __init__(self, total: int, *, enabled: bool = True, unit: str = "patient-cycles"):
        self.enabled = enabled
        self._bar = Progress(TextColumn("{task.description:<48}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
                             disable=not enabled, transient=False)
        self._task = self._bar.add_task("starting", total=total)

    def __enter__(self) -> StageProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self._bar.update(self._task, description="done")
        self._bar.__exit__(kind, exc, tb)

    def stage(self, label: str) -> Callable[[str], None]:
        """The callback a computation calls with each stage's name."""

        def on_stage(name: str) -> None:
            self._bar.update(self._task, description=f"{label}: {name}"[:48])

        return on_stage

    def done(self) -> None:
        """One item finished."""
        self._bar.advance(self._task)

    def echo(self, text: str) -> None:
        """A line above the bar (plain output when the display is off)."""
        if self.enabled:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            typer.echo(text)
