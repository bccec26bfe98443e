"""No identifying value of any input reaches any file of the lake (bytes or decoded tables)."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pyarrow.parquet as pq
import SimpleITK as sitk
from dicom_factory import (
    PHI,
    PHI_DATES,
    T0,
    phantom,
    square_polygon,
    write_ct_series,
    write_pet_series,
    write_rtstruct,
    write_spect,
)

from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import SCHEMAS


def _phi_batch(root):
    ct = write_ct_series(root / "ct", phantom((4, 16, 16)),
                         description=f"CT {PHI['PatientName'].split('^')[0]} {PHI['PatientID']}")
    write_rtstruct(root / "rs.dcm", ct, {"Liver": [square_polygon(ct, 1, 2.5, 2.5, 8.5, 8.5)]})
    pet = write_pet_series(root / "pet", np.full((3, 8, 8), 900.0), injection=T0,
                           start=T0 + timedelta(minutes=58))
    spect = write_spect(root / "nm" / "spect.dcm", np.full((3, 8, 8), 40, np.uint16),
                        injection=T0 + timedelta(days=7), acquired=T0 + timedelta(days=8))
    (root / "clinical.csv").write_text(
        "PatientID,PatientName,BirthDate,psa\n"
        f"{PHI['PatientID']},{PHI['PatientName']},{PHI['PatientBirthDate']},13.2\n")
    (root / "outcomes.csv").write_text(f"PatientID,os_time_d,os_event\n{PHI['PatientID']},300,1\n")
    (root / "nii").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 6, 6), np.int16)),
                    str(root / "nii" / "extra.nii.gz"))
    (root / "nii" / "extra.json").write_text(json.dumps(
        {"PatientID": "NIFTI-SECRET-ID-77", "Modality": "CT", "Units": "HU"}))
    uids = {ct.study_uid, ct.series_uid, ct.frame_uid, *ct.sop_uids, pet.study_uid,
            pet.series_uid, pet.frame_uid, *pet.sop_uids, spect.series_uid, spect.frame_uid,
            spect.study_uid, *spect.sop_uids}
    return uids


def _needles(uids: set[str]) -> set[str]:
    needles = {v for v in PHI.values()} | set(PHI_DATES) | uids | {"NIFTI-SECRET-ID-77"}
    for name in ("PatientName", "ReferringPhysicianName", "PerformingPhysicianName",
                 "OperatorsName"):
        needles |= {part for part in PHI[name].split("^") if len(part) > 3}
    return needles


def _as_text(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    if hasattr(value, "tolist"):
        value = value.tolist()
    return str(value)


def test_no_phi_anywhere_in_the_lake(tmp_path, lake):
    uids = _phi_batch(tmp_path / "in")
    report = ingest(tmp_path / "in", lake, IngestOptions(calibration_cps_per_mbq=10.0,
                                                         show_progress=False))
    assert not report.skipped, report.summary()
    counts = lake.counts()
    assert counts["images"] == 4 and counts["vois"] == 1 and counts["clinical"] == 1
    needles = _needles(uids)

    # 1. raw bytes of every file under the lake (parquet, catalog, metadata, lock)
    files = [p for p in lake.path.rglob("*") if p.is_file()]
    assert any(p.name == "catalog.sqlite" for p in files)  # its column statistics too
    for path in files:
        data = path.read_bytes().lower()
        for needle in needles:
            assert needle.lower().encode() not in data, f"{needle!r} in {path}"

    # 2. decoded contents of every table, as text (DuckDB) and the Parquet metadata (pyarrow)
    con = lake.connect()
    for table in SCHEMAS:
        df = con.execute(f"select * from {table}").df()
        text = "\n".join(_as_text(v) for col in df.columns for v in df[col]).lower()
        text += "\n".join(map(str, df.columns)).lower()
        for needle in needles:
            assert needle.lower() not in text, f"{needle!r} in table {table}"
    for path in lake.path.rglob("*.parquet"):
        pf = pq.ParquetFile(path)
        meta = json.dumps({k.decode("latin-1"): v.decode("latin-1") for k, v in
                           (pf.schema_arrow.metadata or {}).items()}).lower()
        for needle in needles:
            assert needle.lower() not in meta, f"{needle!r} in metadata of {path}"
        for col in pf.read().columns:
            for v in col.to_pylist():
                t = _as_text(v).lower()
                assert not any(n.lower() in t for n in needles), (path, t[:80])
