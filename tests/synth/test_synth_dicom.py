"""The DICOM output reads back with pydicom, SimpleITK and highdicom, with the right geometry."""

from __future__ import annotations

import filecmp
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from synthetic_segs import write_both_segs

from theralake.synth.cohort import generate_cohort, generate_patient
from theralake.synth.config import SynthConfig
from theralake.synth.grid import ct_grid, spect_grid


def _labels(out: Path, pid: str, session: str) -> np.ndarray:
    df = pd.read_parquet(out / "truth" / "images" / f"{pid}.parquet")
    row = df[(df.session == session) & (df.kind == "labels")].iloc[0]
    x, y, z = row["shape"]
    raw = __import__("pyarrow").decompress(row["voxels"], decompressed_size=x * y * z * 2,
                                           codec=row["compression"], asbytes=True)
    return np.frombuffer(raw, dtype=np.dtype(row["dtype"])).reshape(z, y, x)


def test_tables_and_mapping(dicom_cohort: Path) -> None:
    out = dicom_cohort
    mapping = yaml.safe_load((out / "mapping.yaml").read_text())
    assert mapping["calibration"] == {"file": "calibration.csv"}
    clin = pd.read_csv(out / "clinical.csv")
    assert list(clin.PatientID) == ["SYN0001", "SYN0002"]
    assert {"age_y", "weight_kg", "psa_ng_ml", "alp_u_l", "ldh_u_l", "hb_g_dl", "ecog",
            "prior_therapies"} <= set(clin.columns)
    outc = pd.read_csv(out / "outcomes.csv")
    assert {"pfs_time_d", "pfs_event", "os_time_d", "os_event", "psa50",
            "kidney_toxicity_grade", "salivary_toxicity_grade"} <= set(outc.columns)
    assert (outc.pfs_time_d <= outc.os_time_d).all()
    adm = pd.read_csv(out / "administrations.csv")
    assert list(adm.columns[:6]) == ["PatientID", "nuclide", "activity_mbq",
                                     "administration_datetime", "pharmaceutical", "purpose"]
    assert set(adm.purpose) == {"therapy", "diagnostic"}
    cal = pd.read_csv(out / "calibration.csv")
    assert list(cal.columns) == ["camera", "nuclide", "cps_per_mbq", "fwhm_mm"]
    for t in ("vois", "kinetics", "activity", "dosimetry", "partial_volume", "poses"):
        assert len(pd.read_parquet(out / "truth" / f"{t}.parquet")) > 0
    dos = pd.read_parquet(out / "truth" / "dosimetry.parquet")
    assert dos.method.unique().tolist() == ["local_electrons+sphere_photon_af"]


def test_missing_time_points_have_no_images(dicom_cohort: Path) -> None:
    act = pd.read_parquet(dicom_cohort / "truth" / "activity.parquet")
    tps = act.drop_duplicates(["PatientID", "cycle", "time_point"])
    assert tps[tps.time_point == 1].imaged.all()
    for _, r in tps.iterrows():
        folder = dicom_cohort / r.PatientID / f"C{r.cycle}TP{r.time_point}"
        assert folder.exists() == bool(r.imaged)


def test_ct_geometry_and_values(dicom_cohort: Path) -> None:
    folder = dicom_cohort / "SYN0001" / "C1TP2" / "CT"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    g = ct_grid(True)
    assert img.GetSize() == g.shape[::-1]
    assert np.allclose(img.GetSpacing(), g.spacing)
    assert np.allclose(img.GetOrigin(), g.origin, atol=1e-3)
    hu = sitk.GetArrayFromImage(img)
    labels = _labels(dicom_cohort, "SYN0001", "C1TP2")
    assert 30 < hu[labels == 7].mean() < 90  # liver
    assert hu[labels == 0].mean() < -950
    ds = pydicom.dcmread(next(folder.iterdir()))
    assert ds.RescaleIntercept == -1024 and ds.ImageOrientationPatient == [1, 0, 0, 0, 1, 0]
    assert ds.PatientID == "SYN0001" and ds.PatientName == "Synthetic^P0001"
    assert float(ds.PatientWeight) > 40


