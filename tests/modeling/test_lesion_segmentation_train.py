"""The PET-to-SPECT lesion segmenter trained on a small synthetic lake (`theralake
train-lesion-seg`), scored against the thresholds, registered in MLflow, and used by the
dosimetry by a setting (``lesions.method: network``). The networks are tiny and barely trained:
the point is the plumbing; the accuracy is `benchmarks/bench_lesion_segmentation.py`'s."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from theralake.dosimetry.cycle import compute_cycle
from theralake.dosimetry.cycle_io import read_cycle
from theralake.dosimetry.settings import DosimetryError, config_hash
from theralake.lake import Lake
from theralake.modeling.lesion_segmentation_training import (
    THRESHOLDS,
    load_lesion_segmenter,
    pet_cases,
)
from theralake.pipelines.cli import app
from theralake.pipelines.cycle import dosimetry_cycle, dosimetry_settings
from theralake.pipelines.segmenters import load_lesion_finder
from theralake.registry import tracking
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig

RUNNER = CliRunner()
NETWORK = {"from_imported_vois": False, "method": "network"}


@pytest.fixture(autouse=True)
def _lake_store(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("lesion_seg")
    generate_cohort(SynthConfig(patients=3, cycles=1, seed=5, small=True,
                                time_points_h=(24.0,)), out, progress=False)
    lake = out / "lake"
    ingest = RUNNER.invoke(app, ["ingest", str(out), "--lake", str(lake), "--quiet"])
    assert ingest.exit_code == 0, ingest.output
    res = RUNNER.invoke(app, ["train-lesion-seg", "--lake", str(lake), "--pet-epochs", "15",
                              "--spect-epochs", "15", "--spacing-mm", "8",
                              "--val-fraction", "0.34", "--json"])
    assert res.exit_code == 0, res.output
    return Lake(lake), json.loads(res.stdout)


def test_training_scores_every_method_on_the_held_out_lesions(trained):
    lake, summary = trained
    assert summary["model"] == "lesion-segmenter v1"
    assert (summary["train_patients"], summary["val_patients"]) == (2, 1)
    methods = summary["methods"]
    assert set(methods) == {"network", "network_no_prior", *THRESHOLDS}
    # every method is scored on the same contoured lesions: the held-out patient's, on the CT
    # of its SPECT (the PET/CT's lesions are not the SPECT's)
    run = tracking.client(lake).get_run(
        tracking.model_version(lake, "lesion-segmenter", "champion").run_id)
    assert run.data.params["n_val_patients"] == "1"
    # the PET is smoothed to the resolution recorded on the lake's SPECTs (the camera's)
    recorded = lake.sql("SELECT DISTINCT resolution_fwhm_mm r FROM images WHERE kind = 'spect'")
    assert len(recorded) == 1 and float(run.data.params["spect_fwhm_mm"]) == recorded.r[0]
    n = lake.sql("SELECT count(*) n FROM vois v JOIN images i ON v.image_id = i.id WHERE "
                 "v.voi LIKE 'lesion_%' AND i.kind = 'ct' AND i.cycle = 1 AND v.patient_id = ? "
                 "AND i.frame_of_reference_key IN (SELECT frame_of_reference_key FROM images "
                 "WHERE kind = 'spect')", [_held_out(lake)]).n[0]
    assert n > 0 and all(m["lesions"] == n for m in methods.values())
    for method, scores in methods.items():
        assert 0 <= scores["detection"] <= 1 and 0 <= scores["dice"] <= 1
        assert run.data.metrics[f"val_dice_{method}"] == pytest.approx(scores["dice"])


def _held_out(lake: Lake) -> str:
    run = tracking.client(lake).get_run(
        tracking.model_version(lake, "lesion-segmenter", "champion").run_id)
    split = {c.patient_id for c in pet_cases(lake)}
    text = tracking.client(lake).download_artifacts(run.info.run_id, "lesion_scores.csv")
    held = {line.split(",")[1] for line in open(text).read().splitlines()[1:]}
    assert len(held) == 1 and held <= split
    return held.pop()


def test_the_registered_model_loads_by_alias(trained):
    lake, _ = trained
    seg, name = load_lesion_segmenter(lake)
    assert name == "lesion-segmenter v1"
    assert set(seg.networks_) == {"pet", "spect"}


def test_dosimetry_segments_lesions_with_the_network_and_the_pet_prior(trained):
    lake, _ = trained
    pid = _held_out(lake)
    settings = dosimetry_settings(lake, lesions=NETWORK)
    assert settings["lesions"]["model_version"] == "lesion-segmenter v1"
    newer = {**settings, "lesions": {**settings["lesions"], "model_version": "lesion-segmenter v2"}}
    assert config_hash(newer) != config_hash(settings)  # a new champion recomputes
    result = dosimetry_cycle(lake, pid, 1, settings)
    rows = [r for r in result.voi_rows if r["voi"].startswith("lesion_")]
    assert rows and {r["source"] for r in rows} == {"lesion_network"}
    assert {r["source_name"] for r in rows} == {"lesion-segmenter v1"}
    inputs = read_cycle(lake, pid, 1)
    assert inputs.pet is not None and inputs.pet.ct.pet_ct
    assert inputs.pet.row["id"] in rows[0]["input_ids"]
    # the PET network's probability was carried by registering the PET/CT onto the SPECT/CT
    assert any(r["moving_image_id"] == inputs.pet.ct.id for r in result.registration_rows)
    assert not [f for f in result.findings if f.check == "lesion_prior_missing"]
    doses = set(lake.sql("SELECT voi FROM organ_dosimetry WHERE patient_id = ? AND voi LIKE "
                         "'lesion_%'", [pid]).voi)
    failed = {f.voi for f in result.findings if f.status == "fail"}
    assert doses and doses | failed >= {r["voi"] for r in rows}  # none dropped silently


def test_without_a_pet_the_network_runs_alone_and_says_so(trained):
    lake, _ = trained
    pid = _held_out(lake)
    settings = dosimetry_settings(lake, lesions=NETWORK)
    inputs = dataclasses.replace(read_cycle(lake, pid, 1), pet=None)
    result = compute_cycle(inputs, settings, lesion_finder=load_lesion_finder(lake, settings))
    missing = [f for f in result.findings if f.check == "lesion_prior_missing"]
    assert len(missing) == 1 and missing[0].status == "warn"


def test_the_network_method_without_a_model_is_a_clear_error(tmp_path):
    lake = Lake(tmp_path / "empty")
    with pytest.raises(DosimetryError, match="train-lesion-seg"):
        dosimetry_settings(lake, lesions=NETWORK)
    with pytest.raises(DosimetryError, match="unknown lesions method"):
        dosimetry_settings(lake, lesions={"method": "watershed"})


def test_training_without_contoured_pet_cts_is_a_clear_error(tmp_path):
    Lake(tmp_path / "lake")
    res = RUNNER.invoke(app, ["train-lesion-seg", "--lake", str(tmp_path / "lake")])
    assert res.exit_code == 2
    assert "no pre-therapy PET/CT with lesion contours" in res.output
