"""RTSTRUCT contours rasterised on the CT they reference: known squares and circles."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_factory import (
    circle_polygon,
    direction_from_angle,
    phantom,
    square_polygon,
    write_ct_series,
    write_rtstruct,
)
from pydicom.uid import generate_uid

from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Volume

OPTS = IngestOptions(show_progress=False)
SPACING = (2.0, 2.0, 3.0)


@pytest.fixture
def ct(tmp_path):
    return write_ct_series(tmp_path / "in" / "ct", phantom((10, 32, 32)), spacing=SPACING,
                           origin=(-20.0, 13.0, 5.0), direction=direction_from_angle(30))


def _vois(lake) -> dict[str, dict]:
    return {r["voi"]: r for r in lake.read("vois").to_dict("records")}


def test_square_contour_fills_exactly_its_voxels(tmp_path, lake, ct):
    # corners on voxel boundaries (half indices): 10 x 10 voxel centres inside, 400 mm^2
    squares = [square_polygon(ct, k, 5.5, 7.5, 15.5, 17.5) for k in (3, 4, 5)]
    write_rtstruct(tmp_path / "in" / "rs.dcm", ct, {"Kidney L": squares})
    report = ingest(tmp_path / "in", lake, OPTS)
    assert not report.skipped, report.summary()
    row = _vois(lake)["kidney_left"]
    assert row["source"] == "rtstruct" and row["source_name"] == "Kidney L"
    image = lake.read("images").iloc[0]
    assert row["image_id"] == image["id"]
    mask = Volume.from_row(row)
    assert mask.same_grid(Volume.from_row(image.to_dict()))
    expected = np.zeros((10, 32, 32), bool)
    expected[3:6, 8:18, 6:16] = True  # (z, y=j, x=i)
    np.testing.assert_array_equal(mask.array.astype(bool), expected)
    assert row["voxel_count"] == 300
    assert row["volume_ml"] == pytest.approx(3 * 400 * 3.0 / 1000)  # 3 slices x area x 3 mm


def test_circle_contour_within_one_voxel_of_the_true_disc(tmp_path, lake, ct):
    radius, ci, cj = 9.3, 16.2, 15.7
    slices = (2, 3, 4, 5, 6)
    write_rtstruct(tmp_path / "in" / "rs.dcm", ct,
                   {"Liver": [circle_polygon(ct, k, ci, cj, radius, n=360) for k in slices]})
    assert not ingest(tmp_path / "in", lake, OPTS).skipped
    row = _vois(lake)["liver"]
    mask = Volume.from_row(row).array.astype(bool)
    assert not mask[[k for k in range(10) if k not in slices]].any()
    jj, ii = np.indices((32, 32))
    dist = np.hypot((ii - ci) * SPACING[0], (jj - cj) * SPACING[1])  # mm from the centre
    half_diag = 0.5 * np.hypot(*SPACING[:2])
    true_area = np.pi * radius**2
    for k in slices:
        assert mask[k][dist < radius - half_diag].all()  # surely inside: in the mask
        assert not mask[k][dist > radius + half_diag].any()  # surely outside: not in it
        area = mask[k].sum() * SPACING[0] * SPACING[1]
        perimeter = 2 * np.pi * radius
        # area error below the partial volume of one ring of boundary voxels
        assert abs(area - true_area) < 0.5 * perimeter * SPACING[0]
        assert area == pytest.approx(true_area, rel=0.06)
    assert row["volume_ml"] == pytest.approx(len(slices) * true_area * SPACING[2] / 1000,
                                             rel=0.06)


def test_contour_with_hole_and_name_mapping(tmp_path, lake, ct):
    outer = square_polygon(ct, 4, 3.5, 3.5, 23.5, 23.5)   # 20 x 20
    inner = square_polygon(ct, 4, 8.5, 8.5, 13.5, 13.5)   # 5 x 5 hole
    write_rtstruct(tmp_path / "in" / "rs.dcm", ct, {
        "GTV 3": [outer, inner], "Parotid R": [square_polygon(ct, 2, 0.5, 0.5, 2.5, 2.5)]})
    assert not ingest(tmp_path / "in", lake, OPTS).skipped
    vois = _vois(lake)
    assert set(vois) == {"lesion_003", "parotid_gland_right"}
    assert vois["lesion_003"]["voxel_count"] == 400 - 25
    assert vois["parotid_gland_right"]["voxel_count"] == 4


def test_rtstruct_on_another_frame_of_reference_is_refused(tmp_path, lake, ct):
    write_rtstruct(tmp_path / "in" / "rs.dcm", ct,
                   {"Liver": [square_polygon(ct, 4, 5.5, 5.5, 10.5, 10.5)]},
                   frame_uid=generate_uid())
    report = ingest(tmp_path / "in", lake, OPTS)
    assert [e.source for e in report.skipped] == [str(tmp_path / "in" / "rs.dcm")]
    assert "frame of reference" in report.skipped[0].problem
    assert lake.counts()["vois"] == 0
    assert lake.counts()["images"] == 1  # the CT itself went in


def test_rtstruct_later_batch_finds_its_ct_in_the_lake(tmp_path, lake, ct):
    assert not ingest(tmp_path / "in" / "ct", lake, OPTS).skipped
    write_rtstruct(tmp_path / "later" / "rs.dcm", ct,
                   {"Spleen": [square_polygon(ct, 1, 1.5, 1.5, 4.5, 4.5)]})
    assert not ingest(tmp_path / "later", lake, OPTS).skipped
    row = _vois(lake)["spleen"]
    assert row["voxel_count"] == 9
    assert row["image_id"] == lake.read("images")["id"].iloc[0]
