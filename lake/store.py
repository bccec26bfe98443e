"""The lake: DuckLake tables (a SQL catalog plus Parquet data files) with idempotent appends."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import duckdb
import pandas as pd
import pyarrow as pa

from theralake import __version__
from theralake.lake import ducklake
from theralake.lake.schemas import SCHEMA_VERSION, SCHEMAS
from theralake.lake.volume import Volume

log = logging.getLogger(__name__)

#: the statements ``Lake.sql`` runs: queries, never writes
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")
#: DuckLake's functions that change a lake: a query may not call them, even read-only
MAINTENANCE_FUNCTIONS = re.compile(
    r"\bducklake_(expire_snapshots|cleanup_old_files|merge_adjacent_files|"
    r"delete_orphaned_files|rewrite_data_files|flush_inlined_data|add_data_files|set_option|"
    r"set_commit_message)\b", re.IGNORECASE)
META_FILE = "theralake.json"
FORMAT = "ducklake"  # theralake.json's "format"
#: the one-row table every write updates, so that two concurrent writes conflict (a comment or
#: other schema change would conflict too, but would split the data files by schema version)
TOKEN_SCHEMA = "theralake"
TOKEN = f"{TOKEN_SCHEMA}.writes"
_COUNT_WRITE = f"UPDATE lake.{TOKEN} SET writes = writes + 1"
#: how long a write retries while other writers' commits conflict with it
WRITE_WAIT_S = float(os.environ.get("THERALAKE_WRITE_WAIT_S", "300"))
T = TypeVar("T")


class LakeError(RuntimeError):
    """A lake that cannot be opened or written as asked."""


_DUCK_LOCK = threading.RLock()


def default_lake_path() -> Path:
    return Path(os.environ.get("THERALAKE_LAKE", "lake"))


def stable_hash(*parts: object) -> str:
    """SHA-256 hex digest of the repr of the parts (content-hash ids)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class Lake:
    """A theralake lake: DuckLake tables (a SQL catalog plus Parquet data files) in a folder.

    Args:
        path: the lake folder (created, with the current schema version, if missing), or
            ``postgresql://user@host:port/db?data_path=/shared/folder`` for a lake whose catalog
            is in PostgreSQL (the folder then names it alone).
        create: create the lake when it does not exist.
        snapshot: read the lake as it was at this snapshot (read-only); the newest if None.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = True,
                 snapshot: int | None = None):
        location = str(path) if path is not None else str(default_lake_path())
        catalog_url = None
        if ducklake.is_postgres(location):
            catalog_url, location = _postgres_location(location)
        self.path = Path(location).resolve()
        self._writer: duckdb.DuckDBPyConnection | None = None
        self._reader: duckdb.DuckDBPyConnection | None = None
        self._catalog_copy: tempfile.TemporaryDirectory | None = None
        self._batch: _Batch | None = None
        self.pinned_snapshot = snapshot
        self.read_only = False
        #: called inside every write's transaction, before its commit (a run's liveness check)
        self.write_guard: Callable[[], None] | None = None
        meta = self.path / META_FILE
        if self.path.exists() and not self.path.is_dir():
            raise LakeError(f"{self.path} is a file, not a lake folder")
        if not meta.exists():
            if self.path.exists() and any(self.path.iterdir()):
                raise LakeError(f"{self.path} exists, is not empty and is not a theralake lake "
                                f"(no {META_FILE})")
            if not create:
                raise LakeError(f"no lake at {self.path}")
            self._create(catalog_url)
        self.catalog = self._check_meta(meta)
        if catalog_url is not None and catalog_url != self.catalog:
            raise LakeError(f"{self.path} is the lake of catalog "
                            f"{ducklake.redacted(self.catalog)}, not of "
                            f"{ducklake.redacted(catalog_url)}")
        self.read_only = snapshot is not None or not _writable(self.path)
        if self.read_only:  # an archive, a read-only mount or a past snapshot: queries only
            log.info("%s opened for reading%s", self.path,
                     "" if snapshot is None else f" at snapshot {snapshot}")
            self.snapshot()  # a snapshot that does not exist is refused here
            return
        self._prepare_tables()

    # -- opening -------------------------------------------------------------------------
    def _create(self, catalog_url: str | None) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.path / ".create.lock"):
            if (self.path / META_FILE).exists():  # another process made it meanwhile
                return
            if catalog_url is None:
                ducklake.create_sqlite_catalog(self.path)
            (self.path / ducklake.DATA).mkdir(exist_ok=True)
            try:  # a read-write attachment makes the DuckLake catalog
                con = ducklake.attach(self.path, catalog_url or ducklake.SQLITE)
                con.execute("CALL lake.set_option('parquet_compression', 'zstd')")
                con.close()
            except (duckdb.Error, ducklake.ExtensionMissing) as exc:
                raise LakeError(f"{self.path}: cannot make the lake's catalog ({exc})") from exc
            _atomic_write_bytes(self.path / META_FILE, json.dumps(
                {"format": FORMAT, "schema_version": SCHEMA_VERSION,
                 "catalog": catalog_url or ducklake.SQLITE, "theralake_version": __version__,
                 "created_utc": datetime.now(UTC).isoformat()}, indent=2).encode())
        log.info("created lake at %s", self.path)

    def _check_meta(self, meta: Path) -> str:
        """The lake's catalog, once its metadata shows a DuckLake lake of this schema."""
        try:
            found = json.loads(meta.read_text())
            version = found["schema_version"]
        except (ValueError, KeyError) as exc:
            raise LakeError(f"{meta}: unreadable lake metadata ({exc})") from exc
        if found.get("format", "parquet") != FORMAT:
            raise LakeError(f"{self.path} is a lake of Parquet parts (the layout before DuckLake); "
                            f"copy it into today's format with: theralake lake migrate "
                            f"{self.path} NEW")
        if version != SCHEMA_VERSION:
            raise LakeError(
                f"{self.path}: lake schema version {version}, this theralake "
                f"({__version__}) reads version {SCHEMA_VERSION}; migrate or use a matching "
                "theralake")
        return found.get("catalog", ducklake.SQLITE)

    def _prepare_tables(self) -> None:
        """Create the tables a new lake lacks, and the columns a newer schema added."""
        have = set(self._fetch("SELECT schema_name, table_name, column_name FROM duckdb_columns() "
                               "WHERE database_name = 'lake'"))
        want = {("main", t, f.name) for t, schema in SCHEMAS.items() for f in schema}
        if want | {(*TOKEN.split("."), "writes")} <= have:
            return

        def prepare(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("BEGIN")
            for table, schema in SCHEMAS.items():
                _create_or_extend(con, table, schema)
            con.execute(f"CREATE SCHEMA IF NOT EXISTS lake.{TOKEN_SCHEMA}")
            con.execute(f"CREATE TABLE IF NOT EXISTS lake.{TOKEN} (writes BIGINT)")
            con.execute(f"INSERT INTO lake.{TOKEN} SELECT 0 WHERE NOT EXISTS "
                        f"(SELECT 1 FROM lake.{TOKEN})")
            con.execute("COMMIT")

        self._write(prepare)
        self._drop_reader()  # its catalog cache predates the new tables

    def meta(self) -> dict:
        """The lake's ``theralake.json``."""
        return json.loads((self.path / META_FILE).read_text())

    def set_meta(self, **values: object) -> None:
        """Add or change keys of ``theralake.json`` (atomically, under the lake's meta lock)."""
        with self.exclusive("meta"):
            meta = {**self.meta(), **values}
            _atomic_write_bytes(self.path / META_FILE, json.dumps(meta, indent=2).encode())

    def check_table(self, table: str) -> str:
        if table not in SCHEMAS:
            raise LakeError(f"unknown table {table!r}; tables are {', '.join(SCHEMAS)}")
        return table

    def open_lines(self) -> list[str]:
        """The two lines that open this lake read-only in any DuckDB 1.4.4."""
        return ducklake.open_lines(self.path, self.catalog)

    # -- reading -------------------------------------------------------------------------
    def _reading(self) -> duckdb.DuckDBPyConnection:
        """A cursor on this object's read-only, sandboxed DuckDB with the lake as its default
        database. Each query sees the newest snapshot (or the pinned one)."""
        with _DUCK_LOCK:
            if self._reader is None:
                self._reader = self._sandboxed()
            cursor = self._reader.cursor()
        cursor.execute("USE lake")
        return cursor

    def _sandboxed(self) -> duckdb.DuckDBPyConnection:
        """The lake attached read-only in an in-memory DuckDB that reads the lake's data files
        and no other file, with its configuration locked (a query cannot turn the sandbox
        off)."""
        catalog_file = None
        if not ducklake.is_postgres(self.catalog) and not _writable(self.path):
            # SQLite reads a WAL-mode file only where it can write beside it: read a copy
            self._catalog_copy = tempfile.TemporaryDirectory(prefix="theralake-catalog-")
            catalog_file = ducklake.copy_sqlite_catalog(self.path, Path(self._catalog_copy.name))
        try:
            con = ducklake.attach(self.path, self.catalog, read_only=True,
                                  snapshot=self.pinned_snapshot, catalog_file=catalog_file)
        except duckdb.Error as exc:
            if self.pinned_snapshot is not None and "snapshot" in str(exc).lower():
                raise LakeError(f"{self.path} has no snapshot {self.pinned_snapshot} ({exc}); "
                                "theralake lake snapshots lists them") from exc
            raise LakeError(f"{self.path}: the lake's catalog cannot be opened ({exc})") from exc
        except ducklake.ExtensionMissing as exc:
            raise LakeError(str(exc)) from exc
        data = (self.path / ducklake.DATA).as_posix().replace("'", "''") + "/"
        con.execute(f"SET allowed_directories = ['{data}']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def _fetch(self, query: str, params: list | None = None) -> list[tuple]:
        """The rows of a query of theralake's own on the read-only attachment."""
        con = self._reading()
        try:
            return con.execute(query, params or []).fetchall()
        finally:
            con.close()

    def _drop_reader(self) -> None:
        with _DUCK_LOCK:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_writer": None, "_reader": None, "_catalog_copy": None,
                "_batch": None, "write_guard": None}

    def connect(self, tables: Iterable[str] = SCHEMAS) -> duckdb.DuckDBPyConnection:
        """A read-only DuckDB connection with the tables by name (the lake is its default
        database; ``tables`` is kept for callers that name the ones they use)."""
        for table in tables:
            self.check_table(table)
        return self._reading()

    def snapshot(self) -> int:
        """The snapshot the lake's reads see now (the pinned one, else the newest)."""
        return int(self._fetch("SELECT id FROM ducklake_current_snapshot('lake')")[0][0])

    def snapshots(self) -> pd.DataFrame:
        """Every snapshot: its id, time and changes."""
        return self._reading().execute(
            "SELECT snapshot_id, snapshot_time, schema_version, changes "
            "FROM ducklake_snapshots('lake') ORDER BY snapshot_id").df()

    def at(self, snapshot: int) -> Lake:
        """The lake as it was at ``snapshot``, for reading (a study reproducible to the row)."""
        return Lake(self.path, create=False, snapshot=snapshot)

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        """Run a read-only query over the tables (by name) and return a DataFrame.

        Only queries run (SELECT, EXPLAIN), on a read-only attachment in a sandbox that reads
        the lake's files and no other: no statement can change the lake or reach the file
        system.

        Raises:
            LakeError: the query is not read-only.
        """
        con = self._reading()
        try:
            try:
                kinds = {str(s.type).rsplit(".", 1)[-1] for s in con.extract_statements(query)}
            except duckdb.Error as exc:
                raise LakeError(f"unreadable query ({exc})") from exc
            writes = sorted(kinds - set(READ_ONLY_STATEMENTS))
            if writes:
                raise LakeError(f"the lake answers read-only queries (SELECT) only; this query "
                                f"has {', '.join(writes)}")
            upkeep = MAINTENANCE_FUNCTIONS.search(query)
            if upkeep:
                raise LakeError(f"{upkeep.group(0)} changes the lake; queries only read it "
                                "(theralake lake compact does the upkeep)")
            return con.execute(query, params or []).df()
        finally:
            con.close()

    def read(self, table: str, where: str | None = None, params: list | None = None,
             columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Rows of a table as a DataFrame (optionally filtered with a SQL WHERE clause)."""
        self.check_table(table)
        cols = ", ".join(columns) if columns else "*"
        query = f"SELECT {cols} FROM {table}" + (f" WHERE {where}" if where else "")
        return self.sql(query, params)

    def ids(self, table: str) -> set[str]:
        return {r[0] for r in self._fetch(f"SELECT id FROM {self.check_table(table)}")}

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold the lake's lock ``name`` (one holder at a time across processes).

        Raises:
            LakeError: the lake is read-only.
        """
        if self.read_only:
            raise LakeError(f"{self.path} is read-only: it can be queried, not written")
        with _file_lock(self.path / f".{name}.lock"):
            yield

    def _write(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``work`` (which opens and ends its own transaction) on a read-write cursor,
        again while another writer's commit conflicts with it (up to ``WRITE_WAIT_S``)."""
        if self.read_only:
            raise LakeError(f"{self.path} is read-only: it can be queried, not written")
        deadline = time.monotonic() + WRITE_WAIT_S
        delay = 0.02
        while True:
            with _DUCK_LOCK:
                if self._writer is None:
                    try:
                        self._writer = ducklake.attach(self.path, self.catalog)
                    except duckdb.Error as exc:
                        if not _contended(exc) or time.monotonic() > deadline:
                            raise LakeError(f"{self.path}: the lake's catalog cannot be opened "
                                            f"for writing ({exc})") from exc
                con = None if self._writer is None else self._writer.cursor()
            if con is not None:
                try:
                    return work(con)
                except duckdb.Error as exc:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("ROLLBACK")
                    if not _contended(exc) or time.monotonic() > deadline:
                        raise
                finally:
                    con.close()
            time.sleep(delay * (0.5 + random.random()))
            delay = min(2 * delay, 1.0)

    def append(self, table: str, rows: Iterable[Mapping] | pd.DataFrame,
               input_ids: Iterable[str] | None = None, params_hash: str | None = None) -> int:
        """Append rows in one transaction; rows whose ``id`` the table holds are skipped.

        The ids are checked inside the transaction, and every write updates one token row,
        so two writers' commits conflict and the later one is retried against the rows the
        first added: re-running a step adds nothing, whatever runs beside it. Lineage columns
        missing from a row are filled (``input_ids`` and ``params_hash`` from the arguments,
        the package version and the time). Returns the rows added; inside :meth:`batch`, 0
        (the batch counts them at its commit).
        """
        data = self._rows_table(table, rows, input_ids, params_hash)
        if data is None:
            return 0
        if self._batch is not None:
            self._batch.add(table, data)
            if self._batch.nbytes >= self._batch.flush_bytes:
                self._commit_batch()
            return 0
        return self._commit({table: [data]})[table]

    @contextlib.contextmanager
    def batch(self, flush_bytes: int = 512 << 20) -> Iterator[Counter[str]]:
        """Appends inside the block are committed together, in one transaction, at its end: a
        task's rows land whole or not at all, and cost one commit. A batch whose rows pass
        ``flush_bytes`` is committed then and goes on (memory stays bounded). Yields the rows
        added per table, filled at each commit. An exception discards what is not committed.
        """
        if self._batch is not None:  # nested: the outer batch commits
            yield self._batch.added
            return
        self._batch = _Batch(flush_bytes)
        try:
            yield self._batch.added
            self._commit_batch()
        finally:
            self._batch = None

    def _commit_batch(self) -> None:
        pending = self._batch
        if pending is None or not pending.tables:
            return
        added = self._commit(pending.tables)
        pending.added.update({t: n for t, n in added.items() if n})
        pending.clear()

    def _rows_table(self, table: str, rows: Iterable[Mapping] | pd.DataFrame,
                    input_ids: Iterable[str] | None, params_hash: str | None,
                    ) -> pa.Table | None:
        """The rows as an Arrow table of the table's schema, lineage filled, one per id."""
        schema = SCHEMAS[self.check_table(table)]
        records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
        if not records:
            return None
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
        fresh: dict[str, Mapping] = {}
        for rec in records:
            fresh.setdefault(rec["id"], rec)
        try:
            return pa.Table.from_pylist(list(fresh.values()), schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise LakeError(f"{table}: rows do not fit the schema ({exc})") from exc

    def _commit(self, tables: Mapping[str, list[pa.Table]]) -> dict[str, int]:
        """Insert the rows of each table whose ids it lacks, in one transaction; the rows
        added per table."""
        def insert(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
            added = {}
            for table, parts in tables.items():
                data = pa.concat_tables(parts)
                con.register("fresh_rows", data)
                added[table] = _insert_missing(con, table, "fresh_rows", _candidates(data))
                con.unregister("fresh_rows")
            return added

        added = self._in_one_commit(insert)
        log.debug("appended %s", added)
        return added

    def append_parquet(self, files: Mapping[str, list[Path]],
                       progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
        """Append the rows of Parquet files, per table, in one transaction (one snapshot: a
        failure leaves the lake as it was); rows whose ``id`` the table holds are skipped.
        Files of an older schema are read by column name. Returns the rows added per table;
        ``progress`` is called with each table and its rows added."""
        for table in files:
            self.check_table(table)

        def insert(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
            added: dict[str, int] = {}
            for table, paths in files.items():
                added[table] = _insert_missing(
                    con, table, "read_parquet(?, union_by_name = true)", "true",
                    [[Path(p).as_posix() for p in paths]]) if paths else 0
                if progress is not None:
                    progress(table, added[table])
            return added

        return self._in_one_commit(insert)

    def _in_one_commit(self, insert: Callable[[duckdb.DuckDBPyConnection], dict[str, int]],
                       ) -> dict[str, int]:
        """Run ``insert`` in one transaction that also counts the write (so that concurrent
        writers conflict), and commit it where it added rows (an empty one is rolled back)."""
        def work(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
            con.execute("BEGIN TRANSACTION")
            con.execute(_COUNT_WRITE)
            added = insert(con)
            if not any(added.values()):
                con.execute("ROLLBACK")
                return added
            if self.write_guard is not None:
                self.write_guard()
            con.execute("COMMIT")
            return added

        return self._write(work)

    def compact(self, keep_snapshots_days: float | None = None) -> dict[str, int]:
        """Merge the tables' small data files into larger ones and, with
        ``keep_snapshots_days``, expire the snapshots older than that and delete the files
        only they used. No row a query sees changes; a kept snapshot reads as before.

        Returns the tables' data files (``data_files_*``, what a query opens) and the files
        on disk (``disk_files_*``, with those kept for older snapshots) before and after.
        """
        before = {"data_files_before": self._live_files(),
                  "disk_files_before": self._disk_files()}

        def merge(con: duckdb.DuckDBPyConnection) -> None:
            con.execute("CALL ducklake_merge_adjacent_files('lake')")
            if keep_snapshots_days is not None:
                seconds = float(keep_snapshots_days) * 86400
                con.execute("CALL ducklake_expire_snapshots('lake', older_than => "
                            f"now() - INTERVAL '{seconds} seconds')")
            con.execute("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)")
            # files of writers killed before their commit (a day old: no live write's)
            con.execute("CALL ducklake_delete_orphaned_files('lake', older_than => "
                        "now() - INTERVAL 1 DAY)")

        self._write(merge)
        self._drop_reader()
        return {**before, "data_files_after": self._live_files(),
                "disk_files_after": self._disk_files()}

    def _live_files(self) -> int:
        return sum(self._fetch("SELECT count(*) FROM ducklake_list_files('lake', ?)",
                               [table])[0][0] for table in SCHEMAS)

    def _disk_files(self) -> int:
        return sum(1 for _ in (self.path / ducklake.DATA).rglob("*.parquet"))

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
        return {t: self._fetch(f"SELECT count(*) FROM {t}")[0][0] for t in SCHEMAS}


def _postgres_location(url: str) -> tuple[str, str]:
    """(catalog URL, folder) of ``postgresql://…?data_path=/folder``."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    folders = query.pop("data_path", [])
    if len(folders) != 1:
        raise LakeError(f"{ducklake.redacted(url)}: a PostgreSQL lake names its data folder, "
                        "shared by every writer: postgresql://user@host:port/db"
                        "?data_path=/shared/lake")
    rest = "&".join(f"{k}={v}" for k, values in query.items() for v in values)
    return parts._replace(query=rest).geturl(), folders[0]


class _Batch:
    """Rows waiting for a batch's commit, per table (one row per id)."""

    def __init__(self, flush_bytes: int):
        self.flush_bytes = flush_bytes
        self.added: Counter[str] = Counter()
        self.clear()

    def clear(self) -> None:
        self.tables: dict[str, list[pa.Table]] = {}
        self.ids: dict[str, set[str]] = {}
        self.nbytes = 0

    def add(self, table: str, data: pa.Table) -> None:
        seen = self.ids.setdefault(table, set())
        keep = [i not in seen for i in data.column("id").to_pylist()]
        data = data.filter(pa.array(keep))
        if data.num_rows:
            seen.update(data.column("id").to_pylist())
            self.tables.setdefault(table, []).append(data)
            self.nbytes += data.nbytes


def _insert_missing(con: duckdb.DuckDBPyConnection, table: str, source: str, candidates: str,
                    params: list | None = None) -> int:
    """Insert the rows of ``source`` whose id the table lacks (looking among the rows that
    match ``candidates``); the rows inserted."""
    return int(con.execute(
        f"INSERT INTO lake.{table} BY NAME SELECT * FROM {source} WHERE id NOT IN "
        f"(SELECT id FROM lake.{table} WHERE {candidates})", params or []).fetchone()[0])


def _candidates(data: pa.Table) -> str:
    """The filter of the rows that may share an id with ``data``: its ids, and, where every
    row names a patient, its patients. An id names one patient's row, and a data file of one
    patient is skipped by its patient_id range: the check reads the files of these patients,
    not the whole table."""
    where = "id IN (SELECT id FROM fresh_rows)"
    if "patient_id" not in data.column_names or data.column("patient_id").null_count:
        return where
    patients = sorted(set(data.column("patient_id").to_pylist()))
    listed = ", ".join("'" + p.replace("'", "''") + "'" for p in patients)
    return f"patient_id IN ({listed}) AND {where}"


def _contended(exc: duckdb.Error) -> bool:
    """Whether a write failed because another writer's commit came first (try again)."""
    text = str(exc)
    return any(s in text for s in ("Transaction conflict", "database is locked",
                                   "Failed to commit DuckLake transaction",
                                   "could not serialize access"))


def _create_or_extend(con: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema) -> None:
    """Create the DuckLake table from the Arrow schema, or add the columns a newer schema has."""
    con.register("empty_rows", schema.empty_table())
    try:
        con.execute(f"CREATE TABLE IF NOT EXISTS lake.{table} AS SELECT * FROM empty_rows")
        have = {r[0] for r in con.execute(f"DESCRIBE lake.{table}").fetchall()}
        for name, kind, *_ in con.execute("DESCRIBE SELECT * FROM empty_rows").fetchall():
            if name not in have:
                con.execute(f'ALTER TABLE lake.{table} ADD COLUMN "{name}" {kind}')
    finally:
        con.unregister("empty_rows")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _writable(folder: Path) -> bool:
    """Whether the lake folder takes writes (not on a read-only mount or for this user)."""
    return os.access(folder, os.W_OK)


def _atomic_write_bytes(dest: Path, data: bytes) -> None:
    tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
