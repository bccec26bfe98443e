"""Generate a synthetic cohort on disk: images, clinical CSVs and the truth folder.

Output layout (``out`` = the --out folder)::

    out/clinical.csv  outcomes.csv  administrations.csv  calibration.csv  mapping.yaml
    out/<PatientID>/<session>/{CT,PT,NM,SEG}/*.dcm     (DICOM; session PET0 or C<c>TP<t>)
    out/<PatientID>/<session>_{CT,PT,NM,SEG}.nii.gz     (--format nifti, + .json sidecars)
    out/truth/*.parquet                                  (cohort truth tables, long format)
    out/truth/images/<PatientID>.parquet                 (label maps, TIA and dose maps)
    out/truth/outcome_model.json
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from rich.progress import Progress

from theralake.synth.config import SynthConfig
from theralake.synth.dicom_writer import write_session_dicom
from theralake.synth.imaging import Session, dose_map, render_sessions, tia_map
from theralake.synth.nifti_writer import write_session_nifti
from theralake.synth.outcomes import OUTCOME_PARAMS
from theralake.synth.patient import (
    CAMERAS,
    SPECT_FWHM_NOMINAL_MM,
    PatientTruth,
    simulate_patient,
    voi_labels,
)
from theralake.synth.phantoms import write_phantoms
from theralake.synth.tissues import TISSUES
from theralake.synth.truth import image_row, patient_tables

log = logging.getLogger(__name__)



@dataclass
class CohortResult:
    """What a generation run produced."""

    out: Path
    patients: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


def _label_names(pt: PatientTruth) -> dict[str, str]:
    names = {str(k): t.name for k, t in TISSUES.items()}
    for n in pt.lesion_names:
        names[str(voi_labels([n])[n][0])] = n
    return names


def table_rows(cfg: SynthConfig, pt: PatientTruth) -> tuple[dict, dict, list[dict]]:
    """The patient's rows of clinical.csv, outcomes.csv and administrations.csv."""
    clinical = {"PatientID": pt.patient_id, "sex": "M",
                "n_lesions_baseline": len(pt.lesion_info), **pt.clinical.as_row()}
    admins = [{"PatientID": pt.patient_id, "nuclide": "Ga-68",
               "activity_mbq": round(pt.pet.activity_mbq, 3),
               "administration_datetime": pt.pet.injection.isoformat(),
               "pharmaceutical": "Ga-68 PSMA-11", "purpose": "diagnostic",
               "cycle": None}]  # ingest places it before cycle 1
    for cyc in pt.cycles:
        admins.append({"PatientID": pt.patient_id, "nuclide": cfg.nuclide,
                       "activity_mbq": round(cyc.activity_mbq, 3),
                       "administration_datetime": cyc.administration.isoformat(),
                       "pharmaceutical": "Lu-177 PSMA-617", "purpose": "therapy",
                       "cycle": cyc.cycle})
    return clinical, dict(pt.outcome), admins


