"""``theralake sql`` and ``Lake.sql`` are read-only and sandboxed; a read-only lake answers
every read-only command (issue 17, findings 7-8)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from dicom_factory import phantom, write_ct_series
from fixture_constants import TEST_KEY

from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, LakeError
from theralake.registry import tracking
from theralake.synth.config import SynthConfig
from theralake.synth.truth_lake import write_truth_lake


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lake, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("sandbox")
    lake = Lake(root / "lake")
    ids = write_truth_lake(lake, SynthConfig(patients=2, cycles=1, seed=1, small=True),
                           Pseudonymizer(key=TEST_KEY))
    write_ct_series(root / "ct", phantom((3, 8, 8)), phi={"PatientID": "SYN0001"})
    ingest(root / "ct", lake, IngestOptions(show_progress=False), Pseudonymizer(key=TEST_KEY))
    tracking.client(lake).search_experiments()  # the lake's MLflow store exists
    key_file = root / "pseudonym.key"
    key_file.write_text(TEST_KEY + "\n")
    return lake, key_file, ids


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")
            and not p.name.startswith("catalog.sqlite")} | {"snapshot": _snapshot(folder)}


def _snapshot(folder: Path) -> str:
    """The catalog's newest snapshot: SQLite moves its log into the file when it likes, but
    any change of the lake is a new snapshot."""
    with contextlib.closing(sqlite3.connect(f"file:{folder}/catalog.sqlite?mode=ro",
                                            uri=True)) as con:
        return str(con.execute("SELECT max(snapshot_id) FROM ducklake_snapshot").fetchone())


def _attacks(lake: Lake, key_file: Path) -> list[str]:
    data = lake.path / "data" / "main"
    return [
        f"COPY (SELECT 1 AS x, 2 AS y) TO '{data}/vois' (FORMAT parquet, PARTITION_BY (x), "
        "OVERWRITE)",
        f"COPY (SELECT 1 AS x) TO '{lake.path}/theralake.json'",
        f"COPY (SELECT * FROM patients) TO '{data}/patients/part-copy.parquet' (FORMAT parquet)",
        "COPY (SELECT 1) TO '/tmp/theralake-sandbox-escape.csv'",
        f"SELECT * FROM read_text('{key_file}')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_text('{data}/../../theralake.json')",
        "SET enable_external_access = true",
        f"ATTACH '{lake.path}/catalog.sqlite' AS cat (TYPE sqlite)",
        "CREATE TABLE evil AS SELECT 1",
        "SELECT 1; DROP TABLE vois",
        "INSERT INTO vois SELECT * FROM vois",
        "SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())",
        "SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)",
        "SELECT * FROM ducklake_merge_adjacent_files('lake')",
        "INSTALL httpfs",
    ]


def test_no_query_changes_the_lake_or_reads_another_file(filled):
    lake, key_file, _ = filled
    before, rows = _fingerprint(lake.path), lake.counts()["organ_dosimetry"]
    for query in _attacks(lake, key_file):
        with pytest.raises((LakeError, duckdb.Error)):
            lake.sql(query)
    assert not Path("/tmp/theralake-sandbox-escape.csv").exists()
    assert _fingerprint(lake.path) == before
    assert Lake(lake.path).counts()["organ_dosimetry"] == rows > 0
    # queries still answer: joins, CTEs, EXPLAIN, the reading functions on the lake's tables
    assert lake.sql("WITH v AS (SELECT patient_id FROM organ_dosimetry) SELECT count(*) AS n "
                    "FROM v JOIN patients USING (patient_id)").n.iloc[0] == rows
    parts = (lake.path / "data" / "main" / "organ_dosimetry").as_posix()
    assert lake.sql(f"SELECT count(*) AS n FROM read_parquet('{parts}/*.parquet')"
                    ).n.iloc[0] == rows
    assert not lake.sql("EXPLAIN SELECT * FROM patients").empty


def test_the_sql_command_refuses_in_one_line(filled, capsys):
    from theralake.pipelines.cli import main

    lake, key_file, _ = filled
    before = _fingerprint(lake.path)
    for query in _attacks(lake, key_file)[:5]:
        with pytest.raises(SystemExit) as exit_info:
            main(["sql", query, "--lake", str(lake.path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: "), err
        assert TEST_KEY not in err and "root:" not in err
    assert _fingerprint(lake.path) == before


def _read_only_runner(lake_path: Path) -> list[str] | None:
    """A command prefix that runs under a read-only mount of the lake (a user and mount
    namespace), or None where the kernel allows none."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    probe = subprocess.run([unshare, "-rm", "true"], capture_output=True)
    if probe.returncode:
        return None
    where = shlex.quote(str(lake_path))
    return [unshare, "-rm", "sh", "-c", f"mount --bind {where} {where} && "
            f"mount -o remount,bind,ro {where} {where} && exec \"$@\"", "sh"]


def test_a_read_only_lake_answers_every_read_only_command(filled, tmp_path: Path):
    lake, _, ids = filled
    runner = _read_only_runner(lake.path)
    if runner is None and os.geteuid() == 0:
        pytest.skip("no user namespaces here (unshare -rm fails) and root ignores file modes")
    if runner is None:
        runner = []
        subprocess.run(["chmod", "-R", "a-w", str(lake.path)], check=True)
    before = _fingerprint(lake.path)
    pid = sorted(ids.values())[0]
    image_id = lake.sql("SELECT id FROM images LIMIT 1").id.iloc[0]
    commands = [
        ["sql", "SELECT count(*) AS n FROM organ_dosimetry"],
        ["report", "--cohort", "--out", str(tmp_path / "cohort.html")],
        ["report", "--patient", pid, "--out", str(tmp_path / "patient.html")],
        ["recommend", "--patient", pid, "--cycle", "2", "--dry-run"],
        ["models", "list"],
        ["export", "--image-id", image_id, "--out", str(tmp_path / "image.nii.gz")],
    ]
    env = {**os.environ, "THERALAKE_PSEUDONYM_KEY": TEST_KEY}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    outputs = {}
    for argv in commands:
        done = subprocess.run([*runner, sys.executable, "-m", "theralake.pipelines.cli", *argv,
                               "--lake", str(lake.path)], capture_output=True, text=True,
                              env=env, timeout=300, cwd=cwd)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (argv, done.stderr[-2000:])
        outputs[argv[0]] = done.stdout
    assert "allows" in outputs["recommend"] and "GBq" in outputs["recommend"]
    assert (tmp_path / "cohort.html").stat().st_size > 0
    assert (tmp_path / "patient.html").stat().st_size > 0
    assert (tmp_path / "image.nii.gz").stat().st_size > 0
    # the read-only registry leaves nothing where the commands ran (it left an empty file:/...
    # folder tree, MLflow reading sqlite:///file:/... as a relative path)
    assert list(cwd.iterdir()) == []
    write = subprocess.run([*runner, sys.executable, "-m", "theralake.pipelines.cli",
                            "dosimetry", "--lake", str(lake.path)], capture_output=True,
                           text=True, env=env, timeout=300)
    assert write.returncode != 0 and "read-only" in write.stderr, write.stderr[-2000:]
    assert "Traceback" not in write.stderr
    assert _fingerprint(lake.path) == before
