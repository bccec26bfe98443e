"""Issue 21: many writers on one lake. Content-hash ids are checked inside each write's
transaction and concurrent commits conflict, so writers appending overlapping rows at once
leave every row exactly once: with the embedded SQLite catalog (the local engine's worker
processes) and with a PostgreSQL catalog (writers on several hosts sharing the data folder)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from theralake.lake import Lake

BATCH = 4


def _writer(location: str, ids: list[int], go: str) -> None:
    lake = Lake(location, create=False)
    while not Path(go).exists():  # both start together
        time.sleep(0.005)
    for start in range(0, len(ids), BATCH):
        lake.append("run_log", [{"id": f"row-{i:03d}", "run_id": "r", "step": "s",
                                 "task": f"t{i}", "status": "done"}
                                for i in ids[start:start + BATCH]])


def _race(location: str, tmp_path: Path) -> Lake:
    lake = Lake(location)
    go = tmp_path / "go"
    spawn = multiprocessing.get_context("spawn")
    # the two overlap on 20..39, one ascending and one descending, so they meet mid-way
    workers = [spawn.Process(target=_writer, args=(location, ids, str(go)))
               for ids in (list(range(0, 40)), list(range(59, 19, -1)))]
    for w in workers:
        w.start()
    time.sleep(1.5)  # both have opened the lake
    go.touch()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    return lake


def _assert_each_row_once(lake: Lake) -> None:
    ids = lake.sql("SELECT id, count(*) AS n FROM run_log GROUP BY id")
    assert sorted(ids.id) == [f"row-{i:03d}" for i in range(60)]
    assert set(ids.n) == {1}


def test_two_writer_processes_on_the_sqlite_catalog(tmp_path):
    _assert_each_row_once(_race(str(tmp_path / "lake"), tmp_path))


def test_two_writer_processes_on_a_postgresql_catalog(postgres_database, tmp_path):
    shared = tmp_path / "shared"
    lake = _race(f"{postgres_database}?data_path={shared}", tmp_path)
    _assert_each_row_once(lake)
    assert lake.catalog == postgres_database and lake.path == shared.resolve()
    # the folder alone names the lake afterwards (theralake.json records the catalog)
    assert Lake(shared, create=False).counts()["run_log"] == 60
    assert not (shared / "catalog.sqlite").exists()


def test_a_postgresql_lake_needs_its_data_folder(postgres_database):
    from theralake.lake import LakeError

    with pytest.raises(LakeError, match=r"names its data folder.*data_path="):
        Lake(postgres_database)
