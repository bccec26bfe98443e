"""Shared fixtures: a fixed pseudonymisation key, a private HOME, lakes under tmp_path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/dicom_factory.py

from fixture_constants import TEST_KEY  # noqa: E402


@pytest.fixture(scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _isolate(monkeypatch: pytest.MonkeyPatch, home: Path, cache: Path) -> None:
    monkeypatch.setenv("THERALAKE_CACHE", str(cache))
    monkeypatch.setenv("THERALAKE_PSEUDONYM_KEY", TEST_KEY)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("THERALAKE_KEY_FILE", str(home / ".theralake" / "pseudonym.key"))
    monkeypatch.setenv("THERALAKE_LAKE", str(home / "default_lake"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory: pytest.TempPathFactory, _cache_dir: Path):
    """The same isolation for module- and session-scoped fixtures (built before a test's)."""
    home = tmp_path_factory.mktemp("session-home")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _isolate(monkeypatch, home, _cache_dir)
        yield
    assert not (home / ".theralake" / "pseudonym.key").exists(), "a fixture wrote a key file"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
                  _cache_dir: Path):
    """Never touch the user's key file or lake: fixed key, HOME in a temp folder, one kernel
    cache for the session."""
    home = tmp_path_factory.mktemp("home")
    _isolate(monkeypatch, home, _cache_dir)
    yield
    assert not (home / ".theralake" / "pseudonym.key").exists(), "a test wrote a key file"


@pytest.fixture
def lake(tmp_path: Path):
    from theralake.lake import Lake

    return Lake(tmp_path / "lake")


@pytest.fixture
def quiet_options():
    from theralake.ingest.runner import IngestOptions

    return IngestOptions(show_progress=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small networks run as fast on one thread and leave the other core alone (restored)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def postgres_server():
    """A local PostgreSQL server for the session (started on first use): its URL."""
    from postgres_server import postgres_server as server

    with server() as (url, why):
        if url is None:
            pytest.skip(f"no PostgreSQL server: {why}")
        yield url


@pytest.fixture
def postgres_database(postgres_server: str, request: pytest.FixtureRequest) -> str:
    """A new database on the session's PostgreSQL server for one test: its URL."""
    import re
    import uuid

    from postgres_server import create_database

    name = re.sub(r"\W", "_", request.node.name)[:40] + "_" + uuid.uuid4().hex[:8]
    return create_database(postgres_server, name.lower())
