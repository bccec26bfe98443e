"""Issue 21: the lake's snapshots (``theralake sql --at``, ``theralake lake snapshots``) and its
upkeep (``theralake lake compact``): compaction and retention change no row a query sees."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from theralake.lake import SCHEMAS, Lake, LakeError
from theralake.pipelines.cli import app


def _clinical(lake: Lake, start: int, n: int) -> None:
    for i in range(start, start + n):  # one commit (one data file) per row, as tasks write
        lake.append("clinical", [{"id": f"c{i:03d}", "patient_id": f"P{i % 3}",
                                  "variable": "psa", "value_num": float(i)}])


def _everything(lake: Lake) -> dict[str, pd.DataFrame]:
    return {t: lake.read(t).sort_values("id").reset_index(drop=True) for t in SCHEMAS}


def test_sql_at_a_snapshot_reads_the_lake_as_it_was(lake):
    _clinical(lake, 0, 3)
    then = lake.snapshot()
    _clinical(lake, 3, 2)
    runner = CliRunner()
    now = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM clinical", "--lake",
                              str(lake.path), "--json"])
    past = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM clinical", "--lake",
                               str(lake.path), "--json", "--at", str(then)])
    assert json.loads(now.output) == [{"n": 5}] and json.loads(past.output) == [{"n": 3}]
    listed = runner.invoke(app, ["lake", "snapshots", "--lake", str(lake.path), "--json"])
    ids = [s["snapshot_id"] for s in json.loads(listed.output)]
    assert then in ids and ids[-1] == lake.snapshot() == then + 2
    missing = runner.invoke(app, ["sql", "SELECT 1", "--lake", str(lake.path), "--at", "999"])
    assert missing.exit_code == 2 and "no snapshot 999" in missing.output
    past_lake = lake.at(then)
    with pytest.raises(LakeError, match="read-only"):  # the past is not written
        past_lake.append("clinical", [{"id": "x", "patient_id": "P", "variable": "v"}])


def test_compaction_merges_files_and_changes_nothing_a_query_sees(lake):
    _clinical(lake, 0, 12)
    middle = lake.snapshot()
    _clinical(lake, 12, 12)
    before, past = _everything(lake), lake.at(middle).read("clinical")
    result = lake.compact()
    assert result["data_files_before"] >= 24 and result["data_files_after"] == 1
    assert result["disk_files_after"] >= 25  # the old files stay for the past snapshots
    for table, df in _everything(lake).items():
        pd.testing.assert_frame_equal(df, before[table], obj=table)
    # every snapshot is kept: the past reads the same
    pd.testing.assert_frame_equal(lake.at(middle).read("clinical"), past)


def test_retention_expires_old_snapshots_and_their_files(lake):
    _clinical(lake, 0, 10)
    first = int(lake.snapshots().snapshot_id.iloc[1])
    before = _everything(lake)
    res = CliRunner().invoke(app, ["lake", "compact", "--lake", str(lake.path), "--keep-days",
                                   "0", "--json"])
    assert res.exit_code == 0, res.output
    files = json.loads(res.output)
    assert files["data_files_after"] == 1 < files["data_files_before"]
    # only the merged file (and the write counter's) remain: the old ones are deleted
    assert files["disk_files_after"] <= 2 < files["disk_files_before"]
    for table, df in _everything(Lake(lake.path)).items():
        pd.testing.assert_frame_equal(df, before[table], obj=table)
    with pytest.raises(LakeError, match=f"no snapshot {first}"):
        lake.at(first)