def write_tables(out: Path, cfg: SynthConfig, clinical: list[dict], outcomes: list[dict],
                 admins: list[dict]) -> None:
    """clinical.csv, outcomes.csv, administrations.csv, calibration.csv and mapping.yaml."""
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(clinical).to_csv(out / "clinical.csv", index=False)
    pd.DataFrame(outcomes).to_csv(out / "outcomes.csv", index=False)
    pd.DataFrame(admins).to_csv(out / "administrations.csv", index=False)
    pd.DataFrame([{"camera": c, "nuclide": cfg.nuclide, "cps_per_mbq": v,
                   "fwhm_mm": SPECT_FWHM_NOMINAL_MM}
                  for c, v in sorted(CAMERAS.items())]).to_csv(out / "calibration.csv",
                                                                index=False)
    _density_phantom().to_csv(out / "ct_density_phantom.csv", index=False)
    mapping = {"clinical": {"file": "clinical.csv", "patient_id": "PatientID", "text": ["sex"]},
               "outcomes": {"file": "outcomes.csv", "patient_id": "PatientID"},
               "administrations": {"file": "administrations.csv", "patient_id": "PatientID"},
               "calibration": {"file": "calibration.csv"}}
    (out / "mapping.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))


def _density_phantom() -> pd.DataFrame:
    """The synthetic scanner's CT density calibration: each tissue's mean CT number and mass
    density, as a clinic measures its scanner on a density phantom (a bone lesion's CT number
    varies, its density does not: the calibration can only approximate it)."""
    rows = sorted({(t.hu, t.density, t.name) for t in TISSUES.values()})
    return pd.DataFrame(rows, columns=["hu", "density_g_cm3", "tissue"]).drop_duplicates(
        "hu").reset_index(drop=True)


def generate_patient(cfg: SynthConfig, index: int, out: Path) -> tuple[PatientTruth, dict]:
    """Simulate, render and write one patient; returns its truth and truth tables."""
    pt = simulate_patient(cfg, index)
    tables = patient_tables(pt)
    images = []
    pvs = []
    names = _label_names(pt)
    imaged: dict[int, int] = {}  # SPECT/CTs written so far per cycle
    for s in render_sessions(pt, cfg.seed, cfg.small, cfg.spect_grids, cfg.projections):
        nth = n_imaged = 0
        if s.kind == "SPECT":
            nth = imaged[s.cycle] = imaged.get(s.cycle, 0) + 1
            n_imaged = sum(tp.imaged for tp in pt.cycles[s.cycle - 1].time_points)
        _write(cfg, pt, s, out, writes_contours(cfg.contours, s, nth, n_imaged))
        if not s.pv.empty and s.projections is None:  # the truth of a written recon
            pvs.append(s.pv)
        images.append(image_row(pt.patient_id, s.cycle, s.tag, "labels", "label",
                                s.labels, s.ct_grid, names))
    for cyc in pt.cycles:
        assert cyc.anatomy is not None
        ref = f"C{cyc.cycle}TP1"
        tia = tia_map(cyc)
        images.append(image_row(pt.patient_id, cyc.cycle, ref, "tia_map", "MBq*h/voxel", tia,
                                cyc.anatomy.grid))
        images.append(image_row(pt.patient_id, cyc.cycle, ref, "dose_map", "Gy",
                                dose_map(cyc, tia), cyc.anatomy.grid))
        images.append(image_row(pt.patient_id, cyc.cycle, ref, "reference_labels", "label",
                                cyc.anatomy.labels, cyc.anatomy.grid, names))
    tables["partial_volume"] = pd.concat(pvs, ignore_index=True) if pvs else pd.DataFrame()
    img_dir = out / "truth" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(images).to_parquet(img_dir / f"{pt.patient_id}.parquet", index=False)
    return pt, tables


def writes_contours(where: str, s: Session, nth: int, n_imaged: int) -> bool:
    """Whether a session gets its contours (SEG), by ``--contours`` (``nth``: the session's
    1-based place among its cycle's SPECT/CTs, of ``n_imaged``)."""
    if s.kind == "PET":
        return where in ("all", "pet")
    return {"all": True, "first": nth == 1, "later": nth == min(2, n_imaged),
            "cycle1": s.cycle == 1 and nth == 1}.get(where, False)


def _write(cfg: SynthConfig, pt: PatientTruth, s: Session, out: Path, seg: bool) -> None:
    if cfg.fmt == "nifti":
        write_session_nifti(pt, s, out, seg)
    else:
        write_session_dicom(pt, s, out, cfg.seed, seg)


def _patient_job(cfg: SynthConfig, index: int, out: Path) -> tuple[str, dict, tuple]:
    """One patient written to ``out``: its id, truth tables and table rows (picklable)."""
    pt, tables = generate_patient(cfg, index, out)
    return pt.patient_id, tables, table_rows(cfg, pt)


def generate_cohort(cfg: SynthConfig, out: Path, progress: bool = True, workers: int = 1
                    ) -> CohortResult:
    """Write a whole cohort to ``out`` (created if needed), patients on ``workers`` processes
    (the output does not depend on them)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = CohortResult(out)
    clinical, outcomes, admins = [], [], []
    acc: dict[str, list[pd.DataFrame]] = {}
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(Progress(disable=not progress, transient=True))
        task = bar.add_task("synthetic patients", total=cfg.patients)
        if workers > 1 and cfg.patients > 1:
            pool = stack.enter_context(ProcessPoolExecutor(
                min(workers, cfg.patients), mp_context=multiprocessing.get_context("spawn")))
            jobs = pool.map(_patient_job, *zip(*[(cfg, i, out) for i in range(cfg.patients)],
                                                strict=True))
        else:
            jobs = (_patient_job(cfg, i, out) for i in range(cfg.patients))
        for patient_id, tables, (c_row, o_row, a_rows) in jobs:  # in patient order
            res.patients.append(patient_id)
            for k, v in tables.items():
                acc.setdefault(k, []).append(v)
            clinical.append(c_row)
            outcomes.append(o_row)
            admins.extend(a_rows)
            bar.advance(task)
            log.info("wrote %s", patient_id)
    write_tables(out, cfg, clinical, outcomes, admins)
    if cfg.projections:
        write_phantoms(out / "phantoms", cfg.small, cfg.projections, cfg.seed)
    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    for k, frames in acc.items():
        frames = [f for f in frames if not f.empty]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        df.to_parquet(truth / f"{k}.parquet", index=False)
        res.tables[k] = df
    (truth / "outcome_model.json").write_text(json.dumps({
        "params": OUTCOME_PARAMS, "documentation": "synth/README.md#outcome-model",
        "config": {"patients": cfg.patients, "cycles": cfg.cycles, "seed": cfg.seed,
                   "small": cfg.small, "time_points_h": list(cfg.time_points_h),
                   "missing_prob": cfg.missing_prob, "activity_gbq": cfg.activity_gbq,
                   "format": cfg.fmt, "contours": cfg.contours,
                   "spect_grids": cfg.spect_grids, "projections": cfg.projections},
    }, indent=2, default=str))
    return res
