"""The lake itself: voxel encoding, atomic idempotent appends, schema version, NIfTI export."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from dicom_factory import direction_from_angle

from theralake.lake import SCHEMA_VERSION, SCHEMAS, Lake, LakeError, Volume, ducklake, stable_hash

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _volume(dtype=np.float32) -> Volume:
    rng = np.random.default_rng(1)
    arr = rng.normal(100, 30, size=(6, 9, 11)).astype(dtype)
    return Volume(arr, (1.5, 2.25, 3.0), (-10.0, 20.5, -33.25), direction_from_angle(25))


def _image_row(vol: Volume, pid: str = "Ptest") -> dict:
    row = {"patient_id": pid, "modality": "CT", "kind": "ct", "units": "HU",
           **vol.geometry_columns()}
    row["id"] = vol.content_hash(pid)
    return row


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8, np.float64])
def test_volume_row_round_trip_is_exact(dtype):
    vol = _volume(dtype)
    back = Volume.from_row(vol.geometry_columns())
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol, tol_mm=0)
    np.testing.assert_array_equal(back.direction, vol.direction)


def test_index_world_transforms_invert():
    vol = _volume()
    ijk = np.array([[0, 0, 0], [10, 8, 5], [3.5, 2.25, 1.0]])
    world = vol.index_to_world(ijk)
    np.testing.assert_allclose(world[0], vol.origin_mm)
    # voxel (1, 0, 0) is one x-spacing along the first direction column
    np.testing.assert_allclose(vol.index_to_world([1, 0, 0]) - world[0],
                               1.5 * vol.direction[:, 0])
    np.testing.assert_allclose(vol.world_to_index(world), ijk, atol=1e-12)


def test_volume_rejects_bad_input():
    with pytest.raises(ValueError, match="3D array"):
        Volume(np.zeros((3, 3)), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="spacing must be positive"):
        Volume(np.zeros((2, 2, 2)), (1, 0, 1), (0, 0, 0))


def test_new_lake_layout_and_empty_tables(tmp_path):
    lake = Lake(tmp_path / "L")
    meta = json.loads((tmp_path / "L" / "theralake.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["format"] == "ducklake" and meta["catalog"] == "sqlite"
    assert (tmp_path / "L" / "catalog.sqlite").exists() and (tmp_path / "L" / "data").is_dir()
    assert lake.counts() == {t: 0 for t in SCHEMAS}
    for table, schema in SCHEMAS.items():
        df = lake.read(table)
        assert list(df.columns) == schema.names


def test_append_is_idempotent_and_atomic(lake):
    vol = _volume()
    row = _image_row(vol)
    assert lake.append("images", [row]) == 1
    snapshot = lake.snapshot()
    files = sorted((lake.path / "data").rglob("*.parquet"))
    assert lake.append("images", [dict(row)]) == 0  # same id: nothing added
    assert lake.append("images", [dict(row), dict(row)]) == 0
    assert sorted((lake.path / "data").rglob("*.parquet")) == files
    assert lake.snapshot() == snapshot  # and no empty commit
    df = lake.read("images")
    assert len(df) == 1 and df["id"].iloc[0] == row["id"]
    assert df["theralake_version"].iloc[0] and df["created_utc"].notna().all()
    np.testing.assert_array_equal(lake.volume("images", row["id"]).array, vol.array)


def test_append_rejects_bad_rows(lake):
    with pytest.raises(LakeError, match="content-hash 'id'"):
        lake.append("clinical", [{"patient_id": "P1", "variable": "x"}])
    with pytest.raises(LakeError, match=r"unknown columns \['nonsense'\]"):
        lake.append("clinical", [{"id": "a", "patient_id": "P1", "variable": "x",
                                  "nonsense": 1}])
    with pytest.raises(LakeError, match="do not fit the schema"):
        lake.append("clinical", [{"id": "a", "patient_id": "P1", "variable": "x",
                                  "value_num": "not a number"}])
    with pytest.raises(LakeError, match="unknown table 'imagez'"):
        lake.read("imagez")
    assert lake.counts()["clinical"] == 0


def test_no_row_with_id(lake):
    with pytest.raises(LakeError, match="no row with id 'nope' in images"):
        lake.volume("images", "nope")


def test_schema_version_mismatch_is_a_clear_error(tmp_path):
    Lake(tmp_path / "L")
    meta_path = tmp_path / "L" / "theralake.json"
    meta = json.loads(meta_path.read_text())
    meta["schema_version"] = SCHEMA_VERSION + 41
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LakeError, match=rf"schema version {SCHEMA_VERSION + 41}.*reads "
                                        rf"version {SCHEMA_VERSION}"):
        Lake(tmp_path / "L")
    meta_path.write_text("{not json")
    with pytest.raises(LakeError, match="unreadable lake metadata"):
        Lake(tmp_path / "L")


def test_refuses_foreign_or_missing_folder(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("hello")
    with pytest.raises(LakeError, match="not a theralake lake"):
        Lake(tmp_path / "other")
    with pytest.raises(LakeError, match="no lake at"):
        Lake(tmp_path / "absent", create=False)


def test_a_lake_of_an_older_schema_gets_the_new_columns(tmp_path):
    """A column added to a table since the lake was made reads as missing values, not as an
    error: opening adds it to the DuckLake table."""
    lake = Lake(tmp_path / "L")
    lake.append("organ_dosimetry", [{"id": "o1", "patient_id": "P1", "cycle": 1,
                                     "voi": "liver", "method": "vsv"}])
    con = ducklake.attach(lake.path)
    con.execute("ALTER TABLE lake.organ_dosimetry DROP COLUMN quality")  # as an older lake
    assert "quality" not in {r[0] for r in con.execute(
        "DESCRIBE lake.organ_dosimetry").fetchall()}
    con.close()
    reopened = Lake(tmp_path / "L", create=False)
    got = reopened.sql("SELECT id, quality FROM organ_dosimetry")
    assert got.id.tolist() == ["o1"] and got["quality"].isna().all()


def test_a_moved_lake_opens_in_plain_duckdb_with_two_lines(lake, tmp_path):
    import duckdb

    lake.append("clinical", [{"id": stable_hash("c", 1), "patient_id": "P1",
                              "variable": "psa", "value_num": 12.5}])
    moved = tmp_path / "moved" / "lake"
    shutil.copytree(lake.path, moved)
    shutil.rmtree(lake.path)  # nothing of the old folder remains to be read
    lines = ducklake.open_lines(moved)
    assert len(lines) == 2
    con = duckdb.connect()
    try:
        for line in lines:
            con.execute(line)
        assert con.execute("select value_num from lake.clinical").fetchall() == [(12.5,)]
    finally:
        con.close()


def test_export_nifti_keeps_voxels_and_world_coordinates(lake, tmp_path):
    vol = _volume()
    row = _image_row(vol)
    lake.append("images", [row])
    out = lake.export_nifti(row["id"], tmp_path / "out" / "img.nii.gz")
    nii = nib.load(out)
    data = np.asarray(nii.dataobj)  # (x, y, z)
    np.testing.assert_array_equal(data.transpose(2, 1, 0), vol.array)
    ijk = np.array([[0, 0, 0], [10, 8, 5], [4, 7, 2]], float)
    ras = (nii.affine @ np.column_stack([ijk, np.ones(len(ijk))]).T).T[:, :3]
    np.testing.assert_allclose(ras @ LPS_TO_RAS, vol.index_to_world(ijk), atol=1e-4)


def test_data_files_are_zstd_parquet(lake):
    lake.append("images", [_image_row(_volume())])
    files = list((lake.path / "data").rglob("*.parquet"))
    assert files
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert meta.num_rows and meta.row_group(0).column(0).compression == "ZSTD"


def test_a_batch_is_one_commit_all_or_nothing(lake):
    rows = [{"id": f"c{i}", "patient_id": "P1", "variable": "psa", "value_num": float(i)}
            for i in range(3)]
    start = lake.snapshot()
    with lake.batch() as added:
        assert lake.append("clinical", rows[:2]) == 0  # counted at the commit
        lake.append("clinical", rows)  # the same ids again in the batch: once
        lake.append("patients", [{"id": "p1", "patient_id": "P1"}])
        assert lake.counts()["clinical"] == 0  # nothing visible before the commit
    assert dict(added) == {"clinical": 3, "patients": 1}
    assert lake.snapshot() == start + 1 and lake.counts()["clinical"] == 3
    with pytest.raises(RuntimeError, match="task failed"), lake.batch():
        lake.append("clinical", [{**rows[0], "id": "c9"}])
        raise RuntimeError("task failed")
    assert lake.snapshot() == start + 1 and "c9" not in lake.ids("clinical")
    with lake.batch() as again:  # a re-run adds nothing and commits nothing
        lake.append("clinical", rows)
    assert not again and lake.snapshot() == start + 1
