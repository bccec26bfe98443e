"""A cohort lake filled from the truth, without images: for model studies at cohort size.

Imaging, registration and dosimetry take seconds to minutes per patient-cycle; model tests and
benchmarks need hundreds of patients. ``write_truth_lake`` gives them the rows the image
pipeline would have written:

- ``clinical``, ``outcomes``, ``administrations``: the cohort CSVs, through the real ingest;
- ``organ_dosimetry`` (method ``truth``): the true absorbed dose, BED and EQD2 of every VOI and
  cycle, optionally times a log-normal "measurement" error;
- ``features``: the pre-therapy PET uptake per VOI (``pet/<voi>/uptake/suvmean`` and
  ``mtv_ml``), as ``theralake features`` names them.

It is a test and benchmark fixture: nothing in the real pipeline reads it differently.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake
from theralake.lake.store import stable_hash
from theralake.synth.cohort import table_rows, write_tables
from theralake.synth.config import SynthConfig
from theralake.synth.dose import eqd2_gy, radiobiology_for
from theralake.synth.patient import PatientTruth, simulate_patient

METHOD = "truth"


def write_truth_lake(lake: Lake, cfg: SynthConfig, pseudonymizer: Pseudonymizer,
                     dose_error_sd: float = 0.0) -> dict[str, str]:
    """Fill ``lake`` with the cohort ``cfg`` from its truth; returns raw id -> lake patient id.

    Args:
        lake: the lake to write to (rows are idempotent).
        cfg: the cohort (``patients``, ``cycles``, ``seed``).
        pseudonymizer: maps the synthetic PatientIDs to lake ids, as ingest does.
        dose_error_sd: sd of the log-normal error of each measured dose (0: exact).
    """
    rng = np.random.default_rng([cfg.seed, 7])
    truths = [simulate_patient(cfg, i, raster=False) for i in range(cfg.patients)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [table_rows(cfg, pt) for pt in truths]
        write_tables(Path(tmp), cfg, [r[0] for r in rows], [r[1] for r in rows],
                     [a for r in rows for a in r[2]])
        ingest(Path(tmp), lake, IngestOptions(show_progress=False), pseudonymizer)
    ids = {pt.patient_id: pseudonymizer.patient_id(pt.patient_id) for pt in truths}
    dosimetry, features = [], []
    for pt in truths:
        pid = ids[pt.patient_id]
        dosimetry += _dosimetry_rows(pt, pid, rng, dose_error_sd)
        features += _pet_rows(pt, pid)
    lake.append("organ_dosimetry", dosimetry, params_hash=stable_hash(METHOD, dose_error_sd))
    lake.append("features", features, params_hash=stable_hash(METHOD))
    return ids


def _dosimetry_rows(pt: PatientTruth, pid: str, rng: np.random.Generator,
                    error_sd: float) -> list[dict]:
    rows, cumulative = [], {}
    for cyc in pt.cycles:
        gbq = cyc.activity_mbq / 1000.0
        for voi, true_gy in cyc.dose_gy.items():
            if voi in ("body", "remainder"):
                continue
            k = (cyc.bed_gy[voi] - true_gy) / true_gy**2 if true_gy > 0 else 0.0
            dose = true_gy * math.exp(rng.normal(0.0, error_sd)) if error_sd else true_gy
            bed = dose * (1.0 + k * dose)
            rb = radiobiology_for(voi)
            cum = cumulative[voi] = cumulative.get(voi, 0.0) + bed
            rows.append({
                "id": stable_hash("truth-dosimetry", pid, cyc.cycle, voi, error_sd),
                "patient_id": pid, "cycle": cyc.cycle, "voi": voi, "method": METHOD,
                "mass_g": cyc.voi_mass_g.get(voi), "tia_mbq_h": cyc.tia_mbq_h.get(voi),
                "absorbed_dose_gy": dose, "dose_per_activity_gy_per_gbq": dose / gbq,
                "bed_gy": bed, "eqd2_gy": eqd2_gy(bed, rb), "cumulative_bed_gy": cum,
                "cumulative_eqd2_gy": eqd2_gy(cum, rb), "fit_model": "truth",
                "tia_method": "truth", "lea_catcheside_g": k * rb.alpha_beta_gy,
                "alpha_beta_gy": rb.alpha_beta_gy, "repair_half_time_h": rb.t_rep_h})
    return rows


def _pet_rows(pt: PatientTruth, pid: str) -> list[dict]:
    volumes = pt.cycles[0].voi_volume_ml
    values = {(voi, "uptake"): {"suvmean": suv, "mtv_ml": volumes[voi],
                                "tla": suv * volumes[voi]}
              for voi, suv in pt.pet.suv.items() if voi != "remainder" and voi in volumes}
    lesions = [v for (voi, _), v in values.items() if voi.startswith("lesion_")]
    if lesions:
        values["tumor_total", "burden"] = {
            "lesion_count": len(lesions), "total_volume_ml": sum(v["mtv_ml"] for v in lesions),
            "total_tla": sum(v["tla"] for v in lesions)}
    return [{"id": stable_hash("truth-pet", pid, voi, cls, name), "patient_id": pid, "cycle": 1,
             "voi": voi, "image_kind": "pet", "feature_class": cls, "feature": name,
             "value": float(value), "engine": METHOD}
            for (voi, cls), named in values.items() for name, value in named.items()]
