"""Benchmark: dosimetry accuracy over a cohort of full-size synthetic patients.

Synthesises ``--patients`` full-size patients (one cycle, 4 SPECT/CT time points), ingests them
and runs the patient-cycle dosimetry (GTM partial-volume correction with each camera's
resolution) by LDM and by VSV (rigid registration: organ TACs use each time point's own VOIs,
so registration only shapes the voxel maps; its time is in bench_dosimetry_patient.py), then
prints the error of TIA and absorbed dose against the generator's truth per organ (median and
worst over the cohort) and for lesions of 5 mL or more.

    python benchmarks/bench_dosimetry_accuracy.py [--patients 10] [--small] [--out DIR]
        [--time-points 4,24,48,168] [--contours all|first|later|cycle1|pet]

``--time-points`` and ``--contours`` measure the other protocols of the test matrix at full
size (contours on one CT only, one to five time points). The ``vsv-camera`` run takes the
SPECT resolution from the camera's calibration (the default flow) instead of the truth.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
from rich.progress import track

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig, parse_time_points

ORGANS = ["kidney_left", "kidney_right", "liver", "spleen", "parotid_gland_left",
          "parotid_gland_right", "submandibular_gland_left", "submandibular_gland_right",
          "urinary_bladder", "red_marrow", "body"]
RUNS = {"ldm": {"method": "ldm", "registration": "rigid"},
        "vsv": {"method": "vsv", "registration": "rigid"},
        "vsv-camera": {"method": "vsv", "registration": "rigid", "partial_volume": {}},
        # the generator's truth has no photon cross-dose: VSV without the far photon kernel
        "vsv-near-photons": {"method": "vsv", "registration": "rigid", "photon_reach_mm": 0.0}}


def errors(out: Path, lake: Lake, pseudo: Pseudonymizer) -> pd.DataFrame:
    """Our organ rows against the truth, one row per patient, VOI and run."""
    truth = pd.read_parquet(out / "truth" / "dosimetry.parquet")
    truth["patient_id"] = truth.PatientID.map(pseudo.patient_id)
    vois = pd.read_parquet(out / "truth" / "vois.parquet")[["PatientID", "cycle", "voi",
                                                            "volume_ml"]]
    truth = truth.merge(vois, on=["PatientID", "cycle", "voi"], how="left")
    ours = lake.read("organ_dosimetry")
    merged = ours.merge(truth, on=["patient_id", "cycle", "voi"], suffixes=("", "_true"))
    merged["tia_error_pct"] = 100 * (merged.tia_mbq_h / merged.tia_mbq_h_true - 1)
    merged["dose_error_pct"] = 100 * (merged.absorbed_dose_gy / merged.absorbed_dose_gy_true - 1)
    return merged


def summary(merged: pd.DataFrame, run_of: dict[str, str]) -> pd.DataFrame:
    merged = merged.assign(run=merged.params_hash.map(run_of))
    lesions = merged[merged.voi.str.startswith("lesion_") & (merged.volume_ml >= 5.0)]
    organs = merged[merged.voi.isin(ORGANS)]
    rows = []
    for (run, voi), g in list(organs.groupby(["run", "voi"])) + [
            ((run, "lesions >= 5 mL"), g) for run, g in lesions.groupby("run")]:
        rows.append({"run": run, "voi": voi, "n": len(g),
                     "TIA median %": g.tia_error_pct.median(),
                     "TIA worst %": g.tia_error_pct.loc[g.tia_error_pct.abs().idxmax()],
                     "dose median %": g.dose_error_pct.median(),
                     "dose worst %": g.dose_error_pct.loc[g.dose_error_pct.abs().idxmax()]})
    return pd.DataFrame(rows).set_index(["run", "voi"]).round(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="keep the cohort and lake here")
    ap.add_argument("--time-points", default="4,24,48,168")
    ap.add_argument("--contours", default="all")
    ap.add_argument("--runs", default=",".join(RUNS))
    a = ap.parse_args()
    pseudo = Pseudonymizer(key="theralake-benchmark-key")
    with tempfile.TemporaryDirectory() as tmp:
        root = a.out or Path(tmp)
        out, lake = root / "cohort", Lake(root / "lake")
        t0 = time.perf_counter()
        if not (out / "truth").exists():  # an --out folder from an earlier run is reused
            generate_cohort(SynthConfig(patients=a.patients, cycles=1, seed=a.seed,
                                        small=a.small, contours=a.contours,
                                        time_points_h=parse_time_points(a.time_points)), out,
                            progress=True)
            ingest(out, lake, IngestOptions(show_progress=True), pseudo)
        print(f"synthesis and ingest: {time.perf_counter() - t0:.0f} s")
        cameras = pd.read_parquet(out / "truth" / "patients.parquet")
        runs = {name: RUNS[name] for name in a.runs.split(",")}
        run_of, seconds = {}, {name: [] for name in runs}
        for _, p in track(list(cameras.iterrows()), description="dosimetry"):
            for name, settings in runs.items():
                truth_fwhm = {"method": "gtm", "fwhm_mm": float(p.spect_fwhm_mm)}
                config = load_config(**{"partial_volume": truth_fwhm, **settings})
                t0 = time.perf_counter()
                res = run_cycle(lake, pseudo.patient_id(p.PatientID), 1, config)
                seconds[name].append(time.perf_counter() - t0)
                run_of[res.organ_rows[0]["params_hash"]] = name
        merged = errors(out, lake, pseudo)
        for name, times in seconds.items():
            print(f"{name}: {sum(times) / len(times):.0f} s per patient-cycle")
        with pd.option_context("display.width", 140):
            print(summary(merged, run_of).to_string())


if __name__ == "__main__":
    main()
