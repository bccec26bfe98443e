import json
import math

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from theralake.dosimetry import kinetics as k
from theralake.dosimetry.cli import register
from theralake.dosimetry.voxel_kinetics import fit_voxel_tacs, tia_map_organ_scaled

T = np.array([4.0, 24.0, 48.0, 96.0, 168.0])
LAM = math.log(2) / 159.53


def _bi(a0, lw, lu):
    return a0 * (np.exp(-lw * T) - np.exp(-lu * T))


def test_voxel_fit_equals_organ_fit_on_uniform_region():
    rng = np.random.default_rng(5)
    curve = _bi(10.0, math.log(2) / 45, math.log(2) / 3) * (1 + 0.03 * rng.normal(size=T.size))
    maps = np.broadcast_to(curve[:, None, None, None], (T.size, 6, 6, 6)).copy()
    for model in ("mono", "bi"):
        vox = fit_voxel_tacs(T, maps, model=model, decay_constant_per_h=LAM)
        total = maps.reshape(T.size, -1).sum(1)
        # same (Poisson-like) weighting as the voxel fit: sigma ∝ sqrt(A)
        org = k.fit_tac(T, total, model, sigma_mbq=np.sqrt(total), decay_constant_per_h=LAM)
        assert vox.tia_map.sum() == pytest.approx(org.tia_mbq_h, rel=2e-3)


def test_voxel_fit_recovers_truth_and_chooses_models():
    rng = np.random.default_rng(1)
    n = 2000
    lw = math.log(2) / rng.uniform(30, 80, n)
    lu = math.log(2) / rng.uniform(1, 4, n)
    a0 = rng.uniform(1, 10, n)
    clean = a0 * (np.exp(-np.outer(T, lw)) - np.exp(-np.outer(T, lu)))
    truth = a0 * (1 / lw - 1 / lu)
    res = fit_voxel_tacs(T, clean, model="bi", decay_constant_per_h=LAM)
    assert np.allclose(res.tia_map, truth, rtol=1e-3)
    mono = 5.0 * np.exp(-np.outer(T, np.full(n, 0.02)))
    res = fit_voxel_tacs(T, mono * (1 + 0.02 * rng.normal(size=mono.shape)), model="auto")
    assert (res.model_map == 0).mean() > 0.6


def test_organ_scaled_fallback():
    rng = np.random.default_rng(2)
    maps = rng.uniform(0, 1, (T.size, 5, 5, 5))
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    out = tia_map_organ_scaled(T, maps, mask, 500.0)
    assert out[mask].sum() == pytest.approx(500.0)
    assert np.all(out[~mask] == 0)
    res = fit_voxel_tacs(T, maps * 1e-3, mask=mask, min_activity_mbq=1.0, organ_tia=500.0)
    assert np.all(res.model_map[mask] == 2)
    assert res.tia_map[mask].sum() == pytest.approx(500.0)


def test_voxel_bad_input():
    with pytest.raises(ValueError, match="mismatched"):
        fit_voxel_tacs(T[:2], [np.ones((2, 2, 2)), np.ones((3, 2, 2))])
    with pytest.raises(ValueError, match="increasing"):
        fit_voxel_tacs([2.0, 1.0], np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="negative"):
        fit_voxel_tacs(T, -np.ones((T.size, 2, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        fit_voxel_tacs(T, np.full((T.size, 2, 2, 2), np.nan))


def _app():
    app = typer.Typer()
    register(app)
    return app


def test_cli_tac(tmp_path):
    csv = tmp_path / "tac.csv"
    t = np.array([1.0, 4.0, 24.0, 48.0, 96.0, 168.0])
    a = 100 * (np.exp(-math.log(2) / 40 * t) - np.exp(-math.log(2) / 2 * t))
    rows = "\n".join(f"{x},{y}" for x, y in zip(t, a, strict=True))
    csv.write_text("time_h,activity_mbq\n" + rows)
    r = CliRunner().invoke(_app(), ["tac", str(csv), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["chosen"] == "bi"
    truth = 100 * (40 / math.log(2) - 2 / math.log(2))
    assert out["result"]["tia_mbq_h"] == pytest.approx(truth, rel=1e-3)
    png = tmp_path / "fit.png"
    r = CliRunner().invoke(_app(), ["tac", str(csv), "--plot", str(png)])
    assert r.exit_code == 0 and "chosen: bi" in r.output and png.exists()
    bad = tmp_path / "bad.csv"
    bad.write_text("time_h,activity_mbq\n2,1\n1,2\n3,1\n")
    r = CliRunner().invoke(_app(), ["tac", str(bad)])
    assert r.exit_code == 2


def test_cli_kernel(tmp_path):
    out = tmp_path / "k.npy"
    r = CliRunner().invoke(_app(), ["kernel", "--nuclide", "Lu-177", "--voxel-mm", "4.42",
                                    "--size", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "(0, 0, 0)" in r.output and np.load(out).shape == (5, 5, 5)
    r = CliRunner().invoke(_app(), ["kernel", "--voxel-mm", "-1"])
    assert r.exit_code == 2
