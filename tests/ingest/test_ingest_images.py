"""DICOM image series -> lake: geometry round trip, HU, PET SUVbw and decay, SPECT counts."""

from __future__ import annotations

import math
import shutil
from datetime import timedelta

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import (
    HALF_LIFE_S,
    T0,
    direction_from_angle,
    phantom,
    write_ct_series,
    write_pet_series,
    write_spect,
)
from pydicom.data import get_testdata_file

from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Volume

OPTS = IngestOptions(show_progress=False)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _only_image(lake, modality):
    df = lake.read("images", "modality = ?", [modality])
    assert len(df) == 1, df
    row = df.iloc[0].to_dict()
    return row, Volume.from_row(row)


def test_ct_geometry_round_trip_dicom_lake_nifti(tmp_path, lake):
    """Oblique CT written as DICOM -> lake -> NIfTI, compared voxel by voxel and in world mm."""
    hu = phantom((10, 32, 32))
    spacing, origin, direction = (0.9, 1.3, 2.5), (-14.2, 7.7, -40.0), direction_from_angle(30)
    ct = write_ct_series(tmp_path / "ct", hu, spacing=spacing, origin=origin,
                         direction=direction)
    report = ingest(tmp_path / "ct", lake, OPTS)
    assert not report.skipped
    row, vol = _only_image(lake, "CT")
    assert row["units"] == "HU" and row["kind"] == "ct"
    assert list(row["shape"]) == [32, 32, 10]
    np.testing.assert_allclose(row["spacing_mm"], spacing, rtol=1e-9)
    np.testing.assert_allclose(row["origin_mm"], origin, atol=1e-6)
    np.testing.assert_allclose(np.reshape(row["direction"], (3, 3)), direction, atol=1e-9)
    np.testing.assert_array_equal(vol.array, hu)
    # world coordinates of corner and inner voxels equal the DICOM slice positions
    for k in (0, 4, 9):
        ds = pydicom.dcmread(ct.paths[k])
        np.testing.assert_allclose(vol.index_to_world([0, 0, k]),
                                   [float(v) for v in ds.ImagePositionPatient], atol=1e-5)
        r, c = 7, 19  # pixel (row r, column c) of slice k
        expected = (np.array([float(v) for v in ds.ImagePositionPatient])
                    + c * float(ds.PixelSpacing[1]) * direction[:, 0]
                    + r * float(ds.PixelSpacing[0]) * direction[:, 1])
        np.testing.assert_allclose(vol.index_to_world([c, r, k]), expected, atol=1e-5)
        np.testing.assert_array_equal(vol.array[k], ds.pixel_array.astype(int) - 1024)
    # NIfTI export: same voxels, same world positions (NIfTI is RAS, DICOM LPS)
    out = lake.export_nifti(row["id"], tmp_path / "ct.nii.gz")
    nii = nib.load(out)
    np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), hu)
    ijk = np.array([[0, 0, 0], [31, 0, 0], [0, 31, 9], [19, 7, 4], [31, 31, 9]], float)
    ras = (nii.affine @ np.column_stack([ijk, np.ones(len(ijk))]).T).T[:, :3]
    np.testing.assert_allclose(ras @ LPS_TO_RAS, ct.index_to_world(ijk), atol=1e-4)


def test_ct_slices_given_in_any_file_order(tmp_path, lake):
    hu = phantom((6, 16, 16), seed=3)
    ct = write_ct_series(tmp_path / "ct", hu, offsets_mm=[3.0 * k for k in range(6)])
    # rename so that file order is reversed relative to position
    for i, p in enumerate(ct.paths):
        p.rename(p.with_name(f"x_{5 - i:03d}.dcm"))
    assert not ingest(tmp_path / "ct", lake, OPTS).skipped
    _, vol = _only_image(lake, "CT")
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.origin_mm, ct.origin)


