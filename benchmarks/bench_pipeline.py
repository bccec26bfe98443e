"""Benchmark: ``theralake run`` throughput with 1 and 2 workers, and where the time goes.

A synthetic cohort is ingested once; copies of that lake then run dosimetry and features with
1 and 2 workers (local engine, and Ray with ``--ray``). Printed: patients per hour per
configuration, the scaling ratio against 1 worker, and the mean seconds per task of each step
(the figures behind the 10,000-patient plan in docs/scaling.md).

    python benchmarks/bench_pipeline.py [--patients 6] [--cycles 2] [--full-size] [--ray]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from theralake.lake import Lake
from theralake.pipelines.runner import load_pipeline_settings, run_pipeline
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig

SETTINGS = {"dosimetry": {"overrides": {"registration": "rigid"}}, "features": {"set": "fast"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=6)
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--full-size", action="store_true", help="clinical 4 mm grids")
    ap.add_argument("--ray", action="store_true", help="also run the Ray engine")
    args = ap.parse_args()
    settings = load_pipeline_settings(**SETTINGS)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate_cohort(SynthConfig(patients=args.patients, cycles=args.cycles, seed=11,
                                    small=not args.full_size), root / "cohort", progress=False)
        synth_s = time.perf_counter() - t0
        base = Lake(root / "base")
        t0 = time.perf_counter()
        run_pipeline(base, ["ingest"], root / "cohort", settings=settings, progress=False)
        ingest_s = time.perf_counter() - t0
        print(f"{args.patients} patients x {args.cycles} cycles "
              f"({'4 mm' if args.full_size else '8 mm'} grids): synthesis {synth_s:.0f} s, "
              f"ingest {ingest_s:.0f} s ({ingest_s / args.patients:.1f} s per patient)")
        runs = [("local", 1), ("local", 2)] + ([("ray", 1), ("ray", 2)] if args.ray else [])
        rates: dict[tuple[str, int], float] = {}
        for engine, workers in runs:
            lake_path = root / f"{engine}-{workers}"
            shutil.copytree(base.path, lake_path)
            lake = Lake(lake_path)
            t0 = time.perf_counter()
            summary = run_pipeline(lake, ["dosimetry", "features"], None, engine, workers,
                                   settings=settings, progress=False)
            wall = time.perf_counter() - t0
            assert summary.ok, summary.table()
            rates[(engine, workers)] = args.patients / wall * 3600
            per_task = lake.sql("SELECT step, count(*) AS n, avg(seconds) AS s FROM run_log "
                                "WHERE status = 'done' GROUP BY step ORDER BY step")
            steps = ", ".join(f"{r.step} {r.s:.1f} s/task x {r.n}"
                              for r in per_task.itertuples())
            print(f"{engine:<6} {workers} worker(s): {wall:6.1f} s wall, "
                  f"{rates[(engine, workers)]:6.1f} patients/h  ({steps})")
        for engine in ("local", "ray"):
            if (engine, 2) in rates:
                print(f"{engine}: scaling 1 -> 2 workers = "
                      f"{rates[(engine, 2)] / rates[(engine, 1)]:.2f}x (ideal 2.00x)")


if __name__ == "__main__":
    main()
