"""The lake as DuckLake (issue 21, first part): a copy of a lake in DuckLake's format.

:func:`migrate` copies every table of a lake of today's layout (Parquet parts under
``tables/``) into a DuckLake lake: a DuckDB catalog file ``catalog.ducklake`` and the data files
under ``data/``, both in one folder. The copy is one DuckLake transaction (one snapshot: a
failure leaves the destination as it was) and idempotent (rows whose ``id`` the destination
already holds are not copied again), so it can be repeated as the old lake grows.

The DuckLake extension comes from the ``duckdb-ext-ducklake`` package (no network). Any DuckDB
of the pinned version opens the copy, wherever the folder was moved, with two lines::

    LOAD '<site-packages>/duckdb_ext/extensions/v1.4.4/linux_amd64/ducklake.duckdb_extension';
    ATTACH 'ducklake:<lake>/catalog.ducklake' AS lake
        (DATA_PATH '<lake>/data/', OVERRIDE_DATA_PATH true, READ_ONLY);

(:func:`open_lines` writes them for a folder, ``theralake lake migrate`` prints them; where
DuckDB can download extensions, ``INSTALL ducklake; LOAD ducklake`` does the first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import duckdb_ext
import pyarrow as pa

from theralake import __version__
from theralake.lake.schemas import SCHEMA_VERSION, SCHEMAS
from theralake.lake.store import META_FILE, Lake, LakeError, _atomic_write_bytes

__all__ = ["CATALOG", "DATA", "attach", "extension_path", "migrate", "open_lines"]

CATALOG = "catalog.ducklake"
DATA = "data"
FORMAT = "ducklake"  # theralake.json's "format" of a DuckLake lake


def extension_path(name: str = "ducklake") -> Path:
    """The DuckDB extension file shipped by the ``duckdb-ext-<name>`` package.

    Raises:
        LakeError: the package is not installed for this DuckDB version and platform.
    """
    platform = duckdb.execute("PRAGMA platform").fetchone()[0]
    for root in duckdb_ext.__path__:
        path = Path(root) / "extensions" / f"v{duckdb.__version__}" / platform / \
            f"{name}.duckdb_extension"
        if path.exists():
            return path
    raise LakeError(f"no DuckDB {name} extension for DuckDB {duckdb.__version__} on {platform}: "
                    f"install duckdb-ext-{name} of the same version")


def open_lines(folder: str | os.PathLike[str]) -> list[str]:
    """The two statements that open the DuckLake lake in ``folder`` in any DuckDB of the pinned
    version, read-only (the module docstring's)."""
    folder = Path(folder).resolve()
    return [f"LOAD '{_quoted(extension_path().as_posix())}';",
            f"ATTACH 'ducklake:{_quoted((folder / CATALOG).as_posix())}' AS lake "
            f"(DATA_PATH '{_quoted((folder / DATA).as_posix())}/', OVERRIDE_DATA_PATH true, "
            "READ_ONLY);"]


def attach(folder: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the DuckLake lake in ``folder`` attached as ``lake`` (its data
    path set to the folder's own, wherever the folder is now)."""
    con = duckdb.connect()
    con.execute(f"LOAD '{_quoted(extension_path().as_posix())}'")
    data = (folder / DATA).as_posix() + "/"
    options = f"DATA_PATH '{_quoted(data)}', OVERRIDE_DATA_PATH true" + (
        ", READ_ONLY" if read_only else "")
    con.execute(f"ATTACH 'ducklake:{_quoted((folder / CATALOG).as_posix())}' AS lake "
                f"({options})")
    return con


def migrate(source: Lake, dest: str | os.PathLike[str],
            progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every table of ``source`` into the DuckLake lake ``dest`` (created if missing).

    Returns the rows copied per table (0 where the destination had them all). ``progress`` is
    called with each table's name and its rows copied.

    Raises:
        LakeError: ``dest`` exists and is neither empty nor a DuckLake lake; ``source`` is
            itself a DuckLake lake.
    """
    dest = Path(dest).resolve()
    if (source.path / CATALOG).exists():
        raise LakeError(f"{source.path} is already a DuckLake lake")
    if dest == source.path:
        raise LakeError(f"{dest}: the destination must be another folder than the lake")
    meta = dest / META_FILE
    if dest.exists() and any(dest.iterdir()) and not (dest / CATALOG).exists():
        raise LakeError(f"{dest} exists, is not empty and is not a DuckLake lake "
                        f"(no {CATALOG})")
    if meta.exists() and json.loads(meta.read_text()).get("schema_version") != SCHEMA_VERSION:
        raise LakeError(f"{dest}: a DuckLake lake of another schema version")
    (dest / DATA).mkdir(parents=True, exist_ok=True)
    copied: dict[str, int] = {}
    con = attach(dest)
    try:
        con.execute("BEGIN TRANSACTION")
        for table, schema in SCHEMAS.items():
            _create_or_extend(con, table, schema)
            parts = [p.as_posix() for p in sorted(source.table_dir(table).glob("part-*.parquet"))]
            before = con.execute(f"SELECT count(*) FROM lake.{table}").fetchone()[0]
            con.execute(f"INSERT INTO lake.{table} BY NAME SELECT * FROM read_parquet(?, "
                        f"union_by_name = true) WHERE id NOT IN (SELECT id FROM lake.{table})",
                        [parts])
            copied[table] = con.execute(f"SELECT count(*) FROM lake.{table}").fetchone()[0] \
                - before
            if progress is not None:
                progress(table, copied[table])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    _atomic_write_bytes(meta, json.dumps({
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "theralake_version": __version__,
        "migrated_from": source.path.as_posix(),
        "migrated_utc": datetime.now(UTC).isoformat()}, indent=2).encode())
    return copied


def _create_or_extend(con: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema) -> None:
    """Create the DuckLake table from the Arrow schema, or add the columns a newer schema has
    (a copy made by an older theralake takes the newer lake's rows)."""
    con.register("empty_rows", schema.empty_table())
    try:
        con.execute(f"CREATE TABLE IF NOT EXISTS lake.{table} AS SELECT * FROM empty_rows")
        have = {r[0] for r in con.execute(f"DESCRIBE lake.{table}").fetchall()}
        for name, kind, *_ in con.execute("DESCRIBE SELECT * FROM empty_rows").fetchall():
            if name not in have:
                con.execute(f'ALTER TABLE lake.{table} ADD COLUMN "{name}" {kind}')
    finally:
        con.unregister("empty_rows")


def _quoted(text: str) -> str:
    return text.replace("'", "''")
