"""Issue 21: a lake of Parquet parts (the layout before DuckLake) copied into the DuckLake lake
by ``theralake lake migrate``, and read back by plain DuckDB."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from theralake.lake import SCHEMAS, Lake, LakeError
from theralake.lake.migrate import migrate
from theralake.pipelines.cli import app

KEY_FINGERPRINT = "d6feeb0a6a102edf"


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


def _write_old_lake(folder: Path, rows: dict[str, list[dict]]) -> None:
    """A lake as theralake wrote it before DuckLake: theralake.json and Parquet parts."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "theralake.json").write_text(json.dumps(
        {"schema_version": 1, "theralake_version": "0.1.0",
         "pseudonym_key_fingerprint": KEY_FINGERPRINT}))
    for table, schema in SCHEMAS.items():
        (folder / "tables" / table).mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(),
                       folder / "tables" / table / "part-00000000-schema-x.parquet")
        for i, row in enumerate(rows.get(table, [])):
            pq.write_table(pa.Table.from_pylist([row], schema=schema),
                           folder / "tables" / table / f"part-{row['id']}-{i}.parquet")


def _old_rows(i: int, schema: pa.Schema) -> dict:
    return {f.name: _value(f, i) for f in schema}


@pytest.fixture
def old_lake(tmp_path: Path) -> Path:
    """Every table with two rows of every column type (one with the nullable columns empty)."""
    folder = tmp_path / "old"
    _write_old_lake(folder, {t: [_old_rows(i, s) for i in (0, 1)] for t, s in SCHEMAS.items()})
    (folder / "mlflow").mkdir()
    (folder / "mlflow" / "mlflow.db").write_bytes(b"registry")
    return folder


def _old_table(folder: Path, table: str) -> pd.DataFrame:
    return duckdb.sql(f"SELECT * FROM read_parquet('{folder}/tables/{table}/part-*.parquet', "
                      "union_by_name = true)").df()


def _plain_duckdb(lines: list[str]) -> duckdb.DuckDBPyConnection:
    """The two lines ``theralake lake migrate`` printed, in a DuckDB that knows nothing of
    theralake."""
    con = duckdb.connect()
    for line in lines:
        con.execute(line)
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
    lake, copied = migrate(old_lake, dest)
    assert copied == {t: 2 for t in SCHEMAS}
    moved = tmp_path / "elsewhere" / "lake"  # a copied lake opens where it now is
    shutil.copytree(dest, moved)
    shutil.rmtree(dest)
    con = _plain_duckdb(Lake(moved).open_lines())
    try:
        for table, schema in SCHEMAS.items():
            ours = _old_table(old_lake, table)
            theirs = con.execute(f"SELECT * FROM lake.{table}").df()
            assert list(theirs.columns) == schema.names, table
            assert _rows(theirs[ours.columns]) == _rows(ours), table
    finally:
        con.close()
    # one snapshot holds the whole copy: the one before it has none of the rows
    copy = Lake(moved)
    assert set(copy.at(copy.snapshot() - 1).counts().values()) == {0}
    meta = json.loads((moved / "theralake.json").read_text())
    assert meta["format"] == "ducklake" and meta["migrated_from"] == old_lake.as_posix()
    assert meta["pseudonym_key_fingerprint"] == KEY_FINGERPRINT  # the same key opens it
    assert (moved / "mlflow" / "mlflow.db").read_bytes() == b"registry"


def test_migrate_again_copies_only_new_rows(old_lake, tmp_path):
    dest = tmp_path / "new"
    migrate(old_lake, dest)
    assert set(migrate(old_lake, dest)[1].values()) == {0}
    _write_old_lake(old_lake, {"clinical": [_old_rows(0, SCHEMAS["clinical"])
                                            | {"id": "one-more"}]})
    lake, copied = migrate(old_lake, dest)
    assert copied["clinical"] == 1
    assert lake.counts()["clinical"] == 3
    # the earlier state stays readable: the snapshot before the last copy has two rows
    before = int(lake.snapshots().snapshot_id.iloc[-2])
    assert lake.at(before).counts()["clinical"] == 2


def test_a_failed_copy_leaves_the_destination_as_it_was(old_lake, tmp_path):
    dest = tmp_path / "new"
    migrate(old_lake, dest)
    _write_old_lake(old_lake, {"clinical": [_old_rows(0, SCHEMAS["clinical"]) | {"id": "late"}]})
    calls = []

    def fail_late(table: str, n: int) -> None:
        calls.append(table)
        if table == "outcomes":  # after clinical was copied in the same transaction
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        migrate(old_lake, dest, progress=fail_late)
    assert "clinical" in calls
    assert Lake(dest).counts()["clinical"] == 2


def test_bad_sources_and_destinations_are_refused(old_lake, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(LakeError, match="not empty and is not a theralake lake"):
        migrate(old_lake, busy)
    with pytest.raises(LakeError, match="is a lake of Parquet parts.*lake migrate"):
        Lake(old_lake)  # an old lake is named as such, with the command that copies it
    dest = tmp_path / "new"
    migrate(old_lake, dest)
    with pytest.raises(LakeError, match="already a DuckLake lake"):
        migrate(dest, tmp_path / "other")
    other_key = tmp_path / "other-key"
    _write_old_lake(other_key, {})
    meta = json.loads((other_key / "theralake.json").read_text())
    (other_key / "theralake.json").write_text(json.dumps(
        {**meta, "pseudonym_key_fingerprint": "0000"}))
    with pytest.raises(LakeError, match="different pseudonym keys"):
        migrate(other_key, dest)


def test_the_command(old_lake, tmp_path):
    dest = tmp_path / "new"
    res = CliRunner().invoke(app, ["lake", "migrate", str(old_lake), str(dest), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["rows_copied"] == {t: 2 for t in SCHEMAS}
    assert out["open_with"][1].startswith(
        f"ATTACH 'ducklake:sqlite:{dest.resolve().as_posix()}/catalog.sqlite'")
    bad = CliRunner().invoke(app, ["lake", "migrate", str(tmp_path / "none"), str(dest)])
    assert bad.exit_code == 2 and "not a theralake lake" in bad.output
