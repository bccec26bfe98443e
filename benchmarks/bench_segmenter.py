"""Benchmark: the CT organ segmenter's held-out Dice after a CPU training budget.

Synthesises ``--patients`` full-size patients (one cycle, 4 SPECT/CT time points, so 4 CTs per
patient; ``--small`` for the coarse phantoms), ingests them, then runs ``train_segmenter`` (the
``theralake train-seg`` path: patient-level split, fit, MLflow run and registry) for
``--minutes`` on ``--threads`` torch threads and prints the Dice per organ on the held-out
patients' CTs, with the training time and steps.

    python benchmarks/bench_segmenter.py [--patients 10] [--minutes 30] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from theralake.dosimetry.segmentation import SegmenterConfig
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake
from theralake.modeling.segmentation_training import train_segmenter
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig


def prepare(root: Path, patients: int, seed: int, small: bool) -> Lake:
    """The cohort's lake (an existing, complete ``root`` is reused)."""
    lake = Lake(root / "lake")
    if (root / "ready").exists():
        return lake
    t0 = time.perf_counter()
    generate_cohort(SynthConfig(patients=patients, cycles=1, seed=seed, small=small),
                    root / "cohort", progress=True)
    ingest(root / "cohort", lake, IngestOptions(show_progress=True),
           Pseudonymizer(key="theralake-benchmark-key"))
    print(f"synthesis and ingest {time.perf_counter() - t0:.0f} s")
    (root / "ready").touch()
    return lake


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--seed", type=int, default=500)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--epochs", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--small", action="store_true", help="coarse phantoms (fast, for a check)")
    ap.add_argument("--prepare-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="keep (and reuse) the lake here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        lake = prepare(a.out or Path(tmp), a.patients, a.seed, a.small)
        if a.prepare_only:
            return
        config = SegmenterConfig(max_minutes=a.minutes, max_epochs=a.epochs)
        t0 = time.perf_counter()
        res = train_segmenter(lake, config, val_fraction=a.val_fraction)
        total = time.perf_counter() - t0
    print(f"\n{res.n_train_cases} training CTs ({len(res.train_patients)} patients), "
          f"{res.n_val_cases} held-out CTs ({len(res.val_patients)} patients); "
          f"{res.epochs} epochs, {len(res.segmenter.history_)} steps, training "
          f"{res.train_seconds / 60:.1f} min on {a.threads} thread(s), {total / 60:.1f} min "
          "with data loading and scoring")
    print(f"{'organ':<16}{'Dice mean':>10}{'min':>8}{'target':>8}")
    for organ, value in res.dice.items():
        lo = np.nanmin([d[organ] for d in res.dice_per_case])
        print(f"{organ:<16}{value:>10.3f}{lo:>8.3f}{0.85:>8.2f}")


if __name__ == "__main__":
    main()
