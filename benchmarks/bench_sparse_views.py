"""Benchmark: a quarter of the projections or of the counts, with the projection networks.

Synthesises ``--patients`` patients with full acquisitions (``--views``), trains the view
synthesis network (every ``--factor``-th view kept) and the denoiser (a quarter of the counts)
on all but ``--test-patients`` of them, and reconstructs each held-out acquisition from all
views (the reference); from the sparse views alone, and filled in by linear interpolation and
by the network; from a quarter of the counts (binomial thinning), plain and denoised. It prints
the views' error and, per organ and for the lesions, the activity difference against the full
acquisition's reconstruction and the voxel noise (coefficient of variation in the liver).

    python benchmarks/bench_sparse_views.py [--patients 8] [--test-patients 2] [--views 120]
        [--factor 4] [--minutes 5] [--full-size] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from theralake.dosimetry.voi_activity import mask_on
from theralake.ingest.projection_networks import (
    Denoiser,
    ProjectionNetworkConfig,
    ViewSynthesizer,
    interpolate_views,
    nrmse,
    sparse_of,
    thinned,
)
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.reconstruction import ReconSettings
from theralake.ingest.runner import IngestOptions, ingest
from theralake.ingest.spect_step import NetworkModel, compute_reconstruction, read_acquisitions
from theralake.lake import Lake, Volume, views
from theralake.pipelines.spect import calibrate
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig

PSEUDO = Pseudonymizer(key="bench-sparse-views-key")
VOIS = ("kidney_left", "kidney_right", "liver", "spleen", "parotid_gland_left", "body")


class LinearViews:
    """Linear interpolation in the network's place (the baseline)."""

    task = "views"

    def __init__(self, factor: int) -> None:
        self.config = ProjectionNetworkConfig(factor=factor)

    def apply(self, sparse: np.ndarray) -> np.ndarray:
        return interpolate_views(sparse, self.config.factor)


def _sparse(inputs, factor: int):  # noqa: ANN001, ANN202 - AcquisitionInputs
    keep = np.arange(0, len(inputs.geometry.angles_deg), factor)
    windows = inputs.windows.copy()
    for col in ("angles_deg", "radii_mm"):
        windows[col] = [list(np.asarray(v)[keep]) for v in windows[col]]
    return dataclasses.replace(inputs, windows=windows,
                               views={k: v[keep] for k, v in inputs.views.items()})


def _low_count(inputs, fraction: float, rng: np.random.Generator):  # noqa: ANN001, ANN202
    """The acquisition a ``fraction`` of the time would have given (every window thinned,
    the frames that much shorter)."""
    windows = inputs.windows.assign(frame_duration_s=inputs.windows.frame_duration_s * fraction)
    return dataclasses.replace(inputs, windows=windows, views={
        k: thinned(v, fraction, rng) for k, v in inputs.views.items()})


def _liver(lake: Lake, inputs, spect: Volume) -> np.ndarray:  # noqa: ANN001
    row = views.vois_on_image(lake, inputs.ct["id"], ["liver"]).iloc[0].to_dict()
    return ndimage.binary_erosion(mask_on(Volume.from_row(row), spect), iterations=1)


def _cov(spect: Volume, mask: np.ndarray) -> float:
    values = spect.array[mask]
    return float(values.std() / values.mean())


