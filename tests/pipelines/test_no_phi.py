"""Identifiers planted in every place a user could put them (DICOM headers and private tags,
free-text clinical values, pharmaceutical names, sidecar descriptions, folder and file names)
reach no byte of the lake, its run log, its reports or its exports (issue 17, findings 1-4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import PHI, PHI_DATES, T0, phantom, write_ct_series, write_pet_series
from fixture_constants import TEST_KEY

from theralake.lake import Lake

FAMILY, GIVEN = PHI["PatientName"].split("^")[:2]
FOLDER = f"{FAMILY}_{PHI['PatientID']}"  # a patient folder named as clinics name them
PLANTS = {
    "note": (f"{GIVEN} {FAMILY} seen by Dr Moriarty at Saint Elsewhere Memorial Hospital; "
             "lives at 221 Baker Street, London NW1 6XE; tel +44 20 7946 0958; "
             "MRN 99887766; jd.quixote@example.org"),
    "private": "PRIVATE-PLANT-X9",
    "sidecar_id": "KH20471193",  # a hospital number
}
NEEDLES = {FAMILY, GIVEN, PHI["PatientID"], FOLDER, "Moriarty", "Baker Street", "NW1 6XE",
           "7946 0958", "99887766", "jd.quixote@example.org", "Saint Elsewhere",
           PLANTS["private"], PLANTS["sidecar_id"], "2019-04-12", "12.04.2019",
           *PHI_DATES, PHI["AccessionNumber"], PHI["OtherPatientIDs"], TEST_KEY}


def _plant_source(root: Path) -> None:
    patient = root / FOLDER
    ct = write_ct_series(patient / "ct", phantom((4, 16, 16)),
                         description=f"CT {FAMILY} {PHI['PatientID']}")
    write_pet_series(patient / f"pet {GIVEN}", np.full((3, 8, 8), 900.0),
                     injection=T0, start=T0 + timedelta(minutes=58), frame_uid=ct.frame_uid)
    for path in sorted((patient / f"pet {GIVEN}").iterdir()):
        ds = pydicom.dcmread(path)
        item = ds.RadiopharmaceuticalInformationSequence[0]
        item.Radiopharmaceutical = f"Ga-68 PSMA-11 for {FAMILY}"
        block = ds.private_block(0x0011, "PLANT CREATOR", create=True)
        block.add_new(0x01, "LO", PLANTS["private"])
        ds.save_as(path)
    (patient / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 7)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 6, 6), np.int16)),
                    str(patient / "extra.nii.gz"))
    (patient / "extra.json").write_text(json.dumps({
        "PatientID": PHI["PatientID"], "Modality": "CT", "Units": "HU",
        "SeriesDescription": f"low-dose CT of {GIVEN} {FAMILY}, {PLANTS['sidecar_id']}, "
                             "acquired 2023-04-05"}))
    (root / "clinical.csv").write_text(
        "PatientID,PatientName,note,diagnosis_date,psa\n"
        f"{PHI['PatientID']},{PHI['PatientName']},\"{PLANTS['note']}\",2019-04-12,13.2\n")
    (root / "administrations.csv").write_text(
        "PatientID,nuclide,activity_mbq,administration_datetime,pharmaceutical\n"
        f"{PHI['PatientID']},Lu-177,7400,{(T0 + timedelta(days=7)).isoformat()},"
        f"Lu-177 PSMA-617 for {GIVEN} {FAMILY} 12.04.2019\n")
    (root / "mapping.yaml").write_text(
        "clinical: {file: clinical.csv, patient_id: PatientID, text: [note]}\n"
        "administrations: {file: administrations.csv, patient_id: PatientID}\n")


def _theralake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "theralake.pipelines.cli", *args],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "THERALAKE_PSEUDONYM_KEY": TEST_KEY})


def _text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value.tolist() if hasattr(value, "tolist") else value)


def _found(needles: set[str], text: str) -> list[str]:
    low = text.lower()
    return sorted(n for n in needles if n.lower() in low)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("plants")
    _plant_source(root / "source")
    lake_path = root / "lake"
    run = _theralake("run", "--source", str(root / "source"), "--steps", "ingest", "--quiet",
                     "--workers", "1", "--lake", str(lake_path))
    return root, lake_path, run


def test_the_run_ingests_and_logs_the_broken_file_pseudonymously(planted):
    root, lake_path, run = planted
    assert run.returncode == 1, run.stdout + run.stderr  # the broken file fails its task
    lake = Lake(lake_path, create=False)
    log = lake.sql("SELECT task, status, error FROM run_log")
    failed = log[log.status == "failed"]
    assert len(failed) == 1 and failed.task.iloc[0].startswith("ingest/F")
    assert "broken.dcm" in failed.error.iloc[0]  # the path, relative to the source
    assert str(root) not in failed.error.iloc[0]
    clinical = lake.read("clinical").set_index("variable")
    assert clinical.loc["psa", "value_num"] == pytest.approx(13.2)
    note = clinical.loc["note", "value_text"]
    assert "seen by" in note and "[removed]" in note
    # the diagnosis date is hours after the reference (the first administration: the PET's)
    hours = (T0.replace(year=2019, month=4, day=12, hour=0, minute=0) - T0).total_seconds() / 3600
    assert clinical.loc["diagnosis_date_h", "value_num"] == pytest.approx(hours, abs=0.1)
    pharma = set(lake.read("administrations").pharmaceutical.dropna())
    assert any(p.startswith("Lu-177 PSMA-617") for p in pharma), pharma
    assert any(p.startswith("Ga-68 PSMA-11") for p in pharma), pharma


def test_no_planted_identifier_reaches_the_lake_reports_or_exports(planted):
    root, lake_path, _ = planted
    lake = Lake(lake_path, create=False)
    pid = lake.sql("SELECT DISTINCT patient_id FROM images").patient_id.iloc[0]
    report = _theralake("report", "--patient", pid, "--out", str(root / "out" / "p.html"),
                        "--lake", str(lake_path))
    assert report.returncode == 0, report.stderr
    image_id = lake.sql("SELECT id FROM images WHERE modality = 'CT' LIMIT 1").id.iloc[0]
    export = _theralake("export", "--image-id", image_id, "--out",
                        str(root / "out" / "ct.nii.gz"), "--lake", str(lake_path))
    assert export.returncode == 0, export.stderr

    files = [p for p in [*lake_path.rglob("*"), *(root / "out").rglob("*")] if p.is_file()]
    assert any(p.suffix == ".html" for p in files) and any(p.name == "ct.nii.gz" for p in files)
    for path in files:  # every byte, the names of files and folders included
        assert not _found(NEEDLES, str(path.relative_to(root))), path
        data = path.read_bytes()
        for needle in NEEDLES:
            assert needle.lower().encode() not in data.lower(), f"{needle!r} in {path}"
    for path in lake_path.rglob("*.parquet"):  # and every decoded value of every table
        table = pq.read_table(path)
        text = "\n".join(_text(v) for col in table.columns for v in col.to_pylist())
        assert not _found(NEEDLES, text), (path, _found(NEEDLES, text))
