"""Patient-cycle dosimetry from the lake against the synthetic cohort's truth."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from theralake.dosimetry import registration, settings
from theralake.dosimetry.patient import DosimetryError, config_hash, load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, Volume, views
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig

PSEUDO = Pseudonymizer(key="dosimetry-test-key")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("dosimetry_synth")
    generate_cohort(SynthConfig(patients=1, cycles=1, seed=11, small=True), out, progress=False)
    lake = Lake(out / "lake")
    assert ingest(out, lake, IngestOptions(show_progress=False), PSEUDO).skipped == []
    truth = pd.read_parquet(out / "truth" / "dosimetry.parquet")
    fwhm = float(pd.read_parquet(out / "truth" / "patients.parquet").spect_fwhm_mm.iloc[0])
    vois = pd.read_parquet(out / "truth" / "vois.parquet")
    volumes = vois[vois.cycle == 1].set_index("voi").volume_ml
    return lake, PSEUDO.patient_id("SYN0001"), truth, fwhm, volumes


def _config(fwhm: float, method: str) -> dict:
    # the generator's truth keeps each VOI's photons in it (no photon cross-dose,
    # synth/dose.py); the VSV's far photon kernel adds the body's
    return load_config(registration="rigid", method=method, voxel_model="mono",
                       partial_volume={"method": "gtm", "fwhm_mm": fwhm}, photon_reach_mm=0.0)


@pytest.fixture(scope="module")
def result(cohort):
    lake, pid, _, fwhm, _ = cohort
    config = _config(fwhm, "ldm")
    return run_cycle(lake, pid, 1, config), config


def _errors(rows, truth, volumes) -> pd.DataFrame:
    ours = pd.DataFrame(rows)
    merged = ours.merge(truth[truth.cycle == 1], on="voi", suffixes=("", "_true"))
    merged["tia_err"] = merged.tia_mbq_h / merged.tia_mbq_h_true - 1
    merged["dose_err"] = merged.absorbed_dose_gy / merged.absorbed_dose_gy_true - 1
    merged["volume_ml_true"] = merged.voi.map(volumes)
    return merged.set_index("voi")


ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")


@pytest.mark.parametrize("method", ["ldm", "vsv"])
def test_organ_and_lesion_tia_and_dose_against_truth(cohort, result, method):
    lake, pid, truth, fwhm, volumes = cohort
    rows = result[0].organ_rows if method == "ldm" else \
        run_cycle(lake, pid, 1, _config(fwhm, method)).organ_rows
    err = _errors(rows, truth, volumes)
    # the bars: organ TIA and dose within 10 %, lesions of 5 mL or more within 20 %
    for voi in ORGANS:
        assert abs(err.loc[voi, "tia_err"]) < 0.10, (voi, err.loc[voi, "tia_err"])
        assert abs(err.loc[voi, "dose_err"]) < 0.10, (voi, method, err.loc[voi, "dose_err"])
    lesions = err[err.index.str.startswith("lesion_") & (err.volume_ml_true >= 5.0)]
    assert len(lesions) >= 1
    assert (lesions.tia_err.abs() < 0.20).all(), lesions.tia_err
    assert abs(err.loc["body", "tia_err"]) < 0.05
    assert (err.mass_g / err.mass_g_true - 1).abs().loc[list(ORGANS)].max() < 0.03


def test_tumour_total_is_the_union_of_the_lesions(cohort, result):
    """tumor_total (the union of the lesions): TIA and mass summed, dose and BED their
    mass-weighted means, uncertainties in quadrature; against the generator's union."""
    lake, pid, truth, _, volumes = cohort
    res, _ = result
    rows = pd.DataFrame(res.organ_rows).set_index("voi")
    lesions, total = rows[rows.index.str.startswith("lesion_")], rows.loc["tumor_total"]
    assert len(lesions) >= 2 and total.voi_id is None
    assert total.mass_g == pytest.approx(lesions.mass_g.sum())
    assert total.tia_mbq_h == pytest.approx(lesions.tia_mbq_h.sum())
    weights = lesions.mass_g / lesions.mass_g.sum()
    assert total.absorbed_dose_gy == pytest.approx((weights * lesions.absorbed_dose_gy).sum())
    assert total.bed_gy == pytest.approx((weights * lesions.bed_gy).sum())
    assert total.tia_sigma_mbq_h == pytest.approx(np.sqrt((lesions.tia_sigma_mbq_h ** 2).sum()))
    assert 0 < total.absorbed_dose_sigma_gy < total.absorbed_dose_gy
    assert set(lesions.voi_id) <= set(total.input_ids)
    err = _errors(res.organ_rows, truth, volumes)
    assert abs(err.loc["tumor_total", "tia_err"]) < 0.10, err.loc["tumor_total", "tia_err"]
    # the generator's union dose is the same mass-weighted mean of its lesions' doses
    true = err[err.index.str.startswith("lesion_")]
    assert err.loc["tumor_total", "absorbed_dose_gy_true"] == pytest.approx(
        (true.mass_g_true * true.absorbed_dose_gy_true).sum() / true.mass_g_true.sum(), rel=1e-3)
    found = {f.voi: f for f in res.findings if f.check == "tumour_total"}
    assert found["tumor_total"].status in ("pass", "warn")
    dataset = lake.read("organ_dosimetry", "voi = 'tumor_total'")
    assert len(dataset) >= 1 and dataset.absorbed_dose_gy.notna().all()


