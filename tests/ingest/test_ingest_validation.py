"""Ingest validates what it stores: a header that does not describe its pixels, non-finite
voxels and numbers are refused with the file and the count; a malformed row or mapping entry
is a named error of its file and the rest goes on (issue 17, findings 9-10)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import T0, phantom, write_ct_series

from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake

OPTS = IngestOptions(show_progress=False)


def _nifti(path: Path, array: np.ndarray, sidecar: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


PET = {"PatientID": "NAN-1", "Modality": "PT", "Units": "BQML", "Radionuclide": "Ga-68",
       "InjectedActivityMBq": 150, "PatientWeightKg": 80,
       "InjectionDateTime": T0.isoformat(),
       "AcquisitionDateTime": (T0 + timedelta(hours=1)).isoformat()}


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Lake, object]:
    root = tmp_path_factory.mktemp("validation")
    src = root / "src"
    good = write_ct_series(src / "good_ct", phantom((3, 8, 8)), phi={"PatientID": "GOOD-1"})
    short = write_ct_series(src / "short_ct", phantom((4, 48, 64)), phi={"PatientID": "ROWS-1"})
    for path in sorted((src / "short_ct").iterdir()):  # every slice says 40 rows, holds 48
        ds = pydicom.dcmread(path)
        ds.Rows = 40
        ds.save_as(path)
    pet = np.full((3, 6, 6), np.nan, np.float32)
    pet[0, 0, 0] = 1000.0
    _nifti(src / "nifti" / "nan_pet.nii.gz", pet, PET)
    _nifti(src / "nifti" / "lots.nii.gz", np.ones((3, 6, 6), np.float32),
           {**PET, "PatientID": "LOTS-1", "InjectedActivityMBq": "lots"})
    (src / "administrations.csv").write_text(
        "PatientID,nuclide,activity_mbq,administration_datetime\n"
        f"GOOD-1,Lu-177,inf,{T0.isoformat()}\n"
        f"GOOD-1,Lu-177,7400,{(T0 + timedelta(days=1)).isoformat()}\n")
    (src / "clinical.csv").write_text("PatientID,psa,ldh\n   ,1.0,2.0\nGOOD-1,13.2,inf\n")
    (src / "outcomes.csv").write_text(
        "PatientID,os_time_d,os_event,pfs_time_d,pfs_event\nGOOD-1,300,,100,1\n")
    (src / "mapping.yaml").write_text(
        "clinical: {file: clinical.csv, rename: [a, b]}\n"
        "outcomes: {file: outcomes.csv}\n"
        "administrations: {file: administrations.csv}\n"
        "voi_names: 5\n")
    lake = Lake(root / "lake")
    report = ingest(src, lake, OPTS)
    return src, lake, (report, good, short)


def _problems(report, name: str) -> list[str]:  # noqa: ANN001
    return [e.problem for e in report.skipped if Path(e.source).name == name]


def test_a_header_that_does_not_describe_its_pixels_is_refused(batch):
    src, lake, (report, _, short) = batch
    problems = [e for e in report.skipped if "short_ct" in e.source]
    assert problems and all("pixel data holds 6144 bytes" in e.problem and "make 5120" in
                            e.problem for e in problems), report.summary()
    ids = lake.sql("SELECT DISTINCT patient_id FROM images").patient_id
    assert len(ids) == 1  # only the good CT


def test_non_finite_voxels_and_numbers_are_refused_with_the_count(batch):
    src, lake, (report, _, _) = batch
    assert _problems(report, "nan_pet.nii.gz") == [
        "107 of 108 voxels are not finite numbers (NaN or infinite); a quantitative image "
        "must be measured everywhere"]
    assert any("row 2" in p and "inf" in p for p in _problems(report, "administrations.csv"))
    admins = lake.read("administrations")
    assert list(admins.activity_mbq) == [7400.0]  # the good row goes on
    assert any("column ldh" in p and "finite" in p for p in _problems(report, "clinical.csv"))
    assert set(lake.read("images").modality) == {"CT"}


def test_a_malformed_row_or_entry_is_named_and_the_rest_goes_on(batch):
    src, lake, (report, _, _) = batch
    clinical = _problems(report, "clinical.csv")
    assert any("row 2: no patient id" in p for p in clinical), clinical
    assert lake.read("clinical").set_index("variable").value_num.to_dict() == {"psa": 13.2}
    outcomes = _problems(report, "outcomes.csv")
    assert any("os_event" in p and "not 0 or 1" in p for p in outcomes), outcomes
    assert set(lake.read("outcomes").endpoint) == {"pfs"}
    mapping = _problems(report, "mapping.yaml")
    assert any(p.startswith("clinical.rename: expected a mapping") for p in mapping), mapping
    assert any(p.startswith("voi_names must map") for p in mapping), mapping
    lots = _problems(report, "lots.json")
    assert lots == ["InjectedActivityMBq: expected a finite number, got 'lots'"]
    assert not any("unexpected error" in e.problem for e in report.skipped), report.summary()
