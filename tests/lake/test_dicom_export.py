"""DICOM export (CT + RTDOSE + RTSTRUCT) read back by the project's own ingest."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, Volume
from theralake.lake.dicom_export import DicomExport


def _ct_and_dose() -> tuple[Volume, Volume, dict[str, np.ndarray]]:
    z, y, x = np.indices((12, 30, 34))
    ct = np.where(((x - 17) / 14) ** 2 + ((y - 15) / 12) ** 2 < 1, 40, -1000).astype(np.int16)
    direction = np.array([[1, 0, 0], [0, 0.9950042, -0.0998334], [0, 0.0998334, 0.9950042]])
    grid = dict(spacing_mm=(2.5, 3.0, 4.0), origin_mm=(-40.0, -50.0, 100.0),
                direction=direction)
    kidney = ((x - 22) / 4) ** 2 + ((y - 16) / 5) ** 2 + ((z - 6) / 3) ** 2 <= 1
    ring = (((x - 11) / 6) ** 2 + ((y - 14) / 6) ** 2 <= 1) & ~(
        ((x - 11) / 2.5) ** 2 + ((y - 14) / 2.5) ** 2 <= 1) & (z == 5)
    dose = (np.exp(-((x - 20) ** 2 + (y - 15) ** 2 + (z - 6) ** 2) / 40.0) * 35.0)
    return (Volume(ct, **grid), Volume(dose.astype(np.float32), **grid),
            {"kidney_left": kidney, "lesion_001": ring})


def test_exported_dicom_reads_back_exactly(tmp_path):
    ct, dose, masks = _ct_and_dose()
    export = DicomExport("P0123456789abcde", "ct-id")
    export.write_ct(ct, tmp_path / "dicom" / "ct")
    export.write_rtdose(dose, tmp_path / "dicom" / "rtdose.dcm", "dose-id")
    export.write_rtstruct(ct, masks, tmp_path / "dicom" / "rtstruct.dcm")
    lake = Lake(tmp_path / "lake")
    report = ingest(tmp_path / "dicom", lake, IngestOptions(show_progress=False))
    assert report.skipped == []
    images = lake.read("images")
    ct_row = images[images.modality == "CT"].iloc[0]
    dose_row = images[images.modality == "RTDOSE"].iloc[0]
    ct_back = Volume.from_row(ct_row.to_dict())
    assert ct_back.same_grid(ct) and np.array_equal(ct_back.array, ct.array)
    dose_back = Volume.from_row(dose_row.to_dict())
    assert dose_back.same_grid(dose)
    assert np.allclose(dose_back.array, dose.array, rtol=1e-6, atol=1e-8)
    vois = lake.read("vois")
    assert set(vois.voi) == set(masks)
    for _, row in vois.iterrows():
        back = Volume.from_row(row.to_dict()).array.astype(bool)
        assert np.array_equal(back, masks[row.voi]), row.voi  # holes kept (even-odd rule)
        assert row.image_id == ct_row.id


def test_export_is_readable_by_simpleitk_and_references_the_ct(tmp_path):
    ct, dose, masks = _ct_and_dose()
    export = DicomExport("P1", "ct-id")
    export.write_ct(ct, tmp_path / "ct")
    rd = pydicom.dcmread(export.write_rtdose(dose, tmp_path / "rd.dcm", "d"))
    rs = pydicom.dcmread(export.write_rtstruct(ct, masks, tmp_path / "rs.dcm"))
    ct0 = pydicom.dcmread(tmp_path / "ct" / "CT_0001.dcm")
    assert rd.FrameOfReferenceUID == rs.FrameOfReferenceUID == ct0.FrameOfReferenceUID
    series = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert series.RTReferencedSeriesSequence[0].SeriesInstanceUID == ct0.SeriesInstanceUID
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    img = reader.Execute()
    assert np.allclose(img.GetOrigin(), ct.origin_mm, atol=1e-3)
    assert np.allclose(img.GetSpacing(), ct.spacing_mm, atol=1e-3)
    assert np.array_equal(sitk.GetArrayFromImage(img), ct.array)


def test_negative_or_nan_dose_is_refused(tmp_path):
    ct, dose, _ = _ct_and_dose()
    bad = dose.like(np.where(dose.array > 30, np.nan, dose.array).astype(np.float32))
    with pytest.raises(ValueError, match="finite"):
        DicomExport("P1", "c").write_rtdose(bad, tmp_path / "x.dcm", "d")
