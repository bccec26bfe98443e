"""Uptake metrics: IBSI's global and local intensity peaks, also at the image's edge."""

from __future__ import annotations

import numpy as np
import pytest

from theralake.features.uptake import peak_kernel, pet_metrics, spect_metrics

VOXEL_MM = (2.0, 2.0, 2.0)


def test_a_voi_at_the_image_edge_has_the_peak_of_what_is_there():
    """A uniform image: every sphere mean is 1, also on the first slice (the sphere was
    padded with zeros and divided by its whole count: 0.737; issue 20, item 8)."""
    image = np.ones((10, 12, 12))
    mask = np.zeros_like(image, bool)
    mask[0, 4:8, 4:8] = True
    out = pet_metrics(image, mask, VOXEL_MM)
    assert out["suvpeak"] == pytest.approx(1.0) and out["suvpeak_local"] == pytest.approx(1.0)


def test_global_and_local_peaks_follow_their_ibsi_definitions():
    """A broad warm region and one hot voxel far from it: the local peak is the sphere mean
    around the hottest voxel, the global peak the highest sphere mean anywhere in the VOI."""
    image = np.zeros((24, 24, 24))
    image[2:10, 2:10, 2:10] = 5.0  # warm: a whole sphere of 5 fits at its centre
    image[18, 18, 18] = 50.0  # the hottest voxel, alone
    mask = np.zeros_like(image, bool)
    mask[1:21, 1:21, 1:21] = True
    kernel = peak_kernel(VOXEL_MM)
    out = spect_metrics(image, mask, VOXEL_MM)
    assert out["max_bq_ml"] == 50.0
    centre = tuple(s // 2 for s in kernel.shape)
    assert out["peak_local_bq_ml"] == pytest.approx(50.0 * kernel[centre])  # one hot voxel
    assert out["peak_bq_ml"] == pytest.approx(5.0)  # a whole sphere inside the warm cube
    assert out["peak_bq_ml"] > out["peak_local_bq_ml"]
