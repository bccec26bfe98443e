"""``theralake lake migrate``: a lake of Parquet parts (the layout before DuckLake) copied into
a DuckLake lake, row for row.

The old layout is a folder with ``theralake.json`` and ``tables/<table>/part-*.parquet``. The
copy is one transaction (one snapshot: a failure leaves the destination as it was) and skips
rows whose ``id`` the destination holds, so it can be repeated while the old lake grows. The
old lake's registry (``mlflow/``), reports and metadata keys (the pseudonym key's fingerprint)
come along; the old lake is only read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from theralake.lake.schemas import SCHEMAS
from theralake.lake.store import FORMAT, META_FILE, Lake, LakeError

__all__ = ["migrate"]

#: folders of an old lake copied as they are (when the destination has none)
CARRIED_FOLDERS = ("mlflow", "reports")
#: keys of the old theralake.json that describe the old folder, not the lake's data
OWN_KEYS = {"format", "schema_version", "theralake_version", "created_utc", "catalog"}


def migrate(old: str | os.PathLike[str], new: str | os.PathLike[str] | Lake,
            progress: Callable[[str, int], None] | None = None) -> tuple[Lake, dict[str, int]]:
    """Copy every table of the Parquet-parts lake ``old`` into the lake ``new`` (created if
    missing). Returns the lake and the rows copied per table.

    Raises:
        LakeError: ``old`` is not a lake of Parquet parts, or ``new`` cannot be a lake.
    """
    old = Path(old).resolve()
    meta = _old_meta(old)
    lake = new if isinstance(new, Lake) else Lake(new)
    if lake.path == old:
        raise LakeError(f"{old}: the destination must be another folder than the old lake")
    carried = {k: v for k, v in meta.items() if k not in OWN_KEYS}
    clash = {k for k, v in carried.items() if lake.meta().get(k, v) != v}
    if clash:
        raise LakeError(f"{lake.path} and {old} differ in {sorted(clash)}: lakes made with "
                        "different pseudonym keys cannot be merged")
    parts = {table: sorted((old / "tables" / table).glob("part-*.parquet")) for table in SCHEMAS}
    copied = lake.append_parquet(parts, progress=progress)
    if carried:
        lake.set_meta(**carried, migrated_from=old.as_posix())
    for folder in CARRIED_FOLDERS:
        if (old / folder).is_dir() and not (lake.path / folder).exists():
            shutil.copytree(old / folder, lake.path / folder)
    return lake, copied


def _old_meta(old: Path) -> dict:
    path = old / META_FILE
    if not path.exists():
        raise LakeError(f"{old} is not a theralake lake (no {META_FILE})")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise LakeError(f"{path}: unreadable lake metadata ({exc})") from exc
    if meta.get("format", "parquet") == FORMAT:
        raise LakeError(f"{old} is already a DuckLake lake")
    if not (old / "tables").is_dir():
        raise LakeError(f"{old} has no tables/ folder of Parquet parts")
    return meta
