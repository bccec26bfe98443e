"""DVH metrics against analytic DVHs of a voxelised sphere, and bad input.

Phantom: a sphere of radius 15 mm on 0.5 mm voxels (~113k voxels), centred off the voxel
lattice so that no symmetry hands over exact answers. Two dose fields with closed-form DVHs:

* linear ``D = a + b t`` with ``t = u . r`` along an oblique direction ``u`` (irrational
  components, so voxel doses do not fall on lattice planes of tied values); the fraction of a
  sphere with ``t >= t0`` is the spherical cap ``(R - t0)^2 (2R + t0) / (4 R^3)``;
* Gaussian ``D = D0 exp(-r^2 / (2 s^2))``: ``V(D >= d) / V = (r_d / R)^3`` with
  ``r_d = s sqrt(2 ln(D0 / d))``, i.e. ``D(f) = D0 exp(-(R f^(1/3))^2 / (2 s^2))``.

Tolerances come from the voxelisation: the voxel dose step is ``b h = 0.5 Gy`` (linear) and at
most ~1.4 Gy (Gaussian, at D2); dose metrics are required within 0.05 Gy (a tenth of the
linear field's voxel step, 0.17 % / 0.12 % of the dose ranges); the measured errors are
<= 0.006 Gy (linear) and <= 0.008 Gy (Gaussian).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq

from theralake.features.dvh import Dvh, cumulative_dvh, dvh_metrics

R_MM = 15.0
H_MM = 0.5
VOXEL_ML = H_MM**3 / 1000.0
SPHERE_ML = 4.0 / 3.0 * math.pi * R_MM**3 / 1000.0
DOSE_TOL_GY = 0.05
V_TOL_PCT = 0.05  # percentage points; measured <= 0.016

A_GY, B_GY_PER_MM = 30.37, 1.0  # linear field
D0_GY, S_MM = 50.0, 8.0  # Gaussian field


@pytest.fixture(scope="module")
def sphere():
    """Voxel coordinates relative to the sphere centre (mm) and the sphere mask."""
    n = int(round(2 * R_MM / H_MM)) + 2
    c = (np.arange(n) + 0.5) * H_MM - n * H_MM / 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    x, y, z = x - 0.13, y + 0.21, z - 0.07  # centre off the lattice
    mask = x * x + y * y + z * z <= R_MM**2
    return x, y, z, mask


@pytest.fixture(scope="module")
def linear_dose(sphere):
    x, y, z, _ = sphere
    u = np.array([1.0, math.sqrt(2.0), math.pi])
    u /= np.linalg.norm(u)
    return A_GY + B_GY_PER_MM * (u[0] * x + u[1] * y + u[2] * z)


@pytest.fixture(scope="module")
def gauss_dose(sphere):
    x, y, z, _ = sphere
    return D0_GY * np.exp(-(x * x + y * y + z * z) / (2 * S_MM**2))


def _cap_fraction(t: float) -> float:
    """Fraction of the sphere's volume with coordinate >= t (spherical cap)."""
    t = min(max(t, -R_MM), R_MM)
    return (R_MM - t) ** 2 * (2 * R_MM + t) / (4 * R_MM**3)


def _linear_d_at(fraction: float) -> float:
    t = brentq(lambda t: _cap_fraction(t) - fraction, -R_MM, R_MM, xtol=1e-12)
    return A_GY + B_GY_PER_MM * t


def _gauss_d_at(fraction: float) -> float:
    return D0_GY * math.exp(-((R_MM * fraction ** (1 / 3)) ** 2) / (2 * S_MM**2))


def _gauss_v_at(dose_gy: np.ndarray) -> np.ndarray:
    ratio = np.maximum(D0_GY / np.maximum(dose_gy, 1e-300), 1.0)
    r_d = S_MM * np.sqrt(2 * np.log(ratio))
    return np.clip(r_d / R_MM, 0.0, 1.0) ** 3


