"""``theralake demo``: the whole flow on a synthetic cohort, with a short summary.

Synthesise a cohort (digital twins), run ingest, dosimetry, features and training through
:func:`run_pipeline`, promote the models that pass the gate, recommend the next cycle's
activity for three patients and write the cohort report. Everything lands in the demo lake;
the cohort folder sits beside it, and a second demo with the same options reuses both (the run
is incremental).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from theralake.ingest.pseudonym import Pseudonymizer
from theralake.lake import Lake, views
from theralake.pipelines.quality import quality_line
from theralake.pipelines.runner import RunSummary, load_pipeline_settings, run_pipeline

#: the demo's settings: rigid registration, mono-exponential voxel fits, the generator's
#: contours (no AI segmentation) and first-order radiomics keep a cohort of 24 patients within
#: 15 minutes on 2 cores; `theralake run` defaults to the full settings. Dose by voxel
#: S-values rescaled by the CT density, with the synthetic scanner's density calibration
#: (as the dosimetry README recommends for bone lesions); partial-volume correction (the
#: default) with the camera's resolution from the cohort's calibration table.
DEMO_SETTINGS = {
    "dosimetry": {"overrides": {"registration": "rigid", "voxel_model": "mono",
                                "method": "vsv-density",
                                "segmentation": {"backend": "none"}}},
    "features": {"set": "minimal"},
    "train": [{"task": "pfs", "model": "cox"}, {"task": "response", "model": "logistic"},
              {"task": "dose", "model": "ridge"}],
    # 5 events per feature the selection keeps: a cohort of 24 affords 2
    "modeling_overrides": {"preprocessing": {"max_features": 2}},
}
RECOMMENDED_PATIENTS = 3
#: SPECT/CT at 4, 24 and 168 h after each administration: a common three-point protocol
TIME_POINTS_H = (4.0, 24.0, 168.0)


@dataclass
class DemoOptions:
    patients: int = 24
    cycles: int = 2
    small: bool = True
    workers: int = 2
    engine: str = "local"
    seed: int = 7
    lake: Path = Path("demo_lake")
    show: bool = True  # progress and the printed summary (off: only the returned result)


@dataclass
class DemoResult:
    """What the demo did and found (``theralake demo --json``)."""

    lake: Path
    run: RunSummary
    synthesis_s: float
    promotions: list[tuple[str, str, str]]
    recommendations: list[tuple[str, str]]
    reports: list[Path]
    accuracy: dict[str, tuple[float, float, float]]
    quality: str
    total_s: float


def _cohort(options: DemoOptions, folder: Path) -> float:
    """Synthesise the cohort unless the folder already holds this one; returns seconds."""
    from theralake.synth.cohort import generate_cohort
    from theralake.synth.config import SynthConfig

    stamp = folder / ".demo.json"
    wanted = {k: v for k, v in asdict(options).items() if k in ("patients", "cycles", "small",
                                                                   "seed")}
    wanted["time_points_h"] = list(TIME_POINTS_H)
    if stamp.exists() and json.loads(stamp.read_text()) == wanted and \
            (folder / "ct_density_phantom.csv").exists():
        return 0.0
    t0 = time.perf_counter()
    generate_cohort(SynthConfig(patients=options.patients, cycles=options.cycles,
                                seed=options.seed, small=options.small,
                                time_points_h=TIME_POINTS_H), folder, workers=options.workers,
                    progress=options.show)
    stamp.write_text(json.dumps(wanted))
    return time.perf_counter() - t0


def scanner_calibration(cohort: Path) -> list[list[float]]:
    """The cohort's CT density calibration (HU, g/cm3 points: its density phantom)."""
    table = pd.read_csv(cohort / "ct_density_phantom.csv").sort_values("hu")
    return [[float(h), float(d)] for h, d in zip(table.hu, table.density_g_cm3, strict=True)]


def _promote_all(lake: Lake) -> list[tuple[str, str, str]]:
    """Try to promote each model's newest version; (name, version, outcome)."""
    from theralake.registry.models import PromotionRefused, list_models, promote

    models = list_models(lake)
    out = []
    if models.empty:
        return out
    for name, group in models.groupby("name"):
        version = str(group.version.max())
        try:
            promote(lake, name, version)
            out.append((name, version, "promoted to @champion"))
        except PromotionRefused as exc:
            out.append((name, version, "refused: " + "; ".join(
                line.strip() for line in str(exc).splitlines()[1:])))
    return out


def _recommend(lake: Lake, cycle: int) -> list[tuple[str, str]]:
    from theralake.modeling.recommend import RecommendationError, recommend

    patients = sorted(lake.sql("SELECT DISTINCT patient_id FROM organ_dosimetry").patient_id)
    out = []
    for pid in patients[:RECOMMENDED_PATIENTS]:
        try:
            rec = recommend(lake, pid, cycle)
            out.append((pid, f"cycle {cycle}: " + rec.explanation.split("; no @champion")[0]))
        except RecommendationError as exc:
            out.append((pid, f"no recommendation: {exc}"))
    return out


#: what the demo's accuracy line reports: (label, VOIs), organs then lesions of >= 5 mL,
#: and the bars of the dosimetry README
ACCURACY_GROUPS = (("kidneys", ("kidney_left", "kidney_right")), ("liver", ("liver",)),
                   ("spleen", ("spleen",)))
