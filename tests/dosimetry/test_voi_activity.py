"""A VOI's occupancy of the SPECT grid: resampling only around the VOI gives the numbers of
resampling the whole mask."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from theralake.dosimetry.voi_activity import (
    CORE,
    disjoint_regions,
    mask_on,
    occupancy_on,
    to_grid,
)
from theralake.lake import Volume
from theralake.lake.volume import bounding_box


def _ct_mask(centre_zyx, radius_vox, shape=(40, 50, 60)) -> Volume:
    z, y, x = np.indices(shape)
    inside = ((z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2
              <= radius_vox ** 2)
    return Volume(inside.astype(np.uint8), (2.0, 2.0, 3.0), (-60.0, -50.0, -60.0))


@pytest.mark.parametrize("angle_deg", [0.0, 17.0])
@pytest.mark.parametrize("centre, radius",
                         [((20, 25, 30), 6), ((1, 2, 58), 4), ((20, 25, 30), 0.5)])
def test_occupancy_around_the_voi_equals_the_whole_resampling(centre, radius, angle_deg):
    mask = _ct_mask(centre, radius)
    direction = Rotation.from_euler("z", angle_deg, degrees=True).as_matrix()
    spect = Volume(np.zeros((30, 28, 33), np.float32), (4.42, 4.42, 4.42), (-70.0, -65.0, -66.0),
                   direction)
    whole, near = to_grid(mask, spect), occupancy_on(mask, spect)
    np.testing.assert_allclose(near, whole, atol=1e-6)
    expected = whole >= 0.5
    if not expected.any() and whole.max() > 0:  # a VOI smaller than a voxel keeps its best one
        expected = whole == whole.max()
    assert (mask_on(mask, spect) == expected).all()


def test_a_voi_outside_the_grid_occupies_nothing():
    mask = _ct_mask((20, 25, 30), 5)
    far = Volume(np.zeros((10, 10, 10), np.float32), (4.0, 4.0, 4.0), (500.0, 500.0, 500.0))
    assert not occupancy_on(mask, far).any() and not mask_on(mask, far).any()
    assert not occupancy_on(mask.like(np.zeros_like(mask.array)), far).any()


def test_bounding_box_and_crop_keep_the_world_position():
    mask = _ct_mask((20, 25, 30), 3)
    box = bounding_box(mask.array, 2)
    assert box == (slice(15, 26), slice(20, 31), slice(25, 36))
    sub = mask.crop(box)
    assert sub.array.sum() == mask.array.sum()
    np.testing.assert_allclose(sub.index_to_world(np.zeros(3)),
                               mask.index_to_world(np.array([25.0, 20.0, 15.0])))
    assert bounding_box(np.zeros((3, 3, 3))) is None


@pytest.mark.parametrize("centre, radius", [((20, 25, 30), 9), ((2, 3, 58), 7)])
def test_kidney_core_from_the_cropped_distance_transform_equals_the_whole_grid(centre, radius):
    """The shell/core split of the GTM: the distance transform on the organ's box (one voxel
    wider) gives the depths of the whole grid, also for an organ cut by the grid's edge."""
    mask = _ct_mask(centre, radius)
    spacing = np.asarray(mask.spacing_mm, dtype=float)[::-1]
    depth = ndimage.distance_transform_edt(mask.array, sampling=spacing) - 0.5 * spacing.min()
    regions = disjoint_regions({"kidney_left": mask}, {"kidney_left": 7.0})
    core = regions["kidney_left" + CORE]
    assert core.sum() >= 8
    assert (core == (depth > 7.0)).all()
    assert (regions["kidney_left"] == (mask.array.astype(bool) & ~core)).all()
