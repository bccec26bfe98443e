"""The MONAI organ segmenter learns a phantom's organs and generalises to a moved phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from theralake.dosimetry.segmentation import (
    OrganSegmenter,
    SegmenterConfig,
    balanced_patch,
    dice_per_label,
    label_voxels,
)
from theralake.lake import Volume

ORGANS = ("liver", "kidney_left", "kidney_right")


def _case(seed: int) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(seed)
    shape = (24, 40, 48)  # z, y, x at 6 mm
    z, y, x = np.indices(shape).astype(float)
    dx, dy, dz = rng.normal(0, 1.5, 3)
    ct = np.full(shape, -1000.0)
    body = ((x - 24 - dx) / 20) ** 2 + ((y - 20 - dy) / 15) ** 2 < 1
    ct[body] = 0.0
    lab = np.zeros(shape, np.uint8)
    liver = ((x - 16 - dx) / 8) ** 2 + ((y - 15 - dy) / 6) ** 2 + ((z - 13 - dz) / 7) ** 2 < 1
    k_left = ((x - 33 - dx) / 3.5) ** 2 + ((y - 26 - dy) / 4) ** 2 + ((z - 11 - dz) / 6) ** 2 < 1
    k_right = ((x - 15 - dx) / 3.5) ** 2 + ((y - 26 - dy) / 4) ** 2 + ((z - 11 - dz) / 6) ** 2 < 1
    ct[liver], ct[k_left], ct[k_right] = 60.0, 35.0, 35.0
    ct[(((x - 24 - dx) / 3) ** 2 + ((y - 30 - dy) / 3) ** 2) < 1] = 700.0  # spine
    ct += rng.normal(0, 10, shape)
    lab[liver], lab[k_left], lab[k_right] = 1, 2, 3
    grid = dict(spacing_mm=(6.0, 6.0, 6.0), origin_mm=(0.0, 0.0, 0.0))
    return Volume(ct.astype(np.float32), **grid), Volume(lab, **grid)


@pytest.fixture(scope="module")
def trained() -> OrganSegmenter:
    torch.set_num_threads(2)
    cases = [_case(s) for s in range(3)]
    config = SegmenterConfig(organs=ORGANS, spacing_mm=6.0, patch_voxels=32,
                             channels=(8, 16, 32), max_epochs=60, max_minutes=3.0,
                             patches_per_case=1, learning_rate=1e-2)
    return OrganSegmenter(config).fit([c[0] for c in cases], [c[1] for c in cases])


def test_segmenter_reaches_dice_on_a_held_out_phantom(trained):
    ct, truth = _case(99)
    pred = trained.predict(ct)
    assert pred.same_grid(ct)
    scores = dice_per_label(truth.array, pred.array, ORGANS)
    assert scores["liver"] > 0.85, scores
    assert scores["kidney_left"] > 0.7 and scores["kidney_right"] > 0.7, scores
    assert trained.history_[-1] < trained.history_[0]


def test_label_voxels_lists_every_label_and_nothing_else():
    labels = np.zeros((5, 6, 7), np.uint8)
    labels[1, 2, 3] = 2
    labels[4, 0:2, 6] = 1
    voxels = label_voxels(labels, 3)
    assert [v.size for v in voxels] == [2, 1, 0]
    for k, v in enumerate(voxels, start=1):
        assert (labels.ravel()[v] == k).all()


def test_balanced_patches_centre_small_organs_as_often_as_large_ones():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[2:30, 2:30, 2:30] = 1  # a large organ (22 000 voxels)
    labels[35:37, 35:37, 35:37] = 2  # a tiny one (8 voxels)
    voxels, rng = label_voxels(labels, 2), np.random.default_rng(0)
    hits = np.zeros(3)
    for _ in range(3000):
        sl = balanced_patch(voxels, labels.shape, 8, 0.8, rng)
        patch = labels[sl]
        assert patch.shape == (8, 8, 8)
        hits += [(patch == k).any() for k in range(3)]
    # the tiny organ is in 40 % of the patches (0.8 / 2), far above its volume share
    assert 0.35 < hits[2] / 3000 < 0.5, hits


def test_saved_weights_load_and_predict_the_same(trained, tmp_path):
    ct, _ = _case(5)
    again = OrganSegmenter.load(trained.save(tmp_path / "seg"))
    assert np.array_equal(again.predict(ct).array, trained.predict(ct).array)


def test_loading_a_folder_without_weights_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights.pt"):
        OrganSegmenter.load(tmp_path)


def test_predict_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="not trained"):
        OrganSegmenter().predict(_case(0)[0])


def test_dosimetry_segments_only_the_organs_without_contours(trained, tmp_path):
    from theralake.dosimetry.auto_vois import SegmentationUnavailable
    from theralake.dosimetry.cycle_io import Contour, CtImage, CycleInputs, TimePoint
    from theralake.dosimetry.cycle_vois import assemble_vois
    from theralake.dosimetry.settings import load_config
    from theralake.lake import Lake
    from theralake.pipelines.segmenters import load_segmenter_backend

    ct, truth = _case(7)
    ct_row = {"id": "ct1", "patient_id": "P1", "cycle": 1, "time_h": 4.0, "kind": "ct",
              "frame_of_reference_key": "F1"}
    liver = ct.like((truth.array == 1).astype(np.uint8))
    contour = Contour({"id": "v1", "voi": "liver", "source": "seg", "image_id": "ct1"}, liver)
    point = TimePoint(4.0, {"id": "s1"}, ct, CtImage(ct_row, ct, {"liver": contour}))
    inputs = CycleInputs("P1", 1, {"activity_mbq": 7400.0}, [point], [], pd.DataFrame())
    weights = trained.save(tmp_path / "weights")
    settings = load_config(organs=list(ORGANS) + ["body"],
                           segmentation={"backend": "monai", "model": str(weights)},
                           lesions={"segment": False})
    segmenter = load_segmenter_backend(Lake(tmp_path / "lake"), settings)
    found = assemble_vois(inputs, 0, {}, settings, None, segmenter, "h")
    assert found.vois["liver"].row["source"] == "seg"  # the imported contour is kept
    assert sorted(r["voi"] for r in found.new_rows) == ["kidney_left", "kidney_right"]
    assert {r["source"] for r in found.new_rows} == {"ai"}
    kidney = found.vois["kidney_left"].mask
    assert dice_per_label((truth.array == 2).astype(np.uint8), kidney.array,
                          ("kidney_left",))["kidney_left"] > 0.5
    # the body has no contour and no segmenter finds it: a warning, not a silent drop
    assert [f.voi for f in found.findings if f.check == "organ_missing"] == ["body"]
    # masks of the same segmenter stored before are reused, not segmented again
    inputs.cached = {"ct1": {f"{segmenter.name}\x1f{r['voi']}": Contour(r, Volume.from_row(r))
                             for r in found.new_rows}}
    again = assemble_vois(inputs, 0, {}, settings, None, segmenter, "h")
    assert again.new_rows == [] and set(again.vois) == set(found.vois)
    with pytest.raises(SegmentationUnavailable, match="train-seg"):
        load_segmenter_backend(Lake(tmp_path / "empty"), {**settings, "segmentation": {
            "backend": "monai"}})
    # auto without any model and without TotalSegmentator: no segmenter, cleanly
    assert load_segmenter_backend(Lake(tmp_path / "empty2"), {**settings, "segmentation": {
        "backend": "auto"}}) is None or _has_totalsegmentator()


def _has_totalsegmentator() -> bool:
    from theralake.dosimetry.auto_vois import totalsegmentator_available

    return totalsegmentator_available()


def test_totalsegmentator_backend_refuses_cleanly_when_not_installed():
    from theralake.dosimetry.auto_vois import SegmentationUnavailable, totalsegmentator_segmenter

    if _has_totalsegmentator():
        pytest.skip("TotalSegmentator is installed with weights here")
    with pytest.raises(SegmentationUnavailable, match="TotalSegmentator is not installed"):
        totalsegmentator_segmenter(["liver"])


def test_totalsegmentator_asks_each_organ_of_the_task_that_has_it(monkeypatch):
    """Without weights: a stand-in ``totalsegmentator.python_api`` records the calls and
    writes each task's class masks as TotalSegmentator names its files. The abdominal organs
    come from ``total`` (a roi_subset), the salivary glands from ``head_glands_cavities``
    (before, asked of ``total``: a KeyError inside TotalSegmentator), the body is the union of
    the ``body`` task's trunk and extremities, and organs no task has are not offered (issue
    19)."""
    import sys
    import types

    import SimpleITK as sitk

    from theralake.dosimetry import auto_vois

    ct = Volume(np.zeros((6, 8, 10), np.int16), (4.0, 4.0, 5.0), (0.0, 0.0, 0.0), np.eye(3))
    calls = []
    labels = {"liver": 1, "kidney_left": 2, "parotid_gland_left": 3, "body_trunc": 4,
              "body_extremities": 5, "spleen": 6}

    def totalsegmentator(src: str, dst: str, task: str = "total", roi_subset=None,  # noqa: ANN001
                         quiet: bool = False) -> None:
        calls.append((task, None if roi_subset is None else sorted(roi_subset)))
        classes = {"total": ["liver", "spleen", "kidney_left", "kidney_right", "urinary_bladder"],
                   "head_glands_cavities": ["parotid_gland_left", "parotid_gland_right"],
                   "body": ["body_trunc", "body_extremities"]}[task]
        if roi_subset is not None:
            assert set(roi_subset) <= set(classes), roi_subset  # what TotalSegmentator checks
        Path(dst).mkdir(parents=True)
        reference = sitk.ReadImage(src)
        for name in roi_subset or classes:
            mask = np.zeros(ct.array.shape, np.uint8)
            mask[labels.get(name, 0) % 6, 1:3, 1:4] = 1  # a distinct slice per class
            image = sitk.GetImageFromArray(mask)
            image.CopyInformation(reference)
            sitk.WriteImage(image, str(Path(dst) / f"{name}.nii.gz"))

    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = totalsegmentator
    monkeypatch.setitem(sys.modules, "totalsegmentator", types.ModuleType("totalsegmentator"))
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setattr(auto_vois, "totalsegmentator_available", lambda: True)
    organs = ["liver", "kidney_left", "parotid_gland_left", "lacrimal_gland_left", "red_marrow",
              "body"]
    segmenter = auto_vois.totalsegmentator_segmenter(organs)
    assert set(segmenter.organs) == {"liver", "kidney_left", "parotid_gland_left", "body"}
    masks = segmenter.segment(ct, organs)
    assert sorted(calls) == [("body", None), ("head_glands_cavities", None),
                             ("total", ["kidney_left", "liver"])]
    assert set(masks) == {"liver", "kidney_left", "parotid_gland_left", "body"}
    assert masks["liver"][1].any() and not masks["liver"][2].any()
    assert masks["parotid_gland_left"][3].any()
    assert masks["body"][4].any() and masks["body"][5].any()  # trunk and extremities
