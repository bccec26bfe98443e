"""One ``theralake run`` per lake at a time: an exclusive lock file in the lake folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".run.lock"


class LakeBusy(RuntimeError):
    """Another run holds the lake."""


@contextlib.contextmanager
def run_lock(lake_path: Path, wait: bool = False, what: str = "theralake run") -> Iterator[None]:
    """Hold the lake's run lock; the kernel releases it when the holder dies, however it dies.

    Raises:
        LakeBusy: the lake is held by another run and ``wait`` is False (the message names
            the holder).
    """
    path = Path(lake_path) / LOCK_FILE
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise LakeBusy(f"{lake_path} is in use by {holder}; wait for it to finish or "
                               "pass --wait to queue behind it") from None
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"what": what, "host": socket.gethostname(), "pid": os.getpid(),
                                 "since_utc": datetime.now(UTC).isoformat(timespec="seconds")}))
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
