"""Write imaging sessions in DESIGN.md's NIfTI input form (.nii.gz + JSON sidecar).

PET values are Bq/mL decay-corrected to the acquisition start (as the DICOM DecayCorrection
START); the pre-therapy PET has no ``Cycle`` (cycles are 1-based therapy cycles).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from theralake.synth.grid import Grid
from theralake.synth.imaging import Session
from theralake.synth.patient import SPECT_FWHM_NOMINAL_MM, PatientTruth, voi_labels


def affine_ras(grid: Grid) -> np.ndarray:
    """NIfTI (RAS) affine of an LPS grid whose array is stored as (x, y, z)."""
    a = np.diag([-grid.spacing[0], -grid.spacing[1], grid.spacing[2], 1.0])
    a[:3, 3] = [-grid.origin[0], -grid.origin[1], grid.origin[2]]
    return a


def _save(array: np.ndarray, grid: Grid, path: Path, sidecar: dict) -> None:
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine_ras(grid))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, path)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
        json.dumps(sidecar, indent=2))


def label_map(pt: PatientTruth, labels: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    """Non-overlapping label image of the VOIs; 'body' (1) holds body voxels in no other VOI.

    The body VOI is the union of all labels > 0.
    """
    vois = voi_labels(pt.lesion_names)
    names = ["body"] + [n for n in vois if n not in ("body", "tumor_total", "bone")
                        and not n.endswith(("_cortex", "_medulla"))]
    out = np.zeros(labels.shape, dtype=np.int16)
    out[np.isin(labels, vois["body"])] = 1
    for i, n in enumerate(names[1:], start=2):
        out[np.isin(labels, vois[n])] = i
    return out, {str(i): n for i, n in enumerate(names, start=1)}


def write_session_nifti(pt: PatientTruth, s: Session, root: Path, seg: bool = True) -> None:
    """CT, PT or NM, and (with ``seg``) the true VOI label map of one session."""
    folder = root / pt.patient_id
    folder.mkdir(parents=True, exist_ok=True)
    tag = s.tag
    common = {"PatientID": pt.patient_id, "PatientWeightKg": round(pt.clinical.weight_kg, 2),
              "AcquisitionDateTime": s.acquisition.isoformat(),
              "SeriesDescription": f"{tag} synthetic"}
    if s.kind == "PET":
        nuc = {"Radionuclide": "Ga-68", "Radiopharmaceutical": "Ga-68 PSMA-11",
               "InjectedActivityMBq": round(pt.pet.activity_mbq, 3),
               "InjectionDateTime": pt.pet.injection.isoformat()}
    else:
        cyc = pt.cycles[(s.cycle or 1) - 1]
        nuc = {"Radionuclide": "Lu-177", "Radiopharmaceutical": "Lu-177 PSMA-617",
               "Cycle": s.cycle,
               "InjectedActivityMBq": round(cyc.activity_mbq, 3),
               "InjectionDateTime": cyc.administration.isoformat()}
    ct_name = f"{tag}_CT"  # FrameOf: the stem of the CT file (sidecar convention)
    _save(s.ct_hu, s.ct_grid, folder / f"{ct_name}.nii.gz",
          {**common, "Modality": "CT", "Units": "HU", **nuc})
    if s.kind == "PET":
        _save(s.image, s.image_grid, folder / f"{tag}_PT.nii.gz",
              {**common, "Modality": "PT", "Units": "BQML", **nuc, "FrameOf": ct_name})
    else:
        _save(s.image, s.image_grid, folder / f"{tag}_NM.nii.gz",
              {**common, "Modality": "NM", "Units": "CNTS", **nuc, "FrameOf": ct_name,
               "CalibrationFactorCpsPerMBq": pt.cps_per_mbq,
               "AcquisitionDurationS": s.duration_s,
               "ResolutionFwhmMm": SPECT_FWHM_NOMINAL_MM})
    if not seg:
        return
    lab, names = label_map(pt, s.labels)
    _save(lab, s.ct_grid, folder / f"{tag}_SEG.nii.gz",
          {**common, "Modality": "SEG", "Units": "LABELS", **nuc, "Labels": names,
           "FrameOf": ct_name})
