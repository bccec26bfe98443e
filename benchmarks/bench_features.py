"""Benchmark: the feature job's throughput and its overhead over bare pyradiomics.

1. Overhead: the same (image, mask) pairs through ``extract_radiomics`` (validation, IBSI
   mapping, conversion) and through pyradiomics' extractor alone, side by side.
2. Throughput: ``run_features`` over a small synthetic cohort (after its dosimetry) with 1 and
   2 worker processes: features per second, patients per hour, scaling ratio.

    python benchmarks/bench_features.py [--patients 4] [--full]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.dosimetry.voi_activity import mask_on
from theralake.features.job import run_features
from theralake.features.radiomics import _extractor, extract_radiomics, load_feature_set
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, Volume
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig


def overhead(lake: Lake, repeats: int = 4) -> None:
    fs = load_feature_set("default")
    ct = lake.read("images", "kind = 'ct'").iloc[0]
    image = Volume.from_row(ct.to_dict())
    vois = lake.read("vois", "image_id = ? AND voi IN ('liver', 'spleen', 'kidney_left')",
                     [ct.id])
    pairs = [(image, mask_on(Volume.from_row(v.to_dict()), image)) for _, v in vois.iterrows()]
    extractor = _extractor(json.dumps(fs.params_for("ct"), sort_keys=True))
    bare = ours = 0.0
    for k in range(repeats):
        for vol, mask in pairs:
            for which in (("bare", "ours") if k % 2 == 0 else ("ours", "bare")):  # fair order
                t0 = time.perf_counter()
                if which == "bare":
                    extractor.execute(sitk.Cast(vol.to_sitk(), sitk.sitkFloat64),
                                      vol.like(mask.astype("uint8")).to_sitk(), label=1)
                    bare += time.perf_counter() - t0
                else:
                    extract_radiomics(vol, mask, "ct", fs)
                    ours += time.perf_counter() - t0
    print(f"radiomics of {len(pairs)} CT VOIs x {repeats}: bare pyradiomics {bare:.2f} s, "
          f"theralake wrapper {ours:.2f} s -> overhead {100 * (ours / bare - 1):+.1f} % "
          "(target < 10 %)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--full", action="store_true", help="full-size patients")
    a = ap.parse_args()
    pseudo = Pseudonymizer(key="theralake-benchmark-key")
    with tempfile.TemporaryDirectory() as tmp:
        out, base = Path(tmp) / "syn", Lake(Path(tmp) / "lake")
        generate_cohort(SynthConfig(patients=a.patients, cycles=1, seed=9, small=not a.full),
                        out, progress=False)
        ingest(out, base, IngestOptions(show_progress=False), pseudo)
        config = load_config(method="ldm", registration="rigid")
        ids = sorted(base.sql("SELECT DISTINCT patient_id FROM images").patient_id)
        for pid in ids:
            run_cycle(base, pid, 1, config)
        overhead(base)
        times = {}
        for workers in (1, 2):
            folder = Path(tmp) / f"lake{workers}"
            shutil.copytree(base.path, folder)
            t0 = time.perf_counter()
            counts = run_features(Lake(folder), workers=workers, progress=False)
            times[workers] = time.perf_counter() - t0
            print(f"{workers} worker(s): {counts['features']} features of {len(ids)} patients "
                  f"in {times[workers]:.1f} s = {counts['features'] / times[workers]:.0f} "
                  f"features/s, {3600 * len(ids) / times[workers]:.0f} patients/h")
        print(f"scaling 1 -> 2 workers: {times[1] / times[2]:.2f}x")


if __name__ == "__main__":
    main()
