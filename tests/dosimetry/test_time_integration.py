"""A VOI's TIA at any number of time points, with its uncertainty and the findings that say
what it rests on; the recovery estimate behind the partial-volume warning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from theralake.dosimetry import kinetics
from theralake.dosimetry.quality import sphere_recovery
from theralake.dosimetry.settings import load_config
from theralake.dosimetry.time_integration import integrate, population_half_life

LAM_LU = math.log(2) / 159.53
SETTINGS = load_config()


def _bi(t, teff_h: float, tup_h: float) -> tuple[np.ndarray, float]:
    lw, lu = math.log(2) / teff_h, math.log(2) / tup_h
    t = np.asarray(t, float)
    return 100 * (np.exp(-lw * t) - np.exp(-lu * t)), 100 * (1 / lw - 1 / lu)


def test_three_points_rising_then_falling_integrate_within_5_percent():
    # the demo's 4/24/168 h: a liver-like curve still rising at 4 h; the linear trapezoid of
    # the earlier code gave +13 %, the logarithmic fall is exact for the washout
    a, truth = _bi([4.0, 24.0, 168.0], 53.3, 2.0)
    res = integrate(np.array([4.0, 24.0, 168.0]), a, "liver", SETTINGS, LAM_LU, None, "Lu-177")
    assert res.model == "trapezoid" and abs(res.tia_mbq_h / truth - 1) < 0.05
    assert res.tia_sd_mbq_h > 0  # propagated from the SPECT activity uncertainty
    falling, truth = _bi([4.0, 24.0, 168.0], 40.9, 1.5)
    res = integrate(np.array([4.0, 24.0, 168.0]), falling, "kidney_left", SETTINGS, LAM_LU,
                    None, "Lu-177")
    assert res.model == "mono" and abs(res.tia_mbq_h / truth - 1) < 0.05


def test_log_down_trapezoid_is_exact_on_exponential_segments():
    t = np.array([10.0, 30.0, 60.0])
    a = 50 * np.exp(-0.03 * t)
    fit = kinetics.fit_tac(t, a, "trapezoid", segments="log-down")
    assert fit.tia_measured_mbq_h == pytest.approx(50 / 0.03 * (np.exp(-0.3) - np.exp(-1.8)))
    assert fit.predict(np.array([45.0]))[0] == pytest.approx(50 * np.exp(-1.35))
    assert kinetics.fit_tac(t, a, "trapezoid").tia_measured_mbq_h > fit.tia_measured_mbq_h


def test_two_points_have_an_uncertainty():
    a, truth = _bi([24.0, 168.0], 40.9, 1.5)
    res = integrate(np.array([24.0, 168.0]), a, "kidney_left", SETTINGS, LAM_LU, None,
                    "Lu-177")
    assert res.method == "fit" and abs(res.tia_mbq_h / truth - 1) < 0.05
    assert 0 < res.tia_sd_mbq_h < 0.5 * res.tia_mbq_h


def test_one_point_by_hanscheid_and_madsen():
    t, a = 48.0, 50.0
    res = integrate(np.array([t]), np.array([a]), "kidney_left", SETTINGS, LAM_LU,
                    "Lu-177 PSMA-617", "Lu-177")
    assert res.method == "hanscheid2018"
    assert res.tia_mbq_h == pytest.approx(a * 2 * t / math.log(2))
    assert res.tia_sd_mbq_h == pytest.approx(0.10 * res.tia_mbq_h)
    assert res.time_points_h == [t] and not res.findings  # 48 h = 1.35 population T_eff
    madsen = dict(SETTINGS, single_time_point={**SETTINGS["single_time_point"],
                                               "method": "madsen"})
    res = integrate(np.array([t]), np.array([a]), "kidney_left", madsen, LAM_LU,
                    "Lu-177 PSMA-617", "Lu-177")
    lam = math.log(2) / 35.5
    assert res.method == "madsen2018"
    assert res.tia_mbq_h == pytest.approx(a * math.exp(lam * t) / lam)
    assert "AAPM" in population_half_life("kidney_right", "Lu-177 PSMA-617", "Lu-177").source


def test_single_time_point_doubts_are_findings():
    madsen = dict(SETTINGS, single_time_point={**SETTINGS["single_time_point"],
                                               "method": "madsen"})
    res = integrate(np.array([48.0]), np.array([5.0]), "lesion_001", madsen, LAM_LU,
                    "Lu-177 PSMA-617", "Lu-177")
    assert res.method == "hanscheid2018"
    assert [f.check for f in res.findings] == ["no_population_half_life"]
    early = integrate(np.array([4.0]), np.array([5.0]), "kidney_left", SETTINGS, LAM_LU,
                      "Lu-177 PSMA-617", "Lu-177")
    assert [f.check for f in early.findings] == ["single_time_point_timing"]
    assert early.findings[0].value == pytest.approx(4.0 / 35.5)


def test_an_implausible_fit_is_a_finding():
    t = np.array([1.0, 4.0, 24.0, 48.0, 96.0])
    a = np.array([5.0, 60.0, 3.0, 55.0, 1.0])  # no exponential shape at all
    res = integrate(t, a, "spleen", SETTINGS, LAM_LU, None, "Lu-177")
    found = {f.check: f for f in res.findings}
    assert not res.plausible and found["fit_implausible"].status == "warn"
    assert found["tia_uncertain"].value == pytest.approx(res.tia_sd_mbq_h / res.tia_mbq_h)
    assert found["tia_uncertain"].value > 0.5


def test_a_trapezoid_carries_the_uncertainty_of_its_tail():
    """The trapezoid's TIA uncertainty goes through its fitted tail, also where the tail's
    rate is clipped at physical decay (the delta method saw no tail there), and matches an
    independent Monte Carlo of the same rule; never 0 without a sigma (issue 18, item 2)."""
    t = np.array([4.0, 24.0, 168.0])
    a = np.array([60.0, 100.0, 97.0])  # still near its peak at 168 h: tail at physical decay
    s = 0.05 * a
    fit = kinetics.fit_tac(t, a, "trapezoid", sigma_mbq=s, decay_constant_per_h=LAM_LU,
                           segments="log-down")
    assert fit.at_bound == ["lambda_tail_per_h"]
    rng = np.random.default_rng(7)
    draws = [kinetics.fit_tac(t, np.clip(a + rng.normal(0, s), 1e-6, None), "trapezoid",
                              decay_constant_per_h=LAM_LU, segments="log-down").tia_mbq_h
             for _ in range(800)]
    assert fit.tia_sd_mbq_h == pytest.approx(np.std(draws), rel=0.15)
    # the tail after 168 h alone varies with the last point: more than the old 0 for it
    assert fit.tia_sd_mbq_h > 0.05 * fit.tia_after_last_mbq_h
    bare = kinetics.fit_tac(t, a, "trapezoid", decay_constant_per_h=LAM_LU)
    assert 0 < bare.tia_sd_mbq_h < bare.tia_mbq_h and "assumed 10%" in bare.reasons[0]
    # a bootstrap of a trapezoid without sigma (a KeyError before: no residual weights)
    boot = kinetics.fit_tac(t, a, "trapezoid", decay_constant_per_h=LAM_LU, bootstrap=200)
    assert boot.tia_bootstrap_sd_mbq_h == pytest.approx(bare.tia_sd_mbq_h, rel=0.2)
    res = integrate(t, a, "lesion_001", SETTINGS, LAM_LU, None, "Lu-177")
    assert res.tia_sd_mbq_h > 0
    assert res.parameters["tia_sd_mbq_h"] == pytest.approx(res.tia_sd_mbq_h)  # one record


def test_a_fit_at_its_bound_or_mostly_extrapolated_is_implausible():
    """A lesion retaining everything (effective half-life = the physical one, the fit's
    bound) with more than half its TIA after the last point is a warning, not 'plausible'
    (issue 18, item 5)."""
    t = np.array([4.0, 24.0, 150.0])
    a = 80.0 * np.exp(-LAM_LU * t)
    res = integrate(t, a, "lesion_002", SETTINGS, LAM_LU, "Lu-177 PSMA-617", "Lu-177")
    found = {f.check: f for f in res.findings}
    assert not res.plausible and not res.parameters["plausible"]
    assert found["fit_at_bound"].status == "warn"
    assert "physical half-life" in found["fit_at_bound"].message
    assert found["tia_extrapolated"].value == pytest.approx(math.exp(-LAM_LU * 150.0), abs=0.02)
    assert any("extrapolated" in r for r in res.parameters["reasons"])
    # a kidney with biological washout, imaged to 168 h: neither
    falling, _ = _bi([4.0, 24.0, 168.0], 40.9, 1.5)
    ok = integrate(np.array([4.0, 24.0, 168.0]), falling, "kidney_left", SETTINGS, LAM_LU,
                   None, "Lu-177")
    assert ok.plausible and not {"fit_at_bound", "tia_extrapolated"} & {
        f.check for f in ok.findings}


def test_sphere_recovery_matches_a_monte_carlo():
    rng = np.random.default_rng(3)
    radius = (3 * 10 * 1000 / (4 * math.pi)) ** (1 / 3)  # 10 mL
    sigma = 11.0 / (2 * math.sqrt(2 * math.log(2)))
    n = 200_000
    u = rng.normal(size=(n, 3))
    u /= np.linalg.norm(u, axis=1)[:, None]
    points = u * (radius * rng.random(n) ** (1 / 3))[:, None] + rng.normal(0, sigma, (n, 3))
    mc = float((np.linalg.norm(points, axis=1) < radius).mean())
    assert sphere_recovery(10.0, 11.0) == pytest.approx(mc, abs=0.005)
    assert sphere_recovery(1e6, 11.0) > 0.99 and sphere_recovery(0.1, 11.0) < 0.1


def test_a_near_exact_four_point_fit_keeps_the_spect_uncertainty(monkeypatch):
    """A bi fit at four points has one residual: a near-exact one said TIA ± 0. Its TIA
    uncertainty is now at least the SPECT activity uncertainty's; a weighted refit that fails
    is said, not raised (a cohort run stopped on it)."""
    t = np.array([4.0, 24.0, 48.0, 168.0])
    lw, lu = math.log(2) / 55 + LAM_LU, math.log(2) / 3 + LAM_LU
    a = 100 * (np.exp(-lw * t) - np.exp(-lu * t)) * (1 + np.array([1e-6, -1e-6, 1e-6, 0.0]))
    res = integrate(t, a, "kidney_left", SETTINGS, LAM_LU, None, "Lu-177")
    assert res.model == "bi" and 0.01 < res.tia_sd_mbq_h / res.tia_mbq_h < 0.2

    fit_tac = kinetics.fit_tac

    def failing(*args, **kwargs):  # the weighted refit only
        if kwargs.get("sigma_mbq") is not None:
            raise RuntimeError("bi fit did not converge")
        return fit_tac(*args, **kwargs)

    monkeypatch.setattr(kinetics, "fit_tac", failing)
    res = integrate(t, a, "kidney_left", SETTINGS, LAM_LU, None, "Lu-177")
    assert res.model == "bi"
    assert any("could not be propagated" in r for r in res.parameters["reasons"])
