"""From projections to dose (issue 22): the synthetic cohort's raw SPECT acquisitions through
`theralake ingest`, `calibrate` and `reconstruct`, then the dosimetry, against the truth."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from debian_tools import install_debian
from fixture_constants import TEST_KEY
from typer.testing import CliRunner

from theralake.dosimetry.cycle import compute_cycle
from theralake.dosimetry.cycle_io import read_cycle
from theralake.dosimetry.patient import load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.lake import Lake, Volume
from theralake.pipelines.cli import app
from theralake.pipelines.runner import load_pipeline_settings, run_pipeline
from theralake.pipelines.steps import plan
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig
from theralake.synth.patient import CAMERAS

RUNNER = CliRunner()
RECON = ["--iterations", "8", "--subsets", "5"]
SETTINGS = load_pipeline_settings(reconstruct={"iterations": 8, "subsets": 5})
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    out = tmp_path_factory.mktemp("spect_flow")
    generate_cohort(SynthConfig(patients=1, cycles=1, seed=11, small=True, projections=30,
                                time_points_h=(4.0, 48.0, 168.0)), out, progress=False)
    lake = str(out / "lake")
    pid = Pseudonymizer(key=TEST_KEY).patient_id("SYN0001")
    steps = {"ingest": RUNNER.invoke(app, ["ingest", str(out), "--lake", lake, "--quiet"])}
    spect_before = Lake(lake).sql("SELECT count(*) n FROM images WHERE kind = 'spect'").n[0]
    steps["uncalibrated"] = RUNNER.invoke(app, ["reconstruct", "--patient", pid, "--lake", lake])
    steps["calibrate"] = RUNNER.invoke(app, ["calibrate", str(out / "phantoms"), "--lake", lake,
                                             "--json", *RECON])
    steps["run"] = run_pipeline(Lake(lake), ["reconstruct"], None, "local", 1, settings=SETTINGS)
    return {"out": out, "lake": Lake(lake), "pid": pid, "spect_before": spect_before, **steps}


def test_ingest_keeps_each_energy_window_and_leaves_the_phantoms(flow):
    assert flow["ingest"].exit_code == 0, flow["ingest"].output
    assert "4 phantom acquisition folder(s)" in flow["ingest"].output
    lake = flow["lake"]
    windows = lake.sql("SELECT role, count(*) n, count(DISTINCT image_id) images FROM "
                       "projection_windows GROUP BY role ORDER BY role")
    assert windows.to_dict("list") == {"role": ["photopeak", "scatter_lower", "scatter_upper"],
                                       "n": [3, 3, 3], "images": [3, 3, 3]}
    assert lake.sql("SELECT count(DISTINCT patient_id) n FROM images").n[0] == 1
    views = lake.sql("SELECT shape FROM images WHERE kind = 'projections'")["shape"]
    assert len(views) == 9 and all(list(s) == [104, 64, 30] for s in views)  # (z, r, angle)
    assert flow["spect_before"] == 0


def test_reconstruction_without_a_calibration_says_what_to_do(flow):
    res = flow["uncalibrated"]
    assert res.exit_code == 2
    assert "no camera calibration" in res.output and "theralake calibrate" in res.output


def test_calibration_finds_the_synthetic_cameras_sensitivity(flow):
    assert flow["calibrate"].exit_code == 0, flow["calibrate"].output
    result = json.loads(flow["calibrate"].stdout)
    found = {c["camera"]: c["cps_per_mbq"] for c in result["calibrations"]}
    assert found.keys() == CAMERAS.keys()
    for camera, cps in found.items():
        assert cps == pytest.approx(CAMERAS[camera], rel=0.02), camera
    assert len(result["recovery"]) == 12
    # the camera's serial number is a device identifier: the lake keeps a keyed hash of it
    for table in ("camera_calibrations", "recovery_curves", "projection_windows"):
        keys = set(flow["lake"].sql(f"SELECT DISTINCT camera_key FROM {table}").camera_key)
        assert keys and not keys & set(CAMERAS), table


def test_reconstructed_spects_carry_their_settings_and_lineage(flow):
    assert [(s.step, s.planned, s.done, s.failed) for s in flow["run"].steps] == \
        [("reconstruct", 1, 1, 0)]
    lake = flow["lake"]
    spects = lake.sql("SELECT id, time_h, units, resolution_fwhm_mm, frame_of_reference_key, "
                      "input_ids FROM images WHERE kind = 'spect' ORDER BY time_h")
    assert len(spects) == 3 and set(spects.units) == {"BQML"}
    assert spects.resolution_fwhm_mm.between(8.0, 30.0).all()
    recon = lake.sql("SELECT * FROM reconstructions ORDER BY time_h")
    assert recon.image_id.tolist() == spects.id.tolist()
    assert set(recon.method) == {"osem"} and set(recon.iterations) == {8}
    assert set(recon.attenuation_correction) == {"ct"} and set(recon.scatter_correction) == {"tew"}
    calibrations = set(lake.sql("SELECT id FROM camera_calibrations").id)
    assert set(recon.calibration_id) <= calibrations
    cts = lake.sql("SELECT id, frame_of_reference_key FROM images WHERE kind = 'ct'")
    for s, r in zip(spects.to_dict("records"), recon.to_dict("records"), strict=True):
        ct = cts[cts.id == r["ct_id"]]
        assert ct.frame_of_reference_key.iloc[0] == s["frame_of_reference_key"]
        assert r["ct_id"] in list(s["input_ids"]) and r["calibration_id"] in list(s["input_ids"])


def test_dosimetry_on_the_reconstructions_meets_the_readme_bars(flow):
    truth = pd.read_parquet(flow["out"] / "truth" / "dosimetry.parquet")
    config = load_config(registration="rigid", method="ldm", voxel_model="mono",
                         partial_volume={"method": "gtm"}, photon_reach_mm=0.0)
    result = run_cycle(flow["lake"], flow["pid"], 1, config)
    ours = pd.DataFrame(result.organ_rows).merge(truth[truth.cycle == 1], on="voi",
                                                 suffixes=("", "_true")).set_index("voi")
    error = ours.tia_mbq_h / ours.tia_mbq_h_true - 1
    # the dosimetry README's bars: organ TIA within 10 %; the body's activity within 10 %
    for voi in ORGANS:
        assert abs(error[voi]) < 0.10, (voi, error[voi])
    assert abs(error["body"]) < 0.10, error["body"]


def test_lesions_take_the_recovery_of_the_cameras_spheres(flow):
    """recovery_coefficients measured: each lesion's activity over the NEMA recovery of its
    volume, measured by `theralake calibrate` on the SPECT's camera (no GTM)."""
    lake, pid = flow["lake"], flow["pid"]
    base = dict(registration="rigid", method="ldm", voxel_model="mono", photon_reach_mm=0.0,
                partial_volume={"method": "none"})
    plain = compute_cycle(read_cycle(lake, pid, 1), load_config(**base))
    inputs = read_cycle(lake, pid, 1)
    corrected = compute_cycle(inputs, load_config(**base, recovery_coefficients="measured"))
    curve = inputs.time_points[0].recovery
    assert curve is not None and all(tp.recovery.equals(curve) for tp in inputs.time_points)
    assert list(curve.volume_ml) == sorted(curve.volume_ml) and len(curve) == 6
    lesions = [r for r in corrected.organ_rows if r["voi"].startswith("lesion_")]
    assert lesions and all(r["partial_volume"] == "recovery" for r in lesions)

    def tac(result, voi):  # noqa: ANN001, ANN202
        return np.array([r["activity_mbq"] for r in result.tac_rows if r["voi"] == voi])

    for row in lesions:
        voi = lake.read("vois", "id = ?", [row["voi_id"]]).iloc[0]
        volume_ml = voi.voxel_count * Volume.from_row(voi.to_dict()).voxel_volume_ml
        rc = np.interp(volume_ml, curve.volume_ml, curve.recovery)
        assert 0.0 < rc < 1.0
        assert tac(corrected, row["voi"]) == pytest.approx(tac(plain, row["voi"]) / rc,
                                                           rel=1e-9)
    truth = pd.read_parquet(flow["out"] / "truth" / "dosimetry.parquet")
    truth = truth[truth.cycle == 1].set_index("voi").tia_mbq_h

    def errors(result):  # noqa: ANN001, ANN202
        return np.array([r["tia_mbq_h"] / truth[r["voi"]] - 1 for r in result.organ_rows
                         if r["voi"].startswith("lesion_")])

    # measured here: uncorrected -62 to -96 %, corrected -52 to +12 % (median |error| 11 %)
    assert np.median(np.abs(errors(plain))) > 0.5
    assert np.median(np.abs(errors(corrected))) < 0.15
    # a SPECT without a measured curve (an imported reconstruction) is said, not guessed
    bare = dataclasses.replace(inputs, time_points=[
        dataclasses.replace(tp, recovery=None) for tp in inputs.time_points])
    result = compute_cycle(bare, load_config(**base, recovery_coefficients="measured"))
    missing = {f.voi for f in result.findings if f.check == "recovery_curve_missing"}
    assert missing == {r["voi"] for r in lesions}


