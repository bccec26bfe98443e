"""A throwaway PostgreSQL server on 127.0.0.1 for the tests: Debian's ``postgresql`` package,
installed by the set-up where it is missing, started in a temporary folder, stopped after."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from debian_tools import install_debian

PACKAGE_ROOT = Path("/usr/lib/postgresql")


def server_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl`` (Debian keeps them off the PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(PACKAGE_ROOT.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[tuple[str | None, str]]:
    """Yields (the server's URL without a database, "") or (None, why there is none)."""
    if server_bin() is None:
        why = install_debian("postgresql", str(PACKAGE_ROOT))
        if why is not None or server_bin() is None:
            yield None, why or "no initdb after installing postgresql"
            return
    binaries = server_bin()
    folder = Path(tempfile.mkdtemp(prefix="theralake-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = folder / "data"
    pg_ctl = [*as_user, str(binaries / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-A", "trust",
                        "-U", "postgres", "--no-sync"], check=True, capture_output=True,
                       timeout=120)
        subprocess.run([*pg_ctl, "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c max_connections=200", "-l", str(folder / "log"), "-w",
                        "start"], check=True, capture_output=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as exc:
        log = folder / "log"
        yield None, f"PostgreSQL did not start ({exc}): " + (
            log.read_text()[-2000:] if log.exists() else "")
        shutil.rmtree(folder, ignore_errors=True)
        return
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}", ""
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def create_database(server: str, name: str) -> str:
    """A new database on the server (``postgresql://user@host:port``); its URL."""
    host_port = server.rsplit("@", 1)[1]
    host, port = host_port.split(":")
    subprocess.run([str(server_bin() / "createdb"), "-h", host, "-p", port, "-U", "postgres",
                    name], check=True, capture_output=True, timeout=60)
    return f"{server}/{name}"