def test_pet_series(dicom_cohort: Path) -> None:
    files = sorted((dicom_cohort / "SYN0001" / "PET0" / "PT").iterdir())
    ds = pydicom.dcmread(files[len(files) // 2])
    ct = pydicom.dcmread(next((dicom_cohort / "SYN0001" / "PET0" / "CT").iterdir()))
    assert ds.Units == "BQML" and ds.DecayCorrection == "START"
    assert list(ds.CorrectedImage) == ["ATTN", "DECY"]
    assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    assert rp.RadionuclideCodeSequence[0].CodeValue == "C-131A3"
    assert float(rp.RadionuclideHalfLife) == pytest.approx(67.71 * 60)
    assert len(rp.RadiopharmaceuticalStartDateTime) == 14
    vals = ds.pixel_array * float(ds.RescaleSlope)
    assert vals.max() > 1000  # Bq/mL


def test_nm_spect(dicom_cohort: Path) -> None:
    path = dicom_cohort / "SYN0001" / "C1TP1" / "NM" / "NM0001.dcm"
    ds = pydicom.dcmread(path)
    g = spect_grid(True)
    assert ds.NumberOfFrames == g.shape[0]
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    assert ds.FrameIncrementPointer == 0x00540080
    assert list(ds.SliceVector) == list(range(1, g.shape[0] + 1))
    det = ds.DetectorInformationSequence[0]
    assert np.allclose([float(v) for v in det.ImagePositionPatient], g.origin, atol=1e-3)
    ct = pydicom.dcmread(next((dicom_cohort / "SYN0001" / "C1TP1" / "CT").iterdir()))
    assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID
    rot = ds.RotationInformationSequence[0]
    duration = rot.ActualFrameDuration / 1000 * rot.NumberOfFramesInRotation
    cal = pd.read_csv(dicom_cohort / "calibration.csv").set_index("camera")
    cps = cal.loc[ds.DeviceSerialNumber, "cps_per_mbq"]
    counts = ds.pixel_array.astype(float)
    voxel_ml = float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1]) * float(
        ds.SpacingBetweenSlices) / 1000
    bq_ml = counts / (cps * 1e-6 * duration) / voxel_ml
    total_mbq = bq_ml.sum() * voxel_ml / 1e6
    pv = pd.read_parquet(dicom_cohort / "truth" / "partial_volume.parquet")
    row = pv[(pv.PatientID == "SYN0001") & (pv.cycle == 1) & (pv.time_point == 1)
             & (pv.voi == "field_of_view")].iloc[0]
    assert total_mbq == pytest.approx(row.spect_activity_mbq, rel=0.01)
    rp = ds.RadiopharmaceuticalInformationSequence[0]
    assert rp.RadionuclideCodeSequence[0].CodeValue == "C-145A4"
    adm = pd.read_csv(dicom_cohort / "administrations.csv")
    a = adm[(adm.PatientID == "SYN0001") & (adm.cycle == 1)].iloc[0]
    assert float(rp.RadionuclideTotalDose) / 1e6 == pytest.approx(a.activity_mbq, rel=1e-4)
    img = sitk.ReadImage(str(path))
    assert img.GetSize() == g.shape[::-1]
    assert np.allclose(img.GetSpacing(), g.spacing)
    assert np.allclose(img.GetOrigin(), g.origin, atol=1e-3)


def test_seg_matches_truth(dicom_cohort: Path) -> None:
    folder = dicom_cohort / "SYN0001" / "C1TP2"
    seg = hd.seg.segread(folder / "SEG" / "SEG0001.dcm")
    names = [seg.get_segment_description(i).segment_label
             for i in range(1, seg.number_of_segments + 1)]
    assert names[:2] == ["body", "lung_left"] and "kidney_left" in names
    labels = _labels(dicom_cohort, "SYN0001", "C1TP2")
    ct_files = sorted((folder / "CT").iterdir())
    kid = names.index("kidney_left") + 1
    for k in (40, 45):
        uid = pydicom.dcmread(ct_files[k], stop_before_pixels=True).SOPInstanceUID
        px = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid], segment_numbers=[kid],
            assert_missing_frames_are_empty=True)
        assert np.array_equal(px[0, :, :, 0] > 0, np.isin(labels[k], (9, 10)))


def test_fast_seg_equals_highdicom(tmp_path: Path) -> None:
    fast, highdicom = write_both_segs(tmp_path)
    a, b = hd.seg.segread(fast), hd.seg.segread(highdicom)
    assert a.number_of_segments == b.number_of_segments
    va = a.get_volume(combine_segments=False)
    vb = b.get_volume(combine_segments=False)
    assert np.array_equal(va.array, vb.array)
    assert np.allclose(va.affine, vb.affine)


def test_deterministic(dicom_cohort: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(patients=2, cycles=2, seed=5, small=True, time_points_h=(4, 24, 96),
                      missing_prob=0.3)
    generate_patient(cfg, 1, tmp_path)
    for rel in ("C1TP1/CT/CT0040.dcm", "C1TP1/NM/NM0001.dcm", "PET0/PT/PT0040.dcm",
                "C1TP1/SEG/SEG0001.dcm"):
        assert filecmp.cmp(tmp_path / "SYN0002" / rel, dicom_cohort / "SYN0002" / rel,
                           shallow=False), rel


def test_parallel_workers_write_the_same_cohort(dicom_cohort: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(patients=2, cycles=2, seed=5, small=True, time_points_h=(4, 24, 96),
                      missing_prob=0.3)
    generate_cohort(cfg, tmp_path, progress=False, workers=2)
    for rel in ("clinical.csv", "administrations.csv", "truth/activity.parquet",
                "SYN0001/C1TP1/NM/NM0001.dcm", "SYN0002/C2TP1/SEG/SEG0001.dcm"):
        assert filecmp.cmp(tmp_path / rel, dicom_cohort / rel, shallow=False), rel
