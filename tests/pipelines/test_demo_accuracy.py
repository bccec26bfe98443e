"""The demo's two closing lines: its accuracy against its own truth and the quality record."""

from __future__ import annotations

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake
from theralake.pipelines.demo import accuracy, scanner_calibration
from theralake.pipelines.quality import quality_line
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig


def test_the_demo_scores_itself_against_its_truth(tmp_path):
    cohort = tmp_path / "cohort"
    generate_cohort(SynthConfig(patients=1, cycles=1, seed=11, small=True,
                                time_points_h=(4.0, 24.0, 168.0)), cohort, progress=False)
    lake = Lake(tmp_path / "lake")
    assert quality_line(lake).startswith("quality: no dosimetry")
    ingest(cohort, lake, IngestOptions(show_progress=False))  # the environment's key
    settings = load_config(method="vsv-density", registration="rigid", voxel_model="mono",
                           hu_density_calibration=scanner_calibration(cohort))
    run_cycle(lake, Pseudonymizer().patient_id("SYN0001"), 1, settings)
    found = accuracy(lake, cohort, ["vsv-density"])
    assert set(found) == {"kidneys", "liver", "spleen", "lesions >= 5 mL"}
    for organ in ("kidneys", "liver", "spleen"):
        median, worst, within = found[organ]
        assert 0 <= median <= worst < 0.10 and within == 1.0, (organ, found[organ])
    assert "1 patient-cycles: 0 pass, 1 warn, 0 fail" in quality_line(lake)
