"""A cycle's export, proven by tools theralake did not write (issue 19): dciodvfy (Debian's
dicom3tools) and strict pydicom accept every object; the RTDOSE, RTSTRUCT and SEG share one
study, frame of reference and CT series; dicompyler-core's DVH of the exported pair agrees
with the lake's; highdicom reads the SEG back to the lake's masks with each VOI's origin.

A full-size synthetic patient (4 mm SPECT grid), one cycle, three time points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from debian_tools import install_debian
from pydicom import config as pydicom_config

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, Volume, views
from theralake.lake.dicom_export import DicomExport
from theralake.pipelines.export import export
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")
DVH_SCRIPT = Path(__file__).parents[1] / "dvh_dicompyler.py"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("interop")
    generate_cohort(SynthConfig(patients=1, cycles=1, seed=3, small=False,
                                time_points_h=(4.0, 24.0, 168.0)), root / "cohort",
                    progress=False)
    lake = Lake(root / "lake")
    ingest(root / "cohort", lake, IngestOptions(show_progress=False))
    pid = Pseudonymizer().patient_id("SYN0001")
    run_cycle(lake, pid, 1, load_config(method="vsv", registration="rigid",
                                        voxel_model="mono", segmentation={"backend": "none"}))
    out = root / "out"
    for what, fmt in (("dose", "rtdose"), ("vois", "rtstruct"), ("vois", "seg")):
        export(lake, pid, 1, what, fmt, out / fmt)
    export(lake, pid, None, "vois", "seg", out / "pet", pet=True)  # the pre-therapy PET/CT
    # the same RTDOSE with 16-bit counts: dciodvfy (dicom3tools 2022) asserts on any 32-bit
    # image, a bug of the tool (Horos users met it too); the header is the same writer's
    ct = views.reference_ct(lake, pid, 1, ())
    dose = views.dose_map(lake, pid, 1)
    dicom = DicomExport(pid, ct["id"])
    dicom.write_ct(Volume.from_row(ct), root / "ct16")
    dicom.write_rtdose(Volume.from_row(dose), out / "RTDOSE16.dcm", dose["id"], bits=16)
    return {"lake": lake, "pid": pid, "out": out, "dose": dose, "ct": ct}


def _objects(out: Path) -> dict[str, Path]:
    return {"CT": sorted((out / "rtdose" / "CT").glob("*.dcm"))[0],
            "RTDOSE": out / "rtdose" / "RTDOSE.dcm", "RTDOSE16": out / "RTDOSE16.dcm",
            "RTSTRUCT": out / "rtstruct" / "RTSTRUCT.dcm", "SEG": out / "seg" / "SEG.dcm",
            "PETCT_SEG": out / "pet" / "SEG.dcm"}


def test_strict_pydicom_reads_every_object(exported):
    """pydicom raising on any value that breaks its VR (a DS of 17 characters did)."""
    before = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.RAISE
    try:
        for kind, path in _objects(exported["out"]).items():
            ds = pydicom.dcmread(path)
            for element in ds.iterall():
                _ = element.value
            assert ds.PatientID == exported["pid"], kind
    finally:
        pydicom_config.settings.reading_validation_mode = before
    rtdose = pydicom.dcmread(_objects(exported["out"])["RTDOSE"])
    assert all(len(v) <= 16 for v in map(str, rtdose.GridFrameOffsetVector))
    assert rtdose.DoseSummationType == "PLAN" and len(rtdose.ReferencedRTPlanSequence) == 1


def test_dciodvfy_finds_no_error_in_any_object(exported):
    why = install_debian("dicom3tools", "dciodvfy")
    if why:
        pytest.skip(why)
    for kind, path in _objects(exported["out"]).items():
        if kind == "RTDOSE":
            continue  # 32-bit: the tool asserts (see the fixture); RTDOSE16 stands for it
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                              timeout=120)
        report = done.stdout + done.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert done.returncode == 0 and not errors, (kind, report)
        assert {"CT": "CTImage", "RTDOSE16": "RTDose", "RTSTRUCT": "RTStructureSet",
                "SEG": "Segmentation", "PETCT_SEG": "Segmentation"}[kind] in report


def test_one_export_shares_study_frame_and_ct(exported):
    objects = {k: pydicom.dcmread(p) for k, p in _objects(exported["out"]).items()
               if k not in ("RTDOSE16", "PETCT_SEG")}
    ct = objects["CT"]
    for kind, ds in objects.items():
        assert ds.StudyInstanceUID == ct.StudyInstanceUID, kind
        assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID, kind
    rs = objects["RTSTRUCT"]
    ref = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert ref.RTReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    seg = objects["SEG"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    assert exported["dose"]["reference_ct_id"] == exported["ct"]["id"]
    # the PET/CT's VOIs lie on the PET/CT's own CT: its frame, not the cycle's
    pet_seg = pydicom.dcmread(_objects(exported["out"])["PETCT_SEG"])
    pet_ct = pydicom.dcmread(sorted((exported["out"] / "pet" / "CT").glob("*.dcm"))[0])
    assert pet_seg.FrameOfReferenceUID == pet_ct.FrameOfReferenceUID != ct.FrameOfReferenceUID
    assert pet_seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pet_ct.SeriesInstanceUID


@pytest.fixture(scope="module")
def dicompyler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python with dicompyler-core (it needs pydicom < 3: its own environment)."""
    venv = tmp_path_factory.mktemp("dicompyler") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                           "dicompyler-core==0.5.6", "pydicom<3"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return python


def test_an_independent_dvh_agrees_with_the_lake(exported, dicompyler):
    """dicompyler-core's DVH mean of each organ on the exported RTSTRUCT + RTDOSE against the
    lake's DVH mean of the same map and VOI (map_mean_dose_gy): within 2 %."""
    out = _objects(exported["out"])
    done = subprocess.run([str(dicompyler), str(DVH_SCRIPT), str(out["RTSTRUCT"]),
                           str(out["RTDOSE"])], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = views.dosimetry(exported["lake"], ("vsv",), exported["pid"], before_cycle=2)
    ours = ours.set_index("voi")
    for organ in ORGANS:
        lake_gy = float(ours.loc[organ, "map_mean_dose_gy"])
        assert theirs[organ] == pytest.approx(lake_gy, rel=0.02), (organ, theirs[organ], lake_gy)


def test_the_seg_holds_the_lake_masks_and_who_made_them(exported):
    seg = hd.seg.segread(_objects(exported["out"])["SEG"])
    vois = views.dosimetry_vois(exported["lake"], exported["pid"], 1).set_index("voi")
    labels = {d.segment_label: d for d in seg.SegmentSequence}
    assert set(labels) == set(vois.index)
    cts = sorted((exported["out"] / "seg" / "CT").glob("*.dcm"))
    sops = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in cts]
    for name, row in vois.iterrows():
        number = int(labels[name].SegmentNumber)
        mask = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=sops, segment_numbers=[number],
            ignore_spatial_locations=True, assert_missing_frames_are_empty=True)[..., 0]
        want = Volume.from_row(row.to_dict()).array.astype(bool)
        assert np.array_equal(mask.astype(bool), want), name
        algorithm = labels[name].SegmentAlgorithmType
        assert algorithm == ("MANUAL" if row.source in ("seg", "rtstruct", "nifti")
                             else "AUTOMATIC"), (name, row.source, algorithm)
    kidney = labels["kidney_left"]
    assert kidney.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    modifier = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert modifier.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
