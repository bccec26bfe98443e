"""DuckLake, the lake's table format: a SQL catalog plus Parquet data files, attached to DuckDB.

A lake folder holds ``theralake.json``, the data files under ``data/`` and, by default, the
catalog as a SQLite file ``catalog.sqlite`` (in WAL mode: readers never block a writer, and the
local engine's worker processes write at once). A lake made with ``--lake postgresql://…`` keeps
its catalog in that PostgreSQL database and its data files in the folder, which every writer
mounts (``theralake.json`` records the catalog, so the folder alone names the lake afterwards).

Data files are recorded relative to the data path, and every opening sets the data path to the
folder's own, so a copied or moved lake opens where it now is. The extensions come from the
``duckdb-ext-*`` packages of the pinned DuckDB (no network). Any DuckDB 1.4.4 opens a lake with
the two lines :func:`open_lines` writes (``theralake lake open-lines`` prints them)::

    LOAD '<…>/ducklake.duckdb_extension'; LOAD '<…>/sqlite_scanner.duckdb_extension';
    ATTACH 'ducklake:sqlite:<lake>/catalog.sqlite' AS lake
        (DATA_PATH '<lake>/data/', OVERRIDE_DATA_PATH true, READ_ONLY);

(where DuckDB can download extensions, ``INSTALL ducklake; INSTALL sqlite;`` replaces the first).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import duckdb_ext

__all__ = ["CATALOG_FILE", "DATA", "SQLITE", "ExtensionMissing", "attach", "catalog_kind",
           "copy_sqlite_catalog", "create_sqlite_catalog", "extension_path", "is_postgres",
           "open_lines", "redacted"]

CATALOG_FILE = "catalog.sqlite"
DATA = "data"
#: theralake.json's ``catalog`` of a lake whose catalog is the folder's SQLite file
SQLITE = "sqlite"
_SCANNERS = {"sqlite": "sqlite_scanner", "postgres": "postgres_scanner"}


class ExtensionMissing(RuntimeError):
    """The DuckDB extension package of the pinned DuckDB is not installed."""


def extension_path(name: str = "ducklake") -> Path:
    """The DuckDB extension file shipped by the ``duckdb-ext-<name>`` package.

    Raises:
        ExtensionMissing: the package is not installed for this DuckDB version and platform.
    """
    platform = duckdb.execute("PRAGMA platform").fetchone()[0]
    for root in duckdb_ext.__path__:
        path = Path(root) / "extensions" / f"v{duckdb.__version__}" / platform / \
            f"{name}.duckdb_extension"
        if path.exists():
            return path
    package = name.removesuffix("_scanner")
    raise ExtensionMissing(f"no DuckDB {name} extension for DuckDB {duckdb.__version__} on "
                           f"{platform}: install duckdb-ext-{package} of the same version")


def is_postgres(catalog: str) -> bool:
    return catalog.startswith(("postgresql://", "postgres://"))


def catalog_kind(catalog: str) -> str:
    """``postgres`` for a PostgreSQL URL, else ``sqlite`` (the folder's file)."""
    return "postgres" if is_postgres(catalog) else "sqlite"


def redacted(catalog: str) -> str:
    """The catalog with any password left out (for messages and lineage)."""
    if not is_postgres(catalog):
        return catalog
    parts = urlsplit(catalog)
    if parts.password is None:
        return catalog
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def _quoted(text: str) -> str:
    return text.replace("'", "''")


def _statements(folder: Path, catalog: str, *, read_only: bool, snapshot: int | None,
                catalog_file: Path | None = None) -> list[str]:
    kind = catalog_kind(catalog)
    source = catalog if kind == "postgres" else (catalog_file or folder / CATALOG_FILE).as_posix()
    options = [f"DATA_PATH '{_quoted((folder / DATA).as_posix())}/'", "OVERRIDE_DATA_PATH true"]
    if read_only:
        options.append("READ_ONLY")
    if snapshot is not None:
        options.append(f"SNAPSHOT_VERSION {int(snapshot)}")
    return [f"LOAD '{_quoted(extension_path().as_posix())}'",
            f"LOAD '{_quoted(extension_path(_SCANNERS[kind]).as_posix())}'",
            f"ATTACH 'ducklake:{kind}:{_quoted(source)}' AS lake ({', '.join(options)})"]


def open_lines(folder: str | Path, catalog: str = SQLITE) -> list[str]:
    """The two lines that open the lake in ``folder`` read-only in any DuckDB 1.4.4."""
    load_ducklake, load_scanner, attach_lake = _statements(
        Path(folder).resolve(), redacted(catalog), read_only=True, snapshot=None)
    return [f"{load_ducklake}; {load_scanner};", f"{attach_lake};"]


def attach(folder: Path, catalog: str = SQLITE, *, read_only: bool = False,
           snapshot: int | None = None, catalog_file: Path | None = None,
           ) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake attached as ``lake``: read-write, or read-only (at
    ``snapshot``, the newest if None). ``catalog_file`` reads a copy of the SQLite catalog
    (a lake on read-only media: SQLite's WAL mode needs a writable folder to read).

    The extensions are the installed packages' files, loaded by path without checking their
    signature again: the check costs 0.2 s per connection, opened by every task and command,
    and the files are as trusted as DuckDB itself (same index, same install). Queries cannot
    load anything (``Lake.sql`` runs SELECT only, with external access off).
    """
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    try:
        for stmt in _statements(folder, catalog, read_only=read_only, snapshot=snapshot,
                                catalog_file=catalog_file):
            con.execute(stmt)
    except BaseException:
        con.close()
        raise
    return con


def create_sqlite_catalog(folder: Path) -> None:
    """An empty SQLite catalog file in WAL mode (a reader never blocks a writer)."""
    with sqlite3.connect(folder / CATALOG_FILE) as con:
        con.execute("PRAGMA journal_mode=WAL")
    con.close()


def copy_sqlite_catalog(folder: Path, dest: Path) -> Path:
    """Copy the SQLite catalog (and its write-ahead log) into ``dest``; returns the copy."""
    for suffix in ("", "-wal"):
        source = folder / f"{CATALOG_FILE}{suffix}"
        if source.exists():
            shutil.copyfile(source, dest / source.name)
    return dest / CATALOG_FILE
