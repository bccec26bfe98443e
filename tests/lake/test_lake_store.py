"""The lake itself: voxel encoding, atomic idempotent appends, schema version, NIfTI export."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dicom_factory import direction_from_angle

from theralake.lake import SCHEMA_VERSION, SCHEMAS, Lake, LakeError, Volume, stable_hash

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
    assert (tmp_path / "L" / "catalog.duckdb").exists()
    assert lake.counts() == {t: 0 for t in SCHEMAS}
    for table, schema in SCHEMAS.items():
        df = lake.read(table)
        assert list(df.columns) == schema.names


def test_append_is_idempotent_and_atomic(lake):
    vol = _volume()
    row = _image_row(vol)
    assert lake.append("images", [row]) == 1
    files = sorted((lake.path / "tables" / "images").iterdir())
    assert lake.append("images", [dict(row)]) == 0  # same id: nothing added
    assert lake.append("images", [dict(row), dict(row)]) == 0
    assert sorted((lake.path / "tables" / "images").iterdir()) == files
    assert not list((lake.path / "tables").glob("*/.tmp-*"))
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


def test_leftover_temporaries_are_removed_on_open(tmp_path):
    lake = Lake(tmp_path / "L")
    junk = lake.path / "tables" / "images" / ".tmp-deadbeef.parquet"
    junk.write_bytes(b"PAR1 half written")
    Lake(tmp_path / "L")
    assert not junk.exists()


def test_opening_waits_for_a_live_writer(tmp_path):
    """Opening a lake (schema parts, clean-up) must not touch the files of a write under way."""
    import threading

    lake = Lake(tmp_path / "L")
    schema_part = next(lake.table_dir("run_log").glob("part-00000000-schema-*.parquet"))
    schema_part.unlink()
    with lake.exclusive("write"):
        live = lake.path / "tables" / "images" / ".tmp-live-write.parquet"
        live.write_bytes(b"PAR1 being written")
        opener = threading.Thread(target=Lake, args=(tmp_path / "L",), kwargs={"create": False})
        opener.start()
        opener.join(timeout=1.0)
        assert opener.is_alive() and live.exists() and not schema_part.exists()
        live.unlink()
    opener.join(timeout=30)
    assert not opener.is_alive() and schema_part.exists()


def test_a_lake_of_an_older_schema_gets_the_new_columns(tmp_path):
    """A column added to a table since the lake was made reads as missing values, not as an
    error: opening adds an empty part of the current schema."""
    lake = Lake(tmp_path / "L")
    lake.append("clinical", [{"id": "c1", "patient_id": "P1", "variable": "psa",
                              "value_num": 1.0}])
    for part in lake.table_dir("organ_dosimetry").glob("part-*.parquet"):
        part.unlink()
    old = pa.schema([f for f in SCHEMAS["organ_dosimetry"] if f.name != "quality"])
    pq.write_table(pa.Table.from_pylist([{"id": "o1", "patient_id": "P1", "cycle": 1,
                                          "voi": "liver", "method": "vsv"}], schema=old),
                   lake.table_dir("organ_dosimetry") / "part-old.parquet")
    reopened = Lake(tmp_path / "L", create=False)
    got = reopened.sql("SELECT id, quality FROM organ_dosimetry")
    assert got.id.tolist() == ["o1"] and got["quality"].isna().all()


def test_catalog_views_are_usable_from_duckdb(lake):
    import duckdb

    lake.append("clinical", [{"id": stable_hash("c", 1), "patient_id": "P1",
                              "variable": "psa", "value_num": 12.5}])
    lake.refresh_catalog()
    con = duckdb.connect(str(lake.path / "catalog.duckdb"), read_only=True)
    try:
        assert con.execute("select value_num from clinical").fetchall() == [(12.5,)]
    finally:
        con.close()


def test_the_catalog_opens_in_older_duckdb(lake):
    """Issue 21: DuckDB 2.0 wrote the catalog in its storage version 999, which DuckDB 1.5 and
    1.1 refuse; the pinned 1.4 LTS writes version 64, which DuckDB 0.10 to 2.0 open (checked
    with DuckDB 1.1.3 by hand). The version is the 8 bytes after the header's ``DUCK``."""
    header = (lake.path / "catalog.duckdb").read_bytes()[:20]
    assert header[8:12] == b"DUCK"
    assert struct.unpack_from("<Q", header, 12)[0] == 64


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


def test_parquet_files_are_zstd_and_readable(lake):
    lake.append("images", [_image_row(_volume())])
    for f in (lake.path / "tables" / "images").glob("part-*.parquet"):
        meta = pq.ParquetFile(f).metadata
        if meta.num_rows:
            assert meta.row_group(0).column(0).compression == "ZSTD"
    assert Path(lake.path / "tables" / "images").is_dir()