def test_linear_gradient_matches_spherical_cap(sphere, linear_dose):
    mask = sphere[3]
    m = dvh_metrics(linear_dose, mask, VOXEL_ML, d_at_cc=(0.5, 2.0),
                    v_at_gy=(20.0, 30.0, 40.0), geud_a=(1,))
    for key, frac in [("d2_gy", 0.02), ("d50_gy", 0.5), ("d95_gy", 0.95), ("d98_gy", 0.98)]:
        assert m[key] == pytest.approx(_linear_d_at(frac), abs=DOSE_TOL_GY), key
    for cc in (0.5, 2.0):
        assert m[f"d{cc:g}cc_gy"] == pytest.approx(_linear_d_at(cc / SPHERE_ML),
                                                   abs=DOSE_TOL_GY)
    for gy in (20.0, 30.0, 40.0):
        truth = 100 * _cap_fraction((gy - A_GY) / B_GY_PER_MM)
        assert m[f"v{gy:g}gy_pct"] == pytest.approx(truth, abs=V_TOL_PCT)
    assert m["dmean_gy"] == pytest.approx(A_GY, rel=5e-3)  # measured error 0.0005 Gy
    assert m["dmean_gy"] == pytest.approx(A_GY, abs=0.01)
    # Voxel centres lie inside the sphere: extremes within one voxel step of a +- bR.
    step = B_GY_PER_MM * H_MM * math.sqrt(3)
    assert A_GY + B_GY_PER_MM * R_MM - step <= m["dmax_gy"] <= A_GY + B_GY_PER_MM * R_MM
    assert A_GY - B_GY_PER_MM * R_MM <= m["dmin_gy"] <= A_GY - B_GY_PER_MM * R_MM + step
    assert m["volume_ml"] == pytest.approx(SPHERE_ML, rel=1e-3)
    assert m["hi"] == pytest.approx((m["d2_gy"] - m["d98_gy"]) / m["d50_gy"])


def test_gaussian_radial_dose_matches_closed_form(sphere, gauss_dose):
    mask = sphere[3]
    m = dvh_metrics(gauss_dose, mask, VOXEL_ML)
    for key, frac in [("d2_gy", 0.02), ("d50_gy", 0.5), ("d95_gy", 0.95), ("d98_gy", 0.98)]:
        assert m[key] == pytest.approx(_gauss_d_at(frac), abs=DOSE_TOL_GY), key
    integral, _ = quad(lambda r: D0_GY * math.exp(-r * r / (2 * S_MM**2)) * 4 * math.pi * r * r,
                       0.0, R_MM)
    mean = integral / (4.0 / 3.0 * math.pi * R_MM**3)
    assert m["dmean_gy"] == pytest.approx(mean, abs=0.01)  # measured error 0.0008 Gy
    for gy in (10.0, 20.0):
        truth = 100 * float(_gauss_v_at(np.array(gy)))
        assert m[f"v{gy:g}gy_pct"] == pytest.approx(truth, abs=V_TOL_PCT)


def test_stored_cumulative_dvh_matches_closed_form(sphere, gauss_dose):
    mask = sphere[3]
    dvh = cumulative_dvh(gauss_dose, mask, VOXEL_ML, n_points=101)
    assert isinstance(dvh, Dvh)
    assert dvh.dose_gy.shape == dvh.volume_fraction.shape == (101,)
    assert dvh.dose_gy[0] == 0.0
    assert dvh.dose_gy[-1] == pytest.approx(float(gauss_dose[mask].max()))
    assert np.all(np.diff(dvh.dose_gy) > 0)
    assert np.all(np.diff(dvh.volume_fraction) <= 0)
    assert dvh.volume_fraction[0] == 1.0
    assert dvh.volume_ml == pytest.approx(SPHERE_ML, rel=1e-3)
    # Interior points (the last one is Dmax, where the truth still has a tiny volume).
    err = np.abs(dvh.volume_fraction - _gauss_v_at(dvh.dose_gy))[:-1]
    assert err.max() < 2e-3  # measured 4e-4
    with pytest.raises(ValueError):
        dvh.dose_gy[0] = 1.0  # stored arrays are read-only


