"""Issue 21: a lake of today's layout copied into DuckLake, read back by plain DuckDB."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from theralake.lake import SCHEMAS, Lake, LakeError, ducklake
from theralake.lake.ducklake import CATALOG, extension_path, migrate
from theralake.pipelines.cli import app


def _value(field: pa.Field, i: int) -> object:
    """A value of the field's type (row i); None for a nullable field of row 1."""
    t = field.type
    if field.nullable and i == 1 and field.name != "id":
        return None
    if pa.types.is_list(t):
        return [_value(pa.field("x", t.value_type, nullable=False), i) for _ in range(3)]
    if pa.types.is_string(t):
        return f"{field.name}-{i}"
    if pa.types.is_integer(t):
        return 7 + i
    if pa.types.is_floating(t):
        return 0.125 * (i + 1)
    if pa.types.is_boolean(t):
        return i == 0
    if pa.types.is_timestamp(t):
        return datetime(2026, 12, 7, 10, 30, 15 + i, tzinfo=UTC if t.tz else None)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return bytes(range(i, i + 64))
    raise AssertionError(f"no test value for {field.name}: {t}")


@pytest.fixture
def old_lake(tmp_path: Path) -> Lake:
    """Every table with two rows of every column type (one with the nullable columns empty)."""
    lake = Lake(tmp_path / "old")
    for table, schema in SCHEMAS.items():
        lake.append(table, [{f.name: _value(f, i) for f in schema
                             if _value(f, i) is not None} for i in (0, 1)])
    return lake


def _plain_duckdb(folder: Path) -> duckdb.DuckDBPyConnection:
    """The two lines of the module docstring, in a DuckDB that knows nothing of theralake."""
    con = duckdb.connect()
    con.execute(f"LOAD '{extension_path().as_posix()}'")
    con.execute(f"ATTACH 'ducklake:{folder.as_posix()}/catalog.ducklake' AS lake "
                f"(DATA_PATH '{folder.as_posix()}/data/', OVERRIDE_DATA_PATH true, READ_ONLY)")
    return con


def _rows(df: pd.DataFrame) -> list[dict]:
    out = []
    for rec in df.sort_values("id").to_dict("records"):
        out.append({k: (v.tolist() if isinstance(v, np.ndarray) else
                        None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT
                        else v) for k, v in rec.items()})
    return out


def test_migrate_copies_every_table_row_for_row(old_lake, tmp_path):
    dest = tmp_path / "new"
    copied = migrate(old_lake, dest)
    assert copied == {t: 2 for t in SCHEMAS}
    moved = tmp_path / "elsewhere" / "lake"  # a copied lake opens where it now is
    shutil.copytree(dest, moved)
    shutil.rmtree(dest)
    con = _plain_duckdb(moved)
    try:
        for table, schema in SCHEMAS.items():
            ours = old_lake.sql(f"SELECT * FROM {table}")
            theirs = con.execute(f"SELECT * FROM lake.{table}").df()
            assert list(theirs.columns) == schema.names, table
            assert _rows(theirs[ours.columns]) == _rows(ours), table
        # one snapshot for the whole copy (after the catalog's own first one)
        assert con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0] == 2
    finally:
        con.close()
    meta = json.loads((moved / "theralake.json").read_text())
    assert meta["format"] == "ducklake" and meta["migrated_from"] == old_lake.path.as_posix()


def test_migrate_again_copies_only_new_rows(old_lake, tmp_path):
    dest = tmp_path / "new"
    migrate(old_lake, dest)
    assert set(migrate(old_lake, dest).values()) == {0}
    row = {f.name: _value(f, 0) for f in SCHEMAS["clinical"]} | {"id": "one-more"}
    old_lake.append("clinical", [row])
    assert migrate(old_lake, dest)["clinical"] == 1
    con = _plain_duckdb(dest)
    try:
        assert con.execute("SELECT count(*) FROM lake.clinical").fetchone()[0] == 3
        # the earlier state stays readable: the snapshot before the last copy has two rows
        versions = [v for (v,) in con.execute(
            "SELECT snapshot_id FROM lake.snapshots() ORDER BY snapshot_id").fetchall()]
        assert con.execute(f"SELECT count(*) FROM lake.clinical AT (VERSION => {versions[-2]})"
                           ).fetchone()[0] == 2
    finally:
        con.close()


def test_a_copy_made_before_a_new_column_takes_it(old_lake, tmp_path, monkeypatch):
    dest = tmp_path / "new"
    migrate(old_lake, dest)
    newer = {**SCHEMAS, "clinical": SCHEMAS["clinical"].append(pa.field("note", pa.string()))}
    monkeypatch.setattr(ducklake, "SCHEMAS", newer)
    assert set(migrate(old_lake, dest).values()) == {0}
    con = _plain_duckdb(dest)
    try:
        assert con.execute("SELECT count(*) FROM lake.clinical WHERE note IS NULL").fetchone() \
            == (2,)
    finally:
        con.close()


def test_a_failed_copy_leaves_the_destination_as_it_was(old_lake, tmp_path, monkeypatch):
    dest = tmp_path / "new"
    migrate(old_lake, dest)
    old_lake.append("clinical", [{f.name: _value(f, 0) for f in SCHEMAS["clinical"]}
                                 | {"id": "late"}])
    calls = []

    def fail_late(table: str, n: int) -> None:
        calls.append(table)
        if table == "outcomes":  # after clinical was copied in the same transaction
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        migrate(old_lake, dest, progress=fail_late)
    assert "clinical" in calls
    con = _plain_duckdb(dest)
    try:
        assert con.execute("SELECT count(*) FROM lake.clinical").fetchone()[0] == 2
    finally:
        con.close()


def test_bad_destinations_are_refused(old_lake, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(LakeError, match="not empty and is not a DuckLake lake"):
        migrate(old_lake, busy)
    with pytest.raises(LakeError, match="another folder than the lake"):
        migrate(old_lake, old_lake.path)
    dest = tmp_path / "new"
    migrate(old_lake, dest)
    assert (dest / CATALOG).exists()
    with pytest.raises(LakeError, match="is a DuckLake lake"):
        Lake(dest)  # today's Lake does not write its own layout into a DuckLake folder


def test_the_command(old_lake, tmp_path):
    dest = tmp_path / "new"
    res = CliRunner().invoke(app, ["lake", "migrate", str(old_lake.path), str(dest), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["rows_copied"] == {t: 2 for t in SCHEMAS}
    assert out["open_with"][1].startswith(f"ATTACH 'ducklake:{dest.resolve().as_posix()}/")
    bad = CliRunner().invoke(app, ["lake", "migrate", str(tmp_path / "none"), str(dest)])
    assert bad.exit_code == 2 and "no lake at" in bad.output
