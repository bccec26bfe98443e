"""Export a patient-cycle's dose, TIA map or VOIs for 3D Slicer, MIM or a TPS."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from theralake.lake import Lake, LakeError, Volume
from theralake.lake.dicom_export import DicomExport

WHAT = ("dose", "tia", "vois")
FORMATS = ("nifti", "rtdose", "rtstruct")


def _reference_ct(lake: Lake, patient_id: str, cycle: int, frame_key: str | None) -> pd.Series:
    cts = lake.read("images", "patient_id = ? AND cycle = ? AND kind = 'ct'", [patient_id, cycle])
    if frame_key is not None:
        cts = cts[cts.frame_of_reference_key == frame_key]
    if cts.empty:
        raise LakeError(f"patient {patient_id} cycle {cycle}: no CT to export with")
    return cts.sort_values("time_h").iloc[0]


def export(lake: Lake, patient_id: str, cycle: int, what: str, fmt: str, out: Path,
           method: str | None = None) -> list[Path]:
    """Write the requested objects under ``out``; returns the paths written.

    ``dose``/``tia`` as NIfTI or RTDOSE (with the reference CT series it lies on), ``vois``
    as NIfTI masks or an RTSTRUCT on the reference CT.
    """
    if what not in WHAT or fmt not in FORMATS:
        raise LakeError(f"--what is one of {WHAT}, --format one of {FORMATS}")
    if (what, fmt) in (("vois", "rtdose"), ("dose", "rtstruct"), ("tia", "rtstruct"),
                       ("tia", "rtdose")):
        raise LakeError(f"{what} cannot be written as {fmt}")
    out.mkdir(parents=True, exist_ok=True)
    frame_key = None
    if what in ("dose", "tia"):
        where = "patient_id = ? AND cycle = ? AND quantity = ?"
        params: list = [patient_id, cycle, what]
        if method:
            where, params = where + " AND method = ?", params + [method]
        maps = lake.read("dose_maps", where, params)
        if maps.empty:
            raise LakeError(f"patient {patient_id} cycle {cycle}: no {what} map "
                            "(run theralake dosimetry first)")
        row = maps.sort_values("created_utc").iloc[-1]
        frame_key = row.frame_of_reference_key
        if fmt == "nifti":
            return [lake.export_nifti(row.id, out / f"{what}_{row.method}.nii.gz",
                                      table="dose_maps")]
        ct_row = _reference_ct(lake, patient_id, cycle, frame_key)
        dicom = DicomExport(patient_id, ct_row.id)
        paths = dicom.write_ct(Volume.from_row(ct_row.to_dict()), out / "CT")
        vol = Volume.from_row(row.to_dict())
        return paths + [dicom.write_rtdose(vol, out / "RTDOSE.dcm", row.id,
                                           f"theralake {row.method} dose, cycle {cycle}")]
    ct_row = _reference_ct(lake, patient_id, cycle, None)
    vois = lake.read("vois", "patient_id = ? AND image_id = ?", [patient_id, ct_row.id])
    if vois.empty:
        raise LakeError(f"patient {patient_id} cycle {cycle}: no VOIs on the reference CT")
    masks = {r["voi"]: Volume.from_row(r).array.astype(bool) for r in vois.to_dict("records")}
    if fmt == "nifti":
        paths = []
        for r in vois.to_dict("records"):
            paths.append(lake.export_nifti(r["id"], out / f"{r['voi']}.nii.gz", table="vois"))
        return paths
    ct = Volume.from_row(ct_row.to_dict())
    dicom = DicomExport(patient_id, ct_row.id)
    paths = dicom.write_ct(ct, out / "CT")
    return paths + [dicom.write_rtstruct(ct, masks, out / "RTSTRUCT.dcm")]