def test_interpolated_d50_beats_nearest_bin_histogram(sphere, gauss_dose):
    mask = sphere[3]
    truth = _gauss_d_at(0.5)
    ours = dvh_metrics(gauss_dose, mask, VOXEL_ML)["d50_gy"]
    # Classic binned cumulative DVH with 1 Gy bins: D50 = highest bin edge with V >= 50 %.
    doses = gauss_dose[mask]
    edges = np.arange(0.0, math.ceil(doses.max()) + 1.0, 1.0)
    v_edges = (doses[None, :] >= edges[:, None]).mean(axis=1)
    binned = float(edges[v_edges >= 0.5].max())
    err_ours, err_binned = abs(ours - truth), abs(binned - truth)
    assert err_binned > 0.3  # 0.52 Gy here
    assert err_ours < err_binned / 3  # measured 0.003 Gy
    assert err_ours < 0.01


def test_geud(sphere, gauss_dose):
    mask = sphere[3]
    a_values = (-1e4, -10, 1, 10, 1e4)
    m = dvh_metrics(gauss_dose, mask, VOXEL_ML, geud_a=a_values)
    assert m["geud_a1_gy"] == pytest.approx(m["dmean_gy"], rel=1e-12)
    geuds = [m[f"geud_a{a:g}_gy"] for a in a_values]
    assert np.all(np.diff(geuds) > 0)  # increasing in a
    assert m["geud_a10000_gy"] == pytest.approx(m["dmax_gy"], rel=5e-3)
    assert m["geud_a-10000_gy"] == pytest.approx(m["dmin_gy"], rel=5e-3)

    uniform = np.full((6, 6, 6), 7.5)
    box = np.zeros_like(uniform, dtype=bool)
    box[1:5, 1:5, 1:5] = True
    a_values = (-10, -1, 0, 0.5, 1, 10, 100)
    m = dvh_metrics(uniform, box, 0.001, geud_a=a_values, v_at_gy=(7.5, 7.6))
    for a in a_values:
        assert m[f"geud_a{a:g}_gy"] == pytest.approx(7.5, rel=1e-12)
    for key in ("dmean_gy", "dmax_gy", "dmin_gy", "d2_gy", "d50_gy", "d95_gy", "d98_gy"):
        assert m[key] == pytest.approx(7.5)
    assert m["v7.5gy_pct"] == 100.0 and m["v7.6gy_pct"] == 0.0
    assert m["hi"] == 0.0

    # A zero-dose voxel: gEUD is 0 for a <= 0, finite for a > 0.
    with_zero = uniform.copy()
    with_zero[2, 2, 2] = 0.0
    m = dvh_metrics(with_zero, box, 0.001, geud_a=(-10, 0, 1))
    assert m["geud_a-10_gy"] == 0.0 and m["geud_a0_gy"] == 0.0
    assert m["geud_a1_gy"] == pytest.approx(7.5 * 63 / 64)


def test_keys_and_small_voi_omits_d_cc():
    dose = np.linspace(1.0, 30.0, 1000).reshape(10, 10, 10)
    mask = np.ones(dose.shape, dtype=bool)
    m = dvh_metrics(dose, mask, 0.001)  # 1 ml VOI: D2cc is omitted, never NaN
    assert set(m) == {"dmean_gy", "dmax_gy", "dmin_gy", "d2_gy", "d50_gy", "d95_gy", "d98_gy",
                      "d0.5cc_gy", "v10gy_pct", "v20gy_pct", "geud_a-10_gy", "geud_a1_gy",
                      "geud_a10_gy", "hi", "volume_ml"}
    assert all(math.isfinite(v) for v in m.values())
    assert m["volume_ml"] == pytest.approx(1.0)
    assert m["d0.5cc_gy"] == pytest.approx(m["d50_gy"])
    assert m["d50_gy"] == pytest.approx(15.5, abs=1e-9)  # interpolated order statistic


