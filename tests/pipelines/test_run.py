"""``theralake run``: incremental, resumable after a crash, a dying worker retried, the same
lake on the local and Ray engines, a broken patient failing alone, one run per lake."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from theralake.ingest.pseudonym import Pseudonymizer
from theralake.lake import SCHEMAS, Lake
from theralake.pipelines.cli import app
from theralake.pipelines.lock import LakeBusy, run_lock
from theralake.pipelines.runner import load_pipeline_settings, run_pipeline
from theralake.pipelines.steps import source_alias

STEPS = ["ingest", "dosimetry", "features"]
FAST = {"dosimetry": {"overrides": {"registration": "rigid"}}, "features": {"set": "minimal"}}
VOLATILE = ["created_utc", "theralake_version"]  # when a row was written, not what it holds


@pytest.fixture(scope="module")
def module_env(tmp_path_factory: pytest.TempPathFactory, _cache_dir: Path):
    """The test key and kernel cache for module-scoped lakes too (and their workers)."""
    from fixture_constants import TEST_KEY

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("THERALAKE_PSEUDONYM_KEY", TEST_KEY)
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("THERALAKE_CACHE", str(_cache_dir))
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory, module_env: None) -> Path:
    from theralake.synth.cohort import generate_cohort
    from theralake.synth.config import SynthConfig

    out = tmp_path_factory.mktemp("run") / "cohort"
    generate_cohort(SynthConfig(patients=2, cycles=2, seed=5, small=True,
                                time_points_h=(4.0, 24.0, 168.0)), out, progress=False)
    (out.parent / "fast.yaml").write_text(yaml.safe_dump(FAST))
    return out


@pytest.fixture(scope="module")
def reference(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """An uninterrupted run on the local engine."""
    lake = Lake(tmp_path_factory.mktemp("ref") / "lake")
    summary = run_pipeline(lake, STEPS, cohort, "local", 2, settings=load_pipeline_settings(
        **FAST), progress=False)
    assert summary.ok, summary.table()
    return lake


def snapshot(lake: Lake) -> dict[str, pd.DataFrame]:
    out = {}
    for table in SCHEMAS:
        if table == "run_log":
            continue
        df = lake.read(table).drop(columns=VOLATILE)
        out[table] = df.sort_values("id").reset_index(drop=True)
    return out


def assert_same_lake(a: Lake, b: Lake) -> None:
    sa, sb = snapshot(a), snapshot(b)
    for table in sa:
        pd.testing.assert_frame_equal(sa[table], sb[table], check_exact=True, obj=table)


def test_reference_run_fills_the_lake_and_logs_each_task(reference: Lake):
    counts = reference.counts()
    assert counts["organ_dosimetry"] > 0 and counts["features"] > 0 and counts["dose_maps"] > 0
    log = reference.read("run_log")
    assert set(log.status) == {"done"}
    done = log.groupby("step").size().to_dict()
    assert done == {"ingest": 4, "dosimetry": 4, "features": 2}  # 2 patients, truth, tables
    cycles = log[log.step == "dosimetry"].sort_values("start_utc")
    for _, g in cycles.groupby("patient_id"):  # cycle 2 starts after cycle 1 ended
        c1, c2 = g.set_index("cycle").loc[1], g.set_index("cycle").loc[2]
        assert c2.start_utc >= c1.end_utc
    assert (log.end_utc >= log.start_utc).all() and log.worker.str.contains(":").all()
    # each task names the snapshot it read; a later task read a later one
    assert log.lake_snapshot.notna().all()
    for _, g in cycles.groupby("patient_id"):
        assert g.lake_snapshot.iloc[1] > g.lake_snapshot.iloc[0]
    assert reference.at(int(log.lake_snapshot.min())).counts()["dose_maps"] == 0


def test_the_measured_tumour_dose_reaches_the_survival_dataset(reference: Lake):
    """The flow's own dosimetry (not the generator's truth) gives tumor_total, so the pfs
    model's default feature set clinical+tumour_dose holds the tumour dose (issue 18, item 1:
    it trained on clinical columns alone)."""
    from theralake.modeling.dataset import build_dataset, load_modeling_config, patient_frame

    config = load_modeling_config()
    config["validation"].update(min_events=0, min_events_per_feature=0)
    od = reference.read("organ_dosimetry", "voi = 'tumor_total'")
    assert set(od.cycle) == {1, 2} and od.absorbed_dose_gy.gt(0).all()
    column = "dosimetry/tumor_total/absorbed_dose_gy"
    assert patient_frame(reference, config)[column].notna().all()
    assert column in build_dataset(reference, "pfs", None, config).X.columns


def test_a_workers_dosimetry_stages_reach_the_display(reference: Lake):
    """A patient-cycle in a pool worker reports each stage as it starts (a full-size one
    runs a minute, which a bar advancing per patient-cycle left silent)."""
    from theralake.pipelines.engines import LocalBackend
    from theralake.pipelines.steps import plan

    task = plan("dosimetry", reference, load_pipeline_settings(**FAST), None)[0]
    backend = LocalBackend(str(reference.path), workers=1, threads=1)
    heard: list[tuple[str, str]] = []
    backend.reporter = lambda key, name: heard.append((key, name))
    try:
        handle, done, t0 = backend.submit(task), [], time.monotonic()
        while not done and time.monotonic() - t0 < 300:
            done = backend.wait_any([handle])
    finally:
        backend.close()
    assert done and done[0][1].status == "done", done
    stages = [name for key, name in heard if key == task.key]
    assert stages[0] == "reading the lake" and stages[-1] == "writing the lake", stages
    assert {"registering the time points", "VOIs", "voxel fits and dose map",
            "VOI activities, fits and doses"} <= set(stages)


def test_rerun_skips_everything_and_a_new_patient_runs_alone(reference: Lake, cohort: Path,
                                                            tmp_path: Path):
    before = reference.counts()
    settings = load_pipeline_settings(**FAST)
    summary = run_pipeline(reference, STEPS, cohort, "local", 2, settings=settings,
                           progress=False)
    assert [s.skipped for s in summary.steps] == [s.planned for s in summary.steps]
    assert sum(s.done for s in summary.steps) == 0
    after = reference.counts()
    assert {t: n for t, n in after.items() if t != "run_log"} == \
        {t: n for t, n in before.items() if t != "run_log"}
    # changed settings re-run only the step they belong to
    other = load_pipeline_settings(**{**FAST, "features": {"set": "default"}})
    plan_only = run_pipeline(reference, ["dosimetry"], None, "local", 1, settings=other,
                             progress=False)
    assert plan_only.steps[0].done == 0 and plan_only.steps[0].skipped == 4


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _log(lake_path: Path) -> pd.DataFrame:
    try:
        return Lake(lake_path, create=False).read("run_log")
    except Exception:  # noqa: BLE001 - the lake may not exist yet
        return pd.DataFrame(columns=["step", "task", "status"])


def _wait_for(cond, timeout: float, proc: subprocess.Popen, output: Path) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError("the run ended before the fault was injected:\n"
                                 + output.read_text())
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.3)


def _done(lake_path: Path, step: str) -> bool:
    """Whether a task of ``step`` is done, from one read of the log (two reads may list the
    rows in different orders, and their columns must not be mixed)."""
    log = _log(lake_path)
    return bool(((log.step == step) & (log.status == "done")).any())


def _start_run(cohort: Path, lake_path: Path, steps: list[str], output: Path
               ) -> subprocess.Popen:
    """``theralake run`` in its own session, its output in ``output``."""
    cmd = [sys.executable, "-m", "theralake.pipelines.cli", "run", "--source", str(cohort),
           "--steps", ",".join(steps), "--config", str(cohort.parent / "fast.yaml"),
           "--workers", "2", "--lake", str(lake_path), "-q"]
    with open(output, "wb") as out:
        return subprocess.Popen(cmd, start_new_session=True, stdout=out, stderr=out)


def _workers_in_dosimetry(proc: subprocess.Popen, lake_path: Path, output: Path,
                          settle_s: float) -> list[int]:
    """The run's worker processes, ``settle_s`` after its dosimetry step began."""
    _wait_for(lambda: (_log(lake_path).task == "ingest/(tables)").any(), 240, proc, output)
    time.sleep(settle_s)  # dosimetry is running in both workers
    workers = [c for c in _children(proc.pid)
               if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert workers, "no worker process found"
    return workers


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _busy(workers: list[int], timeout: float = 60.0) -> int:
    """The worker using the CPU (running a task; an idle one waits on its queue)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = {w: _cpu_ticks(w) for w in workers}
        time.sleep(0.5)
        used = {w: _cpu_ticks(w) - before[w] for w in workers}
        busiest = max(used, key=used.get)
        if used[busiest] >= 0.1 * os.sysconf("SC_CLK_TCK"):  # >= 0.1 s of CPU in 0.5 s
            return busiest
    raise AssertionError(f"no busy worker among {workers}")


def test_killed_worker_is_retried_and_a_crashed_run_resumes_to_the_same_lake(
        reference: Lake, cohort: Path, tmp_path: Path):
    lake_path, output = tmp_path / "lake", tmp_path / "run.out"
    proc = _start_run(cohort, lake_path, STEPS, output)
    try:
        workers = _workers_in_dosimetry(proc, lake_path, output, 1)
        os.kill(_busy(workers), signal.SIGKILL)  # a worker known to be running a task
        _wait_for(lambda: _done(lake_path, "dosimetry"), 240, proc, output)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run crashes
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = _log(lake_path)
    retried = log[log.status == "retried"]
    assert len(retried) >= 1 and retried.error.str.contains("worker died").all()
    assert not (log.step == "features").any()
    # resume: only what had not finished runs; the lake ends equal to an uninterrupted run's
    lake = Lake(lake_path, create=False)
    summary = run_pipeline(lake, STEPS, cohort, "local", 2,
                           settings=load_pipeline_settings(**FAST), progress=False)
    assert summary.ok, summary.table()
    by_step = {s.step: s for s in summary.steps}
    assert by_step["ingest"].done == 0 and by_step["dosimetry"].skipped >= 1
    assert by_step["features"].done == 2
    assert_same_lake(reference, lake)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _parts(lake_path: Path) -> set[str]:
    return {str(p.relative_to(lake_path)) for p in (lake_path / "data").rglob("*.parquet")}


def test_workers_die_with_their_run_and_write_nothing_after_it(cohort: Path, tmp_path: Path):
    """kill -9 of the run's main process only: its workers end within 10 s and the lake gets
    no part after (issue 17, finding 13: orphans finished the whole dosimetry step)."""
    lake_path, output = tmp_path / "lake", tmp_path / "run.out"
    proc = _start_run(cohort, lake_path, ["ingest", "dosimetry"], output)
    workers: list[int] = []
    try:
        workers = _workers_in_dosimetry(proc, lake_path, output, 1)
        assert not _done(lake_path, "dosimetry"), "dosimetry ended before the kill"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, not its group
        proc.wait(30)
        t0 = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "workers outlived their run"
        parts = _parts(lake_path)
        time.sleep(3)
        assert _parts(lake_path) == parts
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not _done(lake_path, "dosimetry")


def test_a_write_without_the_run_lock_is_refused(tmp_path: Path):
    """A worker's lake refuses to write once its run holds the lock no more, or another run
    holds it."""
    from theralake.pipelines.lock import RunGone, live_run_guard

    lake = Lake(tmp_path / "lake")
    row = {"id": "p1", "patient_id": "P1"}
    with run_lock(lake.path) as token:
        lake.write_guard = live_run_guard(lake.path, token)
        assert lake.append("patients", [row]) == 1  # the live run writes
    with pytest.raises(RunGone, match="no more"):
        lake.append("patients", [{**row, "id": "p2", "patient_id": "P2"}])
    with run_lock(lake.path):  # another run holds the lake
        with pytest.raises(RunGone, match="another run"):
            lake.append("patients", [{**row, "id": "p3", "patient_id": "P3"}])
    assert list(lake.read("patients").id) == ["p1"]


def test_ray_engine_gives_the_same_lake(reference: Lake, cohort: Path, tmp_path: Path):
    pytest.importorskip("ray")
    lake = Lake(tmp_path / "lake")
    summary = run_pipeline(lake, STEPS, cohort, "ray", 2,
                           settings=load_pipeline_settings(**FAST), progress=False)
    assert summary.ok, summary.table()
    assert set(lake.read("run_log").engine) == {"ray"}
    assert_same_lake(reference, lake)


def test_two_workers_on_a_postgresql_catalog_give_the_single_writer_lake(
        reference: Lake, cohort: Path, tmp_path: Path, postgres_database: str):
    """Issue 21: the catalog in PostgreSQL, the data in a shared folder, two worker processes
    writing one cohort at once; the lake equals a single writer's, table by table."""
    from theralake.pipelines.engines import default_threads

    single = Lake(tmp_path / "single")  # one worker, with the threads of each of two
    summary = run_pipeline(single, STEPS, cohort, "local", 1, settings=load_pipeline_settings(
        **FAST, threads_per_task=default_threads(2)), progress=False)
    assert summary.ok, summary.table()
    assert_same_lake(reference, single)
    lake = Lake(f"{postgres_database}?data_path={tmp_path / 'shared'}")
    summary = run_pipeline(lake, STEPS, cohort, "local", 2,
                           settings=load_pipeline_settings(**FAST), progress=False)
    assert summary.ok, summary.table()
    assert_same_lake(single, lake)
    log = lake.read("run_log")
    dosimetry = log[log.step == "dosimetry"].sort_values("start_utc")
    assert dosimetry.worker.nunique() == 2  # two processes wrote
    overlapping = (dosimetry.start_utc.shift(-1) < dosimetry.end_utc).iloc[:-1]
    assert overlapping.any(), "no two tasks ran at once"
    assert log.lake_snapshot.notna().all() and (log.lake_snapshot <= lake.snapshot()).all()


def test_broken_patient_fails_alone_with_the_reason(cohort: Path, tmp_path: Path):
    broken = tmp_path / "cohort"
    shutil.copytree(cohort, broken, ignore=shutil.ignore_patterns("truth"))
    victim = sorted(broken.glob("SYN*/C1TP2/NM/*"))[0]
    victim.write_bytes(victim.read_bytes()[:2000])  # a truncated SPECT file
    lake = Lake(tmp_path / "lake")
    summary = run_pipeline(lake, ["ingest"], broken, "local", 1,
                           settings=load_pipeline_settings(**FAST), progress=False)
    assert not summary.ok
    log = lake.read("run_log")
    failed = log[log.status == "failed"]
    folder = victim.parent.parent.parent.name  # keyed by the folder's pseudonym, not its name
    assert list(failed.task) == [f"ingest/{source_alias(Pseudonymizer(), folder)}"]
    assert folder not in failed.task.iloc[0]
    assert failed.error.iloc[0].startswith(f"{failed.task.iloc[0][7:]}/C1TP2/NM/{victim.name}")
    assert (log.status == "done").sum() == 2  # the other patient and the tables
    assert lake.sql("SELECT count(DISTINCT patient_id) AS n FROM images").n[0] == 2


def test_a_second_run_on_a_held_lake_refuses_or_waits(tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    runner = CliRunner()
    with run_lock(lake.path, what="test holder"):
        res = runner.invoke(app, ["run", "--steps", "features", "--lake", str(lake.path), "-q"])
        assert res.exit_code == 3 and "test holder" in res.output and "--wait" in res.output
        with pytest.raises(LakeBusy):
            run_pipeline(lake, ["features"], progress=False)
    held = threading.Event()

    def hold() -> None:
        with run_lock(lake.path):
            held.set()
            time.sleep(1.5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    t0 = time.monotonic()
    summary = run_pipeline(lake, ["features"], wait=True, progress=False)
    assert time.monotonic() - t0 >= 1.0 and summary.ok
    t.join()


def test_bad_arguments_are_clear(tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(app, ["run", "--steps", "ingest", "--lake", str(tmp_path / "l")])
    assert res.exit_code == 2 and "--source" in res.output
    res = runner.invoke(app, ["run", "--steps", "dosimetry,nope", "--source", str(tmp_path),
                              "--lake", str(tmp_path / "l")])
    assert res.exit_code == 2 and "unknown step 'nope'" in res.output
    res = runner.invoke(app, ["run", "--engine", "spark", "--source", str(tmp_path),
                              "--lake", str(tmp_path / "l")])
    assert res.exit_code == 2 and "unknown engine" in res.output
