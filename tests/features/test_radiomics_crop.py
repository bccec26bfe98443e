"""Cropping to the VOI before pyradiomics: the same values, for the sets where it is exact."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from theralake.features import radiomics
from theralake.lake import Volume


def _image_and_voi(spacing_mm: float) -> tuple[Volume, np.ndarray]:
    rng = np.random.default_rng(4)
    shape = (40, 48, 56)
    z, y, x = np.indices(shape)
    voi = ((z - 20) / 6) ** 2 + ((y - 30) / 5) ** 2 + ((x - 22) / 7) ** 2 <= 1
    image = 40 + 15 * rng.standard_normal(shape) + 80 * voi * np.cos(x / 3.0)
    return Volume(image.astype(np.float32), (spacing_mm,) * 3, (0.0, 0.0, 0.0)), voi


@pytest.mark.parametrize("set_name, spacing_mm, cropped", [
    ("minimal", 3.0, True),  # preCrop, no resampling
    ("fast", 4.0, True),  # resampled to the image's own spacing: a crop
    ("fast", 3.0, False),  # resampled onto a grid anchored at the image corner: never cropped
])
def test_cropping_keeps_every_value(set_name, spacing_mm, cropped):
    image, voi = _image_and_voi(spacing_mm)
    fs = radiomics.load_feature_set(set_name)
    assert (radiomics._crop_box(voi, fs.params_for("ct")["setting"], image.spacing_mm)
            is not None) == cropped
    fast = radiomics.extract_radiomics(image, voi, "ct", fs)
    with mock.patch.object(radiomics, "_crop_box", lambda *a: None):
        whole = radiomics.extract_radiomics(image, voi, "ct", fs)
    assert fast.keys() == whole.keys() and len(fast) > 10
    for key, value in whole.items():
        assert fast[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def _set_file(tmp_path, name: str, **setting: object) -> str:
    """The packaged ``fast`` set with shape features named and settings changed."""
    from importlib import resources

    import yaml

    params = yaml.safe_load(resources.files("theralake.features").joinpath(
        "data/sets/fast.yaml").read_text())
    params["featureClass"] = {"shape": ["MeshVolume", "SurfaceArea", "SphericalDisproportion",
                                        "Sphericity", "VoxelVolume", "MajorAxisLength"],
                              "firstorder": ["Mean"]}
    params["setting"].update(setting)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_one_pyradiomics_value_gives_every_ibsi_feature_it_defines(tmp_path):
    """SphericalDisproportion is both IBSI spherical disproportion and (minus 1) asphericity:
    the second mapping hid the first, which was never stored (issue 20, item 7)."""
    image, voi = _image_and_voi(4.0)
    out = radiomics.extract_radiomics(image, voi, "ct", radiomics.load_feature_set(
        _set_file(tmp_path, "sd")))
    sd = out[("shape", "morphology: spherical disproportion")]
    assert out[("shape", "morphology: asphericity")] == pytest.approx(sd - 1)
    assert sd > 1  # an ellipsoid is less compact than a sphere


def test_a_zero_in_the_resampled_spacing_keeps_that_axis(tmp_path):
    """pyradiomics reads a 0 in resampledPixelSpacing as "keep the axis"; the voxel count
    behind the IBSI axis lengths divided by it (ZeroDivisionError; issue 20, item 9)."""
    image, voi = _image_and_voi(4.0)
    image = Volume(image.array, (4.0, 4.0, 5.0), (0.0, 0.0, 0.0))
    kept = radiomics.extract_radiomics(image, voi, "ct", radiomics.load_feature_set(
        _set_file(tmp_path, "zero", resampledPixelSpacing=[4, 4, 0])))
    named = radiomics.extract_radiomics(image, voi, "ct", radiomics.load_feature_set(
        _set_file(tmp_path, "named", resampledPixelSpacing=[4, 4, 5])))
    assert kept.keys() == named.keys()
    key = ("shape", "morphology: major axis length")
    assert key in kept and kept[key] == pytest.approx(named[key], rel=1e-9)
