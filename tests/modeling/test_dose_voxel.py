"""Voxel dose prediction from the pre-therapy PET/CT on a small synthetic lake with dosimetry."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from scipy import ndimage

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, Volume
from theralake.modeling import dose_voxel
from theralake.modeling.dataset import load_modeling_config
from theralake.modeling.dose_voxel import (
    SuvScaledDose,
    VoxelDataError,
    VoxelDoseModel,
    evaluate_voxel,
    summarise_voxel,
    voxel_samples,
)
from theralake.modeling.train_voxel import load_voxel_model, train_voxel
from theralake.registry.models import PromotionRefused, promote
from theralake.registry.tracking import client, use_lake
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig

PSEUDO = Pseudonymizer(key="dose-voxel-test-key")
SMALL = {"channels": (8, 16, 32), "patch_voxels": 24, "progress": False}


def _copy(lake: Lake, table: str, where: str, params: list, patient_id: str) -> None:
    """A row of a real patient under another patient id (a patient lacking the rest)."""
    row = lake.read(table, where, params).iloc[0].to_dict()
    lake.append(table, [{**row, "id": f"{patient_id}-{table}", "patient_id": patient_id}])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dose_voxel")
    generate_cohort(SynthConfig(patients=3, cycles=1, seed=5, small=True), root / "syn",
                    progress=False)
    lake = Lake(root / "lake")
    ingest(root / "syn", lake, IngestOptions(show_progress=False), PSEUDO)
    pids = sorted(lake.read("patients").patient_id)
    # tac_vois reference (no partial-volume correction): organ doses are the map's means;
    # the synthetic CTs carry their contours (no organ segmenter)
    config = load_config(method="ldm", registration="rigid", voxel_model="mono",
                         tac_vois="reference", segmentation={"backend": "none"})
    for pid in pids:
        run_cycle(lake, pid, 1, config)
    _copy(lake, "dose_maps", "patient_id = ? AND quantity = 'dose'", [pids[0]], "PNOPET")
    _copy(lake, "images", "patient_id = ? AND kind = 'pet'", [pids[0]], "PNODOSE")
    samples = voxel_samples(lake)
    model = VoxelDoseModel(epochs=20, random_state=0, **SMALL).fit(samples)
    return lake, pids, samples, model


def test_samples_match_the_dosimetry(world):
    lake, pids, samples, _ = world
    assert [s.patient_id for s in samples] == pids  # the two incomplete patients are skipped
    od = lake.read("organ_dosimetry", "cycle = 1").set_index(["patient_id", "voi"])
    admin = lake.read("administrations", "purpose = 'therapy'").set_index("patient_id")
    for s in samples:
        grid = s.dose_gy_per_gbq
        assert s.pet_suv.same_grid(grid) and s.ct_hu.same_grid(grid)
        assert all(m.shape == grid.array.shape for m in s.masks.values())
        assert s.method == "ldm"
        assert s.activity_gbq == pytest.approx(admin.loc[s.patient_id, "activity_mbq"] / 1000)
        assert s.registration is not None and not s.registration.failed
        assert s.registration.ncc_after > s.registration.ncc_before
        for voi in ("kidney_left", "kidney_right", "liver"):  # the map's own VOI mean
            mean = float(grid.array[s.masks[voi]].mean())
            assert mean == pytest.approx(od.loc[(s.patient_id, voi), "map_mean_dose_gy"]
                                         / s.activity_gbq, rel=1e-5), voi
        # the grid is the dose map's, cropped to the body
        dose = lake.volume("dose_maps", s.dose_map_id)
        assert grid.spacing_mm == dose.spacing_mm and grid.array.size < dose.array.size
        assert grid.array.sum() * s.activity_gbq == pytest.approx(
            float(dose.array.sum()), rel=1e-3)


def test_registered_pet_puts_kidney_uptake_in_the_kidneys(world):
    _, _, samples, _ = world
    for s in samples:
        body_suv = s.pet_suv.array[s.body].mean()
        for kidney in ("kidney_left", "kidney_right"):
            assert s.pet_suv.array[s.masks[kidney]].mean() > 3 * body_suv
        assert s.ct_hu.array[~s.body].mean() < -800  # air around the body
        assert s.ct_hu.array[s.masks["liver"]].mean() == pytest.approx(50, abs=60)


def _lesion_union(s) -> np.ndarray:
    return np.any([m for n, m in s.masks.items() if n.startswith("lesion_")]
                  or [np.zeros_like(s.body)], axis=0)


def test_the_pet_lesions_are_on_the_working_grid(world):
    """Issue 20.13: the PET/CT's lesion contours, registered like the PET, are the network's
    third input; they fall on the lesions the dosimetry measured and nowhere else."""
    _, _, samples, _ = world
    inside, total = 0, 0
    for s in samples:
        occupancy = s.pet_lesions.array
        assert s.pet_lesions.same_grid(s.pet_suv)
        assert occupancy.min() >= 0 and occupancy.max() <= 1
        lesions = _lesion_union(s)
        far = ndimage.distance_transform_edt(~lesions) > 3  # voxels from a measured lesion
        assert occupancy[far].max(initial=0) == 0
        inside += int((occupancy[lesions] > 0).sum())
        total += int(lesions.sum())
    assert total > 0 and inside / total > 0.8


def test_a_pet_ct_without_contours_is_said(world, caplog):
    lake, _, samples, _ = world
    pet = samples[0].pet_suv
    with caplog.at_level(logging.WARNING, logger="theralake.modeling.dose_voxel"):
        empty = dose_voxel.pet_lesions(lake, "no-such-ct", pet, "patient PX")
    assert empty.shape == pet.array.shape and not empty.any()
    assert "patient PX: the PET/CT has no VOIs, so no lesion channel" in caplog.text


def test_lesions_get_the_training_lesions_dose_per_suv(world, caplog):
    """In every voxel the PET's lesions touch the prediction is k_lesion x SUV, k_lesion the
    training lesions' dose per GBq over their SUV (the synthetic lesions keep Lu-177 longer
    than the body: more dose per SUV); without the lesion map a warning says lesions look like
    body."""
    _, _, samples, model = world
    dose = sum(float((s.dose_gy_per_gbq.array * s.pet_lesions.array).sum()) for s in samples)
    suv = sum(float((s.pet_suv.array * s.pet_lesions.array).sum()) for s in samples)
    k_lesion = dose / suv
    assert model.lesion_log_factor_ == pytest.approx(
        np.log(k_lesion / model.gy_per_gbq_per_suv_), rel=1e-6)
    assert k_lesion > 1.2 * model.gy_per_gbq_per_suv_
    s = next(x for x in samples if x.pet_lesions.array.any())
    full = s.pet_lesions.array > 0
    pred = model.predict(s.pet_suv, s.ct_hu, s.pet_lesions).array
    np.testing.assert_allclose(pred[full], k_lesion * s.pet_suv.array[full], rtol=1e-3)
    with caplog.at_level(logging.WARNING, logger="theralake.modeling.dose_voxel"):
        blind = model.predict(s.pet_suv, s.ct_hu).array
    assert "got none: any lesion is predicted as background" in caplog.text
    assert not np.allclose(blind[full], pred[full], rtol=0.05)


def test_a_model_saved_without_the_lesion_channel_loads(world, tmp_path):
    """Models saved before the lesion channel (two inputs) load and predict as before."""
    _, _, samples, _ = world
    s = samples[0]
    old = VoxelDoseModel(epochs=1, lesion_channel=False, random_state=3, **SMALL).fit(samples)
    want = old.predict(s.pet_suv, s.ct_hu).array
    folder = old.save(tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    del config["params"]["lesion_channel"], config["fitted"]["lesion_log_factor_"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = VoxelDoseModel.load(folder)
    assert loaded.lesion_channel is False
    np.testing.assert_array_equal(loaded.predict(s.pet_suv, s.ct_hu, s.pet_lesions).array,
                                  want)


def test_training_lowers_the_loss_and_predicts_on_the_inputs_grid(world):
    lake, _, samples, model = world
    assert len(model.history_) == 20 and np.isfinite(model.history_).all()
    assert np.mean(model.history_[-5:]) < 0.85 * model.history_[0]
    assert model.gy_per_gbq_per_suv_ == pytest.approx(
        SuvScaledDose().fit(samples).gy_per_gbq_per_suv_)
    s = samples[0]
    pred = model.predict(s.pet_suv, s.ct_hu)
    assert pred.same_grid(s.pet_suv)
    assert np.isfinite(pred.array).all() and pred.array.min() >= 0 and pred.array.max() > 0
    # the native PET grid (8 x 8 x 10 mm, not the 8.84 mm training grid) and its own CT
    row = lake.read("images", "id = ?", [s.pet_image_id]).iloc[0]
    pet = Volume.from_row(row.to_dict())
    ct_row = lake.read("images", "kind = 'ct' AND frame_of_reference_key = ?",
                       [row.frame_of_reference_key]).iloc[0]
    native = model.predict(pet.like(pet.array * np.float32(row.suvbw_per_bqml)),
                           Volume.from_row(ct_row.to_dict()))
    assert native.same_grid(pet) and not pet.same_grid(s.pet_suv)
    assert np.isfinite(native.array).all() and native.array.min() >= 0
    assert native.array.sum() * native.voxel_volume_ml == pytest.approx(
        pred.array.sum() * pred.voxel_volume_ml, rel=0.25)  # the same patient, other grid


def test_save_and_load_give_the_same_predictions(world, tmp_path):
    _, _, samples, model = world
    s = samples[1]
    want = model.predict(s.pet_suv, s.ct_hu, s.pet_lesions).array
    folder = model.save(tmp_path / "model")
    model.save(folder)  # overwriting an existing model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporaries left
    loaded = VoxelDoseModel.load(folder)
    assert loaded.get_params() == model.get_params()
    assert loaded.spacing_mm_ == model.spacing_mm_ and loaded.history_ == model.history_
    np.testing.assert_array_equal(loaded.predict(s.pet_suv, s.ct_hu, s.pet_lesions).array, want)
    with pytest.raises(FileNotFoundError, match="not a saved voxel dose model"):
        VoxelDoseModel.load(tmp_path)


def test_same_random_state_same_model(world):
    _, _, samples, _ = world
    s = samples[2]
    state = torch.get_rng_state()
    a, b, c = (VoxelDoseModel(epochs=2, random_state=seed, **SMALL).fit(samples)
               for seed in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    np.testing.assert_array_equal(a.predict(s.pet_suv, s.ct_hu).array,
                                  b.predict(s.pet_suv, s.ct_hu).array)
    assert not np.array_equal(a.predict(s.pet_suv, s.ct_hu).array,
                              c.predict(s.pet_suv, s.ct_hu).array)


def test_evaluation_compares_the_network_with_the_suv_baseline(world):
    _, pids, samples, model = world
    baseline = SuvScaledDose().fit(samples)
    ev = evaluate_voxel(model, samples, baseline)
    assert set(ev.predictor) == {"network", "baseline"} and set(ev.patient_id) == set(pids)
    organs = ev[ev.voi.isin(["kidney_left", "kidney_right", "liver", "spleen"])]
    assert np.isfinite(organs.relative_error).all() and np.isfinite(organs.mae_gy_per_gbq).all()
    # measured means are the targets'; the baseline's k keeps the pooled body dose
    body = ev[ev.voi == "body"].assign(
        measured=lambda d: d.measured_gy_per_gbq * d.voxels,
        predicted=lambda d: d.predicted_gy_per_gbq * d.voxels).groupby("predictor").sum()
    assert body.loc["baseline", "predicted"] == pytest.approx(body.loc["baseline", "measured"],
                                                              rel=1e-4)
    kidney = ev[(ev.voi == "kidney_left") & (ev.patient_id == pids[0])]
    assert kidney.measured_gy_per_gbq.iloc[0] == pytest.approx(
        samples[0].dose_gy_per_gbq.array[samples[0].masks["kidney_left"]].mean())
    summary = summarise_voxel(ev)
    assert set(summary.index) == {(p, g) for p in ("baseline", "network")
                                  for g in ("body", "organ", "lesion")}
    assert np.isfinite(summary.median_abs_relative_error).all()
    print("\norgan-mean and voxel errors on the training patients (20 epochs):\n",
          summary.round(3).to_string())


def test_missing_data_is_an_error_naming_the_patient(world, caplog):
    lake, pids, _, _ = world
    with pytest.raises(VoxelDataError, match="patient PNOPET: no pre-therapy PET"):
        voxel_samples(lake, ["PNOPET"])
    with pytest.raises(VoxelDataError, match=r"patient PNODOSE: no cycle-1 dose map \(ldm\)"):
        voxel_samples(lake, ["PNODOSE"])
    with caplog.at_level(logging.INFO, logger="theralake.modeling.dose_voxel"):
        assert voxel_samples(lake, method="vsv") == []  # skipped when not asked for by name
    for pid in [*pids, "PNOPET", "PNODOSE"]:
        assert f"patient {pid}: no cycle-1 dose map (vsv)" in caplog.text


def test_bad_use_is_refused(world):
    _, _, samples, _ = world
    with pytest.raises(RuntimeError, match="not fitted"):
        VoxelDoseModel().predict(samples[0].pet_suv, samples[0].ct_hu)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        VoxelDoseModel(channels=(8, 16, 32), patch_voxels=30).fit(samples)
    with pytest.raises(ValueError, match="at least one"):
        VoxelDoseModel().fit([])


def test_train_tracks_registers_and_loads_back(world, monkeypatch):
    from typer.testing import CliRunner

    from theralake.pipelines.cli import app

    lake, pids, samples, _ = world
    cfg = load_modeling_config()
    cfg["voxel_dose"]["network"].update(channels=[8, 16, 32], patch_voxels=24,
                                        patches_per_sample=2)
    res = train_voxel(lake, cfg, seed=0, epochs=3, progress=False)
    assert len(res.held_out_patients) == 1  # round(0.25 x 3) patients, at least one
    assert sorted(res.train_patients + res.held_out_patients) == pids
    run = client(lake).get_run(res.run_id)
    for prefix in ("", "baseline_"):
        for metric in ("organ_median_abs_rel_error", "lesion_median_abs_rel_error",
                       "voxel_mae_gy_per_gbq"):
            assert run.data.metrics[prefix + metric] == pytest.approx(res.metrics[prefix + metric])
    assert run.data.metrics["organ_error_ratio"] == pytest.approx(
        res.metrics["organ_median_abs_rel_error"]
        / res.metrics["baseline_organ_median_abs_rel_error"])
    assert run.data.params["dataset_hash"] == res.dataset_hash and run.data.params["epochs"] == "3"
    assert run.data.params["code_version"]
    arts = {a.path for a in client(lake).list_artifacts(res.run_id, "validation")}
    assert {"validation/voxel_predicted_vs_measured.png", "validation/voxel_dose_slice.png",
            "validation/evaluation.parquet"} <= arts
    mv = client(lake).get_model_version_by_alias("theralake-dose-voxel", "candidate")
    assert str(mv.version) == res.version and mv.tags["kind"] == "voxel"
    assert mv.tags["feature_set"] == "pet+ct+lesions"
    # the registered weights predict what the trained network predicts
    s = next(x for x in samples if x.patient_id == res.held_out_patients[0])
    want = res.model.predict(s.pet_suv, s.ct_hu, s.pet_lesions).array
    loaded = load_voxel_model(lake)
    assert loaded.registry_version_ == res.version
    np.testing.assert_array_equal(loaded.predict(s.pet_suv, s.ct_hu, s.pet_lesions).array, want)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with use_lake(lake):
        import mlflow.pyfunc

        served = mlflow.pyfunc.load_model("models:/theralake-dose-voxel@candidate").predict(
            {"pet_suv": s.pet_suv.array, "ct_hu": s.ct_hu.array,
             "pet_lesions": s.pet_lesions.array},
            params={"spacing_mm": list(s.pet_suv.spacing_mm),
                    "origin_mm": list(s.pet_suv.origin_mm),
                    "direction": s.pet_suv.direction.ravel().tolist()})
    np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-6)
    # held-out VOI means in the predictions table
    preds = lake.read("predictions", "task = 'dose-voxel'").set_index("target")
    net = res.evaluation[res.evaluation.predictor == "network"].set_index("voi")
    assert set(preds.patient_id) == set(res.held_out_patients) and len(preds) == len(net)
    assert preds.loc["kidney_left", "value"] == pytest.approx(
        net.loc["kidney_left", "predicted_gy_per_gbq"])
    # the registry lists it; the gate (network not worse than the baseline) is checked
    out = CliRunner().invoke(app, ["models", "list", "--lake", str(lake.path)]).output
    assert "theralake-dose-voxel" in out and "@candidate" in out
    cfg["promotion"]["voxel"]["organ_error_ratio"] = {"max": 0.0}
    with pytest.raises(PromotionRefused, match=r"organ_error_ratio = [\d.]+ > 0\.0"):
        promote(lake, "theralake-dose-voxel", res.version, cfg)
    # issue 20.13: a network worse than k x SUV on held-out lesions is not promoted
    assert load_modeling_config()["promotion"]["voxel"]["lesion_error_ratio"] == {"max": 1.0}
    cfg["promotion"]["voxel"] = {"lesion_error_ratio": {"max": 0.0}}
    with pytest.raises(PromotionRefused, match=r"lesion_error_ratio = [\d.]+ > 0\.0"):
        promote(lake, "theralake-dose-voxel", res.version, cfg)
    bad = CliRunner().invoke(app, ["train", "--task", "response", "--model", "voxel",
                                   "--lake", str(lake.path)])
    assert bad.exit_code == 2 and "voxel is a dose model" in bad.output


def test_training_patches_look_for_lesions_and_weigh_them():
    """Issue 20.13: lesions are a thousandth of the body; patches of the body alone taught the
    network nothing about them (held-out lesion error 0.855 against k x SUV's 0.499)."""
    shape = (64, 64, 64)
    hot = np.zeros(shape, bool)
    hot[:8, :8, :8] = True
    lesions = np.zeros(shape, bool)
    lesions[50:53, 50:53, 50:53] = True
    item = (np.zeros((2, *shape), np.float32), np.ones(shape, np.float32), hot, lesions,
            1.0 + (dose_voxel.LESION_WEIGHT - 1.0) * lesions.astype(np.float32))
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(200):
        x, y, w = dose_voxel._patches([item], 16, rng)
        assert x.shape == (1, 2, 16, 16, 16) and w.shape == y.shape
        weights = set(np.unique(w.numpy()).tolist())
        assert weights <= {1.0, dose_voxel.LESION_WEIGHT}
        seen += dose_voxel.LESION_WEIGHT in weights
    # a lesion in about LESION_PATCH_SHARE x 2/3 of the patches (centred on it), more by chance
    assert seen / 200 > 0.5 * dose_voxel.LESION_PATCH_SHARE