def _activities(lake: Lake, inputs, spect: Volume) -> dict[str, float]:  # noqa: ANN001
    ct = inputs.ct
    found = views.vois_on_image(lake, ct["id"])
    out = {}
    for row in found.to_dict("records"):
        name = row["voi"]
        if name in VOIS or name.startswith("lesion_"):
            mask = mask_on(Volume.from_row(row), spect)
            out[name] = float(spect.array[mask].sum() * spect.voxel_volume_ml) / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--test-patients", type=int, default=2)
    parser.add_argument("--views", type=int, default=120)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-views-"))
    t0 = time.perf_counter()
    cohort = generate_cohort(SynthConfig(patients=args.patients, cycles=1, seed=7,
                                         small=not args.full_size, projections=args.views,
                                         time_points_h=(4.0, 24.0, 96.0)), out, progress=False)
    lake = Lake(out / "lake")
    ingest(out, lake, IngestOptions(show_progress=False), PSEUDO)
    settings = ReconSettings()
    calibrate(lake, sorted((out / "phantoms").iterdir()), settings, pseudonymizer=PSEUDO)
    print(f"{args.patients} patients synthesised, ingested, calibrated in "
          f"{time.perf_counter() - t0:.0f} s")
    test = [PSEUDO.patient_id(p) for p in cohort.patients[-args.test_patients:]]
    acquisitions = {p: read_acquisitions(lake, p, 1)
                    for p in map(PSEUDO.patient_id, cohort.patients)}
    train = [a.views["photopeak"] for p, acqs in acquisitions.items() if p not in test
             for a in acqs]
    config = ProjectionNetworkConfig(task="views", factor=args.factor,
                                     max_minutes=args.minutes, max_epochs=1000)
    network = ViewSynthesizer(config).fit(train)
    print(f"trained on {len(train)} acquisitions in {network.train_seconds_:.0f} s "
          f"({network.epochs_} epochs)")
    denoiser = Denoiser(replace(config, task="denoise", count_fraction=0.25)).fit(train)
    print(f"denoiser trained in {denoiser.train_seconds_:.0f} s ({denoiser.epochs_} epochs)")
    models = {"sparse + linear": NetworkModel(LinearViews(args.factor), "linear interpolation"),
              "sparse + network": NetworkModel(network, "network")}
    rows, view_errors, noise = [], [], []
    rng = np.random.default_rng(3)
    for pid in test:
        for inputs in acquisitions[pid]:
            full_views = inputs.views["photopeak"]
            sparse_views = sparse_of(full_views, args.factor)
            view_errors.append({
                "linear": nrmse(interpolate_views(sparse_views, args.factor), full_views,
                                args.factor),
                "network": nrmse(network.fill(sparse_views), full_views, args.factor)})
            full = compute_reconstruction(inputs, settings).volume
            reference = _activities(lake, inputs, full)
            sparse = _sparse(inputs, args.factor)
            runs = {"sparse alone": compute_reconstruction(sparse, settings).volume}
            runs |= {name: compute_reconstruction(sparse, settings, network=m).volume
                     for name, m in models.items()}
            low = _low_count(inputs, 0.25, rng)
            runs["1/4 counts"] = compute_reconstruction(low, settings).volume
            runs["1/4 counts denoised"] = compute_reconstruction(
                low, settings, network=NetworkModel(denoiser, "denoiser")).volume
            liver = _liver(lake, inputs, full)
            noise.append({"all views": _cov(full, liver)} |
                         {name: _cov(v, liver) for name, v in runs.items()})
            for name, volume in runs.items():
                for voi, mbq in _activities(lake, inputs, volume).items():
                    rows.append({"run": name, "voi": voi if not voi.startswith("lesion_")
                                 else "lesions", "difference": mbq / reference[voi] - 1})
    errors = pd.DataFrame(view_errors).mean()
    print(f"\nsynthesised views' error (NRMSE against the acquired views): network "
          f"{errors['network']:.3f}, linear interpolation {errors['linear']:.3f}")
    print("liver voxel CoV (%): " + ", ".join(
        f"{k} {v:.1f}" for k, v in pd.DataFrame(noise).mean().mul(100).items()))
    table = pd.DataFrame(rows).assign(difference=lambda d: d.difference.abs() * 100)
    print(f"\nactivity difference against all {args.views} views (mean |%|, "
          f"{len(test)} held-out patients x 3 time points)")
    print(table.pivot_table(index="voi", columns="run", values="difference",
                            aggfunc="mean").round(1).to_string())


if __name__ == "__main__":
    main()
