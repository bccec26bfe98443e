"""The lake's meaning in one place: current rows, whole runs, reference CTs, VOI precedence,
the rows a cycle's dosimetry reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from theralake.lake import Lake, Volume, stable_hash, views
from theralake.lake.rows import voi_row


def _at(minutes: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)


def test_current_is_the_newest_row_ties_to_the_larger_id():
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "k": [1, 1, 2, 2],
                       "created_utc": [_at(0), _at(5), _at(3), _at(3)]})
    assert sorted(views.current(df, ["k"]).id) == ["b", "d"]


def test_current_run_takes_a_run_whole():
    rows = pd.DataFrame({
        "id": list("abcde"), "patient_id": "P", "cycle": 1, "method": "vsv",
        "voi": ["liver", "kidney_left", "liver", "spleen", "liver"],
        "params_hash": ["old", "old", "new", "new", "new"],
        "created_utc": [_at(0), _at(0), _at(9), _at(9), _at(11)]})
    got = views.current_run(rows)
    # the newest run's VOIs only (no kidney of the old run), its newest liver row
    assert dict(zip(got.voi, got.id, strict=True)) == {"liver": "e", "spleen": "d"}


def _image(lake: Lake, kind: str, time_h: float, frame: str, cycle: int = 1) -> dict:
    vol = Volume(np.zeros((4, 5, 6), np.float32), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    row = {"patient_id": "P", "modality": {"ct": "CT", "spect": "NM"}[kind], "kind": kind,
           "units": {"ct": "HU", "spect": "BQML"}[kind], "cycle": cycle, "time_h": time_h,
           "frame_of_reference_key": frame, "series_key": f"{kind}{time_h}",
           **vol.geometry_columns()}
    row["id"] = stable_hash(kind, time_h, frame, cycle)
    lake.append("images", [row])
    return row


def _contour(lake: Lake, ct: dict, voi: str, source: str = "seg") -> dict:
    mask = Volume(np.ones((4, 5, 6), np.uint8), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    row = voi_row("P", voi, mask, ct, source, voi, key=(source,))
    lake.append("vois", [row])
    return row


def test_time_points_pair_each_spect_with_its_ct(lake):
    first, second, lone = (_image(lake, "spect", t, f) for t, f in
                           ((4.0, "F1"), (24.0, "F2"), (96.0, "F3")))
    ct1, near = _image(lake, "ct", 4.0, "F1"), _image(lake, "ct", 23.0, "Fx")
    pairs = views.pair_time_points(lake.read("images"))
    assert [(s["id"], c["id"] if c else None) for s, c in pairs] == [
        (first["id"], ct1["id"]), (second["id"], near["id"]), (lone["id"], None)]


def test_the_reference_ct_is_the_most_contoured_then_the_dose_maps(lake):
    _image(lake, "spect", 4.0, "F1"), _image(lake, "spect", 24.0, "F2")
    early, late = _image(lake, "ct", 4.0, "F1"), _image(lake, "ct", 24.0, "F2")
    assert views.reference_ct(lake, "P", 1)["id"] == early["id"]  # a tie: the earliest
    for voi in ("liver", "kidney_left"):
        _contour(lake, late, voi)
    assert views.reference_ct(lake, "P", 1)["id"] == late["id"]
    grid = Volume(np.zeros((2, 2, 2), np.float32), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    lake.append("dose_maps", [{"id": "m1", "patient_id": "P", "cycle": 1, "quantity": "dose",
                               "method": "vsv", "units": "GY", "reference_ct_id": early["id"],
                               **grid.geometry_columns()}])
    assert views.reference_ct(lake, "P", 1)["id"] == early["id"]  # what dosimetry used


def test_vois_on_an_image_prefer_imported_contours(lake):
    ct = _image(lake, "ct", 4.0, "F1")
    ai = _contour(lake, ct, "liver", "ai")
    seg = _contour(lake, ct, "liver", "seg")
    carried = _contour(lake, ct, "spleen", "transferred")
    got = views.vois_on_image(lake, ct["id"]).set_index("voi").id
    assert got.to_dict() == {"liver": seg["id"], "spleen": carried["id"]} and ai["id"] not in \
        set(got)


def test_the_planner_hashes_what_a_cycle_reads(lake):
    _image(lake, "spect", 4.0, "F1"), _image(lake, "spect", 24.0, "F2")
    ct = _image(lake, "ct", 4.0, "F1")
    _image(lake, "ct", 24.0, "F2")
    _contour(lake, ct, "liver")
    lake.append("administrations", [{"id": "a1", "patient_id": "P", "cycle": 1,
                                     "purpose": "therapy", "nuclide": "Lu-177",
                                     "activity_mbq": 7400.0, "administration_h": 0.0}])
    other = _image(lake, "ct", 500.0, "F9", cycle=2)  # another cycle's contoured CT
    _contour(lake, other, "spleen")
    rows = views.cycle_rows(lake, "P", 1)
    assert other["id"] in set(rows.images.id) and "a1" in rows.ids
    assert views.cycle_input_ids(lake)[("P", 1)] == stable_hash(rows.ids)


def test_one_spect_per_acquisition_theralakes_then_the_newest():
    def spect(i: str, time_h: float, params: str | None, created: str) -> dict:
        return {"id": i, "kind": "spect", "units": "BQML", "series_key": i, "time_h": time_h,
                "params_hash": params, "created_utc": pd.Timestamp(created)}

    images = pd.DataFrame([
        spect("vendor", 24.0, None, "2026-01-02"), spect("ours", 24.05, "h", "2026-01-01"),
        spect("export1", 96.0, None, "2026-01-01"), spect("export2", 96.0, None, "2026-01-03"),
        spect("undated1", float("nan"), None, "2026-01-01"),
        spect("undated2", float("nan"), None, "2026-01-01"),
        spect("late", 168.0, None, "2026-01-01")])
    kept, left = views.one_per_acquisition(images)
    assert sorted(kept.id) == ["export2", "late", "ours", "undated1", "undated2"]
    assert sorted((k["id"], d["id"]) for k, d in left) == [("export2", "export1"),
                                                            ("ours", "vendor")]