def test_a_second_run_skips_the_unchanged_patient_cycle(flow):
    lake = flow["lake"]
    before = lake.counts()
    again = run_pipeline(lake, ["reconstruct"], None, "local", 1, settings=SETTINGS)
    assert [(s.planned, s.skipped, s.done) for s in again.steps] == [(1, 1, 0)]
    assert lake.counts()["images"] == before["images"]


def test_the_command_reports_each_reconstruction_and_its_warnings(flow, tmp_path):
    """`theralake reconstruct` on a copy of the lake, one iteration (fast): the settings no
    NEMA curve was measured with leave the SPECT without a resolution, and it says so."""
    copy = tmp_path / "lake"
    shutil.copytree(flow["lake"].path, copy)
    res = RUNNER.invoke(app, ["reconstruct", "--patient", flow["pid"], "--cycle", "1",
                              "--lake", str(copy), "--iterations", "1", "--subsets", "1",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["time_h"] for r in out["reconstructions"]] == sorted(
        r["time_h"] for r in out["reconstructions"])
    assert len(out["reconstructions"]) == 3
    for r in out["reconstructions"]:
        assert r["cps_per_mbq"] == pytest.approx(CAMERAS["SYNCAM01"], rel=0.02) or \
            r["cps_per_mbq"] == pytest.approx(CAMERAS["SYNCAM02"], rel=0.02)
        assert any("no NEMA recovery curve" in w for w in r["warnings"]), r
    quality = Lake(copy).sql("SELECT count(*) n FROM quality WHERE step = 'reconstruct' AND "
                             "\"check\" = 'resolution'").n[0]
    assert quality == 3


def test_an_unknown_collimator_is_named(flow):
    lake, pid = flow["lake"], flow["pid"]
    bad = RUNNER.invoke(app, ["reconstruct", "--patient", pid, "--lake", str(lake.path),
                              "--collimator", "NOPE-HR"])
    assert bad.exit_code == 2 and "'NOPE-HR'" in bad.output


def test_dciodvfy_finds_no_error_in_the_projection_files(flow):
    why = install_debian("dicom3tools", "dciodvfy")
    if why:
        pytest.skip(why)
    files = sorted(flow["out"].rglob("NM_TOMO.dcm"))
    assert len(files) == 3 + 4  # three time points, two cameras' two phantoms
    for path in files:
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                              timeout=120)
        report = done.stdout + done.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert done.returncode == 0 and not errors, (path, report)
        assert "NMImage" in report


