"""Training the organ segmenter on a lake's labelled CTs, registering it in MLflow and loading
it back by alias (a tiny phantom lake and a tiny network: the point is the plumbing)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from theralake.dosimetry.segmentation import DEFAULT_ORGANS, OrganSegmenter, SegmenterConfig
from theralake.lake import Lake, LakeError, Volume
from theralake.modeling.segmentation_training import (
    labelled_cases,
    load_segmenter,
    split_patients,
    train_segmenter,
)
from theralake.registry import tracking

ORGANS = DEFAULT_ORGANS  # liver, spleen, kidney_left, kidney_right
TINY = dict(spacing_mm=8.0, patch_voxels=16, channels=(4, 8, 16), max_epochs=3,
            patches_per_case=1, learning_rate=1e-2)
URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _phantom(seed: int) -> tuple[Volume, dict[str, np.ndarray]]:
    """A small CT (8 mm voxels, LPS: +x patient left) and its organ masks."""
    rng = np.random.default_rng(seed)
    shape = (18, 26, 30)  # z, y, x
    z, y, x = np.indices(shape).astype(float)
    dx, dy, dz = rng.normal(0, 1.0, 3)
    ct = np.full(shape, -1000.0)
    ct[((x - 15 - dx) / 13) ** 2 + ((y - 13 - dy) / 10) ** 2 < 1] = 0.0

    def ell(cx, cy, cz, rx, ry, rz):  # noqa: ANN001, ANN202
        return ((x - cx - dx) / rx) ** 2 + ((y - cy - dy) / ry) ** 2 + ((z - cz - dz) / rz) ** 2 < 1

    masks = {"liver": ell(9, 10, 10, 5, 4, 4), "spleen": ell(22, 9, 10, 2.5, 2.5, 3),
             "kidney_left": ell(21, 17, 8, 2, 2.5, 3), "kidney_right": ell(9, 17, 8, 2, 2.5, 3)}
    for organ, hu in zip(ORGANS, (60.0, 45.0, 30.0, 30.0), strict=True):
        ct[masks[organ]] = hu
    ct += rng.normal(0, 10, shape)
    return Volume(ct.astype(np.float32), (8.0, 8.0, 8.0), (-120.0, -100.0, 0.0)), masks


def _image_row(pid: str, ct: Volume, time_h: float) -> dict:
    row = {"patient_id": pid, "modality": "CT", "kind": "ct", "units": "HU", "cycle": 1,
           "time_h": time_h, **ct.geometry_columns()}
    row["id"] = ct.content_hash(pid, time_h)
    return row


def _voi_row(pid: str, organ: str, mask: np.ndarray, ct_row: dict, ct: Volume,
             source: str = "seg") -> dict:
    vol = ct.like(mask.astype(np.uint8))
    row = {"patient_id": pid, "voi": organ, "image_id": ct_row["id"], "cycle": 1,
           "time_h": ct_row["time_h"], "source": source, "voxel_count": int(mask.sum()),
           **vol.geometry_columns()}
    row["id"] = vol.content_hash(pid, organ, ct_row["id"], source)
    return row


def _fill(lake: Lake, patients: int = 3, per_patient: int = 2) -> None:
    images, vois = [], []
    for p in range(patients):
        for t in range(per_patient):
            ct, masks = _phantom(10 * p + t)
            row = _image_row(f"P{p}", ct, 24.0 * (t + 1))
            images.append(row)
            vois += [_voi_row(f"P{p}", o, m, row, ct) for o, m in masks.items()]
    lake.append("images", images)
    lake.append("vois", vois)


@pytest.fixture(autouse=True)
def _lake_store(monkeypatch):
    """Every test uses the lake's own MLflow store, whatever the developer's environment."""
    for var in URI_VARS:
        monkeypatch.delenv(var, raising=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        for var in URI_VARS:
            mp.delenv(var, raising=False)
        lake = Lake(tmp_path_factory.mktemp("seg") / "lake")
        _fill(lake)
        result = train_segmenter(lake, SegmenterConfig(**TINY), val_fraction=0.34)
        assert not any(os.environ.get(v) for v in URI_VARS), "MLflow URIs leaked"
    return lake, result


# -- labels from the lake --------------------------------------------------------------------
def test_label_maps_follow_the_organ_order_and_skip_incomplete_cts(lake):
    _fill(lake, patients=1, per_patient=1)
    ct, masks = _phantom(7)
    row = _image_row("P9", ct, 5.0)  # only the liver is labelled: skipped, not half-labelled
    lake.append("images", [row])
    lake.append("vois", [_voi_row("P9", "liver", masks["liver"], row, ct)])
    cases = labelled_cases(lake, ORGANS)
    assert [c.patient_id for c in cases] == ["P0"]
    ct0, masks0 = _phantom(0)
    labels = cases[0].labels
    assert labels.same_grid(cases[0].ct) and labels.array.dtype == np.uint8
    for value, organ in enumerate(ORGANS, start=1):
        assert np.array_equal(labels.array == value, masks0[organ]), organ
    reordered = labelled_cases(lake, ("kidney_right", "liver"))[0].labels.array
    assert np.array_equal(reordered == 1, masks0["kidney_right"])
    assert len(labelled_cases(lake, ("liver",))) == 2  # P9 counts when only the liver is asked


def test_overlaps_go_to_the_first_organ_and_model_outputs_are_not_labels(lake):
    ct, masks = _phantom(0)
    row = _image_row("P0", ct, 1.0)
    lake.append("images", [row])
    big_spleen = masks["spleen"] | masks["liver"]  # overlaps the whole liver
    lake.append("vois", [_voi_row("P0", "liver", masks["liver"], row, ct),
                         _voi_row("P0", "spleen", big_spleen, row, ct),
                         _voi_row("P0", "liver", np.ones_like(masks["liver"]), row, ct, "ai")])
    labels = labelled_cases(lake, ("liver", "spleen"))[0].labels.array
    assert np.array_equal(labels == 1, masks["liver"])  # the ai mask (everything) is ignored
    assert np.array_equal(labels == 2, big_spleen & ~masks["liver"])
    assert labelled_cases(lake, ("liver",), sources=("ai",))[0].labels.array.all()


def test_no_labelled_ct_is_a_clear_error(lake):
    with pytest.raises(ValueError, match="no CT in the lake"):
        train_segmenter(lake, SegmenterConfig(**TINY))


# -- patient split ---------------------------------------------------------------------------
def test_split_is_by_patient_deterministic_and_checked():
    ids = [f"P{i}" for i in range(10)] * 3
    train, val = split_patients(ids, 0.2, seed=1)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert split_patients(ids, 0.2, seed=1) == (train, val)
    assert split_patients(["a", "b"], 0.01)[1] and split_patients(["a", "b"], 0.99)[0]
    assert split_patients(["a"], 0.0) == (["a"], [])
    with pytest.raises(ValueError, match="at least 2 labelled patients"):
        split_patients(["a", "a"], 0.2)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        split_patients(ids, 1.0)


# -- training, registry, loading -------------------------------------------------------------
def test_train_and_validation_patients_are_disjoint(trained):
    lake, res = trained
    assert res.train_patients and res.val_patients
    assert not set(res.train_patients) & set(res.val_patients)
    assert set(res.train_patients) | set(res.val_patients) == {"P0", "P1", "P2"}
    assert (res.n_train_cases, res.n_val_cases) == (2 * len(res.train_patients),
                                                    2 * len(res.val_patients))
    split = tracking.client(lake).download_artifacts(res.run_id, "split.json",
                                                      str(lake.path.parent))
    saved = json.loads(open(split).read())
    assert saved["val_patients"] == res.val_patients
    assert saved["train_patients"] == res.train_patients


def test_metrics_params_and_train_time_are_logged(trained):
    lake, res = trained
    run = tracking.client(lake).get_run(res.run_id)
    metrics, params = run.data.metrics, run.data.params
    for organ in ORGANS:
        assert 0.0 <= metrics[f"val_dice_{organ}"] <= 1.0
        assert metrics[f"val_dice_{organ}"] == pytest.approx(res.dice[organ])
    assert 0.0 <= metrics["val_dice_mean"] <= 1.0
    assert metrics["train_seconds"] > 0 and metrics["epochs"] == TINY["max_epochs"]
    assert params["organs"] == ",".join(ORGANS) and params["spacing_mm"] == "8.0"
    assert params["n_val_patients"] == str(len(res.val_patients))
    history = tracking.client(lake).get_metric_history(res.run_id, "train_loss")
    assert len(history) == metrics["steps"] >= TINY["max_epochs"]  # one point per step
    assert (lake.path / "mlflow" / "mlflow.db").exists()
    assert any((lake.path / "mlflow" / "artifacts").rglob("weights.pt"))


def test_the_model_is_registered_under_the_alias(trained):
    lake, res = trained
    version = tracking.client(lake).get_model_version_by_alias("organ-segmenter", "champion")
    assert str(version.version) == res.version and version.run_id == res.run_id
    assert version.tags["organs"] == ",".join(ORGANS)
    assert res.model_uri == "models:/organ-segmenter@champion"


def test_loading_by_alias_predicts_what_the_trained_model_predicts(trained):
    lake, res = trained
    ct, _ = _phantom(99)
    again = load_segmenter(lake, alias="champion")
    assert again.config == res.segmenter.config
    assert again.registry_version_ == res.version
    assert np.array_equal(again.predict(ct).array, res.segmenter.predict(ct).array)


def test_the_pyfunc_model_loads_and_predicts_offline(trained):
    import mlflow.pyfunc

    lake, res = trained
    ct, _ = _phantom(98)
    with tracking.use_lake(lake):
        model = mlflow.pyfunc.load_model(res.model_uri)
    labels = model.predict(ct.array, params={"spacing_mm": list(ct.spacing_mm),
                                             "origin_mm": list(ct.origin_mm)})
    assert np.array_equal(labels, res.segmenter.predict(ct).array)


def test_a_missing_model_or_alias_is_a_clear_error(trained, tmp_path):
    lake, _ = trained
    with pytest.raises(LakeError, match="no lake at"):
        load_segmenter(tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()
    assert load_segmenter(str(lake.path)).registry_version_ == "1"  # a lake folder is fine
    with pytest.raises(tracking.ModelNotFoundError,
                       match=r"no alias 'candidate'.*@champion \(version 1\).*train-seg"):
        load_segmenter(lake, alias="candidate")
    with pytest.raises(LookupError, match="no registered model 'my-seg'"):
        load_segmenter(lake, name="my-seg")


def test_a_users_weights_folder_wins_over_the_registry(trained, tmp_path):
    lake, _ = trained
    own = SegmenterConfig(organs=("liver", "spleen"), spacing_mm=10.0, patch_voxels=16,
                          channels=(4, 8))
    user = OrganSegmenter(own)
    user.network_ = user._build().eval()
    folder = user.save(tmp_path / "mine")
    loaded = load_segmenter(lake, alias="champion", weights_dir=folder)
    assert loaded.config == own
    assert load_segmenter(weights_dir=folder).config == own  # no lake or registry needed
    with pytest.raises(FileNotFoundError, match="weights.pt"):
        load_segmenter(lake, weights_dir=tmp_path)


def test_train_seg_command_registers_a_candidate_beside_the_champion(trained):
    from typer import Typer
    from typer.testing import CliRunner

    from theralake.modeling.segmentation_training import register

    lake, res = trained
    app = Typer()
    register(app)

    @app.command("noop")  # a second command keeps Typer from collapsing to one
    def _noop() -> None: ...

    out = CliRunner().invoke(app, ["train-seg", "--lake", str(lake.path), "--epochs", "2",
                                   "--minutes", "1", "--val-fraction", "0.34", "--alias",
                                   "candidate", "--spacing-mm", "8", "--patch-voxels", "16",
                                   "--channels", "4,8,16", "--patches-per-case", "1",
                                   "--threads", "1"])
    assert out.exit_code == 0, out.output
    assert "kidney_left" in out.output and "@candidate" in out.output
    client = tracking.client(lake)
    candidate = client.get_model_version_by_alias("organ-segmenter", "candidate")
    assert int(candidate.version) == int(res.version) + 1
    champion = client.get_model_version_by_alias("organ-segmenter", "champion")
    assert str(champion.version) == res.version
    assert load_segmenter(lake, alias="candidate").config.max_epochs == 2
    bad = CliRunner().invoke(app, ["train-seg", "--lake", str(lake.path), "--alias", "best"])
    assert bad.exit_code == 2 and "alias must be one of champion, candidate" in bad.output
    bad = CliRunner().invoke(app, ["train-seg", "--lake", str(lake.path), "--patch-voxels", "20"])
    assert bad.exit_code == 2 and "multiple of 8" in bad.output
