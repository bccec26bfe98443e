"""The `theralake` CLI: ingest (exit codes, summary, kill -9 midway), sql, export;
idempotent re-ingest."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import (
    T0,
    phantom,
    square_polygon,
    write_ct_series,
    write_pet_series,
    write_rtstruct,
)
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import SCHEMAS, Lake, Volume
from theralake.pipelines.cli import app

runner = CliRunner()
OPTS = IngestOptions(show_progress=False)


def _batch(root: Path, n_ct: int = 3) -> Path:
    for i in range(n_ct):
        ct = write_ct_series(root / f"ct{i}", phantom((4, 16, 16), seed=i),
                             phi={"PatientID": f"PAT-{i % 2}"},
                             when=T0 + timedelta(days=i))
    write_rtstruct(root / "rs.dcm", ct, {"Liver": [square_polygon(ct, 1, 2.5, 2.5, 8.5, 8.5)]},
                   phi={"PatientID": f"PAT-{(n_ct - 1) % 2}"})
    write_pet_series(root / "pet", np.full((3, 8, 8), 500.0), injection=T0,
                     start=T0 + timedelta(minutes=61), phi={"PatientID": "PAT-0"})
    (root / "clinical.csv").write_text("PatientID,age\nPAT-0,60\nPAT-1,70\n")
    return root


def _ids(lake: Lake) -> dict[str, set[str]]:
    return {t: lake.ids(t) for t in SCHEMAS}


def _files(lake: Lake) -> list[str]:
    return sorted(str(p.relative_to(lake.path)) for p in lake.path.rglob("*.parquet"))


def test_reingest_is_idempotent(tmp_path):
    folder = _batch(tmp_path / "in")
    lake = Lake(tmp_path / "lake")
    first = ingest(folder, lake, OPTS)
    assert not first.skipped, first.summary()
    assert first.added["images"] == 4 and first.added["vois"] == 1
    ids, files = _ids(lake), _files(lake)
    second = ingest(folder, lake, OPTS)
    assert not second.skipped
    assert sum(second.added.values()) == 0, second.summary()
    assert "nothing new" in second.summary()
    assert _ids(lake) == ids
    assert _files(lake) == files
    # a fresh lake with the same key gives the same ids (content hashes, keyed pseudonyms)
    other = Lake(tmp_path / "lake2")
    ingest(folder, other, OPTS)
    assert _ids(other) == ids


def test_cli_ingest_exit_codes_and_summary(tmp_path):
    folder = _batch(tmp_path / "in", n_ct=1)
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    lake = tmp_path / "lake"
    res = runner.invoke(app, ["ingest", str(folder), "--lake", str(lake), "--quiet"])
    assert res.exit_code == 1, res.output
    assert "skipped 1" in res.output
    assert str(folder / "broken.dcm") in res.output.replace("\n", "")
    res = runner.invoke(app, ["ingest", str(folder), "--lake", str(lake), "--quiet",
                              "--keep-going"])
    assert res.exit_code == 0, res.output
    assert "broken.dcm" in res.output
    (folder / "broken.dcm").unlink()
    res = runner.invoke(app, ["ingest", str(folder), "--lake", str(lake)])
    assert res.exit_code == 0, res.output
    assert "nothing new" in res.output and "skipped 0" in res.output
    res = runner.invoke(app, ["ingest", str(tmp_path / "absent"), "--lake", str(lake)])
    assert res.exit_code == 2 and "no such file or folder" in res.output


@pytest.fixture
def small_lake(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    import shutil

    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "CT_small.dcm")
    shutil.copy(get_testdata_file("rtdose.dcm"), folder / "rtdose.dcm")
    res = runner.invoke(app, ["ingest", str(folder), "--lake", str(tmp_path / "lake"), "-q"])
    assert res.exit_code == 0, res.output
    return tmp_path / "lake"


def test_cli_sql_formats(small_lake):
    query = "select modality, units, shape, voxels from images order by modality"
    res = runner.invoke(app, ["sql", query, "--lake", str(small_lake), "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [(r["modality"], r["units"]) for r in rows] == [("CT", "HU"), ("RTDOSE", "RELATIVE")]
    assert rows[0]["shape"] == [128, 128, 1]
    assert rows[0]["voxels"].startswith("<") and rows[0]["voxels"].endswith("bytes>")

    res = runner.invoke(app, ["sql", "select modality, units from images order by modality",
                              "--lake", str(small_lake), "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert list(csv.DictReader(io.StringIO(res.output))) == [
        {"modality": "CT", "units": "HU"}, {"modality": "RTDOSE", "units": "RELATIVE"}]

    res = runner.invoke(app, ["sql", "select modality, count(*) as n from images group by 1 "
                              "order by 1", "--lake", str(small_lake)])
    assert res.exit_code == 0, res.output
    assert "modality" in res.output and "RTDOSE" in res.output and "CT" in res.output

    res = runner.invoke(app, ["sql", "select * from nowhere", "--lake", str(small_lake)])
    assert res.exit_code == 2 and "error" in res.output
    res = runner.invoke(app, ["sql", "select 1", "--lake", str(small_lake), "--format", "xml"])
    assert res.exit_code != 0


def test_cli_sql_on_missing_lake_and_bad_schema(tmp_path, small_lake):
    res = runner.invoke(app, ["sql", "select 1", "--lake", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no lake at" in res.output
    meta = small_lake / "theralake.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "schema_version": 999}))
    res = runner.invoke(app, ["sql", "select 1", "--lake", str(small_lake)])
    assert res.exit_code == 2 and "schema version 999" in res.output


def test_cli_export_nifti(tmp_path, small_lake):
    lake = Lake(small_lake, create=False)
    row = lake.read("images", "modality = 'CT'").iloc[0].to_dict()
    out = tmp_path / "export" / "ct.nii.gz"
    res = runner.invoke(app, ["export", "--out", str(out), "--image-id", row["id"],
                              "--lake", str(small_lake)])
    assert res.exit_code == 0, res.output
    assert out.exists() and str(out) in res.output
    nii = nib.load(out)
    vol = Volume.from_row(row)
    np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), vol.array)
    ras = nii.affine @ np.array([5.0, 7.0, 0.0, 1.0])
    np.testing.assert_allclose(ras[:3] * [-1, -1, 1], vol.index_to_world([5, 7, 0]), atol=1e-4)
    # to a folder: the file is named after the id
    res = runner.invoke(app, ["export", "--out", str(tmp_path / "dir"), "--image-id",
                              row["id"], "--lake", str(small_lake)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dir" / f"{row['id'][:16]}.nii.gz").exists()
    res = runner.invoke(app, ["export", "--out", str(out), "--image-id", "nope",
                              "--lake", str(small_lake)])
    assert res.exit_code == 2 and "no row with id 'nope'" in res.output
    # an unknown patient is named as such, not sent to run the dosimetry (issue 18, item 7)
    res = runner.invoke(app, ["export", "--patient", "P-unknown", "--cycle", "1", "--what",
                              "dose", "--out", str(tmp_path / "x"), "--lake", str(small_lake)])
    assert res.exit_code == 2 and "no patient 'P-unknown' in the lake" in res.output
    assert "dosimetry" not in res.output


_SLOW_CLI = """
import sys, time
from theralake.lake.store import Lake
_commit = Lake._commit
def slow_commit(self, tables):  # the rows are written, the commit waits: a kill lands there
    self.write_guard = lambda: time.sleep(2.0)
    return _commit(self, tables)
