"""The local engine's worker pool: a worker that dies never takes the scheduler down."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from theralake.pipelines.engines import LocalBackend
from theralake.pipelines.steps import Task


def _wait_one(backend: LocalBackend, handle: object) -> object:
    """The outcome of ``handle`` (a wait returns nothing while only stages arrive)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for _, outcome in backend.wait_any([handle]):
            return outcome
    raise AssertionError("no outcome within 60 s")


def test_a_pool_broken_between_waits_is_replaced_on_submit(tmp_path: Path):
    task = Task(step="ingest", key="ingest/P1", inputs_hash="h")
    backend = LocalBackend(str(tmp_path / "no-lake"), workers=1, threads=1)
    try:
        first = backend.submit(task)
        outcome = _wait_one(backend, first)
        assert outcome.status == "failed" and "no lake" in outcome.error
        broken_pool = backend._pool
        for pid in list(broken_pool._processes):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not broken_pool._broken and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broken_pool._broken
        second = backend.submit(task)  # raised BrokenProcessPool before
        outcome = _wait_one(backend, second)
        assert outcome.status == "failed" and "no lake" in outcome.error
        assert backend._pool is not broken_pool
    finally:
        backend.close()