def test_every_dose_has_an_uncertainty(result):
    """Whatever the fit (here 4 time points), each VOI's TIA, dose and BED have a finite,
    positive standard uncertainty, BED's by its derivative."""
    res, _ = result
    rows = pd.DataFrame(res.organ_rows).set_index("voi")
    for col in ("tia_sigma_mbq_h", "absorbed_dose_sigma_gy", "bed_sigma_gy", "eqd2_sigma_gy"):
        assert (rows[col] > 0).all() and np.isfinite(rows[col]).all(), col
    kidney = rows.loc["kidney_left"]
    rel = kidney.tia_sigma_mbq_h / kidney.tia_mbq_h
    assert kidney.absorbed_dose_sigma_gy == pytest.approx(rel * kidney.absorbed_dose_gy)
    k = (kidney.bed_gy - kidney.absorbed_dose_gy) / kidney.absorbed_dose_gy ** 2
    assert kidney.bed_sigma_gy == pytest.approx(
        kidney.absorbed_dose_sigma_gy * (1 + 2 * k * kidney.absorbed_dose_gy), rel=1e-6)


def test_lake_rows_are_complete_and_idempotent(cohort, result):
    lake, pid = cohort[:2]
    res, config = result
    n_tp = len(lake.read("images", "patient_id = ? AND kind = 'spect' AND cycle = 1", [pid]))
    mine = ["params_hash = ?", [config_hash(config)]]
    measured = [r for r in res.organ_rows if r["voi"] != "tumor_total"]  # tumor_total: a sum
    assert len(lake.read("tacs", *mine)) == n_tp * len(measured)
    assert len(lake.read("dose_maps", *mine)) == 2
    # the later time points onto the reference (the PET/CT has its own contours: untouched)
    regs = lake.read("registrations", *mine)
    assert len(regs) == n_tp - 1
    assert (regs.organ_dice_after > np.maximum(0.8, regs.organ_dice_before - 0.02)).all()
    od = lake.read("organ_dosimetry", *mine)
    assert (od.dose_per_activity_gy_per_gbq > 0).all() and od.input_ids.map(len).min() >= n_tp
    kidney = od.set_index("voi").loc["kidney_left"]
    assert kidney.bed_gy > kidney.absorbed_dose_gy  # kidney alpha/beta 2.6 Gy: BED > D
    assert kidney.cumulative_bed_gy == pytest.approx(kidney.bed_gy)  # the first cycle
    dose = lake.read("dose_maps", "quantity = 'dose' AND params_hash = ?", mine[1])
    assert Volume.from_row(dose.iloc[0].to_dict()).array.max() > 0
    before = lake.counts()
    run_cycle(lake, pid, 1, config)  # the same inputs and settings add nothing
    assert lake.counts() == before


