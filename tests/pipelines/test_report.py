"""Patient and cohort HTML reports: the numbers of the lake, embedded figures, sections that
say what is missing, the CLI, and a render in headless Chromium."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import typer
from matplotlib import image as mpimg
from pseudonyms import SeparateCohort
from typer.testing import CliRunner

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.features import job
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake
from theralake.modeling.dataset import build_dataset, load_modeling_config, preferred_dosimetry
from theralake.modeling.recommend import recommend
from theralake.modeling.train import train
from theralake.pipelines.report import patient_report, register
from theralake.pipelines.report_cohort import coefficients, cohort_report, permutation
from theralake.pipelines.report_html import num, with_ci
from theralake.registry.models import load_model, promote
from theralake.registry.tracking import client
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig
from theralake.synth.truth_lake import write_truth_lake

PSEUDO_KEY = "report-test-key-0001"
PSEUDO = Pseudonymizer(key=PSEUDO_KEY)


def _config() -> dict:
    cfg = load_modeling_config()
    cfg["validation"].update(bootstrap=30, outer_folds=3, inner_folds=2)
    cfg["models"]["survival"]["cox"]["grid"] = {"alpha": [1.0]}
    cfg["models"]["regression"]["ridge"]["grid"] = {"alpha": [3.0]}
    cfg["promotion"]["regression"] = {"coverage": {"min": 0.5}}  # wiring, not model quality
    cfg["tasks"]["dose"]["targets"] = ["kidney_left", "kidney_right", "parotid_gland_left",
                                       "tumor_total"]
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """3 imaged synthetic patients (dosimetry and DVHs for the first), a 100-patient truth
    cohort for the models (pfs Cox, dose ridge @champion), a recommendation, both reports."""
    from threadpoolctl import threadpool_limits

    root = tmp_path_factory.mktemp("report")
    cfg = _config()
    with pytest.MonkeyPatch.context() as mp, threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            mp.setenv(var, "1")
        mp.setenv("THERALAKE_PSEUDONYM_KEY", "report-env-key-0001")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        generate_cohort(SynthConfig(patients=3, cycles=2, seed=3, small=True, fmt="nifti"),
                        root / "syn", progress=False)
        lake = Lake(root / "lake")
        ingest(root / "syn", lake, IngestOptions(show_progress=False), PSEUDO)
        pid, bare = PSEUDO.patient_id("SYN0001"), PSEUDO.patient_id("SYN0002")
        dosimetry = load_config(method="ldm", registration="none", voxel_model="mono")
        for cycle in (1, 2):
            run_cycle(lake, pid, cycle, dosimetry)
        read = job.read_features  # the reports need the dose maps' DVHs only

        def dose_maps_only(*args: object) -> object:
            inputs = read(*args)
            inputs.images = [i for i in inputs.images if i.kind == "dose"]
            return inputs

        mp.setattr(job, "read_features", dose_maps_only)
        mp.setattr(job, "_radiomics", lambda *a, **k: None)
        job.run_features(lake, [pid], set_name="fast", workers=1, progress=False)
        write_truth_lake(lake, SynthConfig(patients=100, cycles=2, seed=5, small=True),
                         SeparateCohort(PSEUDO_KEY, "truth"), dose_error_sd=0.05)
        pfs = train(lake, "pfs", "cox", config=cfg, progress=False)
        dose = train(lake, "dose", "ridge", config=cfg, progress=False)
        promote(lake, "theralake-dose", dose.version, cfg)
        rec = recommend(lake, pid, 3, cfg)
        patient_html = patient_report(lake, pid, root / "patient.html", cfg)
        app = typer.Typer()
        app.callback()(lambda: None)
        register(app)
        cli = CliRunner().invoke(app, ["report", "--cohort", "--out", str(root / "cohort.html"),
                                       "--lake", str(lake.path)])
    return {"root": root, "lake": lake, "cfg": cfg, "pid": pid, "bare": bare, "rec": rec,
            "pfs": pfs, "patient": patient_html.read_text(), "app": app, "cli": cli,
            "cohort": (root / "cohort.html").read_text()}


def _cell(value: float, digits: int = 2) -> str:
    return f">{num(value, digits)}<"


def test_patient_report_holds_the_lake_numbers(built):
    html, lake, pid = built["patient"], built["lake"], built["pid"]
    od = preferred_dosimetry(lake.read("organ_dosimetry", "patient_id = ?", [pid]),
                             built["cfg"]["dosimetry_methods"]).set_index(["cycle", "voi"])
    for cycle in (1, 2):
        row = od.loc[(cycle, "kidney_left")]
        # each dose with its standard uncertainty (issue 18, item 2: reports showed ± 0/inf)
        assert f">{num(row.absorbed_dose_gy)} ± {num(row.absorbed_dose_sigma_gy)}<" in html
        assert f">{num(row.bed_gy)} ± {num(row.bed_sigma_gy)}<" in html
        assert _cell(row.cumulative_bed_gy) in html
        assert row.absorbed_dose_sigma_gy > 0
    assert "± 0<" not in html and "± inf" not in html and "± 0.00<" not in html
    doses = html[html.index('id="doses"'):html.index('id="limits"')]
    cycle1 = doses[:doses.index("<h3>Cycle 2")]
    assert re.search(r"kidney left</td>(<td[^>]*>[^<]*</td>){2}<td class=\"n\">"
                     + re.escape(num(od.loc[(1, "kidney_left")].absorbed_dose_gy)), cycle1)
    assert "tumor total" in doses  # the union of the lesions, measured
    admins = lake.read("administrations", "patient_id = ? AND purpose = 'therapy'", [pid])
    for mbq in admins.activity_mbq:
        assert _cell(mbq, 0) in html and _cell(mbq / 1000) in html
    rec = built["rec"]
    assert f"{num(rec.activity_mbq / 1000)} GBq" in html and rec.explanation in html
    for section in ("Administered activities", "Images: dose and VOIs", "Time-activity curves",
                    "Organ limits", "Dose-volume histograms", "What it rests on"):
        assert section in html
    assert "not available" not in html  # every section has its data in this lake
    assert "40.0" in html and "BED" in html  # the kidney limit of the config


def test_reports_are_self_contained(built):
    for html in (built["patient"], built["cohort"]):
        sources = re.findall(r"<img [^>]*src=\"([^\"]*)\"", html)
        assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
        assert not re.search(r"(src|href)=\"(https?:)?//", html)
        assert "<script" not in html and "<link" not in html
        assert "theralake 0.1.0" in html and str(built["lake"].path) in html
    assert len(re.findall("<img ", built["patient"])) == 4  # 2 cycles of slices, TACs, DVHs


def test_sections_without_data_say_why(built, tmp_path):
    html = patient_report(built["lake"], built["bare"], tmp_path / "bare.html",
                          built["cfg"]).read_text()
    for why in ("no dose map", "no time-activity curves", "no organ dosimetry", "no DVHs",
                "no recommendation"):
        assert f"not available: {why}" in html
    assert "Administered activities" in html and "could not be built" not in html
    empty = cohort_report(Lake(tmp_path / "empty"), tmp_path / "empty.html").read_text()
    assert "not available: no registered model" in empty
    assert "not available: no organ dosimetry" in empty
    assert "could not be built" not in empty


def test_cohort_report(built):
    html, lake, cli = built["cohort"], built["lake"], built["cli"]
    assert cli.exit_code == 0, cli.output
    n = lake.sql("SELECT count(DISTINCT patient_id) FROM patients").iloc[0, 0]
    assert f"<dd>{n}</dd>" in html
    assert "pfs: predicted risk" in html and "pfs: tumour dose tertile" in html
    m = client(lake).get_run(built["pfs"].run_id).data.metrics
    assert with_ci(m["harrell_c"], m["harrell_c_lower"], m["harrell_c_upper"]) in html
    assert "theralake-dose v1" in html and "@champion" in html
    assert "log hazard ratio per SD" in html and "change of ln(Gy/GBq) per SD" in html
    kidney = preferred_dosimetry(lake.read("organ_dosimetry"), built["cfg"]["dosimetry_methods"])
    median = kidney[kidney.voi == "kidney_left"].absorbed_dose_gy.median()
    assert _cell(median) in html
    assert "not available: no out-of-fold os predictions" in html  # os was not trained


def test_importance_helpers(built, tmp_path):
    lake, cfg = built["lake"], built["cfg"]
    model, _ = load_model(lake, "theralake-pfs", "candidate", tmp_path)
    coef = coefficients(model)
    assert "dosimetry/tumor_total/absorbed_dose_gy" in coef.index
    ds = build_dataset(lake, "pfs", None, cfg)
    drop = permutation(model, ds.X[list(model.feature_names_in_)], ds.y, "survival")
    assert drop.idxmax() in coef.index and drop.max() > 0


def test_cli_errors(built, tmp_path):
    runner, app, lake = CliRunner(), built["app"], str(built["lake"].path)
    out = str(tmp_path / "x.html")
    res = runner.invoke(app, ["report", "--patient", "nobody", "--out", out, "--lake", lake])
    assert res.exit_code == 2 and "error: no patient 'nobody'" in res.output
    res = runner.invoke(app, ["report", "--patient", built["pid"], "--cohort", "--out", out,
                              "--lake", lake])
    assert res.exit_code == 2 and "exactly one of --patient" in res.output
    res = runner.invoke(app, ["report", "--cohort", "--out", out, "--lake",
                              str(tmp_path / "none")])
    assert res.exit_code == 2 and "error: no lake" in res.output


def test_reports_render_in_chromium(built, chromium):
    root, lake, pid = built["root"], built["lake"], built["pid"]
    kidney = preferred_dosimetry(lake.read("organ_dosimetry", "patient_id = ? AND cycle = 1",
                                           [pid]), built["cfg"]["dosimetry_methods"])
    dose = num(kidney[kidney.voi == "kidney_left"].absorbed_dose_gy.iloc[0])
    activity = num(lake.read("administrations", "patient_id = ? AND purpose = 'therapy' AND "
                             "cycle = 1", [pid]).activity_mbq.iloc[0], 0)
    for name, expected in (("patient", [dose, activity, "Organ limits"]),
                           ("cohort", ["log-rank p", "Feature importance", "theralake-pfs v1"])):
        png = root / f"{name}.png"
        dom = chromium(root / f"{name}.html", png)
        text = re.sub(r"<[^>]+>", " ", dom)
        for value in expected[:2] if name == "patient" else []:
            assert f" {value} " in text, value
        for value in expected:
            assert value in dom
        rgb = (mpimg.imread(png)[..., :3] * 255).astype(np.uint32)
        assert rgb.shape[:2] == (4000, 1280)
        colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
        assert rgb.std() > 10 and len(colours) > 200  # not blank: text, tables, figures
