"""NIfTI + JSON sidecars (CT, PET in SUVbw, SEG label maps) and clinical/outcome CSVs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_factory import direction_from_angle

from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Volume

OPTS = IngestOptions(show_progress=False)
PID = "NII-PAT-0099"
SPACING, ORIGIN = (2.0, 2.5, 3.0), (-30.0, -40.0, 15.0)
DIRECTION = direction_from_angle(15)


def _write_nifti(path, array, sidecar: dict):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(tuple(DIRECTION.ravel()))
    sitk.WriteImage(img, str(path))
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


def test_nifti_ct_pet_suvbw_and_labels(tmp_path, lake):
    folder = tmp_path / "patient"
    folder.mkdir()
    z, y, x = np.indices((8, 16, 16))
    hu = (-900 + 10 * x + 20 * y + 30 * z).astype(np.int16)
    _write_nifti(folder / "ct.nii.gz", hu, {"PatientID": PID, "Modality": "CT", "Units": "HU"})
    suv = (0.5 + 0.1 * x + 0.05 * z).astype(np.float32)
    weight, activity = 80.0, 200.0
    _write_nifti(folder / "pet.nii.gz", suv, {
        "PatientID": PID, "Modality": "PT", "Units": "SUVbw", "Radionuclide": "Ga-68",
        "InjectedActivityMBq": activity, "InjectionDateTime": "2023-04-05T09:00:00",
        "AcquisitionDateTime": "2023-04-05T10:00:00", "PatientWeightKg": weight,
        "FrameOf": "ct"})
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[2:5, 3:7, 4:9] = 1  # 3 x 4 x 5 = 60 voxels
    labels[5:7, 10:14, 10:12] = 2  # 2 x 4 x 2 = 16 voxels
    _write_nifti(folder / "seg.nii.gz", labels, {
        "PatientID": PID, "Modality": "SEG", "Units": "LABELS", "FrameOf": "ct",
        "Labels": {"1": "kidney_left", "2": "Spleen"}})
    report = ingest(folder, lake, OPTS)
    assert not report.skipped, report.summary()

    images = {r["modality"]: r for r in lake.read("images").to_dict("records")}
    ct = Volume.from_row(images["CT"])
    assert images["CT"]["units"] == "HU"
    np.testing.assert_array_equal(ct.array, hu)
    np.testing.assert_allclose(ct.spacing_mm, SPACING)
    np.testing.assert_allclose(ct.origin_mm, ORIGIN)
    np.testing.assert_allclose(ct.direction, DIRECTION, atol=1e-6)

    pet_row = images["PT"]
    decayed_bq = activity * 1e6 * math.exp(-math.log(2) * 1.0 / 1.1285)  # Ga-68, 1 h
    factor = weight * 1000 / decayed_bq
    assert pet_row["units"] == "BQML"
    assert pet_row["suvbw_per_bqml"] == pytest.approx(factor, rel=1e-9)
    assert pet_row["time_h"] == pytest.approx(1.0)
    pet = Volume.from_row(pet_row)
    np.testing.assert_allclose(pet.array, suv / factor, rtol=1e-6)
    np.testing.assert_allclose(pet.array * pet_row["suvbw_per_bqml"], suv, rtol=1e-5)

    vois = {r["voi"]: r for r in lake.read("vois").to_dict("records")}
    assert set(vois) == {"kidney_left", "spleen"}
    assert vois["kidney_left"]["voxel_count"] == 60
    assert vois["spleen"]["voxel_count"] == 16
    assert vois["spleen"]["source_name"] == "Spleen" and vois["spleen"]["source"] == "nifti"
    assert vois["kidney_left"]["volume_ml"] == pytest.approx(60 * 2 * 2.5 * 3 / 1000)
    assert vois["kidney_left"]["image_id"] == images["CT"]["id"]
    mask = Volume.from_row(vois["kidney_left"])
    np.testing.assert_array_equal(mask.array.astype(bool), labels == 1)
    assert mask.same_grid(ct)
    assert set(lake.read("images")["patient_id"]) == {Pseudonymizer().patient_id(PID)}


def test_a_label_maps_body_is_the_whole_body_and_the_resolution_is_kept(tmp_path, lake):
    """In a label map every voxel has one label, so a body label holds only what no organ
    claims: the body VOI is the union of the labels (it was the remainder before)."""
    folder = tmp_path / "patient"
    folder.mkdir()
    _write_nifti(folder / "ct.nii.gz", np.zeros((8, 16, 16), np.int16),
                 {"PatientID": PID, "Modality": "CT", "Units": "HU"})
    labels = np.zeros((8, 16, 16), np.uint8)
    labels[1:7, 2:14, 2:14] = 1  # the body around the organs
    labels[2:5, 3:7, 4:9] = 2
    _write_nifti(folder / "seg.nii.gz", labels, {
        "PatientID": PID, "Modality": "SEG", "Units": "LABELS", "FrameOf": "ct",
        "Labels": {"1": "External", "2": "liver"}})
    counts = np.full((8, 16, 16), 100, np.float32)
    _write_nifti(folder / "nm.nii.gz", counts, {
        "PatientID": PID, "Modality": "NM", "Units": "CNTS", "Radionuclide": "Lu-177",
        "InjectedActivityMBq": 7400, "InjectionDateTime": "2023-04-05T09:00:00",
        "AcquisitionDateTime": "2023-04-06T09:00:00", "FrameOf": "ct",
        "CalibrationFactorCpsPerMBq": 10.0, "AcquisitionDurationS": 1200,
        "ResolutionFwhmMm": 10.5})
    report = ingest(folder, lake, OPTS)
    assert not report.skipped, report.summary()
    vois = {r["voi"]: r for r in lake.read("vois").to_dict("records")}
    assert vois["body"]["voxel_count"] == int((labels > 0).sum())
    assert vois["liver"]["voxel_count"] == int((labels == 2).sum())
    spect = lake.read("images", "kind = 'spect'").iloc[0]
    assert spect.resolution_fwhm_mm == pytest.approx(10.5)


def test_clinical_and_outcomes_with_mapping(tmp_path, lake):
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "clinical.csv").write_text(
        "Pat ID,Age,ECOG,Histology,PatientName\n"
        "CL-0001,67,1,adenocarcinoma,Roe^Richard\n"
        "CL-0002,71,0,,Moe^Mary\n")
    (folder / "followup_data.csv").write_text(
        "Pat ID,OS months,death,PFS weeks,progression,xerostomia_grade\n"
        "CL-0001,12,1,10,1,2\n"
        "CL-0002,6.5,0,,,0\n")
    (folder / "mapping.yaml").write_text(
        "clinical:\n  patient_id: Pat ID\n  rename: {Age: age_y, ECOG: ecog}\n  text: [Histology]\n"
        "outcomes:\n  file: followup_data.csv\n  patient_id: Pat ID\n"
        "  rename: {OS months: os_time_months, death: os_event, PFS weeks: pfs_time_weeks,"
        " progression: pfs_event}\n")
    report = ingest(folder, lake, OPTS)
    assert not report.skipped, report.summary()
    p1, p2 = (Pseudonymizer().patient_id(p) for p in ("CL-0001", "CL-0002"))

    clinical = lake.read("clinical")
    assert set(clinical["variable"]) == {"age_y", "ecog", "Histology"}  # PatientName dropped
    got = {(r.patient_id, r.variable): (r.value_num, r.value_text)
           for r in clinical.itertuples()}
    assert got[(p1, "age_y")][0] == 67 and got[(p2, "age_y")][0] == 71
    assert got[(p2, "ecog")][0] == 0
    assert got[(p1, "Histology")] == (None, "adenocarcinoma") or \
        (np.isnan(got[(p1, "Histology")][0]) and got[(p1, "Histology")][1] == "adenocarcinoma")
    assert (p2, "Histology") not in got  # empty cell: no row

    out = lake.read("outcomes")
    rows = {(r.patient_id, r.endpoint): r for r in out.itertuples()}
    assert rows[(p1, "os")].time_d == pytest.approx(12 * 30.4375)
    assert bool(rows[(p1, "os")].event) is True
    assert rows[(p2, "os")].time_d == pytest.approx(6.5 * 30.4375)
    assert bool(rows[(p2, "os")].event) is False
    assert rows[(p1, "pfs")].time_d == pytest.approx(70.0)
    assert (p2, "pfs") not in rows
    assert rows[(p1, "xerostomia_grade")].value == 2
    assert rows[(p2, "xerostomia_grade")].value == 0
    assert len(out) == 5


def test_mapping_with_unknown_section_is_reported(tmp_path, lake):
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "mapping.yaml").write_text("clinicl:\n  patient_id: X\n")
    (folder / "clinical.csv").write_text("PatientID,age\nA1,50\n")
    report = ingest(folder, lake, OPTS)
    assert len(report.skipped) == 1
    assert report.skipped[0].source.endswith("mapping.yaml")
    assert "unknown mapping sections ['clinicl']" in report.skipped[0].problem
