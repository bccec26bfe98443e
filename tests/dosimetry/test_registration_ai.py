"""Learned (MONAI VoxelMorph) CT registration on phantoms with a known smooth deformation.

A handful of random CT phantoms (fat/muscle body, spine, liver, spleen, kidneys, a smooth
tissue texture) are deformed by a sinusoidal displacement field plus a shift (SimpleITK); a
small network is trained on six pairs for a few epochs and judged on a held-out pair.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from theralake.dosimetry import registration as reg
from theralake.dosimetry.registration_ai import (
    AiRegistration,
    ModelMissingError,
    _composite,
    lake_ct_pairs,
    register_pair,
)
from theralake.lake import Volume

SHAPE = (40, 56, 64)  # z, y, x
SPACING = 4.0
GRID = dict(spacing_mm=(SPACING,) * 3, origin_mm=(0.0, 0.0, 0.0))
N_TRAIN = 6


def _subject(rng: np.random.Generator) -> tuple[Volume, Volume]:
    """A random 4 mm CT phantom and its kidney_left mask."""
    z, y, x = np.indices(SHAPE).astype(float) * SPACING

    def j(sd: float) -> float:
        return float(rng.normal(0.0, sd))

    ct = np.full(SHAPE, -1000.0)
    body = ((x - 128 - j(3)) / (100 + j(4))) ** 2 + ((y - 112) / (70 + j(3))) ** 2 < 1
    ct[body] = -80.0
    ct[body & (((x - 128) / 88) ** 2 + ((y - 112) / 58) ** 2 < 1)] = 40.0
    ct[((x - 128) / 14) ** 2 + ((y - 150) / 14) ** 2 < 1] = 600.0
    ct[((x - 95 - j(4)) / (38 + j(3))) ** 2 + ((y - 95 - j(3)) / 30) ** 2
       + ((z - 100 - j(4)) / 45) ** 2 < 1] = 110.0  # liver
    ct[((x - 175 - j(3)) / 18) ** 2 + ((y - 100) / 16) ** 2
       + ((z - 105 - j(4)) / 25) ** 2 < 1] = 150.0  # spleen
    kid_l = (((x - 168 - j(3)) / (18 + j(2))) ** 2 + ((y - 138 - j(2)) / 22) ** 2
             + ((z - 70 - j(4)) / 38) ** 2 < 1)
    kid_r = (((x - 88 - j(3)) / (18 + j(2))) ** 2 + ((y - 138 - j(2)) / 22) ** 2
             + ((z - 76 - j(4)) / 38) ** 2 < 1)
    ct[kid_l | kid_r] = 200.0
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, SHAPE), 1.5)
    ct[body] += 25.0 * texture[body] / texture.std()
    ct = ndimage.gaussian_filter(ct, 0.7)
    return Volume(ct.astype(np.float32), **GRID), Volume(kid_l.astype(np.uint8), **GRID)


def _motion(rng: np.random.Generator, amplitude_mm: float = 10.0,
            shift_mm: float = 5.0) -> sitk.Transform:
    """Fixed-to-moving points: a sinusoidal displacement field, then a shift."""
    z, y, x = np.indices(SHAPE).astype(float) * SPACING
    period = np.array([256.0, 224.0, 160.0])
    disp = np.zeros((*SHAPE, 3))
    for c in range(3):
        ph = rng.uniform(0.0, 2 * np.pi, 3)
        disp[..., c] = (amplitude_mm * rng.uniform(0.6, 1.0)
                        * np.sin(2 * np.pi * x / period[0] + ph[0])
                        * np.sin(2 * np.pi * y / period[1] + ph[1])
                        * np.sin(2 * np.pi * z / period[2] + ph[2]))
    field = sitk.GetImageFromArray(disp, isVector=True)
    field.SetSpacing((SPACING,) * 3)
    motion = sitk.CompositeTransform(3)
    motion.AddTransform(sitk.TranslationTransform(3, tuple(rng.uniform(-1, 1, 3) * shift_mm)))
    motion.AddTransform(sitk.DisplacementFieldTransform(field))
    return motion


def _pair(rng: np.random.Generator, shift_mm: float = 5.0
          ) -> tuple[Volume, Volume, Volume, Volume]:
    """(fixed CT, fixed kidney mask, moving CT, moving kidney mask)."""
    fixed, mask = _subject(rng)
    motion = _motion(rng, shift_mm=shift_mm)
    moving = sitk.Resample(fixed.to_sitk(), fixed.to_sitk(), motion, sitk.sitkLinear, -1000.0)
    moving_mask = sitk.Resample(mask.to_sitk(), mask.to_sitk(), motion,
                                sitk.sitkNearestNeighbor, 0)
    return fixed, mask, Volume.from_sitk(moving), Volume.from_sitk(moving_mask)


def _small_model(**kw) -> AiRegistration:
    params = dict(spacing_mm=8.0, size=(32, 32, 24), channels=(8, 16, 16, 16), stride=2,
                  lncc_kernel=5, epochs=20, batch_size=1, lr=3e-3, seed=0, device="cpu")
    return AiRegistration(**{**params, **kw})


@pytest.fixture(scope="module")
def data() -> list[tuple[Volume, Volume, Volume, Volume]]:
    """Six training pairs, then two held-out pairs with a larger shift."""
    train = np.random.default_rng(1)
    test = np.random.default_rng(99)
    return ([_pair(train) for _ in range(N_TRAIN)]
            + [_pair(test, shift_mm=10.0) for _ in range(2)])


@pytest.fixture(scope="module")
def trained(data) -> AiRegistration:
    return _small_model().fit([(f, m) for f, _, m, _ in data[:N_TRAIN]])


@pytest.fixture(scope="module")
def held_out(data, trained) -> list[tuple]:
    return [(f, kf, m, km, trained.register(f, m)) for f, kf, m, km in data[N_TRAIN:]]


def test_training_lowers_the_loss(trained):
    assert trained.epochs_run_ == 20 and trained.n_pairs_ == N_TRAIN
    assert np.mean(trained.history_[-3:]) < np.mean(trained.history_[:3]) - 0.02
    print(f"training: {trained.preparation_seconds_:.1f} s rigid pre-alignment, "
          f"{trained.training_seconds_:.1f} s for {trained.epochs_run_ * N_TRAIN} iterations")


def test_held_out_pairs_improve_similarity_and_kidney_overlap(held_out):
    dice = []
    for fixed, kid_fixed, _, kid_moving, result in held_out:
        row = (reg.dice(kid_fixed.array, kid_moving.array),
               reg.dice(kid_fixed.array, reg.resample_mask(kid_moving, result.rigid, fixed)),
               reg.dice(kid_fixed.array, reg.resample_mask(kid_moving, result.transform, fixed)))
        dice.append(row)
        print(f"NCC before {result.ncc_before:.4f} rigid {result.ncc_rigid:.4f} AI "
              f"{result.ncc_after:.4f}; kidney Dice none {row[0]:.3f} rigid {row[1]:.3f} AI "
              f"{row[2]:.3f}; Jacobian {result.jacobian_min:.2f}-{result.jacobian_max:.2f}")
        assert result.ncc_after > result.ncc_rigid + 0.02 > result.ncc_before + 0.02
        assert result.mi_after > result.mi_before
        assert row[2] > row[0] + 0.08
        assert row[2] >= row[1] - 0.06  # per pair: not worse than rigid beyond 0.06
        assert not result.failed, result.reasons
    # Measured here (deterministic: 120 CPU iterations on six pairs): NCC 0.935/0.925 before,
    # 0.949/0.951 rigid, 0.991/0.992 AI; kidney Dice 0.687/0.661 none, 0.866/0.835 rigid,
    # 0.877/0.840 AI. Other seeds (a stand-in for other platforms) gave AI minus rigid from
    # -0.056 to +0.037 per pair and -0.046 to +0.032 for the mean of the two pairs: this short
    # training reliably improves NCC but only matches rigid on kidney overlap, so the test asks
    # for "equal to rigid within tolerance".
    none, rigid, ai = np.mean(dice, axis=0)
    assert ai >= rigid - 0.03


def test_learned_field_is_smooth_and_does_not_fold(held_out):
    *_, result = held_out[0]
    assert 0.2 < result.jacobian_min <= 1.0 <= result.jacobian_max < 5.0
    assert np.abs(result.displacement_mm).max() > 1.0  # it does deform
    assert np.abs(result.displacement_mm[0]).max() == 0.0  # zero on the grid's border


def test_simpleitk_transform_reproduces_the_network_warp(trained, held_out):
    """The displacement field transform samples exactly where MONAI's Warp does."""
    fixed, _, moving, _, result = held_out[0]
    f, m = trained._working_pair(fixed, moving, result.rigid)
    with torch.no_grad():
        warped, _ = trained.net_(torch.from_numpy(m[None, None]), torch.from_numpy(f[None, None]))
    grid = result.working_grid
    field_only = _composite(sitk.Transform(3, sitk.sitkIdentity),
                            result.displacement_mm.astype(np.float64), grid)
    via_sitk = sitk.GetArrayFromImage(sitk.Resample(grid.like(m).to_sitk(), grid.to_sitk(),
                                                    field_only, sitk.sitkLinear, 0.0))
    inner = (slice(3, -3),) * 3  # the two differ only in how they pad outside the grid
    np.testing.assert_allclose(via_sitk[inner], warped[0, 0].numpy()[inner], atol=1e-5)
    # and the full transform is that field followed by the rigid one
    point = np.array(grid.index_to_world(np.array([10.0, 12.0, 9.0])))
    u = result.displacement_mm[9, 12, 10].astype(np.float64)
    np.testing.assert_allclose(result.transform.TransformPoint(tuple(point)),
                               result.rigid.TransformPoint(tuple(point + u)), atol=1e-4)


