"""Every bad input: a clear error naming the file and the problem; the batch goes on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk
from dicom_factory import phantom, square_polygon, write_ct_series, write_pet_series, write_rtstruct
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from theralake.ingest.runner import IngestOptions, ingest

OPTS = IngestOptions(show_progress=False)


def _nifti(path: Path, sidecar: dict) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16)), str(path))
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


def make_bad_batch(root: Path) -> dict[str, tuple[str, str]]:
    """A batch with one good CT and every kind of bad input.

    Returns, per case, (the path the error must name, a phrase of the problem).
    """
    good = write_ct_series(root / "good_ct", phantom((5, 16, 16)))
    expect: dict[str, tuple[str, str]] = {}

    one = write_ct_series(root / "tmp_one", phantom((1, 16, 16)))
    data = one.paths[0].read_bytes()
    (root / "bad").mkdir()
    (root / "bad" / "truncated_header.dcm").write_bytes(data[:300])
    expect["truncated header"] = (str(root / "bad" / "truncated_header.dcm"),
                                  "damaged or truncated")
    (root / "bad" / "truncated_pixels.dcm").write_bytes(data[: len(data) - 200])
    expect["truncated pixels"] = (str(root / "bad" / "truncated_pixels.dcm"), "")
    shutil.rmtree(root / "tmp_one")
    (root / "bad" / "garbage.dcm").write_bytes(np.random.default_rng(0).bytes(4000))
    expect["not dicom"] = (str(root / "bad" / "garbage.dcm"), "")

    shutil.copy(get_testdata_file("rtplan.dcm"), root / "rtplan.dcm")
    expect["rtplan"] = (str(root / "rtplan.dcm"), "modality RTPLAN is not an image")

    write_ct_series(root / "missing_slice", phantom((5, 16, 16)),
                    offsets_mm=[0.0, 3.0, 6.0, 12.0, 15.0])
    expect["missing slice"] = (str(root / "missing_slice"), "1 missing slice")
    write_ct_series(root / "irregular", phantom((5, 16, 16)),
                    offsets_mm=[0.0, 3.0, 6.0, 8.0, 11.5])
    expect["irregular"] = (str(root / "irregular"), "inconsistent slice spacing")

    write_pet_series(root / "pet_no_radiopharm", np.full((3, 8, 8), 100.0), radiopharm=False)
    expect["pet"] = (str(root / "pet_no_radiopharm"), "without radiopharmaceutical data")

    (root / "nifti").mkdir()
    _nifti(root / "nifti" / "badkey.nii.gz", {"PatientID": "N1", "Modality": "CT",
                                              "Units": "HU", "PatientName": "Smith^John"})
    expect["sidecar key"] = (str(root / "nifti" / "badkey.json"),
                             "unknown sidecar keys ['PatientName']")
    _nifti(root / "nifti" / "badunit.nii.gz", {"PatientID": "N1", "Modality": "CT",
                                               "Units": "BQML"})
    expect["sidecar unit"] = (str(root / "nifti" / "badunit.json"),
                              "Units 'BQML' not valid for CT")

    write_rtstruct(root / "rs_other_frame.dcm", good,
                   {"Liver": [square_polygon(good, 2, 2.5, 2.5, 6.5, 6.5)]},
                   frame_uid=generate_uid())
    expect["rtstruct frame"] = (str(root / "rs_other_frame.dcm"), "frame of reference")
    return expect


def test_every_bad_input_is_skipped_with_its_reason(tmp_path, lake):
    expect = make_bad_batch(tmp_path / "in")
    report = ingest(tmp_path / "in", lake, OPTS)
    summary = report.summary()
    assert len(report.skipped) == len(expect), summary
    for case, (source, phrase) in expect.items():
        hits = [e for e in report.skipped if e.source.startswith(source)]
        assert len(hits) == 1, f"{case}: {summary}"
        assert phrase in hits[0].problem, f"{case}: {hits[0]}"
        assert hits[0].problem.strip(), case
        assert source in summary and hits[0].problem in summary
    # the good CT went in, nothing of the bad inputs did, nothing is half-written
    assert lake.counts()["images"] == 1
    assert lake.counts()["vois"] == 0
    assert not list(lake.path.rglob(".tmp-*"))
    for f in lake.path.rglob("*.parquet"):
        pq.read_table(f)


@pytest.mark.parametrize("name, problem", [
    ("notes.dcm", "not a DICOM file"),
])
def test_text_file_named_dcm(tmp_path, lake, name, problem):
    (tmp_path / name).write_text("this is not DICOM at all\n" * 20)
    report = ingest(tmp_path, lake, OPTS)
    assert [(e.source, problem in e.problem) for e in report.skipped] == \
        [(str(tmp_path / name), True)]


def test_missing_path_raises(tmp_path, lake):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        ingest(tmp_path / "absent", lake, OPTS)


def test_pet_with_wrong_half_life_or_units(tmp_path, lake):
    write_pet_series(tmp_path / "a", np.full((3, 8, 8), 10.0), half_life_s=6000.0)
    report = ingest(tmp_path, lake, OPTS)
    assert len(report.skipped) == 1
    assert "RadionuclideHalfLife 6000 s does not match Ga-68" in report.skipped[0].problem
    assert lake.counts()["images"] == 0
