"""One ``theralake run`` per lake at a time: an exclusive lock file in the lake folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from theralake.lake import LakeError

LOCK_FILE = ".run.lock"


class LakeBusy(RuntimeError):
    """Another run holds the lake."""


@contextlib.contextmanager
def run_lock(lake_path: Path, wait: bool = False, what: str = "theralake run") -> Iterator[str]:
    """Hold the lake's run lock; the kernel releases it when the holder dies, however it dies.

    Yields the run's token, written into the lock file: a worker's writes check it
    (:func:`live_run_guard`), so nothing is written once the run is gone.

    Raises:
        LakeBusy: the lake is held by another run and ``wait`` is False (the message names
            the holder).
    """
    path = Path(lake_path) / LOCK_FILE
    token = uuid.uuid4().hex
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
                                 "since_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                                 "token": token}))
            fh.flush()
            yield token
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)


class RunGone(LakeError):
    """The run a worker writes for holds the lake's run lock no more."""


def live_run_guard(lake_path: Path, token: str) -> Callable[[], None]:
    """A check that the run ``token`` still holds the lake's run lock; raises
    :class:`RunGone` otherwise (the run died, or another run holds the lake)."""
    path = Path(lake_path) / LOCK_FILE

    def check() -> None:
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # held: by our run?
                fh.seek(0)
                try:
                    holder = json.loads(fh.read() or "{}").get("token")
                except ValueError:
                    holder = None
                if holder == token:
                    return
                raise RunGone(f"{lake_path} is held by another run; write refused") from None
            fcntl.flock(fh, fcntl.LOCK_UN)
            raise RunGone(f"the run that started this task holds {lake_path} no more (it "
                          "ended or died); write refused")

    return check