def test_activity_resampling_takes_the_learned_transform(held_out):
    fixed, _, moving, kid_moving, result = held_out[0]
    activity = moving.like((kid_moving.array * 4000.0).astype(np.float32))  # inside the FOV
    moved, error = reg.resample_activity(activity, result.transform, fixed, conserve=False)
    assert abs(error) < 0.02  # interpolation times the Jacobian nearly conserves activity
    assert moved.same_grid(fixed)
    moved, _ = reg.resample_activity(activity, result.transform, fixed)
    assert moved.array.sum() == pytest.approx(activity.array.sum(), rel=1e-5)


def test_save_and_load_predict_the_same_field(tmp_path, data, trained, held_out):
    fixed, _, moving, _, result = held_out[0]
    folder = trained.save(tmp_path / "model")
    loaded = AiRegistration.load(folder)
    assert loaded.get_params() == trained.get_params()
    assert loaded.history_ == trained.history_
    again = loaded.register(fixed, moving, initial_transform=result.rigid)
    np.testing.assert_allclose(again.displacement_mm, result.displacement_mm, atol=1e-5)
    assert again.ncc_after == pytest.approx(result.ncc_after, abs=1e-6)
    via_folder = register_pair(fixed, moving, folder)
    assert via_folder.jacobian_min > 0