def test_a_new_dosimetry_model_computes_the_rows_again(cohort, result, tmp_path, monkeypatch):
    """Row ids hash the inputs and settings, not the numbers: after a change that moves the
    numbers (today's photon interactions) a rerun kept yesterday's rows, silently. The
    settings' hash carries ``MODEL_VERSION``, so a new version writes new, current rows."""
    lake, pid = cohort[:2]
    res, config = result
    copy = Lake(shutil.copytree(lake.path, tmp_path / "lake"))
    old_hash = config_hash(config)
    monkeypatch.setattr(settings, "MODEL_VERSION", settings.MODEL_VERSION + 1)
    new_hash = config_hash(config)
    assert new_hash != old_hash
    run_cycle(copy, pid, 1, config)
    od = copy.read("organ_dosimetry", "patient_id = ?", [pid])
    assert set(od.params_hash) >= {old_hash, new_hash}
    assert set(views.dosimetry(copy, ["ldm"], pid).params_hash) == {new_hash}
    assert settings.record_config(copy, config) == new_hash
    recorded = yaml.safe_load(copy.read("configs", "id = ?", [new_hash]).yaml.iloc[0])
    assert recorded["model_version"] == settings.MODEL_VERSION


def test_registration_brings_kidneys_back(cohort):
    lake, pid = cohort[:2]
    cts = lake.read("images", "patient_id = ? AND kind = 'ct' AND cycle = 1", [pid]
                    ).sort_values("time_h")
    ref, moving = cts.iloc[0], cts.iloc[-1]

    def kidney(ct_id: str) -> Volume:
        row = lake.read("vois", "image_id = ? AND voi = 'kidney_left'", [ct_id]).iloc[0]
        return Volume.from_row(row.to_dict())

    fixed_ct, moving_ct = Volume.from_row(ref.to_dict()), Volume.from_row(moving.to_dict())
    reg = registration.register_ct(fixed_ct, moving_ct, deformable=False)
    carried = registration.resample_mask(kidney(moving.id), reg.transform, fixed_ct)
    assert registration.dice(kidney(ref.id).array, carried) >= 0.85
    assert reg.ncc_after > reg.ncc_before


def test_too_few_time_points_and_unknown_method_are_refused(cohort):
    lake, pid = cohort[:2]
    with pytest.raises(DosimetryError, match="unknown method"):
        load_config(method="monte-carlo")
    with pytest.raises(DosimetryError, match="no quantitative SPECT"):
        run_cycle(lake, pid, 7, load_config())


def test_bad_settings_are_refused_before_any_work(tmp_path):
    with pytest.raises(DosimetryError, match="fwhm_mm"):
        load_config(partial_volume={"method": "gtm", "fwhm_mm": -3.0})
    with pytest.raises(DosimetryError, match="reference_time_point"):
        load_config(reference_time_point="middle")
    with pytest.raises(DosimetryError, match="single_time_point"):
        load_config(single_time_point={"method": "guess"})
    with pytest.raises(DosimetryError, match="tac_vois"):
        load_config(tac_vois="mine")
    with pytest.raises(DosimetryError, match="registration"):
        load_config(registration="elastix")
    with pytest.raises(DosimetryError, match="unknown lesions method"):
        load_config(lesions={"method": "absolute"})  # needs a threshold the settings lack
    csv = tmp_path / "rc.csv"
    csv.write_text("volume_ml,recovery\n0.5,0.3\n26.5,0.8\n")
    # a lesion corrected by the recovery curve and by the GTM would be corrected twice
    for rc in (str(csv), "measured"):
        with pytest.raises(DosimetryError, match="twice"):
            load_config(recovery_coefficients=rc)
        assert load_config(recovery_coefficients=rc, partial_volume={"method": "none"})
    with pytest.raises(DosimetryError, match="no such CSV"):
        load_config(recovery_coefficients="missing.csv", partial_volume={"method": "none"})