def test_one_voxel_voi():
    dose = np.zeros((3, 3, 3))
    dose[1, 2, 0] = 12.5
    mask = dose > 0
    m = dvh_metrics(dose, mask, 0.064, d_at_cc=(0.05, 1.0))
    for key in ("dmean_gy", "dmax_gy", "dmin_gy", "d2_gy", "d50_gy", "d95_gy", "d98_gy",
                "d0.05cc_gy", "geud_a-10_gy", "geud_a1_gy", "geud_a10_gy"):
        assert m[key] == 12.5, key
    assert "d1cc_gy" not in m
    assert m["v10gy_pct"] == 100.0 and m["v20gy_pct"] == 0.0
    assert m["volume_ml"] == pytest.approx(0.064)
    dvh = cumulative_dvh(dose, mask, 0.064)
    assert dvh.volume_fraction[0] == 1.0


def test_fractional_weights():
    dose = np.concatenate([np.full(500, 10.0), np.full(500, 20.0)]).reshape(10, 10, 10)
    weights = np.concatenate([np.full(500, 1.0), np.full(500, 0.5)]).reshape(10, 10, 10)
    mask = np.ones(dose.shape, dtype=bool)
    m = dvh_metrics(dose, mask, 0.001, v_at_gy=(15.0,), weights=weights)
    assert m["dmean_gy"] == pytest.approx((10 * 1.0 + 20 * 0.5) / 1.5)
    assert m["volume_ml"] == pytest.approx(0.75)
    assert m["v15gy_pct"] == pytest.approx(100 / 3, abs=0.1)  # 20 Gy voxels: 1/3 of volume
    assert m["d50_gy"] == 10.0 and m["d2_gy"] == 20.0
    # Zero-weight voxels are outside the VOI.
    weights[:, :, :5] = 0.0
    m0 = dvh_metrics(dose, mask, 0.001, weights=weights)
    assert m0["volume_ml"] == pytest.approx(0.75 / 2)


@pytest.mark.parametrize("case, match", [
    ("empty", "empty VOI"),
    ("shape", "not aligned"),
    ("nan", "NaN"),
    ("inf", "infinite"),
    ("negative", "negative"),
    ("label_map", "not binary"),
    ("weights_shape", "weights not aligned"),
    ("weights_range", "0..1"),
    ("all_zero_weights", "empty VOI"),
    ("voxel_volume", "voxel volume"),
])
def test_bad_input_raises_with_reason(case, match):
    dose = np.full((4, 4, 4), 5.0)
    mask = np.zeros(dose.shape, dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    kwargs: dict = {}
    vox = 0.001
    if case == "empty":
        mask[:] = False
    elif case == "shape":
        mask = mask[:, :, :3]
    elif case == "nan":
        dose[1, 1, 1] = np.nan
    elif case == "inf":
        dose[1, 1, 1] = np.inf
    elif case == "negative":
        dose[2, 2, 2] = -0.1
    elif case == "label_map":
        mask = mask.astype(int) * 3
    elif case == "weights_shape":
        kwargs["weights"] = np.ones((4, 4))
    elif case == "weights_range":
        kwargs["weights"] = np.full(dose.shape, 1.5)
    elif case == "all_zero_weights":
        kwargs["weights"] = np.zeros(dose.shape)
    elif case == "voxel_volume":
        vox = 0.0
    with pytest.raises(ValueError, match=match):
        dvh_metrics(dose, mask, vox, **kwargs)
    with pytest.raises(ValueError, match=match):
        cumulative_dvh(dose, mask, vox, **kwargs)


def test_bad_values_outside_voi_are_ignored():
    dose = np.full((4, 4, 4), np.nan)
    mask = np.zeros(dose.shape, dtype=np.uint8)  # 0/1 integer masks are accepted
    mask[1:3, 1:3, 1:3] = 1
    dose[mask == 1] = 3.0
    dose[0, 0, 0] = -1.0
    assert dvh_metrics(dose, mask, 0.001)["dmean_gy"] == 3.0
