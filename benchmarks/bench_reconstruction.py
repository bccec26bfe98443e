"""Benchmark: dosimetry from projections against dosimetry from the imported reconstruction.

The same synthetic patients (same seed, hence the same truth) are written twice: with their
raw acquisitions (``--projections``: ingest, calibrate on the cameras' phantoms, reconstruct
with PyTomography) and with the generator's reconstructed SPECT (the baseline: a Gaussian
blur of the truth at the camera's resolution, ingested as counts). Both run the same
patient-cycle dosimetry (LDM, GTM partial-volume correction with each SPECT's resolution) and
the benchmark prints the TIA error against the truth per organ, side by side, with the time
each reconstruction took.

    python benchmarks/bench_reconstruction.py [--patients 1] [--small] [--views 120]
        [--iterations 4] [--subsets 8] [--time-points 4,24,48,168] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.reconstruction import ReconSettings
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake
from theralake.pipelines.spect import calibrate, reconstruct_cycle
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig, parse_time_points

ORGANS = ["kidney_left", "kidney_right", "liver", "spleen", "parotid_gland_left",
          "submandibular_gland_left", "urinary_bladder", "red_marrow", "body"]
PSEUDO = Pseudonymizer(key="bench-reconstruction-key")


def _errors(lake: Lake, out: Path, patients: list[str]) -> pd.DataFrame:
    truth = pd.read_parquet(out / "truth" / "dosimetry.parquet")
    vois = pd.read_parquet(out / "truth" / "vois.parquet")
    config = load_config(registration="rigid", method="ldm", voxel_model="mono",
                         partial_volume={"method": "gtm"}, photon_reach_mm=0.0)
    rows = []
    for raw in patients:
        ours = pd.DataFrame(run_cycle(lake, PSEUDO.patient_id(raw), 1, config).organ_rows)
        mine = truth[(truth.PatientID == raw) & (truth.cycle == 1)]
        merged = ours.merge(mine, on="voi", suffixes=("", "_true"))
        merged["error"] = merged.tia_mbq_h / merged.tia_mbq_h_true - 1
        size = vois[(vois.PatientID == raw) & (vois.cycle == 1)].set_index("voi").volume_ml
        merged["volume_ml"] = merged.voi.map(size)
        rows.append(merged[["voi", "error", "volume_ml"]].assign(patient=raw))
    return pd.concat(rows, ignore_index=True)


def _summary(errors: pd.DataFrame) -> pd.Series:
    organs = errors[errors.voi.isin(ORGANS)].groupby("voi").error.median()
    lesions = errors[errors.voi.str.startswith("lesion_") & (errors.volume_ml >= 5.0)]
    organs["lesions >= 5 mL (median)"] = lesions.error.median()
    return organs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--views", type=int, default=120)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--subsets", type=int, default=8)
    parser.add_argument("--time-points", default="4,24,48,168")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-recon-"))
    common = {"patients": args.patients, "cycles": 1, "seed": args.seed, "small": args.small,
              "time_points_h": parse_time_points(args.time_points)}
    settings = ReconSettings(iterations=args.iterations, subsets=args.subsets)
    results = {}
    for name, extra in (("imported", {}), ("projections", {"projections": args.views})):
        out = root / name
        t0 = time.perf_counter()
        cohort = generate_cohort(SynthConfig(**common, **extra), out, progress=False)
        lake = Lake(out / "lake")
        report = ingest(out, lake, IngestOptions(show_progress=False), PSEUDO)
        assert not report.skipped, report.summary()
        print(f"{name}: synthesised and ingested in {time.perf_counter() - t0:.0f} s")
        if extra:
            t0 = time.perf_counter()
            calibrations, curves, _ = calibrate(
                lake, sorted(p for p in (out / "phantoms").iterdir()), settings,
                pseudonymizer=PSEUDO)
            cps = ", ".join(f"{c['cps_per_mbq']:.2f}" for c in calibrations)
            fwhm = sorted({round(r["resolution_fwhm_mm"], 1) for r in curves})
            print(f"  calibrated {len(calibrations)} cameras in {time.perf_counter() - t0:.0f}"
                  f" s: {cps} cps/MBq; resolution {fwhm} mm")
            t0 = time.perf_counter()
            n = sum(len(reconstruct_cycle(lake, PSEUDO.patient_id(p), 1, settings))
                    for p in cohort.patients)
            print(f"  {n} reconstructions, {(time.perf_counter() - t0) / n:.0f} s each "
                  f"({args.views} views, OSEM {args.iterations} x {args.subsets})")
        results[name] = _summary(_errors(lake, out, cohort.patients))
    table = pd.DataFrame(results).mul(100).round(1)
    print("\nTIA error against the truth (%, median over patients)")
    print(table.to_string())


if __name__ == "__main__":
    main()