def test_export_dose_and_vois_reopen_in_dicom_tools(cohort, result, tmp_path):
    """The RTDOSE and the RTSTRUCT of a cycle lie on the dosimetry's reference CT (one study,
    one frame of reference; before, the RTSTRUCT went to the pre-therapy PET/CT), and read
    back they give the lake's dose map and VOIs."""
    import pydicom

    from theralake.lake import views
    from theralake.pipelines.export import export

    lake, pid = cohort[:2]
    export(lake, pid, 1, "dose", "rtdose", tmp_path / "dose")
    export(lake, pid, 1, "vois", "rtstruct", tmp_path / "vois")
    rtdose = pydicom.dcmread(tmp_path / "dose" / "RTDOSE.dcm")
    rtstruct = pydicom.dcmread(tmp_path / "vois" / "RTSTRUCT.dcm")
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert rtdose.FrameOfReferenceUID == frame and rtdose.StudyInstanceUID == \
        rtstruct.StudyInstanceUID
    back = Lake(tmp_path / "back")
    report = ingest(tmp_path / "dose", back, IngestOptions(show_progress=False), PSEUDO)
    report2 = ingest(tmp_path / "vois", back, IngestOptions(show_progress=False), PSEUDO)
    assert report.skipped == [] and report2.skipped == []
    dose_row = back.read("images", "modality = 'RTDOSE'").iloc[0]
    ours = views.dose_map(lake, pid, 1)
    got, want = Volume.from_row(dose_row.to_dict()), Volume.from_row(ours)
    assert got.same_grid(want)
    assert np.allclose(got.array, want.array, rtol=1e-5, atol=want.array.max() * 1e-8)
    used = views.dosimetry_vois(lake, pid, 1).set_index("voi")
    assert used.loc["liver", "image_id"] == ours["reference_ct_id"]
    reread = back.read("vois", "voi = 'liver'").iloc[0]
    assert np.array_equal(Volume.from_row(reread.to_dict()).array,
                          Volume.from_row(used.loc["liver"].to_dict()).array)


def test_ai_registration_is_selectable_and_pinned_by_its_weights(cohort, tmp_path):
    from theralake.modeling.registration_training import train_registration

    lake, pid, truth, fwhm, volumes = cohort
    with pytest.raises(DosimetryError, match="train-reg"):
        run_cycle(lake, pid, 1, load_config(registration="ai",
                                            registration_model=str(tmp_path / "none")))
    trained = train_registration(lake, out=tmp_path / "reg", spacing_mm=10.0,
                                 size=(48, 32, 96), channels=(8, 16, 16, 16), epochs=2,
                                 batch_size=1, device="cpu", max_pairs=2)
    assert trained.n_pairs == 2 and len(trained.sha256) == 64
    config = _config(fwhm, "ldm")
    config.update(registration="ai", registration_model=str(trained.folder))
    res = run_cycle(lake, pid, 1, config)
    regs = pd.DataFrame(res.registration_rows)
    assert len(regs) == 3 and (regs.ncc_after >= regs.ncc_before - 0.01).all()
    err = _errors(res.organ_rows, truth, volumes)
    assert err.loc[list(ORGANS), "tia_err"].abs().max() < 0.10
    # the weights' hash is part of the settings: another model gives other rows
    assert {r["params_hash"] for r in res.organ_rows} != {
        r["params_hash"] for r in run_cycle(lake, pid, 1, _config(fwhm, "ldm")).organ_rows}


def test_cumulative_bed_sums_the_newest_result_of_each_earlier_cycle(tmp_path):
    from theralake.lake.views import bed_sums

    lake = Lake(tmp_path / "lake")

    def _earlier_bed(lake: Lake, patient_id: str, cycle: int, method: str) -> dict:
        return bed_sums(lake.read("organ_dosimetry", "patient_id = ? AND cycle < ?",
                                  [patient_id, cycle]), method)

    assert _earlier_bed(lake, "P1", 2, "ldm") == {}

    def row(cycle: int, bed: float, run: str) -> dict:
        return {"id": f"{cycle}-{run}", "patient_id": "P1", "cycle": cycle, "voi": "kidney_left",
                "method": "ldm", "bed_gy": bed, "eqd2_gy": bed / 2}

    lake.append("organ_dosimetry", [row(1, 5.0, "old")])
    lake.append("organ_dosimetry", [row(1, 6.0, "new"), row(2, 7.0, "a")])  # cycle 1 re-run
    lake.append("organ_dosimetry", [{**row(1, 99.0, "vsv"), "method": "vsv"}])
    assert _earlier_bed(lake, "P1", 3, "ldm") == {"kidney_left": (13.0, 6.5)}
    assert _earlier_bed(lake, "P1", 2, "ldm") == {"kidney_left": (6.0, 3.0)}
