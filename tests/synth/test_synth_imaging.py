"""Forward models: SPECT counts, partial-volume bookkeeping, PET SUVs, CT numbers, motion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theralake.synth.config import SynthConfig
from theralake.synth.imaging import dose_map, render_sessions, resample, tia_map
from theralake.synth.patient import simulate_patient, voi_labels


@pytest.fixture(scope="module")
def rendered():  # noqa: ANN201
    cfg = SynthConfig(patients=1, cycles=1, seed=33, small=True, time_points_h=(4, 24, 168))
    pt = simulate_patient(cfg, 0)
    return pt, list(render_sessions(pt, cfg.seed, cfg.small))


def test_sessions(rendered) -> None:  # noqa: ANN001
    pt, sessions = rendered
    assert [s.tag for s in sessions] == ["PET0", "C1TP1", "C1TP2", "C1TP3"]


def test_spect_total_counts_match_activity(rendered) -> None:  # noqa: ANN001
    pt, sessions = rendered
    cyc = pt.cycles[0]
    for s in sessions[1:]:
        tp = s.time_point
        expected = cyc.activity_mbq_at("body", tp.time_h) * pt.cps_per_mbq * s.duration_s
        total = float(s.image.sum(dtype=np.int64))
        # Poisson noise (5 sd) plus < 2 % of blur spilling out of the field of view
        assert abs(total - expected) <= 5 * math.sqrt(expected) + 0.02 * expected
        assert abs(total - s.noise_free.sum()) <= 5 * math.sqrt(expected)
        # duration = frame duration x projections; realistic count levels (millions)
        assert s.duration_s == pytest.approx(tp.frame_duration_ms / 1000 * 120)
        assert total > 1e6


def test_noise_free_spect_recovers_activity_up_to_reported_pv(rendered) -> None:  # noqa: ANN001
    pt, sessions = rendered
    cyc = pt.cycles[0]
    vois = voi_labels(pt.lesion_names)
    cal = pt.cps_per_mbq
    for s in sessions[1:]:
        labels_sp = resample(s.labels, s.ct_grid, s.image_grid, order=0)
        pv = s.pv.set_index("voi")
        for voi in ("liver", "kidney_left", "parotid_gland_left", *pt.lesion_names[:3]):
            rec = s.noise_free[np.isin(labels_sp, vois[voi])].sum() / (cal * s.duration_s)
            true = float(cyc.activity_mbq_at(voi, s.time_point.time_h))
            assert pv.loc[voi, "true_activity_mbq"] == pytest.approx(true)
            assert rec / true == pytest.approx(pv.loc[voi, "recovery"], rel=1e-4)
        assert pv.loc["liver", "recovery"] > 0.85
        assert pv.loc["field_of_view", "recovery"] > 0.97
        assert pv.loc["kidney_left", "recovery"] < 1.0  # partial-volume loss is real


def test_activity_map_sums_to_truth(rendered) -> None:  # noqa: ANN001
    from theralake.synth.imaging import activity_map, warp

    pt, sessions = rendered
    cyc = pt.cycles[0]
    tp = cyc.time_points[1]
    labels, weights = warp(cyc.anatomy, tp.pose)
    conc = activity_map(cyc, labels, weights, tp.time_h, cyc.anatomy.grid)
    v = cyc.anatomy.grid.voxel_volume_ml
    for voi in ("liver", "kidney_right", "urinary_bladder"):
        got = conc[np.isin(labels, voi_labels([])[voi])].sum() * v / 1e6
        assert got == pytest.approx(float(cyc.activity_mbq_at(voi, tp.time_h)), rel=1e-4)


def test_tia_and_dose_maps_match_voi_truth(rendered) -> None:  # noqa: ANN001
    pt, _ = rendered
    cyc = pt.cycles[0]
    tia = tia_map(cyc)
    dose = dose_map(cyc, tia)
    mass = cyc.anatomy.density * cyc.anatomy.grid.voxel_volume_ml
    vois = voi_labels(pt.lesion_names)
    for voi in ("kidney_left", "liver", "body", *pt.lesion_names[:2]):
        m = np.isin(cyc.anatomy.labels, vois[voi])
        assert tia[m].sum() == pytest.approx(cyc.tia_mbq_h[voi], rel=1e-4)
        mean_dose = (dose[m] * mass[m]).sum() / mass[m].sum()
        assert mean_dose == pytest.approx(cyc.dose_gy[voi], rel=1e-4)


def test_pet_suv_and_ct_numbers(rendered) -> None:  # noqa: ANN001
    from theralake.synth.patient import pet_concentration_scale

    pt, sessions = rendered
    pet = sessions[0]
    k = pet_concentration_scale(pt.pet, pt.clinical.weight_kg)
    liver = pet.labels == 7
    assert np.mean(pet.image[liver]) / k == pytest.approx(pt.pet.suv["liver"], rel=0.1)
    ct = sessions[1].ct_hu
    lab = sessions[1].labels
    assert np.mean(ct[lab == 0]) < -950
    assert 30 < np.mean(ct[lab == 7]) < 90
    assert np.mean(ct[lab == 3]) < -600


def test_patient_moves_between_time_points(rendered) -> None:  # noqa: ANN001
    pt, sessions = rendered
    a, b = sessions[1].labels, sessions[2].labels
    dice = 2 * np.sum((a == 7) & (b == 7)) / (np.sum(a == 7) + np.sum(b == 7))
    assert 0.5 < dice < 0.99  # moved, but the same liver