def test_the_run_plans_one_calibration_of_the_sources_phantoms(flow):
    settings = load_pipeline_settings(reconstruct={"iterations": 8, "subsets": 5})
    tasks = plan("calibrate", flow["lake"], settings, flow["out"])
    assert [t.key for t in tasks] == ["calibrate/(phantoms)"]
    assert sorted(p.rsplit("/", 1)[1] for p in tasks[0].params["folders"]) == [
        "SYNCAM01_cylinder", "SYNCAM01_nema_iec", "SYNCAM02_cylinder", "SYNCAM02_nema_iec"]
    assert tasks[0].params["reconstruct"]["iterations"] == 8
    other = plan("calibrate", flow["lake"], load_pipeline_settings(), flow["out"])
    assert other[0].inputs_hash != tasks[0].inputs_hash  # the settings are in the hash
    assert plan("calibrate", flow["lake"], settings, None) == []


def test_a_registered_view_network_reconstructs_from_twice_the_views(flow, tmp_path):
    """`theralake train-views` registers the network in the lake's MLflow; `reconstruct
    --views-model` synthesises the views between the acquired ones and says so."""
    copy = tmp_path / "lake"
    shutil.copytree(flow["lake"].path, copy)
    trained = RUNNER.invoke(app, ["train-views", "--lake", str(copy), "--factor", "2",
                                  "--epochs", "1", "--val-fraction", "0", "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["model"] == "view-synthesis v1"
    res = RUNNER.invoke(app, ["reconstruct", "--patient", flow["pid"], "--lake", str(copy),
                              "--views-model", "view-synthesis", "--iterations", "1",
                              "--subsets", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    recon = Lake(copy).sql("SELECT views, acquired_views, projection_network n, "
                           "projection_network_task task FROM reconstructions "
                           "WHERE projection_network IS NOT NULL")
    assert len(recon) == 3 and set(recon.views) == {60} and set(recon.acquired_views) == {30}
    assert set(recon.n) == {"view-synthesis v1"} and set(recon.task) == {"views"}
    said = Lake(copy).sql("SELECT message FROM quality WHERE \"check\" = 'view_synthesis'")
    assert len(said) == 3 and all("30 of 60 views synthesised" in m for m in said.message)
    missing = RUNNER.invoke(app, ["reconstruct", "--patient", flow["pid"], "--lake", str(copy),
                                  "--views-model", "no-such-net"])
    assert missing.exit_code == 2 and "train-views" in missing.output
    wrong = RUNNER.invoke(app, ["reconstruct", "--patient", flow["pid"], "--lake", str(copy),
                                "--denoise-model", "view-synthesis"])
    assert wrong.exit_code == 2 and "is a views network, not a denoise one" in wrong.output
