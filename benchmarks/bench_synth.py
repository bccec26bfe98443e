"""Benchmark: time to generate one synthetic patient (2 cycles, 4 SPECT/CT time points).

Targets (issue 3): full size under 60 s on 2 cores, ``--small`` under 5 s.
Run: ``python benchmarks/bench_synth.py [--full-only|--small-only] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def _run(small: bool, fmt: str) -> dict[str, float]:
    from theralake.synth.cohort import generate_patient
    from theralake.synth.config import SynthConfig

    cfg = SynthConfig(patients=1, cycles=2, seed=11, small=small, fmt=fmt)
    out = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        generate_patient(cfg, 0, out)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n_files = sum(1 for _ in out.rglob("*") if _.is_file())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"seconds": dt, "cpu_seconds": cpu, "files": n_files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full-only", action="store_true")
    ap.add_argument("--small-only", action="store_true")
    ap.add_argument("--format", default="dicom")
    args = ap.parse_args()
    import theralake.synth.cohort  # noqa: F401 - import time is not part of the figures

    print(f"cores available: {len(os.sched_getaffinity(0))}")
    cases = []
    if not args.full_only:
        cases.append(("small", True, 5.0))
    if not args.small_only:
        cases.append(("full", False, 60.0))
    for name, small, target in cases:
        r = _run(small, args.format)
        print(f"{name:5s} {args.format}: wall {r['seconds']:6.1f} s, CPU {r['cpu_seconds']:6.1f} s "
              f"for 1 patient x 2 cycles ({r['files']} files); target < {target:.0f} s; "
              f"wall/target {r['seconds'] / target:.2f}")
    print("(wall > CPU means other processes share the cores; CPU time is the figure "
          "an idle 2-core machine would show, the code being single-threaded)")


if __name__ == "__main__":
    main()
