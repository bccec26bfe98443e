"""The lake: a folder of Parquet tables with atomic, idempotent appends and a DuckDB catalog."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from theralake import __version__
from theralake.lake.schemas import SCHEMA_VERSION, SCHEMAS
from theralake.lake.volume import Volume

log = logging.getLogger(__name__)

#: the statements ``Lake.sql`` runs: queries, never writes
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")
META_FILE = "theralake.json"
SCHEMA_PART = "part-00000000-schema-{digest}.parquet"  # one empty part per schema version


class LakeError(RuntimeError):
    """A lake that cannot be opened or written as asked."""


_DUCK_LOCK = threading.Lock()


def default_lake_path() -> Path:
    return Path(os.environ.get("THERALAKE_LAKE", "lake"))


def stable_hash(*parts: object) -> str:
    """SHA-256 hex digest of the repr of the parts (content-hash ids)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class Lake:
    """A theralake lake folder: ``tables/<table>/part-*.parquet`` plus ``catalog.duckdb``.

    Args:
        path: the lake folder; created (with the current schema version) if missing.
        create: create the folder when it does not exist.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True):
        self.path = Path(path) if path is not None else default_lake_path()
        self.path = self.path.resolve()
        self._duck: duckdb.DuckDBPyConnection | None = None
        self.read_only = False
        #: called under the write lock before every part is written (a run's liveness check)
        self.write_guard: Callable[[], None] | None = None
        meta = self.path / META_FILE
        if self.path.exists() and not self.path.is_dir():
            raise LakeError(f"{self.path} is a file, not a lake folder")
        if meta.exists():
            self._check_meta(meta)
        elif self.path.exists() and any(self.path.iterdir()):
            raise LakeError(f"{self.path} exists, is not empty and is not a theralake lake "
                            f"(no {META_FILE})")
        elif not create:
            raise LakeError(f"no lake at {self.path}")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(meta, json.dumps(
                {"schema_version": SCHEMA_VERSION, "theralake_version": __version__,
                 "created_utc": datetime.now(UTC).isoformat()}, indent=2).encode())
            log.info("created lake at %s", self.path)
        self.read_only = not _writable(self.path)
        if self.read_only:  # an archive or a read-only mount: it answers queries as it is
            log.info("%s is read-only: opened for reading", self.path)
            return
        self._prepare_tables()
        self.refresh_catalog()

    # -- opening -------------------------------------------------------------------------
    def _check_meta(self, meta: Path) -> None:
        try:
            found = json.loads(meta.read_text())
            version = found["schema_version"]
        except (ValueError, KeyError) as exc:
            raise LakeError(f"{meta}: unreadable lake metadata ({exc})") from exc
        if found.get("format", "parquet") != "parquet":
            kind = {"ducklake": "DuckLake"}.get(found["format"], found["format"])
            raise LakeError(f"{self.path} is a {kind} lake (made by theralake lake "
                            "migrate): this theralake reads and writes lakes of Parquet parts; "
                            "query the copy with DuckDB as the migration printed")
        if version != SCHEMA_VERSION:
            raise LakeError(
                f"{self.path}: lake schema version {version}, this theralake "
                f"({__version__}) reads version {SCHEMA_VERSION}; migrate or use a matching "
                "theralake")

    def _prepare_tables(self) -> None:
        """Give every table its schema part and remove the temporary files of a killed writer.

        Both happen under the write lock: every writer of ``tables/`` holds it, so no temporary
        file removed here can belong to a live write.
        """
        with self.exclusive("write"):
            for name, schema in SCHEMAS.items():
                folder = self.table_dir(name)
                part = folder / SCHEMA_PART.format(digest=_schema_digest(schema))
                if not part.exists():  # a column added since: union_by_name sees it
                    folder.mkdir(parents=True, exist_ok=True)
                    _atomic_write_table(schema.empty_table(), part)
            for tmp in (self.path / "tables").glob("*/.tmp-*"):
                tmp.unlink(missing_ok=True)

    def meta(self) -> dict:
        """The lake's ``theralake.json``."""
        return json.loads((self.path / META_FILE).read_text())

    def set_meta(self, **values: object) -> None:
        """Add or change keys of ``theralake.json`` (atomically, under the write lock)."""
        with self.exclusive("write"):
            meta = {**self.meta(), **values}
            _atomic_write_bytes(self.path / META_FILE, json.dumps(meta, indent=2).encode())

    def table_dir(self, table: str) -> Path:
        if table not in SCHEMAS:
            raise LakeError(f"unknown table {table!r}; tables are {', '.join(SCHEMAS)}")
        return self.path / "tables" / table

    # -- catalog -------------------------------------------------------------------------
    def _view_sql(self, tables: Iterable[str] = SCHEMAS, temporary: bool = False) -> list[str]:
        out = []
        for name in tables:
            pattern = (self.table_dir(name) / "part-*.parquet").as_posix().replace("'", "''")
            out.append(f"CREATE OR REPLACE {'TEMP ' if temporary else ''}VIEW {name} AS "
                       f"SELECT * FROM read_parquet('{pattern}', union_by_name = true)")
        return out

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on this object's in-memory DuckDB, which caches the parts' footers.

        Parts are immutable once written (a part's name is the hash of its rows), so cached
        footers never go stale; new parts are found by the glob of each query.
        """
        with _DUCK_LOCK:
            if self._duck is None:
                self._duck = self._sandboxed(parquet_metadata_cache=True)
            return self._duck.cursor()

    def _sandboxed(self, parquet_metadata_cache: bool = False) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB that can read the lake's tables and no other file, and
        whose configuration is locked (a query cannot turn the sandbox off)."""
        con = duckdb.connect()
        tables = (self.path / "tables").as_posix().replace("'", "''") + "/"
        if parquet_metadata_cache:
            con.execute("SET GLOBAL parquet_metadata_cache = true")
        con.execute(f"SET allowed_directories = ['{tables}']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_duck": None, "write_guard": None}

    def refresh_catalog(self) -> None:
        """(Re)write ``catalog.duckdb``'s views; other tools can open it directly."""
        catalog = self.path / "catalog.duckdb"
        with self.exclusive("write"):
            try:
                con = duckdb.connect(str(catalog))
            except duckdb.Error as exc:  # held by another process: it has the same views
                log.debug("catalog busy (%s); not refreshed", exc)
                return
            try:
                for stmt in self._view_sql():
                    con.execute(stmt)
            finally:
                con.close()

    def connect(self, tables: Iterable[str] = SCHEMAS) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with a view per table (safe beside other processes).

        Creating a view reads the footers of the table's parts, so a caller that needs only
        some tables names them.
        """
        con = self._sandboxed()
        for stmt in self._view_sql(tables):
            con.execute(stmt)
        return con

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        """Run a read-only query over the tables (by name, as views) and return a DataFrame.

        Only queries run (SELECT, EXPLAIN), in a sandbox that reads the lake's tables and no
        other file: no statement can change the lake or reach the file system.

        Raises:
            LakeError: the query is not read-only.
        """
        con = self._cursor()
        try:
            try:
                kinds = {str(s.type).rsplit(".", 1)[-1] for s in con.extract_statements(query)}
            except duckdb.Error as exc:
                raise LakeError(f"unreadable query ({exc})") from exc
            writes = sorted(kinds - set(READ_ONLY_STATEMENTS))
            if writes:
                raise LakeError(f"the lake answers read-only queries (SELECT) only; this query "
                                f"has {', '.join(writes)}")
            for stmt in self._view_sql([t for t in SCHEMAS if re.search(rf"\b{t}\b", query)],
                                       temporary=True):
                con.execute(stmt)
            return con.execute(query, params or []).df()
        finally:
            con.close()

    def read(self, table: str, where: str | None = None, params: list | None = None,
             columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Rows of a table as a DataFrame (optionally filtered with a SQL WHERE clause)."""
        self.table_dir(table)
        cols = ", ".join(columns) if columns else "*"
        query = f"SELECT {cols} FROM {table}" + (f" WHERE {where}" if where else "")
        return self.sql(query, params)

    def ids(self, table: str) -> set[str]:
        files = self._parts(table)
        if not files:
            return set()
        con = self._cursor()
        try:
            rows = con.execute("SELECT id FROM read_parquet(?)", [files]).fetchall()
        finally:
            con.close()
        return {r[0] for r in rows}

    def _parts(self, table: str) -> list[str]:
        return sorted(str(p) for p in self.table_dir(table).glob("part-*.parquet"))

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold the lake's lock ``name`` (one holder at a time across processes).

        Raises:
            LakeError: the lake is read-only.
        """
        if self.read_only:
            raise LakeError(f"{self.path} is read-only: it can be queried, not written")
        with open(self.path / f".{name}.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def append(self, table: str, rows: Iterable[Mapping] | pd.DataFrame,
               input_ids: Iterable[str] | None = None, params_hash: str | None = None) -> int:
        """Append rows atomically; rows whose ``id`` is already in the table are skipped.

        Lineage columns missing from a row are filled (``input_ids`` and ``params_hash``
        from the arguments, the package version and the time). Returns the rows added.
        """
        schema = SCHEMAS[table] if table in SCHEMAS else self.table_dir(table)
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        if not records:
            return 0
        now = datetime.now(UTC)
        for rec in records:
            if not rec.get("id"):
                raise LakeError(f"{table}: every row needs a content-hash 'id'")
            rec.setdefault("input_ids", list(input_ids or []))
            rec.setdefault("params_hash", params_hash)
            rec.setdefault("theralake_version", __version__)
            rec.setdefault("created_utc", now)
        unknown = set().union(*(r.keys() for r in records)) - set(schema.names)
        if unknown:
            raise LakeError(f"{table}: unknown columns {sorted(unknown)}")
        with self.exclusive("write"):
            present = self.ids(table)
            fresh: dict[str, Mapping] = {}
            for rec in records:
                if rec["id"] not in present:
                    fresh.setdefault(rec["id"], rec)
            if not fresh:
                return 0
            try:
                data = pa.Table.from_pylist(list(fresh.values()), schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise LakeError(f"{table}: rows do not fit the schema ({exc})") from exc
            name = "part-" + stable_hash(sorted(fresh))[:24] + ".parquet"
            if self.write_guard is not None:
                self.write_guard()
            _atomic_write_table(data, self.table_dir(table) / name)
        log.debug("%s: %d rows appended", table, len(fresh))
        return len(fresh)

    # -- images --------------------------------------------------------------------------
    def volume(self, table: str, row_id: str) -> Volume:
        """The voxel volume of a row of ``images``, ``vois`` or ``dose_maps``."""
        df = self.read(table, "id = ?", [row_id])
        if df.empty:
            raise LakeError(f"no row with id {row_id!r} in {table}")
        return Volume.from_row(df.iloc[0].to_dict())

    def export_nifti(self, row_id: str, out: str | os.PathLike[str],
                     table: str = "images") -> Path:
        """Write a voxel row as NIfTI (world geometry kept, LPS -> RAS as NIfTI expects)."""
        import SimpleITK as sitk

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(self.volume(table, row_id).to_sitk(), str(out), useCompression=True)
        return out

    def counts(self) -> dict[str, int]:
        con = self.connect()
        try:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in SCHEMAS}
        finally:
            con.close()


def _writable(folder: Path) -> bool:
    """Whether the lake folder takes writes (its write lock can be opened)."""
    try:
        with open(folder / ".write.lock", "a+"):
            return True
    except OSError:
        return False


def _schema_digest(schema: pa.Schema) -> str:
    return hashlib.sha256(schema.to_string(show_schema_metadata=False).encode()).hexdigest()[:12]


def _atomic_write_table(table: pa.Table, dest: Path) -> None:
    tmp = dest.parent / f".tmp-{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_bytes(dest: Path, data: bytes) -> None:
    tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