def test_hu_from_pydicom_ct_small(tmp_path, lake):
    src = get_testdata_file("CT_small.dcm")
    shutil.copy(src, tmp_path / "CT_small.dcm")
    assert not ingest(tmp_path / "CT_small.dcm", lake, OPTS).skipped
    ds = pydicom.dcmread(src)
    row, vol = _only_image(lake, "CT")
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + \
        float(ds.RescaleIntercept)
    assert vol.array.shape == (1, 128, 128)
    np.testing.assert_array_equal(vol.array[0], expected)
    assert row["units"] == "HU"
    # a few hand-checked voxels: stored value - 1024
    for r, c in ((0, 0), (64, 64), (100, 27)):
        assert vol.array[0, r, c] == int(ds.pixel_array[r, c]) - 1024
    np.testing.assert_allclose(vol.origin_mm, [float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.spacing_mm, [float(ds.PixelSpacing[1]),
                                                float(ds.PixelSpacing[0]),
                                                float(ds.SliceThickness)])
    np.testing.assert_allclose(vol.direction, np.eye(3))


def test_pydicom_rtdose_geometry_and_scaling(tmp_path, lake):
    src = get_testdata_file("rtdose.dcm")
    shutil.copy(src, tmp_path / "rtdose.dcm")
    assert not ingest(tmp_path, lake, OPTS).skipped
    ds = pydicom.dcmread(src)
    row, vol = _only_image(lake, "RTDOSE")
    assert row["units"] == str(ds.DoseUnits).upper() and row["kind"] == "dose"
    offsets = [float(v) for v in ds.GridFrameOffsetVector]
    assert list(row["shape"]) == [ds.Columns, ds.Rows, len(offsets)]
    np.testing.assert_allclose(vol.origin_mm, [float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.spacing_mm, [float(ds.PixelSpacing[1]),
                                                float(ds.PixelSpacing[0]),
                                                offsets[1] - offsets[0]])
    np.testing.assert_allclose(vol.direction, np.eye(3))
    np.testing.assert_allclose(vol.array, ds.pixel_array * float(ds.DoseGridScaling),
                               rtol=1e-6)


def test_pydicom_seg_liver_geometry(tmp_path, lake):
    src = get_testdata_file("liver_1frame.dcm")
    shutil.copy(src, tmp_path / "liver_1frame.dcm")
    assert not ingest(tmp_path, lake, OPTS).skipped
    ds = pydicom.dcmread(src)
    df = lake.read("vois")
    assert len(df) == 1
    row = df.iloc[0].to_dict()
    assert row["voi"] == "liver" and row["source"] == "seg" and row["image_id"] is None
    vol = Volume.from_row(row)
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    first = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    np.testing.assert_allclose(vol.origin_mm, [float(v) for v in first.ImagePositionPatient])
    np.testing.assert_allclose(vol.spacing_mm, [float(measures.PixelSpacing[1]),
                                                float(measures.PixelSpacing[0]),
                                                float(measures.SpacingBetweenSlices)])
    np.testing.assert_allclose(vol.direction, np.eye(3))
    frame0 = ds.pixel_array.astype(bool)
    assert int(row["voxel_count"]) == int(frame0.sum())
    np.testing.assert_array_equal(vol.array[0].astype(bool), frame0)
    assert row["volume_ml"] == pytest.approx(frame0.sum() * vol.voxel_volume_ml)


# -- PET --------------------------------------------------------------------------------------

def _pet_values(shape=(5, 16, 16)):
    z, y, x = np.indices(shape)
    return 1000.0 + 250.0 * z + 10.0 * y + 3.0 * x


def test_pet_suvbw_factor_equals_hand_computed_value(tmp_path, lake):
    weight, dose, delay_min = 81.3, 172.5e6, 63.5
    pet = write_pet_series(tmp_path / "pt", _pet_values(), weight_kg=weight, dose_bq=dose,
                           injection=T0, start=T0 + timedelta(minutes=delay_min))
    assert not ingest(tmp_path, lake, OPTS).skipped
    row, vol = _only_image(lake, "PT")
    half_life_s = HALF_LIFE_S["Ga-68"]
    decayed = dose * 2 ** (-delay_min * 60 / half_life_s)
    expected = weight * 1000 / decayed  # (g) / (Bq) -> SUVbw per Bq/mL
    assert row["suvbw_per_bqml"] == pytest.approx(expected, rel=1e-4)
    assert row["units"] == "BQML" and row["nuclide"] == "Ga-68"
    assert row["time_h"] == pytest.approx(delay_min / 60, abs=1e-6)
    np.testing.assert_allclose(vol.array, pet.array, rtol=1e-6)  # START: stored as is
    # SUV of one voxel by hand
    suv = vol.array[2, 5, 7] * row["suvbw_per_bqml"]
    assert suv == pytest.approx(pet.array[2, 5, 7] * weight * 1000 / decayed, rel=1e-4)


def test_pet_decay_correction_admin_is_brought_to_series_start(tmp_path, lake):
    delay_h = 1.25
    pet = write_pet_series(tmp_path / "pt", _pet_values(), decay_correction="ADMIN",
                           injection=T0, start=T0 + timedelta(hours=delay_h))
    assert not ingest(tmp_path, lake, OPTS).skipped
    _, vol = _only_image(lake, "PT")
    factor = math.exp(-math.log(2) * delay_h * 3600 / HALF_LIFE_S["Ga-68"])
    np.testing.assert_allclose(vol.array, pet.array * factor, rtol=1e-5)


def test_pet_decay_correction_none_refers_each_slice_to_series_start(tmp_path, lake):
    start = T0 + timedelta(minutes=60)
    times = [start + timedelta(minutes=3 * k) for k in range(5)]
    pet = write_pet_series(tmp_path / "pt", _pet_values(), decay_correction="NONE",
                           injection=T0, start=start, slice_times=times)
    assert not ingest(tmp_path, lake, OPTS).skipped
    _, vol = _only_image(lake, "PT")
    for k in range(5):
        undo = math.exp(math.log(2) * 3 * k * 60 / HALF_LIFE_S["Ga-68"])
        np.testing.assert_allclose(vol.array[k], pet.array[k] * undo, rtol=1e-5)


# -- SPECT --------------------------------------------------------------------------------------

def test_spect_counts_to_bqml_with_known_calibration_and_duration(tmp_path, lake):
    counts = (np.indices((6, 16, 16)).sum(axis=0) * 7 + 3).astype(np.uint16)
    spect = write_spect(tmp_path / "nm" / "spect.dcm", counts, frame_duration_ms=25000,
                        frames_in_rotation=30, rotations=2, spacing=(4.0, 5.0, 2.5))
    cal = 9.6  # cps/MBq
    report = ingest(tmp_path, lake, IngestOptions(calibration_cps_per_mbq=cal,
                                                  show_progress=False))
    assert not report.skipped, report.summary()
    row, vol = _only_image(lake, "NM")
    duration = 25.0 * 30 * 2  # s
    assert row["acquisition_duration_s"] == pytest.approx(duration)
    assert row["calibration_cps_per_mbq"] == pytest.approx(cal)
    assert row["units"] == "BQML" and row["kind"] == "spect" and row["nuclide"] == "Lu-177"
    voxel_ml = 4.0 * 5.0 * 2.5 / 1000
    # by hand: counts / duration = cps; / cal = MBq; x 1e6 = Bq; / voxel mL = Bq/mL
    c = float(counts[3, 4, 5])
    assert vol.array[3, 4, 5] == pytest.approx(c / duration / cal * 1e6 / voxel_ml, rel=1e-6)
    np.testing.assert_allclose(vol.array, counts / duration / cal * 1e6 / voxel_ml, rtol=1e-6)
    np.testing.assert_allclose(vol.origin_mm, spect.origin)
    np.testing.assert_allclose(vol.spacing_mm, (4.0, 5.0, 2.5))
    assert row["time_h"] == pytest.approx(24.0)


def test_spect_calibration_from_csv_by_camera(tmp_path, lake):
    counts = np.full((4, 8, 8), 100, np.uint16)
    write_spect(tmp_path / "nm" / "spect.dcm", counts, frame_duration_ms=10000,
                frames_in_rotation=60, rotations=1, spacing=(4.0, 4.0, 4.0))
    (tmp_path / "calibration.csv").write_text("camera,nuclide,cps_per_mbq\n"
                                              "SN-0001,Lu-177,12.5\nOTHER,Lu-177,99\n")
    assert not ingest(tmp_path, lake, OPTS).skipped
    _, vol = _only_image(lake, "NM")
    np.testing.assert_allclose(vol.array, 100 / 600 / 12.5 * 1e6 / 0.064, rtol=1e-6)


def test_spect_without_calibration_is_skipped_with_reason(tmp_path, lake):
    write_spect(tmp_path / "nm" / "spect.dcm", np.ones((3, 8, 8), np.uint16))
    report = ingest(tmp_path, lake, OPTS)
    assert len(report.skipped) == 1
    assert "spect.dcm" in report.skipped[0].source
    assert "calibration factor" in report.skipped[0].problem
    assert lake.counts()["images"] == 0
