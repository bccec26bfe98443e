"""Benchmark: one full-size synthetic patient-cycle (4 SPECT/CT time points) from ingested
images to dose in the lake, rigid vs deformable registration, with where the time goes.

    python benchmarks/bench_dosimetry_patient.py [--small]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig


def main() -> None:
    small = "--small" in sys.argv
    pseudo = Pseudonymizer(key="theralake-benchmark-key")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cohort"
        generate_cohort(SynthConfig(patients=1, cycles=1, seed=5, small=small), out,
                        progress=False)
        base = Lake(Path(tmp) / "lake")
        t0 = time.perf_counter()
        ingest(out, base, IngestOptions(show_progress=False), pseudo)
        print(f"ingest: {time.perf_counter() - t0:.1f} s")
        pid = pseudo.patient_id("SYN0001")
        fwhm = float(pd.read_parquet(out / "truth" / "patients.parquet").spect_fwhm_mm.iloc[0])
        rows = []
        for reg in ("rigid", "deformable"):
            lake_dir = Path(tmp) / f"lake_{reg}"
            shutil.copytree(base.path, lake_dir)
            config = load_config(registration=reg, method="vsv",
                                 partial_volume={"method": "gtm", "fwhm_mm": fwhm})
            t0 = time.perf_counter()
            res = run_cycle(Lake(lake_dir), pid, 1, config)
            total = time.perf_counter() - t0
            rows.append({"registration": reg, "total_s": total, **res.seconds})
        table = pd.DataFrame(rows).set_index("registration").round(1)
        print(table.T.to_string())
        ratio = table.loc["deformable", "total_s"] / table.loc["rigid", "total_s"]
        print(f"deformable / rigid time ratio: {ratio:.2f}; target < 120 s per patient-cycle")


if __name__ == "__main__":
    main()
