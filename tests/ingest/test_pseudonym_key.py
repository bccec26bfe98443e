"""The pseudonym key: the lake records its fingerprint and refuses another key; no key file is
made without --new-key; empty and short keys are refused; a key others can read is a warning
(issue 17, findings 5-6)."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from dicom_factory import PHI, phantom, write_ct_series
from fixture_constants import TEST_KEY

from theralake.ingest.pseudonym import (
    FINGERPRINT_KEY,
    MIN_KEY_LENGTH,
    Pseudonymizer,
    PseudonymKeyError,
)
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake

OPTS = IngestOptions(show_progress=False)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    write_ct_series(tmp_path / "src" / "ct", phantom((3, 8, 8)))
    return tmp_path / "src"


@pytest.fixture
def key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No key in the environment: the key file decides (it is not created here)."""
    path = tmp_path / "keys" / "pseudonym.key"
    monkeypatch.delenv("THERALAKE_PSEUDONYM_KEY")
    monkeypatch.setenv("THERALAKE_KEY_FILE", str(path))
    return path


def _patients(lake: Lake) -> set[str]:
    return set(lake.read("patients").patient_id)


def test_the_lake_records_a_fingerprint_that_reveals_nothing_of_the_key(lake, source):
    ingest(source, lake, OPTS)
    recorded = json.loads((lake.path / "theralake.json").read_text())[FINGERPRINT_KEY]
    assert recorded == Pseudonymizer().fingerprint and TEST_KEY not in recorded
    assert recorded == hmac.new(TEST_KEY.encode(), b"key-fingerprint:theralake",
                                hashlib.sha256).hexdigest()[:16]


def test_another_key_is_refused_and_the_lake_is_unchanged(lake, source, monkeypatch):
    ingest(source, lake, OPTS)
    before = _patients(lake)
    monkeypatch.setenv("THERALAKE_PSEUDONYM_KEY", "another-key-of-enough-length")
    with pytest.raises(PseudonymKeyError, match="another key"):
        ingest(source, lake, OPTS)
    with pytest.raises(PseudonymKeyError, match="another key"):
        ingest(source, lake, OPTS, Pseudonymizer(key="yet-another-key-long-enough"))
    assert _patients(lake) == before


def test_a_missing_key_file_is_never_replaced_silently(lake, source, key_file):
    with pytest.raises(PseudonymKeyError, match="--new-key"):
        ingest(source, lake, OPTS)
    assert not key_file.exists() and lake.counts()["patients"] == 0
    report = ingest(source, lake, IngestOptions(show_progress=False, new_key=True))
    assert key_file.exists() and any("created a new pseudonymisation key" in w
                                     for w in report.warnings)
    assert key_file.stat().st_mode & 0o077 == 0
    first = _patients(lake)
    key_file.unlink()  # lost between two ingests
    for new_key in (False, True):  # --new-key cannot start another key in a keyed lake
        with pytest.raises(PseudonymKeyError):
            ingest(source, lake, IngestOptions(show_progress=False, new_key=new_key))
        assert not key_file.exists()
    assert _patients(lake) == first
    key_file.unlink(missing_ok=True)


@pytest.mark.parametrize("key", ["", "   ", "short", "x" * (MIN_KEY_LENGTH - 1)])
def test_empty_and_short_keys_are_refused(key, lake, source, monkeypatch, key_file):
    monkeypatch.setenv("THERALAKE_PSEUDONYM_KEY", key)
    with pytest.raises(PseudonymKeyError, match="at least"):
        ingest(source, lake, OPTS)
    monkeypatch.delenv("THERALAKE_PSEUDONYM_KEY")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key + "\n")
    with pytest.raises(PseudonymKeyError, match="at least"):
        ingest(source, lake, OPTS)
    assert lake.counts()["patients"] == 0
    key_file.unlink()


def test_a_key_file_readable_by_others_is_a_warning(lake, source, key_file):
    key_file.parent.mkdir(parents=True)
    key_file.write_text(TEST_KEY + "\n")
    key_file.chmod(0o644)
    report = ingest(source, lake, OPTS)
    assert any("readable by other users" in w for w in report.warnings), report.warnings
    assert "readable by other users" in report.summary()
    key_file.unlink()


def test_the_cli_refuses_a_lake_of_another_key_in_one_line(lake, source, monkeypatch, capsys):
    from theralake.pipelines.cli import main

    ingest(source, lake, OPTS)
    monkeypatch.setenv("THERALAKE_PSEUDONYM_KEY", "another-key-of-enough-length")
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", str(source), "--lake", str(lake.path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "another key" in err and "Traceback" not in err
    assert PHI["PatientID"] not in err
