"""Row builders check their columns and give content ids."""

from __future__ import annotations

import numpy as np
import pytest

from theralake.lake import LakeError, Volume
from theralake.lake.rows import organ_dosimetry_row, quality_row, voi_row


def test_rows_refuse_unknown_columns_and_statuses():
    with pytest.raises(LakeError, match="unknown columns"):
        organ_dosimetry_row("P", 1, "liver", "vsv", "v1", ["s1"], "h", dose_gy=1.0)
    with pytest.raises(LakeError, match="quality status"):
        quality_row("P", 1, "dosimetry", "voi", "fine", "ok", "h")


def test_a_voi_row_is_a_binary_mask_with_a_content_id():
    mask = Volume(np.array([[[0, 3], [1, 0]]], np.float32), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    a = voi_row("P", "liver", mask, {"id": "ct", "cycle": 1, "time_h": 4.0}, "seg", "Liver")
    b = voi_row("P", "liver", mask.like(mask.array > 0), {"id": "ct"}, "seg", "Liver")
    assert a["id"] == b["id"] and a["voxel_count"] == 2
    assert a["volume_ml"] == pytest.approx(2 * 0.008)
    assert Volume.from_row(a).array.dtype == np.uint8
