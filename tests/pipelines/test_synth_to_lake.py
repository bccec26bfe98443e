"""The synthetic cohort, written as DICOM and as NIfTI, ingests into the lake with its truth:
times after administration, administered activities and SPECT activity within the partial
volume loss the generator reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, Volume
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig

PSEUDO = Pseudonymizer(key="synthetic-cohort-test-key")


@pytest.fixture(scope="module", params=["dicom", "nifti"])
def cohort(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"synth_{request.param}")
    generate_cohort(SynthConfig(patients=1, cycles=2, seed=3, small=True, fmt=request.param),
                    out, progress=False)
    lake = Lake(out / "lake")
    report = ingest(out, lake, IngestOptions(show_progress=False), PSEUDO)
    return out, lake, report


def test_everything_ingests(cohort):
    _, lake, report = cohort
    assert report.skipped == []
    kinds = lake.sql("SELECT kind, count(*) n FROM images GROUP BY kind").set_index("kind").n
    assert kinds["spect"] == 8 and kinds["pet"] == 1
    assert set(lake.read("vois").voi) >= {"liver", "kidney_left", "kidney_right", "spleen"}


def test_times_and_activities_match_the_truth(cohort):
    out, lake, _ = cohort
    pid = PSEUDO.patient_id("SYN0001")
    truth = pd.read_parquet(out / "truth" / "activity.parquet")
    truth = truth[(truth.voi == "body") & truth.imaged].sort_values(["cycle", "time_h"])
    spect = lake.read("images", "patient_id = ? AND kind = 'spect'", [pid]).sort_values(
        ["cycle", "time_h"])
    assert np.allclose(spect.time_h, truth.time_h, atol=1 / 60)  # to the minute
    assert list(spect.cycle) == list(truth.cycle)
    cycles = pd.read_parquet(out / "truth" / "cycles.parquet")
    admins = lake.read("administrations", "purpose = 'therapy'").sort_values("cycle")
    assert np.allclose(admins.activity_mbq, cycles.activity_mbq, rtol=1e-6)
    pet = lake.read("images", "kind = 'pet'")
    assert pet.cycle.iloc[0] == 1 and pet.suvbw_per_bqml.iloc[0] > 0
    pv = pd.read_parquet(out / "truth" / "partial_volume.parquet")
    fov = pv[pv.voi == "field_of_view"].sort_values(["cycle", "time_h"])
    for (_, row), (_, tru) in zip(spect.iterrows(), fov.iterrows(), strict=True):
        vol = Volume.from_row(row.to_dict())
        total_mbq = float(vol.array.sum()) * vol.voxel_volume_ml / 1e6
        # Poisson noise on top of the noise-free recovery the generator reports
        assert total_mbq == pytest.approx(tru.true_activity_mbq * tru.recovery, rel=0.02)
