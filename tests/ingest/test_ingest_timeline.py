"""Cycles and times: a Ga-68 PET before two Lu-177 therapies, SPECTs after each."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from dicom_factory import T0, phantom, write_ct_series, write_pet_series, write_spect

from theralake.ingest.runner import IngestOptions, ingest

OPTS = IngestOptions(calibration_cps_per_mbq=10.0, show_progress=False)
GA = T0  # Ga-68 injection
LU1 = GA + timedelta(days=7, hours=2)  # 170 h after the first administration
LU2 = LU1 + timedelta(weeks=6, minutes=30)  # 1008.5 h after LU1


@pytest.fixture
def patient_folder(tmp_path):
    root = tmp_path / "in"
    write_pet_series(root / "pet", np.full((3, 8, 8), 5000.0), injection=GA,
                     start=GA + timedelta(minutes=62), dose_bq=150e6)
    write_spect(root / "spect1" / "s.dcm", np.full((4, 8, 8), 50, np.uint16), injection=LU1,
                acquired=LU1 + timedelta(hours=23, minutes=30), dose_bq=7.4e9)
    write_spect(root / "spect2" / "s.dcm", np.full((4, 8, 8), 60, np.uint16), injection=LU2,
                acquired=LU2 + timedelta(hours=47, minutes=15), dose_bq=7.2e9)
    write_ct_series(root / "ct1", phantom((3, 8, 8)), when=LU1 + timedelta(hours=23, minutes=20))
    return root


def test_cycles_purposes_and_hours(patient_folder, lake):
    report = ingest(patient_folder, lake, OPTS)
    assert not report.skipped, report.summary()
    admins = lake.read("administrations").sort_values("administration_h")
    assert admins[["nuclide", "cycle", "purpose"]].values.tolist() == [
        ["Ga-68", 1, "diagnostic"], ["Lu-177", 1, "therapy"], ["Lu-177", 2, "therapy"]]
    np.testing.assert_allclose(admins["administration_h"], [0.0, 170.0, 170.0 + 1008.5])
    np.testing.assert_allclose(admins["activity_mbq"], [150.0, 7400.0, 7200.0])
    assert admins["patient_id"].nunique() == 1

    images = lake.read("images").set_index("modality")
    pet = images.loc["PT"]
    assert (pet["cycle"], pet["nuclide"]) == (1, "Ga-68")
    assert pet["time_h"] == pytest.approx(62 / 60, abs=1e-6)
    assert pet["acquisition_h"] == pytest.approx(62 / 60, abs=1e-6)
    spects = lake.read("images", "modality = 'NM'").sort_values("acquisition_h")
    assert spects["cycle"].tolist() == [1, 2]
    np.testing.assert_allclose(spects["time_h"], [23.5, 47.25], atol=1e-6)
    np.testing.assert_allclose(spects["acquisition_h"], [170 + 23.5, 170 + 1008.5 + 47.25],
                               atol=1e-6)
    ct = images.loc["CT"]  # no nuclide: follows the latest administration of any kind
    assert ct["cycle"] == 1
    assert ct["time_h"] == pytest.approx(23 + 20 / 60, abs=1e-6)


def test_no_real_dates_in_the_lake(patient_folder, lake):
    assert not ingest(patient_folder, lake, OPTS).skipped
    patients = lake.read("patients")
    assert len(patients) == 1
    shifted = patients["reference_time_shifted"].iloc[0].to_pydatetime()
    assert abs((shifted - GA).days) >= 365  # only a keyed, shifted reference time
    real_days = {(GA + timedelta(days=d)).date() for d in range(-2, 400)}
    con = lake.connect()
    for table in ("patients", "administrations", "images", "vois"):
        df = con.execute(f"select * exclude (created_utc) from {table}").df()
        for col in df.columns:
            if pd.api.types.is_datetime64_any_dtype(df[col]):
                assert not set(df[col].dropna().dt.date) & real_days, (table, col)


def test_administrations_csv_merges_with_dicom(patient_folder, lake):
    (patient_folder / "administrations.csv").write_text(
        "PatientID,nuclide,activity_mbq,administration_datetime,pharmaceutical\n"
        f"MRN-7731-QX,Lu-177,7350,{(LU1 + timedelta(minutes=10)).isoformat()},PSMA-617\n")
    assert not ingest(patient_folder, lake, OPTS).skipped
    admins = lake.read("administrations", "nuclide = 'Lu-177'").sort_values("cycle")
    assert len(admins) == 2  # the CSV row and the DICOM one are the same administration
    first = admins.iloc[0]
    assert first["activity_mbq"] == pytest.approx(7350)  # the table wins
    assert first["pharmaceutical"] == "PSMA-617" and first["source"] == "csv"
    assert first["administration_h"] == pytest.approx(170 + 10 / 60, abs=1e-6)


def test_second_batch_keeps_the_timeline(tmp_path, patient_folder, lake):
    """Ingesting cycle 2 after cycle 1 gives the same cycles and hours as one batch."""
    import shutil

    first = tmp_path / "first"
    shutil.copytree(patient_folder, first)
    shutil.rmtree(first / "spect2")
    assert not ingest(first, lake, OPTS).skipped
    assert not ingest(patient_folder / "spect2", lake, OPTS).skipped
    spects = lake.read("images", "modality = 'NM'").sort_values("acquisition_h")
    assert spects["cycle"].tolist() == [1, 2]
    np.testing.assert_allclose(spects["time_h"], [23.5, 47.25], atol=1e-6)
    admins = lake.read("administrations").sort_values("administration_h")
    np.testing.assert_allclose(admins["administration_h"], [0.0, 170.0, 1178.5])


def test_subsecond_injection_times_split_batches_equal_one_batch(tmp_path):
    """The stored reference has one-second resolution: fractions must not change ids."""
    from dicom_factory import write_pet_series as pet
    from dicom_factory import write_spect as spect

    from theralake.lake import Lake

    inj = T0.replace(microsecond=500000)
    pet(tmp_path / "a" / "pet", np.full((3, 8, 8), 100.0), injection=inj,
        start=inj + timedelta(minutes=60))
    spect(tmp_path / "b" / "s.dcm", np.ones((3, 8, 8), np.uint16),
          injection=inj + timedelta(days=2), acquired=inj + timedelta(days=3))
    split = Lake(tmp_path / "split")
    for sub in ("a", "b", "a", "b"):
        assert not ingest(tmp_path / sub, split, OPTS).skipped
    whole = Lake(tmp_path / "whole")
    assert not ingest(tmp_path, whole, OPTS).skipped
    for table in ("patients", "administrations", "images"):
        assert split.ids(table) == whole.ids(table), table
    spect_row = whole.read("images", "modality = 'NM'").iloc[0]
    assert spect_row["time_h"] == pytest.approx(24.0, abs=1e-6)
