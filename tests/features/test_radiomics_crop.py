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
