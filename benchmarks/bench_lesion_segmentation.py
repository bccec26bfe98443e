"""Benchmark: lesions on the therapy SPECT/CT, PET-to-SPECT network against today's thresholds.

Synthesises ``--patients`` patients (one cycle, SPECT/CTs at ``--time-points``; full-size grids
unless ``--small``), ingests them, trains the lesion segmenter as ``theralake train-lesion-seg``
does (PET network, then SPECT fine-tuning with the PET prior; ``--minutes`` each) on all but
``--val-fraction`` of the patients, and scores on the held-out patients' SPECT/CTs, against the
lesions contoured there:

- ``network``: the fine-tuned SPECT network with the registered PET prior (the default);
- ``network_no_prior``: the same without the prior (a patient without PET);
- ``pet_network_on_spect``: the PET network applied to the SPECT, not fine-tuned;
- ``spect_from_scratch``: a SPECT network of the same size and budget without the PET
  pretraining (nor the prior);
- ``adaptive_41``, ``percent_max_41``: the dosimetry's thresholds, outside the contoured organs.

Prints per method the mean Dice per image, the detection rate overall and by lesion size, and
the false positives per image.

    python benchmarks/bench_lesion_segmentation.py [--patients 16] [--minutes 5] [--small]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from theralake.dosimetry.lesion_segmentation import (
    LesionSegmenter,
    LesionSegmenterConfig,
    lesion_components,
    lesion_scores,
    size_bin,
)
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake
from theralake.modeling.lesion_segmentation_training import (
    compare_methods,
    pet_cases,
    spect_cases,
    summarise,
)
from theralake.modeling.segmentation_training import split_patients
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig


def prepare(root: Path, patients: int, seed: int, small: bool, times: tuple[float, ...]
            ) -> Lake:
    """The cohort's lake (an existing, complete ``root`` is reused)."""
    lake = Lake(root / "lake")
    if (root / "ready").exists():
        return lake
    t0 = time.perf_counter()
    generate_cohort(SynthConfig(patients=patients, cycles=1, seed=seed, small=small,
                                time_points_h=times), root / "cohort", progress=True, workers=2)
    ingest(root / "cohort", lake, IngestOptions(show_progress=True),
           Pseudonymizer(key="theralake-benchmark-key"))
    print(f"synthesis and ingest {time.perf_counter() - t0:.0f} s")
    (root / "ready").touch()
    return lake


def variant_scores(name: str, segmenter: LesionSegmenter, network: str, cases: list,
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-lesion and per-image scores of one network applied without a prior."""
    c = segmenter.config
    lesions, images = [], []
    for n, sc in enumerate(cases):
        case = sc.case
        prob = segmenter.probability(case.ct, case.uptake, network=network).array
        found = lesion_components(prob >= c.probability, prob, case.ct.voxel_volume_ml,
                                  c.min_volume_ml)
        s = lesion_scores(sc.lesions, [f.mask for f in found], case.ct.voxel_volume_ml)
        images.append({"image": n, "method": name, "dice": s.dice,
                       "false_positives": s.false_positives})
        lesions += [{"image": n, "method": name, "volume_ml": v, "size": size_bin(v),
                     "detected": d, "dice": b}
                    for v, d, b in zip(s.volumes_ml, s.detected, s.best_dice, strict=True)]
    return pd.DataFrame(lesions), pd.DataFrame(images)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=16)
    ap.add_argument("--seed", type=int, default=700)
    ap.add_argument("--time-points", default="24", help="SPECT/CT times (h), comma-separated")
    ap.add_argument("--minutes", type=float, default=5.0, help="per network")
    ap.add_argument("--epochs", type=int, default=10_000)
    ap.add_argument("--spacing-mm", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--small", action="store_true", help="coarse phantoms (fast, for a check)")
    ap.add_argument("--out", type=Path, default=None, help="keep (and reuse) the lake here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    times = tuple(float(t) for t in a.time_points.split(","))
    config = LesionSegmenterConfig(spacing_mm=a.spacing_mm, pet_epochs=a.epochs,
                                   spect_epochs=a.epochs, pet_minutes=a.minutes,
                                   spect_minutes=a.minutes)
    with tempfile.TemporaryDirectory() as tmp:
        lake = prepare(a.out or Path(tmp), a.patients, a.seed, a.small, times)
        pets = pet_cases(lake)
        train_p, val_p = split_patients([c.patient_id for c in pets], a.val_fraction, 0)
        seg = LesionSegmenter(config).fit_pet([c for c in pets if c.patient_id in train_p])
        spects = spect_cases(lake, seg)
        train = [sc.case for sc in spects if sc.case.patient_id in train_p]
        held = [sc for sc in spects if sc.case.patient_id in val_p]
        seg.fit_spect(train)
        scratch = LesionSegmenter(config)
        scratch.networks_["pet"] = scratch._build()  # untrained: no PET pretraining
        scratch.fit_spect([c._replace(prior=None) for c in train])
        parts = [compare_methods(seg, held),
                 variant_scores("pet_network_on_spect", seg, "pet", held),
                 variant_scores("spect_from_scratch", scratch, "spect", held)]
    lesions = pd.concat([p[0] for p in parts], ignore_index=True)
    images = pd.concat([p[1] for p in parts], ignore_index=True)
    print(f"\n{len(train_p)} training patients ({len(train)} SPECT/CTs), {len(val_p)} held out "
          f"({len(held)} SPECT/CTs, {len(lesions) // images.method.nunique()} lesions); "
          f"training {seg.train_seconds_['pet'] / 60:.1f} + "
          f"{seg.train_seconds_['spect'] / 60:.1f} min ({seg.epochs_['pet']} + "
          f"{seg.epochs_['spect']} epochs) on {a.threads} thread(s)")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summarise(lesions, images).round(3))


if __name__ == "__main__":
    main()
