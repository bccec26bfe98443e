"""Every user error is one line and an exit code, never a traceback (issue 17, findings 11-12)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from dicom_factory import phantom, write_ct_series

from theralake.lake import Lake
from theralake.pipelines.cli import main


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    write_ct_series(tmp_path / "src" / "ct", phantom((3, 8, 8)))
    return tmp_path / "src"


def test_a_folder_that_is_not_a_lake(capsys, tmp_path: Path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"\xff\xd8")
    code, _, err = _cli(capsys, "sql", "SELECT 1", "--lake", str(tmp_path / "photos"))
    assert code == 2 and "not a theralake lake" in _one_line_error(err)


def test_a_file_given_as_the_lake(capsys, tmp_path: Path, source: Path):
    (tmp_path / "lake.txt").write_text("x")
    for argv in (("sql", "SELECT 1"), ("ingest", str(source)), ("dosimetry",),
                 ("report", "--cohort", "--out", str(tmp_path / "c.html"))):
        code, _, err = _cli(capsys, *argv, "--lake", str(tmp_path / "lake.txt"))
        assert code == 2 and "is a file, not a lake folder" in _one_line_error(err), argv


def test_a_missing_calibration_file(capsys, tmp_path: Path, source: Path):
    code, _, err = _cli(capsys, "ingest", str(source), "--calibration",
                        str(tmp_path / "nope.csv"), "--lake", str(tmp_path / "lake"))
    assert code == 2 and "nope.csv" in _one_line_error(err)


def test_a_schema_version_mismatch(capsys, tmp_path: Path, source: Path):
    lake = Lake(tmp_path / "lake")
    meta = json.loads((lake.path / "theralake.json").read_text())
    (lake.path / "theralake.json").write_text(json.dumps({**meta, "schema_version": 0}))
    for argv in (("sql", "SELECT 1"), ("ingest", str(source)), ("features",)):
        code, _, err = _cli(capsys, *argv, "--lake", str(lake.path))
        assert code == 2 and "schema version 0" in _one_line_error(err), argv


def test_a_full_disk_during_ingest_is_one_line_and_leaves_nothing_half_written(
        capsys, monkeypatch, tmp_path: Path, source: Path):
    import theralake.lake.store as store

    lake = Lake(tmp_path / "lake")
    real_commit = store.Lake._commit

    def full_disk(self, tables):  # noqa: ANN001
        if "images" in tables:  # the data files are written, then the disk fills
            def fill() -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            self.write_guard = fill
        try:
            return real_commit(self, tables)
        finally:
            self.write_guard = None

    monkeypatch.setattr(store.Lake, "_commit", full_disk)
    code, _, err = _cli(capsys, "ingest", str(source), "--quiet", "--lake", str(lake.path))
    assert code == 2 and "no space left" in _one_line_error(err)
    assert not list((lake.path / "data" / "main" / "images").glob("*.parquet"))  # rolled back
    assert Lake(lake.path).counts()["images"] == 0
    monkeypatch.setattr(store.Lake, "_commit", real_commit)
    code, _, _ = _cli(capsys, "ingest", str(source), "--quiet", "--lake", str(lake.path))
    assert code == 0 and Lake(lake.path).counts()["images"] == 1  # a re-run completes


def test_file_names_in_any_encoding(capsys, tmp_path: Path):
    """A Latin-1 folder and file name (not UTF-8): the run ingests it and says nothing odd."""
    src = tmp_path / "src"
    folder = Path(os.fsdecode(bytes(src) + b"/M\xfcller_4711"))
    write_ct_series(folder / "ct", phantom((3, 8, 8)))
    os.rename(next((folder / "ct").iterdir()), Path(os.fsdecode(
        bytes(folder / "ct") + b"/sch\xe4del.dcm")))
    code, out, err = _cli(capsys, "run", "--source", str(src), "--steps", "ingest", "--quiet",
                          "--workers", "1", "--lake", str(tmp_path / "lake"))
    assert code == 0, out + err
    lake = Lake(tmp_path / "lake", create=False)
    assert lake.counts()["images"] == 1
    tasks = set(lake.sql("SELECT task FROM run_log").task)
    assert all("ller" not in t for t in tasks), tasks  # keyed by a pseudonym


def test_bad_arguments_name_the_problem(capsys, tmp_path: Path):
    lake = Lake(tmp_path / "lake")
    code, _, err = _cli(capsys, "run", "--steps", "ingest", "--lake", str(lake.path))
    assert code == 2 and "--source" in _one_line_error(err)