def test_missing_model_is_an_error_not_a_fallback(tmp_path, data):
    fixed, _, moving, _ = data[0]
    with pytest.raises(ModelMissingError, match="needs a trained model"):
        register_pair(fixed, moving, None)
    with pytest.raises(ModelMissingError, match="no trained AI registration model"):
        register_pair(fixed, moving, tmp_path / "nothing-here")
    with pytest.raises(ModelMissingError, match="not fitted"):
        _small_model().register(fixed, moving)


def test_mismatched_inputs_are_errors(data):
    fixed, kid_fixed, moving, _ = data[0]
    model = _small_model()
    far = Volume(moving.array, moving.spacing_mm, (1000.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="do not overlap"):
        model.fit([(fixed, far)])
    with pytest.raises(ValueError, match="no contrast"):
        model.fit([(fixed, kid_fixed)])  # a mask, not a CT in HU
    with pytest.raises(TypeError, match="fixed Volume, moving Volume"):
        model.fit([(fixed.array, moving.array)])
    with pytest.raises(ValueError, match="at least one"):
        model.fit([])
    with pytest.raises(ValueError, match="multiple of 8"):
        _small_model(size=(34, 32, 24)).fit([(fixed, moving)])
    with pytest.raises(ValueError, match="similarity"):
        _small_model(similarity="ssd").fit([(fixed, moving)])


def test_lake_ct_pairs_pair_the_first_ct_with_the_later_ones(lake):
    rows = []
    for patient, cycle, time_h in (("p1", 1, 24.0), ("p1", 1, 4.0), ("p1", 1, 96.0),
                                   ("p1", 2, 4.0), ("p2", 1, 4.0), ("p2", 1, 20.0)):
        vol = Volume(np.full((4, 5, 6), time_h, np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
        rows.append({"id": vol.content_hash(patient, cycle), "patient_id": patient,
                     "modality": "CT", "kind": "ct", "units": "HU", "cycle": cycle,
                     "time_h": time_h, **vol.geometry_columns()})
    lake.append("images", rows)
    pairs = lake_ct_pairs(lake)
    assert [(float(f.array[0, 0, 0]), float(m.array[0, 0, 0])) for f, m in pairs] == [
        (4.0, 24.0), (4.0, 96.0), (4.0, 20.0)]
    assert len(lake_ct_pairs(lake, patient_ids=["p2"])) == 1
    assert len(lake_ct_pairs(lake, max_pairs=2)) == 2
