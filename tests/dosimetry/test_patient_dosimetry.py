"""Patient-cycle dosimetry from the lake against the synthetic cohort's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from theralake.dosimetry import registration
from theralake.dosimetry.patient import DosimetryError, load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, Volume
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
    return lake, PSEUDO.patient_id("SYN0001"), truth, fwhm


@pytest.fixture(scope="module")
def result(cohort):
    lake, pid, _, fwhm = cohort
    config = load_config(registration="rigid", method="ldm", voxel_model="mono")
    config["partial_volume"] = {"method": "gtm", "fwhm_mm": fwhm}
    return run_cycle(lake, pid, 1, config), config


def _errors(result, truth) -> pd.DataFrame:
    ours = pd.DataFrame(result[0].organ_rows)
    merged = ours.merge(truth[truth.cycle == 1], on="voi", suffixes=("", "_true"))
    merged["tia_err"] = merged.tia_mbq_h / merged.tia_mbq_h_true - 1
    merged["dose_err"] = merged.absorbed_dose_gy / merged.absorbed_dose_gy_true - 1
    return merged.set_index("voi")


def test_organ_tia_and_dose_against_truth(cohort, result):
    err = _errors(result, cohort[2])
    # measured on this phantom: body, liver and spleen within 10 %; kidneys are still
    # biased low by the cortex/medulla contrast that a uniform-region PVC cannot restore
    for voi in ("body", "liver", "spleen"):
        assert abs(err.loc[voi, "tia_err"]) < 0.10, (voi, err.loc[voi, "tia_err"])
    for voi in ("liver", "spleen"):
        assert abs(err.loc[voi, "dose_err"]) < 0.10, (voi, err.loc[voi, "dose_err"])
    for voi in ("kidney_left", "kidney_right"):
        assert abs(err.loc[voi, "tia_err"]) < 0.25, (voi, err.loc[voi, "tia_err"])
        assert abs(err.loc[voi, "dose_err"]) < 0.25, (voi, err.loc[voi, "dose_err"])
    assert (err.mass_g / err.mass_g_true - 1).abs().loc[["liver", "spleen", "kidney_left"]].max() \
        < 0.03


def test_lake_rows_are_complete_and_idempotent(cohort, result):
    lake, pid, _, _ = cohort
    res, config = result
    n_tp = len(lake.read("images", "patient_id = ? AND kind = 'spect' AND cycle = 1", [pid]))
    counts = lake.counts()
    assert counts["tacs"] == n_tp * len(res.organ_rows)
    assert counts["dose_maps"] == 2
    assert counts["registrations"] == n_tp - 1
    od = lake.read("organ_dosimetry")
    assert (od.dose_per_activity_gy_per_gbq > 0).all() and od.input_ids.map(len).min() >= n_tp
    kidney = od.set_index("voi").loc["kidney_left"]
    assert kidney.bed_gy > kidney.absorbed_dose_gy  # kidney alpha/beta 2.6 Gy: BED > D
    dose = lake.read("dose_maps", "quantity = 'dose'")
    assert Volume.from_row(dose.iloc[0].to_dict()).array.max() > 0
    before = lake.counts()
    run_cycle(lake, pid, 1, config)  # the same inputs and settings add nothing
    assert lake.counts() == before


def test_registration_brings_kidneys_back(cohort):
    lake, pid, _, _ = cohort
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
    lake, pid, _, _ = cohort
    with pytest.raises(DosimetryError, match="unknown method"):
        load_config(method="monte-carlo")
    with pytest.raises(DosimetryError, match="no quantitative SPECT"):
        run_cycle(lake, pid, 7, load_config())


def test_pvc_requires_a_resolution():
    config = load_config()
    config["partial_volume"] = {"method": "gtm", "fwhm_mm": None}
    from theralake.dosimetry.patient import _pvc_tacs

    with pytest.raises(DosimetryError, match="fwhm_mm"):
        _pvc_tacs(np.zeros((2, 2, 2, 2)), {}, None, config, "x")


def test_export_dose_and_vois_reopen_in_dicom_tools(cohort, result, tmp_path):
    from theralake.pipelines.export import export

    lake, pid, _, _ = cohort
    export(lake, pid, 1, "dose", "rtdose", tmp_path / "dose")
    export(lake, pid, 1, "vois", "rtstruct", tmp_path / "vois")
    back = Lake(tmp_path / "back")
    report = ingest(tmp_path / "dose", back, IngestOptions(show_progress=False), PSEUDO)
    report2 = ingest(tmp_path / "vois", back, IngestOptions(show_progress=False), PSEUDO)
    assert report.skipped == [] and report2.skipped == []
    dose_row = back.read("images", "modality = 'RTDOSE'").iloc[0]
    ours = lake.read("dose_maps", "quantity = 'dose'").iloc[0]
    got, want = Volume.from_row(dose_row.to_dict()), Volume.from_row(ours.to_dict())
    assert got.same_grid(want)
    assert np.allclose(got.array, want.array, rtol=1e-5, atol=want.array.max() * 1e-8)
    ref_ct = lake.read("images", "patient_id = ? AND cycle = 1 AND kind = 'ct'", [pid]
                       ).sort_values("time_h").iloc[0]
    original = lake.read("vois", "image_id = ? AND voi = 'liver'", [ref_ct.id]).iloc[0]
    reread = back.read("vois", "voi = 'liver'").iloc[0]
    assert np.array_equal(Volume.from_row(reread.to_dict()).array,
                          Volume.from_row(original.to_dict()).array)