ACCURACY_BARS = {"kidneys": 0.10, "liver": 0.10, "spleen": 0.10, "lesions >= 5 mL": 0.20}


def accuracy(lake: Lake, cohort: Path, methods: list[str]
             ) -> dict[str, tuple[float, float, float]]:
    """The demo's dosimetry against its generator's truth: per group (kidneys, liver,
    spleen, lesions of 5 mL or more) the median and the worst absolute relative error of the
    absorbed dose over every patient-cycle, and the share within the group's bar."""
    truth = pd.read_parquet(cohort / "truth" / "dosimetry.parquet")
    volumes = pd.read_parquet(cohort / "truth" / "vois.parquet")
    pseudo = Pseudonymizer()
    truth = truth.assign(patient_id=truth.PatientID.map(pseudo.patient_id)).merge(
        volumes[["PatientID", "cycle", "voi", "volume_ml"]], on=["PatientID", "cycle", "voi"],
        how="left")
    ours = views.dosimetry(lake, methods)
    both = ours.merge(truth, on=["patient_id", "cycle", "voi"], suffixes=("", "_true"))
    if both.empty:
        return {}
    both["error"] = (both.absorbed_dose_gy / both.absorbed_dose_gy_true - 1).abs()
    groups = {label: both[both.voi.isin(vois)] for label, vois in ACCURACY_GROUPS}
    groups["lesions >= 5 mL"] = both[both.voi.str.startswith("lesion_")
                                     & (both.volume_ml >= 5.0)]
    return {label: (float(g.error.median()), float(g.error.max()),
                    float((g.error <= ACCURACY_BARS[label]).mean()))
            for label, g in groups.items() if not g.empty}


def _reports(lake: Lake, patient_id: str | None) -> list[Path]:
    from theralake.pipelines.report import patient_report
    from theralake.pipelines.report_cohort import cohort_report

    folder = lake.path / "reports"
    paths = [cohort_report(lake, folder / "cohort.html")]
    if patient_id:
        paths.append(patient_report(lake, patient_id, folder / f"patient-{patient_id}.html"))
    return paths


def run_demo(options: DemoOptions) -> DemoResult:
    """Run the demo; with ``options.show`` its progress and summary are printed."""
    from rich.console import Console

    console = Console(soft_wrap=True, quiet=not options.show)
    t_start = time.perf_counter()
    lake = Lake(options.lake)
    cohort = lake.path.parent / f"{lake.path.name}_cohort"
    os.environ.setdefault("THERALAKE_KEY_FILE", str(cohort / ".pseudonym.key"))
    console.rule(f"theralake demo: {options.patients} synthetic patients, {options.cycles} "
                 f"cycles, {'8 mm' if options.small else '4 mm'} grids")
    synth_s = _cohort(options, cohort)
    dosimetry = {**DEMO_SETTINGS["dosimetry"]["overrides"],
                 "hu_density_calibration": scanner_calibration(cohort)}
    settings = load_pipeline_settings(**{**DEMO_SETTINGS, "dosimetry": {"overrides": dosimetry}})
    summary = run_pipeline(lake, None, cohort, options.engine, options.workers,
                           settings=settings, new_key=True, progress=options.show)
    t0 = time.perf_counter()
    promotions = _promote_all(lake)
    recommendations = _recommend(lake, options.cycles + 1)
    first = next((pid for pid, text in recommendations if "GBq:" in text), None)
    reports = _reports(lake, first)
    tail_s = time.perf_counter() - t0
    _print_summary(console, lake, summary, synth_s, tail_s, promotions, recommendations,
                   reports, time.perf_counter() - t_start)
    found = accuracy(lake, cohort, [dosimetry["method"]])
    console.print("accuracy against the generator's truth (absorbed dose error: median, "
                  "worst, share within the bar): " + ("; ".join(
                      f"{k} {100 * m:.1f} %, {100 * w:.1f} %, {100 * n:.0f} % within "
                      f"{100 * ACCURACY_BARS[k]:.0f} %" for k, (m, w, n) in found.items())
                      or "no dosimetry"))
    quality = quality_line(lake)
    console.print(quality)
    return DemoResult(lake.path, summary, synth_s, promotions, recommendations, reports, found,
                      quality, time.perf_counter() - t_start)


def _print_summary(console: object, lake: Lake, summary: RunSummary, synth_s: float,
                   tail_s: float, promotions: list, recommendations: list, reports: list,
                   total_s: float) -> None:
    from theralake.registry.models import list_models

    print_ = console.print  # type: ignore[attr-defined]
    print_(f"synthesis: {synth_s:.0f} s" if synth_s else "synthesis: reused the cohort")
    print_(summary.table())
    models = list_models(lake)
    if not models.empty:
        newest = models.sort_values("version").groupby("name").tail(1)
        cols = [c for c in ("name", "version", "harrell_c", "harrell_c_lower", "auc",
                            "calibration_slope", "coverage", "median_abs_rel_error")
                if c in newest.columns]
        print_("models (nested cross-validation):")
        print_(newest[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name, version, outcome in promotions:
        print_(f"promotion {name} v{version}: {outcome}")
    for pid, text in recommendations:
        print_(f"recommendation {pid}: {text}")
    print_(f"promotion, recommendations and reports: {tail_s:.0f} s; total {total_s:.0f} s")
    for path in reports:
        print_(f"report: {path}")
    print_(f"lake: {lake.path}  (theralake sql \"SELECT * FROM run_log\" --lake {lake.path})")
