"""CT-to-CT registration and activity-preserving resampling on a phantom with known motion."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from theralake.dosimetry import registration as reg
from theralake.lake import Volume


def _phantom(shift_mm=(0.0, 0.0, 0.0), angle_deg=0.0) -> tuple[Volume, Volume]:
    """A 4 mm CT of a body with spine and two kidneys, and the kidney-left mask."""
    shape = (40, 56, 64)  # z, y, x
    z, y, x = np.indices(shape).astype(float)
    z, y, x = z * 4.0, y * 4.0, x * 4.0
    c = np.array([80.0, 112.0, 128.0])  # centre (z, y, x) mm
    a = np.deg2rad(angle_deg)
    xr = (x - c[2]) * np.cos(a) - (y - c[1]) * np.sin(a) + c[2] - shift_mm[0]
    yr = (x - c[2]) * np.sin(a) + (y - c[1]) * np.cos(a) + c[1] - shift_mm[1]
    zr = z - shift_mm[2]
    ct = np.full(shape, -1000.0)
    body = ((xr - 128) / 100) ** 2 + ((yr - 112) / 70) ** 2 < 1
    ct[body] = 20.0
    ct[((xr - 128) / 14) ** 2 + ((yr - 150) / 14) ** 2 < 1] = 600.0  # spine
    kid_l = ((xr - 170) / 18) ** 2 + ((yr - 140) / 22) ** 2 + ((zr - 80) / 40) ** 2 < 1
    kid_r = ((xr - 86) / 18) ** 2 + ((yr - 140) / 22) ** 2 + ((zr - 84) / 40) ** 2 < 1
    ct[kid_l | kid_r] = 45.0
    ct[((xr - 100) / 40) ** 2 + ((yr - 90) / 30) ** 2 + ((zr - 100) / 45) ** 2 < 1] = 60.0
    ct = ndimage.gaussian_filter(ct, 0.7)
    grid = dict(spacing_mm=(4.0, 4.0, 4.0), origin_mm=(0.0, 0.0, 0.0))
    return Volume(ct.astype(np.float32), **grid), Volume(kid_l.astype(np.uint8), **grid)


def test_rigid_registration_recovers_shift_and_rotation():
    fixed, kid_fixed = _phantom()
    moving, kid_moving = _phantom(shift_mm=(9.0, -7.0, 6.0), angle_deg=4.0)
    before = reg.dice(kid_fixed.array, kid_moving.array)
    result = reg.register_ct(fixed, moving, deformable=False)
    carried = reg.resample_mask(kid_moving, result.transform, fixed)
    after = reg.dice(kid_fixed.array, carried)
    assert before < 0.75
    assert after >= 0.85
    assert result.ncc_after > result.ncc_before
    assert result.mi_after > result.mi_before
    assert not result.failed
    assert result.jacobian_min == pytest.approx(1.0, abs=5e-3)  # rigid: volume kept


def test_deformable_stage_keeps_kidney_alignment_and_valid_jacobian():
    fixed, kid_fixed = _phantom()
    moving, kid_moving = _phantom(shift_mm=(6.0, 4.0, -4.0), angle_deg=-3.0)
    result = reg.register_ct(fixed, moving, deformable=True)
    carried = reg.resample_mask(kid_moving, result.transform, fixed)
    assert reg.dice(kid_fixed.array, carried) >= 0.85
    assert 0.2 < result.jacobian_min <= result.jacobian_max < 5.0


def test_activity_is_conserved_through_a_transform():
    fixed, _ = _phantom()
    moving, kid = _phantom(shift_mm=(8.0, 0.0, 0.0))
    activity = moving.like((kid.array * 5000.0 + (moving.array > -500) * 100.0)
                           .astype(np.float32))
    transform = sitk.Euler3DTransform((128.0, 112.0, 80.0), 0.0, 0.0, np.deg2rad(3.0),
                                      (8.0, 0.0, 0.0))
    moved, error = reg.resample_activity(activity, transform, fixed, conserve=False)
    assert abs(error) < 0.01  # linear interpolation alone already conserves within 1 %
    moved, _ = reg.resample_activity(activity, transform, fixed)
    total_in = activity.array.sum() * activity.voxel_volume_ml
    assert moved.array.sum() * fixed.voxel_volume_ml == pytest.approx(total_in, rel=1e-5)


def test_jacobian_of_a_uniform_scaling_is_its_volume_ratio():
    fixed, _ = _phantom()
    scale = sitk.ScaleTransform(3, (1.1, 1.1, 1.1))
    scale.SetCenter((128.0, 112.0, 80.0))
    jac = reg.jacobian_determinant(scale, fixed)
    assert np.allclose(jac[1:-1, 1:-1, 1:-1], 1.1 ** 3, rtol=1e-4)  # edges: one-sided


def test_dice_of_empty_masks_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        reg.dice(np.zeros(3, bool), np.zeros(3, bool))


def test_preset_must_have_its_sections(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("rigid: {}\n")
    with pytest.raises(ValueError, match="bspline"):
        reg.load_preset(bad)


def test_jacobian_of_a_linear_transform_is_its_determinant():
    grid = Volume(np.zeros((5, 6, 7), np.float32), (2.0, 2.0, 3.0), (1.0, -4.0, 0.0))
    affine = sitk.AffineTransform(3)
    affine.Scale(1.1)
    affine.Rotate(0, 1, 0.3)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine)
    det = reg.jacobian_determinant(composite, grid)
    assert det.shape == grid.array.shape and np.allclose(det, 1.1 ** 3)
    field = reg.jacobian_determinant(  # the same through the displacement field
        sitk.BSplineTransformInitializer(sitk.Image([4, 4, 4], sitk.sitkFloat32), [1, 1, 1]),
        grid)
    assert field.shape == grid.array.shape and np.allclose(field, 1.0)
