"""Benchmark: the voxel dose network against the SUV-scaled baseline on held-out patients.

Synthesises ``--patients`` patients (one cycle; ``--full`` for full-size phantoms), ingests
them, runs the cycle-1 dosimetry (LDM, rigid registration, the generator's contours), then
``train_voxel`` (the ``theralake train --task dose --model voxel`` path: patient-level split,
fit, MLflow run and registry) and prints, for the held-out patients, the median absolute
relative error of the organ and lesion mean dose per GBq and the voxel MAE in the body, of the
network and of k x SUV, with their ratio (network / baseline: below 1, the network is better),
and the training time. Torch runs on ``--threads`` (default 1).

    python benchmarks/bench_dose_voxel.py [--patients 20] [--epochs 60] [--full] [--out DIR]
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
from theralake.modeling.dataset import load_modeling_config
from theralake.modeling.train_voxel import train_voxel
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig

ROWS = {"organ VOI mean, median |rel. error|": "organ_median_abs_rel_error",
        "lesion VOI mean, median |rel. error|": "lesion_median_abs_rel_error",
        "body voxel MAE (Gy/GBq)": "voxel_mae_gy_per_gbq"}


def prepare(root: Path, patients: int, seed: int, small: bool) -> Lake:
    """The cohort's lake with cycle-1 dosimetry (an existing ``root`` is reused)."""
    out, lake = root / "cohort", Lake(root / "lake")
    pseudo = Pseudonymizer(key="theralake-benchmark-key")
    if (root / "ready").exists():
        return lake
    t0 = time.perf_counter()
    generate_cohort(SynthConfig(patients=patients, cycles=1, seed=seed, small=small), out,
                    progress=True)
    ingest(out, lake, IngestOptions(show_progress=True), pseudo)
    t1 = time.perf_counter()
    config = load_config(method="ldm", registration="rigid", voxel_model="mono",
                         tac_vois="reference", segmentation={"backend": "none"})
    for pid in track(sorted(lake.read("patients").patient_id), description="dosimetry"):
        run_cycle(lake, pid, 1, config)
    print(f"synthesis and ingest {t1 - t0:.0f} s, dosimetry {time.perf_counter() - t1:.0f} s")
    (root / "ready").touch()
    return lake


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--seed", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's")
    ap.add_argument("--held-out", type=float, default=None, help="fraction; default: config's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="full-size phantoms (slow)")
    ap.add_argument("--out", type=Path, default=None, help="keep (and reuse) the lake here")
    a = ap.parse_args()
    cfg = load_modeling_config()
    cfg["voxel_dose"]["threads"] = a.threads
    if a.held_out is not None:
        cfg["voxel_dose"]["held_out_fraction"] = a.held_out
    with tempfile.TemporaryDirectory() as tmp:
        lake = prepare(a.out or Path(tmp), a.patients, a.seed, not a.full)
        t0 = time.perf_counter()
        res = train_voxel(lake, cfg, seed=0, epochs=a.epochs)
        total = time.perf_counter() - t0
    m = res.metrics
    table = pd.DataFrame([{"": label, "network": m[key], "baseline": m[f"baseline_{key}"],
                           "ratio": m[key] / m[f"baseline_{key}"]} for label, key in ROWS.items()])
    print(f"\n{len(res.train_patients)} training, {len(res.held_out_patients)} held-out patients; "
          f"{res.model.epochs} epochs; training {res.model.train_seconds_:.0f} s, whole call "
          f"(samples, fit, scoring, MLflow) {total:.0f} s; {res.model_name} version "
          f"{res.version}")
    with pd.option_context("display.width", 120):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print("\nper predictor and VOI group (held-out):")
        print(res.summary.round(3).to_string())


if __name__ == "__main__":
    main()
