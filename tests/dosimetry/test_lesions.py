"""Threshold lesion segmentation against spheres of known volume."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from theralake.dosimetry.lesions import match_lesions, segment_lesions


def _spheres(centres, radii_vox, values, shape=(48, 48, 48), background=1.0):
    z, y, x = np.indices(shape)
    img = np.full(shape, background)
    truth = []
    for (cz, cy, cx), r, v in zip(centres, radii_vox, values, strict=True):
        m = (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2
        img[m] = v
        truth.append(m)
    return img, truth


@pytest.mark.parametrize("method", ["absolute", "percent_max", "adaptive"])
def test_sharp_spheres_are_recovered_exactly(method):
    img, truth = _spheres([(12, 12, 12), (32, 30, 30)], [5, 7], [10.0, 20.0])
    lesions = segment_lesions(img, voxel_ml=0.064, method=method, threshold=5.0, fraction=0.41)
    assert len(lesions) == 2
    vols = sorted(les.volume_ml for les in lesions)
    expect = sorted(t.sum() * 0.064 for t in truth)
    assert vols == pytest.approx(expect)


def test_adaptive_threshold_on_a_blurred_sphere_is_close_to_the_true_volume():
    img, truth = _spheres([(24, 24, 24)], [8], [12.0], background=2.0)
    blurred = ndimage.gaussian_filter(img, 1.0)
    (les,) = segment_lesions(blurred, voxel_ml=0.064, method="adaptive", fraction=0.5)
    assert les.volume_ml == pytest.approx(truth[0].sum() * 0.064, rel=0.10)


def test_organs_are_excluded_and_small_blobs_dropped():
    img, truth = _spheres([(12, 12, 12), (32, 32, 32), (40, 8, 8)], [6, 6, 1], [10, 10, 10])
    lesions = segment_lesions(img, 0.064, method="absolute", threshold=5, exclude=truth[1],
                              min_volume_ml=0.5)
    assert len(lesions) == 1
    assert lesions[0].mask[12, 12, 12]


def test_lesions_are_matched_across_time_points():
    _, a = _spheres([(10, 10, 10), (30, 30, 30)], [4, 4], [5, 5])
    _, b = _spheres([(31, 29, 30), (11, 10, 9), (40, 40, 5)], [4, 4, 3], [5, 5, 5])
    pairs = match_lesions(a, b, spacing_mm=(4.0, 4.0, 4.0), max_distance_mm=12.0)
    assert sorted(pairs) == [(0, 1), (1, 0)]


def test_bad_arguments():
    img = np.ones((4, 4, 4))
    with pytest.raises(ValueError, match="threshold"):
        segment_lesions(img, 1.0, method="absolute")
    with pytest.raises(ValueError, match="unknown method"):
        segment_lesions(img, 1.0, method="otsu")
    img[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segment_lesions(img, 1.0, threshold=1.0, method="absolute")