Lake._commit = slow_commit
from theralake.pipelines.cli import main
sys.argv = ["theralake", *sys.argv[1:]]
main()
"""


def test_ingest_killed_midway_leaves_nothing_of_it(tmp_path):
    folder = _batch(tmp_path / "in", n_ct=6)
    reference = Lake(tmp_path / "reference")
    assert not ingest(folder, reference, OPTS).skipped
    expected = _ids(reference)

    lake_path = tmp_path / "lake"
    Lake(lake_path)
    images = lake_path / "data" / "main" / "images"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, "ingest", str(folder), "--lake",
                             str(lake_path), "--quiet"], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if list(images.glob("*.parquet")):  # written, not yet committed
                break
            time.sleep(0.005)
        assert proc.poll() is None, "ingest ended before it could be killed: " + \
            proc.communicate()[1].decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    lake = Lake(lake_path)
    assert list(images.glob("*.parquet"))  # the killed ingest had written its images' files
    # ...but an ingest is one commit: nothing of it is visible, every table still reads
    assert all(not ids for ids in _ids(lake).values())
    res = runner.invoke(app, ["ingest", str(folder), "--lake", str(lake_path), "--quiet"])
    assert res.exit_code == 0, res.output
    assert _ids(Lake(lake_path)) == expected
