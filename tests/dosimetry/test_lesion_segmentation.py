"""The PET-to-SPECT lesion segmenter's parts against analytic truth, and its training on
phantoms: hot spheres in a water body, a sharp PET and a blurred, noisy SPECT."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from theralake.dosimetry.lesion_segmentation import (
    FWHM_TO_SIGMA,
    LesionCase,
    LesionSegmenter,
    LesionSegmenterConfig,
    background,
    lesion_components,
    lesion_scores,
    normalised_uptake,
    size_bin,
    smoothed,
)
from theralake.lake import Volume

SPACING = 8.0
TINY = dict(spacing_mm=SPACING, patch_voxels=16, channels=(8, 16, 32), learning_rate=5e-3,
            pet_epochs=25, spect_epochs=15, patches_per_case=4, batch_size=4,
            spect_fwhm_mm=16.0, min_volume_ml=0.5)


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius ** 2


def _phantom(seed: int) -> tuple[LesionCase, LesionCase]:
    """(PET case, SPECT case) of one phantom patient: 2-4 spheres (radius 1.2-2 voxels) in a
    water cylinder; a liver-like warm region that is not a lesion."""
    rng = np.random.default_rng(seed)
    shape = (20, 24, 24)
    z, y, x = np.indices(shape)
    body = ((x - 11.5) / 10) ** 2 + ((y - 11.5) / 9) ** 2 <= 1
    ct = np.where(body, 20.0, -1000.0) + rng.normal(0, 10, shape)
    warm = body & (x < 9) & (y < 11) & (z > 4) & (z < 15)
    ct[warm] = 60.0
    lesions = np.zeros(shape, bool)
    for _ in range(rng.integers(2, 5)):
        centre = (rng.uniform(4, 16), rng.uniform(6, 18), rng.uniform(12, 19))
        lesions |= _ball(shape, centre, rng.uniform(1.2, 2.0)) & body
    uptake = np.where(body, 1.0, 0.0) + 4.0 * warm + 12.0 * lesions
    vol = Volume(ct.astype(np.float32), (SPACING,) * 3, (0.0, 0.0, 0.0))
    pet = uptake * (1 + rng.normal(0, 0.05, shape)) * 5000.0  # Bq/mL, sharp
    spect = ndimage.gaussian_filter(uptake, 16.0 * FWHM_TO_SIGMA / SPACING)
    spect = rng.poisson(spect * 200) / 200 * 1e5  # blurred and noisy, another unit
    labels = vol.like(lesions.astype(np.uint8))
    return (LesionCase(f"P{seed}", vol, vol.like(pet.astype(np.float32)), labels, None, 0.0),
            LesionCase(f"P{seed}", vol, vol.like(spect.astype(np.float32)), labels, None,
                       16.0))


@pytest.fixture(scope="module")
def trained(one_torch_thread) -> tuple[LesionSegmenter, list]:
    cases = [_phantom(s) for s in range(5)]
    seg = LesionSegmenter(LesionSegmenterConfig(**TINY))
    seg.fit_pet([pet for pet, _ in cases[:4]])
    priors = [(spect._replace(prior=seg.probability(pet.ct, pet.uptake, network="pet")))
              for pet, spect in cases]
    seg.fit_spect(priors[:4])
    return seg, priors


def test_the_uptake_channel_does_not_depend_on_the_unit():
    """SUV, Bq/mL and counts are the same image up to a factor: one channel."""
    rng = np.random.default_rng(0)
    ct = np.where(rng.random((6, 6, 6)) > 0.2, 0.0, -1000.0)
    uptake = rng.gamma(2.0, 1.0, (6, 6, 6))
    assert np.allclose(normalised_uptake(uptake, ct), normalised_uptake(uptake * 3.7e4, ct),
                       atol=1e-6)
    # the body's median uptake maps to log(2) / log(51)
    assert background(uptake, ct) == pytest.approx(np.median(uptake[ct > -500]))


def test_smoothing_adds_the_missing_resolution_in_quadrature():
    point = np.zeros((41, 41, 41))
    point[20, 20, 20] = 1.0
    sharp = ndimage.gaussian_filter(point, 6.0 * FWHM_TO_SIGMA / 2.0)  # 6 mm FWHM, 2 mm voxels
    out = smoothed(sharp, 2.0, 6.0, 15.0)
    profile = out[20, 20, :] / out[20, 20, :].sum()
    sigma_mm = np.sqrt((profile * (np.arange(41) - 20) ** 2).sum()) * 2.0
    assert sigma_mm / FWHM_TO_SIGMA == pytest.approx(15.0, rel=0.02)
    assert smoothed(sharp, 2.0, 20.0, 15.0) is sharp  # never sharpened


def test_lesion_scores_by_lesion():
    shape = (12, 12, 12)
    a, b = _ball(shape, (3, 3, 3), 2), _ball(shape, (8, 8, 8), 2)
    found = [a.copy(), _ball(shape, (3, 9, 9), 1)]  # a found exactly, b missed, one elsewhere
    s = lesion_scores([a, b], found, 0.5)
    assert s.detected == [True, False]
    assert s.best_dice == [1.0, 0.0]
    assert s.false_positives == 1
    assert s.volumes_ml == [a.sum() * 0.5, b.sum() * 0.5]
    union_f = found[0] | found[1]
    assert s.dice == pytest.approx(2 * (a & union_f).sum() / ((a | b).sum() + union_f.sum()))
    assert np.isnan(lesion_scores([], [], 1.0).dice)
    assert lesion_scores([a], [], 1.0).detected == [False]


def test_size_bins():
    assert [size_bin(v) for v in (0.5, 2.0, 4.9, 5.0, 12.0)] == [
        "<2 mL", "2-5 mL", "2-5 mL", "5-10 mL", ">=10 mL"]


def test_components_below_the_minimum_volume_are_dropped():
    mask = _ball((10, 10, 10), (3, 3, 3), 2) | _ball((10, 10, 10), (8, 8, 8), 0.5)
    found = lesion_components(mask, mask.astype(float), 1.0, 2.0)
    assert len(found) == 1 and found[0].volume_ml == _ball((10, 10, 10), (3, 3, 3), 2).sum()


def test_the_networks_learn_the_lesions_of_a_held_out_phantom(trained):
    seg, cases = trained
    held_out = cases[4]
    truth, _ = ndimage.label(held_out.labels.array > 0, np.ones((3, 3, 3)))
    masks = [truth == i for i in range(1, truth.max() + 1)]
    found = seg.segment(held_out.ct, held_out.uptake, held_out.prior)
    scores = lesion_scores(masks, [les.mask for les in found], held_out.ct.voxel_volume_ml)
    assert all(scores.detected) and scores.dice > 0.6, scores
    assert scores.false_positives == 0  # the warm region is not a lesion
    pet_prob = seg.probability(held_out.ct, _phantom(4)[0].uptake, network="pet").array
    on_pet = lesion_scores(masks, [pet_prob >= 0.5], held_out.ct.voxel_volume_ml)
    assert on_pet.dice > 0.6, on_pet


def test_save_and_load_give_the_same_probabilities(trained, tmp_path):
    seg, cases = trained
    again = LesionSegmenter.load(seg.save(tmp_path / "lesions"))
    case = cases[4]
    assert np.array_equal(seg.probability(case.ct, case.uptake, case.prior).array,
                          again.probability(case.ct, case.uptake, case.prior).array)
    assert again.config == seg.config


def test_fit_spect_needs_the_pet_network_and_load_names_the_folder(tmp_path):
    with pytest.raises(RuntimeError, match="fit_pet first"):
        LesionSegmenter().fit_spect([_phantom(0)[1]])
    with pytest.raises(FileNotFoundError, match="not a saved lesion segmenter"):
        LesionSegmenter.load(tmp_path)
