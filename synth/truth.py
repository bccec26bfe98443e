"""Truth tables (Parquet) of a synthetic cohort: VOIs, kinetics, activities, TIAs, doses.

All tables are long, keyed by PatientID (and cycle, time point, VOI); see synth/README.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pandas as pd

from theralake.lake.volume import Volume
from theralake.synth.constants import LU177
from theralake.synth.dose import DOSE_METHOD, radiobiology_for
from theralake.synth.dose import eqd2_gy as _eqd2
from theralake.synth.grid import Grid
from theralake.synth.patient import PatientTruth, whole_body_teff_h

TIA_METHOD = "analytic_integral_of_true_kinetics"


def patient_tables(pt: PatientTruth) -> dict[str, pd.DataFrame]:
    """All truth tables of one patient (without images)."""
    pid = pt.patient_id
    vois, kin, act, dos, cyc_rows, poses = [], [], [], [], [], []
    lam_p = LU177.decay_const_per_h
    info = {d["voi"]: d for d in pt.lesion_info}
    for cyc in pt.cycles:
        g = cyc.activity_mbq / 1000.0
        cyc_rows.append({
            "PatientID": pid, "cycle": cyc.cycle, "activity_mbq": cyc.activity_mbq,
            "administration_datetime": cyc.administration.isoformat(),
            "wb_effective_half_life_h": whole_body_teff_h(cyc),
            "wb_tia_mbq_h": cyc.tia_mbq_h.get("body", np.nan),
            "wb_tia_over_a0_h": cyc.tia_mbq_h.get("body", np.nan) / cyc.activity_mbq,
        })
        for voi in cyc.voi_fractions:
            les = info.get(voi, {})
            vois.append({"PatientID": pid, "cycle": cyc.cycle, "voi": voi,
                         "volume_ml": cyc.voi_volume_ml.get(voi, np.nan),
                         "mass_g": cyc.voi_mass_g.get(voi, np.nan),
                         "lesion_kind": les.get("kind"), "lesion_site": les.get("site")})
            rb = radiobiology_for(voi)
            d = cyc.dose_gy[voi]
            dos.append({
                "PatientID": pid, "cycle": cyc.cycle, "voi": voi, "method": DOSE_METHOD,
                "tia_method": TIA_METHOD, "mass_g": cyc.voi_mass_g.get(voi, np.nan),
                "tia_mbq_h": cyc.tia_mbq_h[voi], "absorbed_dose_gy": d,
                "dose_per_activity_gy_per_gbq": d / g, "bed_gy": cyc.bed_gy[voi],
                "eqd2_gy": _eqd2(cyc.bed_gy[voi], rb), "alpha_beta_gy": rb.alpha_beta_gy,
                "t_rep_h": rb.t_rep_h, "lambda_eff_per_h": cyc.lambda_eff_per_h[voi],
            })
            for tp in cyc.time_points:
                act.append({"PatientID": pid, "cycle": cyc.cycle, "time_point": tp.index,
                            "nominal_time_h": tp.nominal_h, "time_h": tp.time_h,
                            "imaged": tp.imaged, "voi": voi,
                            "activity_mbq": float(cyc.activity_mbq_at(voi, tp.time_h))})
        for comp, k in cyc.kinetics.items():
            for j, (c, lam) in enumerate(zip(k.coefs, k.rates_per_h, strict=True), start=1):
                kin.append({"PatientID": pid, "cycle": cyc.cycle, "compartment": comp,
                            "term": j, "coef_fraction": c, "rate_bio_per_h": lam,
                            "rate_eff_per_h": lam + lam_p,
                            "pet_suv_mean": pt.pet.suv.get(comp, np.nan),
                            "tia_mbq_h": cyc.activity_mbq * k.integral_h(lam_p),
                            "model": "A(t)=A0*sum_k c_k*exp(-(l_k+l_phys)*t)"})
        for tp in cyc.time_points:
            poses.append({"PatientID": pid, "session": f"C{cyc.cycle}TP{tp.index}",
                          "cycle": cyc.cycle, "time_point": tp.index, "imaged": tp.imaged,
                          "acquisition_datetime": tp.acquisition.isoformat(),
                          "frame_duration_ms": tp.frame_duration_ms,
                          **_pose_cols(asdict(tp.pose))})
    poses.append({"PatientID": pid, "session": "PET0", "cycle": 0, "time_point": 0,
                  "imaged": True, "acquisition_datetime": pt.pet.acquisition.isoformat(),
                  "frame_duration_ms": np.nan, **_pose_cols(asdict(pt.pet.pose))})
    pet = pd.DataFrame([{"PatientID": pid, "compartment": c, "suv_mean": s}
                        for c, s in pt.pet.suv.items()])
    patient = pd.DataFrame([{
        "PatientID": pid, "n_lesions": len(pt.lesion_info), "camera": pt.camera,
        "cps_per_mbq": pt.cps_per_mbq, "spect_fwhm_mm": pt.spect_fwhm_mm,
        "pet_fwhm_mm": pt.pet.fwhm_mm, "pet_activity_mbq": pt.pet.activity_mbq,
        "pet_delay_h": pt.pet.delay_h, **{f"outcome_{k}": v for k, v in pt.outcome_truth.items()},
    }])
    lesions = pd.DataFrame([{"PatientID": pid, **d} for d in pt.lesion_info])
    return {
        "patients": patient, "cycles": pd.DataFrame(cyc_rows), "vois": pd.DataFrame(vois),
        "kinetics": pd.DataFrame(kin), "activity": pd.DataFrame(act),
        "dosimetry": pd.DataFrame(dos), "poses": pd.DataFrame(poses), "pet_uptake": pet,
        "lesions": lesions,
    }


def _pose_cols(p: dict) -> dict:
    t, r = p["translation_mm"], p["rotation_deg"]
    return {"tx_mm": t[0], "ty_mm": t[1], "tz_mm": t[2], "rx_deg": r[0], "ry_deg": r[1],
            "rz_deg": r[2], "deform_mm": p["deform_mm"], "deform_seed": p["deform_seed"]}


def image_row(pid: str, cycle: int | None, session: str | None, kind: str, units: str,
              array: np.ndarray, grid: Grid, labels: dict | None = None) -> dict:
    """A truth image as a lake-style row (geometry columns + compressed voxels)."""
    try:
        vol = Volume(np.ascontiguousarray(array), grid.spacing, grid.origin)
        cols = vol.geometry_columns()
        sha = vol.content_hash(pid, cycle, session, kind)
    except Exception:  # noqa: BLE001 - lake package not importable: same columns by hand
        import hashlib

        import pyarrow as pa

        arr = np.ascontiguousarray(array)
        cols = {"shape": list(grid.shape[::-1]), "spacing_mm": list(grid.spacing),
                "origin_mm": list(grid.origin), "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                "dtype": arr.dtype.str, "compression": "zstd",
                "voxels": pa.compress(arr.tobytes(), codec="zstd", asbytes=True)}
        sha = hashlib.sha256(arr.tobytes() + repr((pid, cycle, session, kind)).encode()).hexdigest()
    return {"image_id": sha, "PatientID": pid, "cycle": cycle, "session": session,
            "kind": kind, "units": units, "labels_json": json.dumps(labels or {}), **cols}
