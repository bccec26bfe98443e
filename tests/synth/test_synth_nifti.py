"""--format nifti writes DESIGN.md's NIfTI input form with consistent geometry."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from theralake.synth.grid import ct_grid, spect_grid

KEYS = {"PatientID", "Modality", "Units", "Radionuclide", "InjectedActivityMBq",
        "InjectionDateTime", "AcquisitionDateTime", "PatientWeightKg"}


def test_files_and_sidecars(nifti_cohort: Path) -> None:
    folder = nifti_cohort / "SYN0001"
    names = sorted(p.name for p in folder.glob("*.nii.gz"))
    assert names == sorted(f"{t}_{m}.nii.gz" for t, ms in
                           (("PET0", "CT PT SEG"), ("C1TP1", "CT NM SEG"), ("C1TP2", "CT NM SEG"))
                           for m in ms.split())
    for p in folder.glob("*.json"):
        side = json.loads(p.read_text())
        assert KEYS <= set(side), p.name
        assert ("Cycle" in side) == (not p.name.startswith("PET0")), p.name
    nm = json.loads((folder / "C1TP1_NM.json").read_text())
    assert nm["Units"] == "CNTS" and nm["CalibrationFactorCpsPerMBq"] > 0
    assert nm["FrameOf"] == "C1TP1_CT" and nm["Radionuclide"] == "Lu-177"
    seg = json.loads((folder / "C1TP1_SEG.json").read_text())
    assert seg["Labels"]["1"] == "body" and "kidney_left" in seg["Labels"].values()
    pt = json.loads((folder / "PET0_PT.json").read_text())
    assert pt["Units"] == "BQML" and pt["Radionuclide"] == "Ga-68"


def test_geometry_is_lps_consistent(nifti_cohort: Path) -> None:
    folder = nifti_cohort / "SYN0001"
    g = ct_grid(True)
    img = sitk.ReadImage(str(folder / "C1TP1_CT.nii.gz"))  # SimpleITK reports LPS
    assert img.GetSize() == g.shape[::-1]
    assert np.allclose(img.GetOrigin(), g.origin, atol=1e-3)
    assert np.allclose(img.GetDirection(), np.eye(3).ravel())
    nm = sitk.ReadImage(str(folder / "C1TP1_NM.nii.gz"))
    assert np.allclose(nm.GetOrigin(), spect_grid(True).origin, atol=1e-3)
    seg = nib.load(folder / "C1TP1_SEG.nii.gz")
    labels = json.loads((folder / "C1TP1_SEG.json").read_text())["Labels"]
    arr = np.asarray(seg.dataobj)
    kid = int([k for k, v in labels.items() if v == "kidney_left"][0])
    # kidney_left lies on the patient's left: +x in LPS, i.e. -x in RAS
    ijk = np.argwhere(arr == kid).mean(axis=0)
    ras = seg.affine @ np.r_[ijk, 1]
    assert ras[0] < 0
