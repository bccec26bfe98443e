"""Export a patient-cycle's dose, TIA map or VOIs for 3D Slicer, MIM, OHIF or a TPS.

Everything a cycle exports lies on one CT: the reference CT its dosimetry used (the CT of the
dose map's grid), so an RTDOSE, an RTSTRUCT and a SEG of the same cycle share one study and
frame of reference and overlay in a planning system or viewer. The VOIs are those the
dosimetry measured, imported, carried, AI-segmented or thresholded alike (a SEG names which).
"""

from __future__ import annotations

from pathlib import Path

from theralake.lake import Lake, LakeError, Volume, views
from theralake.lake.dicom_export import DicomExport

WHAT = ("dose", "tia", "vois")
FORMATS = ("nifti", "rtdose", "rtstruct", "seg")


def _reference_ct(lake: Lake, patient_id: str, cycle: int, method: str | None) -> dict:
    methods = (method,) if method else ()
    ct = views.reference_ct(lake, patient_id, cycle, methods)
    if ct is None:
        raise LakeError(f"patient {patient_id} cycle {cycle}: no SPECT/CT to export with")
    return ct


def _pet_ct(lake: Lake, patient_id: str) -> dict:
    pet = views.pre_therapy_pet(lake, patient_id)
    ct = views.frame_ct(lake, patient_id, pet["frame_of_reference_key"]) if pet else None
    if ct is None:
        raise LakeError(f"patient {patient_id}: no pre-therapy PET/CT to export with")
    return ct


def export(lake: Lake, patient_id: str, cycle: int | None, what: str, fmt: str, out: Path,
           method: str | None = None, pet: bool = False) -> list[Path]:
    """Write the requested objects under ``out``; returns the paths written.

    ``dose``/``tia`` as NIfTI or RTDOSE (with the reference CT series it lies on), ``vois``
    as NIfTI masks, an RTSTRUCT or a DICOM SEG on the same reference CT; with ``pet`` the
    VOIs of the pre-therapy PET/CT on its CT (``cycle`` not needed).
    """
    if what not in WHAT or fmt not in FORMATS:
        raise LakeError(f"--what is one of {WHAT}, --format one of {FORMATS}")
    if (what, fmt) in (("vois", "rtdose"), ("dose", "rtstruct"), ("tia", "rtstruct"),
                       ("tia", "rtdose"), ("dose", "seg"), ("tia", "seg")):
        raise LakeError(f"{what} cannot be written as {fmt}")
    if lake.read("patients", "patient_id = ?", [patient_id]).empty:
        raise LakeError(f"no patient {patient_id!r} in the lake at {lake.path} (theralake sql "
                        "\"SELECT patient_id FROM patients\" lists them)")
    if pet and what != "vois":
        raise LakeError("the pre-therapy PET/CT has VOIs to export, no dose or TIA map")
    out.mkdir(parents=True, exist_ok=True)
    ct_row = _pet_ct(lake, patient_id) if pet else _reference_ct(lake, patient_id, cycle,
                                                                 method)
    if what in ("dose", "tia"):
        row = views.dose_map(lake, patient_id, cycle, what, (method,) if method else ())
        if row is None or (method and what == "dose" and row["method"] != method):
            raise LakeError(f"patient {patient_id} cycle {cycle}: no {what} map "
                            "(run theralake dosimetry first)")
        if fmt == "nifti":
            return [lake.export_nifti(row["id"], out / f"{what}_{row['method']}.nii.gz",
                                      table="dose_maps")]
        if row.get("reference_ct_id") and row["reference_ct_id"] != ct_row["id"]:
            ct_row = lake.read("images", "id = ?", [row["reference_ct_id"]]).iloc[0].to_dict()
        dicom = DicomExport(patient_id, ct_row["id"])
        paths = dicom.write_ct(Volume.from_row(ct_row), out / "CT")
        return paths + [dicom.write_rtdose(Volume.from_row(row), out / "RTDOSE.dcm", row["id"],
                                           f"theralake {row['method']} dose, cycle {cycle}")]
    vois = views.vois_on_image(lake, ct_row["id"]) if pet else views.dosimetry_vois(
        lake, patient_id, cycle, (method,) if method else ())
    vois = vois[vois.image_id == ct_row["id"]] if not vois.empty else vois
    if vois.empty:
        where = "the PET/CT" if pet else f"cycle {cycle}: the reference CT"
        raise LakeError(f"patient {patient_id} {where}: no VOIs on it")
    if fmt == "nifti":
        return [lake.export_nifti(r["id"], out / f"{r['voi']}.nii.gz", table="vois")
                for r in vois.to_dict("records")]
    ct = Volume.from_row(ct_row)
    masks = {r["voi"]: Volume.from_row(r).array.astype(bool) for r in vois.to_dict("records")}
    dicom = DicomExport(patient_id, ct_row["id"])
    paths = dicom.write_ct(ct, out / "CT")
    if fmt == "seg":
        sources = {r["voi"]: r.get("source") for r in vois.to_dict("records")}
        return paths + [dicom.write_seg(masks, sources, out / "SEG.dcm")]
    return paths + [dicom.write_rtstruct(ct, masks, out / "RTSTRUCT.dcm")]
