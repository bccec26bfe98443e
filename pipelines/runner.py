"""``theralake run``: the whole flow over a cohort, incremental and resumable.

Each step plans its tasks from the lake as it is when the step starts; a task whose inputs
hash is already ``done`` in ``run_log`` is skipped. Every attempt's end is appended to
``run_log`` at once, so after a crash or Ctrl-C the next run redoes only what had not
finished (the lake's id-keyed appends make the redone writes add nothing twice).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from theralake import settings as settings_io
from theralake.ingest.errors import printable
from theralake.ingest.pseudonym import lake_pseudonymizer
from theralake.lake import Lake, stable_hash
from theralake.pipelines.engines import (
    ENGINES,
    InlineBackend,
    LocalBackend,
    Outcome,
    RayBackend,
    default_threads,
    schedule,
)
from theralake.pipelines.lock import run_lock
from theralake.pipelines.steps import SERIAL_STEPS, STEPS, Task, done_tasks, plan


def load_pipeline_settings(path: str | Path | None = None, **overrides: object) -> dict:
    """The packaged ``pipeline_default.yaml`` updated by a user file and overrides."""
    config = settings_io.load_settings("theralake.pipelines", "data/pipeline_default.yaml", path)
    settings_io.deep_merge(config, {k: v for k, v in overrides.items() if v is not None})
    unknown = [s for s in config["steps"] if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown step(s) {', '.join(unknown)}; steps are {', '.join(STEPS)}")
    return config


@dataclass
class StepSummary:
    step: str
    planned: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0


@dataclass
class RunSummary:
    run_id: str
    engine: str
    workers: int
    steps: list[StepSummary] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (task, error)

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> str:
        lines = [f"run {self.run_id} ({self.engine}, {self.workers} worker(s))",
                 f"{'step':<12}{'tasks':>6}{'skipped':>8}{'done':>6}{'failed':>7}"
                 f"{'retried':>8}{'seconds':>9}"]
        lines += [f"{s.step:<12}{s.planned:>6}{s.skipped:>8}{s.done:>6}{s.failed:>7}"
                  f"{s.retried:>8}{s.seconds:>9.1f}" for s in self.steps]
        lines += [f"failed {task}: {err.splitlines()[0]}" for task, err in self.failures]
        return "\n".join(lines)


def _log_row(run_id: str, engine: str, task: Task, outcome: Outcome) -> dict:
    return {"id": stable_hash("run_log", run_id, task.key, outcome.attempt, outcome.status),
            "run_id": run_id, "step": task.step, "task": task.key,
            "patient_id": task.patient_id, "cycle": task.cycle,
            "inputs_hash": task.inputs_hash, "status": outcome.status,
            "error": None if outcome.error is None else printable(outcome.error),
            "attempt": outcome.attempt, "start_utc": outcome.start_utc,
            "end_utc": outcome.end_utc, "seconds": outcome.seconds, "engine": engine,
            "worker": outcome.worker, "lake_snapshot": outcome.lake_snapshot}


def run_pipeline(lake: Lake, steps: list[str] | None = None, source: Path | None = None,
                 engine: str = "local", workers: int = 2, address: str | None = None,
                 settings: dict | None = None, wait: bool = False,
                 progress: bool = True, new_key: bool = False) -> RunSummary:
    """Run ``steps`` (default: the settings') over the lake's cohort (and ``source``).

    ``new_key`` creates a missing pseudonymisation key file for the ingest (a new lake).

    Raises:
        LakeBusy: another run holds the lake and ``wait`` is False.
        ValueError: an unknown step or engine, or ingest without a source.
        PseudonymKeyError: ingest without a usable key, or with another key than the lake's.
    """
    settings = settings or load_pipeline_settings()
    steps = list(steps or settings["steps"])
    for s in steps:
        if s not in STEPS:
            raise ValueError(f"unknown step {s!r}; steps are {', '.join(STEPS)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; engines are {', '.join(ENGINES)}")
    if "ingest" in steps and source is None:
        raise ValueError("the ingest step needs a source folder (--source)")
    workers = max(1, workers)
    threads = default_threads(workers, settings.get("threads_per_task"))
    summary = RunSummary(datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6],
                         engine, workers)
    with run_lock(lake.path, wait=wait) as token:
        if "ingest" in steps:  # the key once, here: the workers read the same key
            lake_pseudonymizer(lake, new_key)
        parallel = None  # one pool (or Ray session) for every step that uses workers
        try:
            for step in steps:
                if parallel is None and step not in SERIAL_STEPS:
                    parallel = (RayBackend(str(lake.path), workers, threads,
                                           settings.get("retries", 2), address, token)
                                if engine == "ray" else
                                LocalBackend(str(lake.path), workers, threads, token))
                backend = (InlineBackend(str(lake.path), default_threads(1), token)
                           if step in SERIAL_STEPS else parallel)
                summary.steps.append(_run_step(lake, step, settings, source, backend, workers,
                                               summary, progress))
        finally:
            if parallel is not None:
                parallel.close()
    return summary


def _run_step(lake: Lake, step: str, settings: dict, source: Path | None, backend: object,
              workers: int, summary: RunSummary, progress: bool) -> StepSummary:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    t0 = time.perf_counter()
    stats = StepSummary(step)
    tasks = plan(step, lake, settings, source)
    stats.planned = len(tasks)
    done = set(done_tasks(lake).itertuples(index=False, name=None))
    todo = [t for t in tasks if (t.key, t.inputs_hash) not in done]
    skipped = [t for t in tasks if (t.key, t.inputs_hash) in done]
    now = datetime.now(UTC)
    lake.append("run_log", [_log_row(summary.run_id, summary.engine, t,
                                     Outcome("skipped", None, now, now, "-"))
                            for t in skipped])
    stats.skipped = len(skipped)
    unit = "patient-cycles" if step == "dosimetry" else "patients" if step == "features" \
        else "tasks"
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn(), TextColumn("left"),
               TimeRemainingColumn(), TextColumn("{task.fields[stage]}"))
    with Progress(*columns, disable=not progress, transient=False) as bar:
        handle = bar.add_task(step, total=len(tasks), completed=len(skipped), stage="")
        by_key = {t.key: t for t in todo}

        def on_stage(key: str, name: str) -> None:
            task = by_key.get(key)
            label = f"{task.patient_id} cycle {task.cycle}" if task and task.cycle else key
            bar.update(handle, stage=f"{label}: {name}")

        backend.reporter = on_stage if progress else None

        def on_outcome(task: Task, outcome: Outcome) -> None:
            lake.append("run_log", [_log_row(summary.run_id, summary.engine, task, outcome)])
            if outcome.status == "retried":
                stats.retried += 1
                return
            if outcome.status == "done":
                stats.done += 1
            else:
                stats.failed += 1
                summary.failures.append((task.key, outcome.error or "?"))
            bar.advance(handle)

        capacity = 1 if isinstance(backend, InlineBackend) else workers
        schedule(backend, todo, capacity, int(settings.get("retries", 2)), on_outcome)
        bar.update(handle, stage="")
    stats.seconds = time.perf_counter() - t0
    return stats
