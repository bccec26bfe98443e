import math

import numpy as np
import pytest
from scipy.integrate import dblquad

from theralake.dosimetry import radiobiology as rb
from theralake.dosimetry.organ_s import load_s_table, mird_dose, scale_self_s
from theralake.dosimetry.sphere import sphere_self_s


def test_bed_mono_hand_computed():
    # D = 20 Gy, T_eff = 40 h, kidney a/b 2.6 Gy, T_rep 2.8 h
    lam, mu = math.log(2) / 40, math.log(2) / 2.8
    r = rb.bed_mono(20.0, lam, 2.6, 2.8)
    hand = 20 * (1 + 20 * lam / ((mu + lam) * 2.6))
    assert r.bed_gy == pytest.approx(hand, rel=1e-12)
    assert r.bed_gy == pytest.approx(30.0647, abs=1e-3)
    assert r.eqd2_gy == pytest.approx(hand / (1 + 2 / 2.6))


def test_bed_bi_against_numerical_lea_catcheside():
    lw, lu, trep = math.log(2) / 40, math.log(2) / 2.0, 2.8
    mu = math.log(2) / trep

    def rate(t):
        return math.exp(-lw * t) - math.exp(-lu * t)

    d = 1 / lw - 1 / lu
    inner, _ = dblquad(lambda s, t: rate(t) * rate(s) * math.exp(-mu * (t - s)),
                       0, 2000, 0, lambda t: t)
    g_num = 2 * inner / d**2
    r = rb.bed_bi(10.0, lw, lu, 2.6, trep)
    assert r.g_factor == pytest.approx(g_num, rel=1e-5)
    assert r.bed_gy == pytest.approx(10 + g_num * 100 / 2.6, rel=1e-5)
    # bi with instant uptake tends to mono
    assert rb.bed_bi(10.0, lw, 1e6, 2.6, trep).bed_gy == pytest.approx(
        rb.bed_mono(10.0, lw, 2.6, trep).bed_gy, rel=1e-5)


def test_cycles_and_tissues():
    k = rb.get_tissue("kidney_left")
    assert (k.alpha_beta_gy, k.t_rep_h) == (2.6, 2.8)
    assert k.source
    for name in ("tumor", "red_marrow", "parotid_gland_left", "lesion_003"):
        assert rb.get_tissue(name).source
    cycles = [rb.bed_mono(5.0, 0.02, 2.6, 2.8) for _ in range(4)]
    tot = rb.sum_cycles(cycles, 2.6)
    assert tot.dose_gy == pytest.approx(20.0)
    assert tot.bed_gy == pytest.approx(4 * cycles[0].bed_gy)
    # fractionation spares: 4 cycles of 5 Gy < one of 20 Gy
    assert tot.bed_gy < rb.bed_mono(20.0, 0.02, 2.6, 2.8).bed_gy
    with pytest.raises(ValueError):
        rb.get_tissue("unobtainium")
    with pytest.raises(ValueError):
        rb.bed_mono(10.0, 0.02, -1.0, 2.8)


def test_organ_s_table_and_mass_scaling(tmp_path):
    tab = load_s_table()
    s100 = tab.s("Lu-177", "sphere_100g", "sphere_100g")
    assert s100 == pytest.approx(sphere_self_s("Lu-177", 100.0).s_gy_per_bq_s, rel=1e-4)
    assert "computed" in tab.provenance[("Lu-177", "sphere_100g", "sphere_100g")]
    # electrons scale as 1/m: scaled 100 g -> 50 g close to the sphere model at 50 g
    key = ("Lu-177", "sphere_100g", "sphere_100g")
    s50 = scale_self_s(s100, 100.0, 50.0, tab.photon_fraction[key])
    assert s50 == pytest.approx(sphere_self_s("Lu-177", 50.0).s_gy_per_bq_s, rel=0.02)
    out = mird_dose({"sphere_100g": 1000.0}, tab, "Lu-177")
    assert out.dose_gy["sphere_100g"] == pytest.approx(1000 * 3.6e9 * s100)
    with pytest.raises(ValueError, match="TIA"):
        mird_dose({"sphere_100g": -1.0}, tab, "Lu-177")
    bad = tmp_path / "bad.csv"
    bad.write_text("nuclide,source\nLu-177,x\n")
    with pytest.raises(ValueError, match="lacks columns"):
        load_s_table(bad)
    assert np.isfinite(s50)


def test_bed_says_what_its_parameters_rest_on():
    """Issue 20.5: BED from unsourced LQ parameters, or the dose itself for a tissue without
    any, was silent; now each VOI's BED says so (a quality finding of the cycle)."""
    from theralake.dosimetry.time_integration import Integration
    from theralake.dosimetry.voi_dose import bed_of

    lam = math.log(2) / 40
    tia = Integration(100.0, 5.0, "fit", "mono", 40.0, [4.0, 24.0], [1.0], [lam], {})
    kidney = bed_of("kidney_left", 10.0, tia)
    assert kidney.caveat is None
    assert kidney.bed_gy == pytest.approx(rb.bed_mono(10.0, lam, 2.6, 2.8).bed_gy)
    lesion = bed_of("lesion_002", 10.0, tia)
    assert "not verified" in lesion.caveat and lesion.alpha_beta_gy == 10.0
    liver = bed_of("liver", 10.0, tia)
    assert "equal the absorbed dose" in liver.caveat and liver.bed_gy == 10.0
