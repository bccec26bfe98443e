"""Shorter and quieter acquisitions (issue 22): the views between those acquired, by linear
interpolation (the baseline) and by the network, and low-count views denoised, on acquisitions
of random objects projected with the system model; the finer orbit they are reconstructed on."""

from __future__ import annotations

import numpy as np
import pytest

from theralake.ingest.projection_networks import (
    Denoiser,
    ProjectionNetworkConfig,
    ViewSynthesizer,
    interpolate_views,
    load_network,
    nrmse,
    sparse_of,
    thinned,
)
from theralake.ingest.spect_system import Geometry, forward_project, system_matrix
from theralake.synth.grid import centred_grid
from theralake.synth.projections import geometry_of

FACTOR = 4


def test_linear_interpolation_wraps_around_the_orbit():
    sparse = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
    full = interpolate_views(sparse, 2)
    assert full[:, 0, 0].tolist() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 1.5]  # 3 -> 0 across 360
    assert np.array_equal(full[::2], sparse)
    with pytest.raises(ValueError, match="30 views are not a multiple of 4"):
        sparse_of(np.zeros((30, 2, 2)), 4)


def test_the_finer_orbit_keeps_the_acquired_angles_and_interpolates_the_radii():
    g = Geometry(angles_deg=np.array([10.0, 100.0, 190.0, 280.0]),
                 radii_mm=np.array([200.0, 240.0, 200.0, 240.0]), bins=8, rows=4,
                 pixel_mm=4.0, origin_mm=(0.0, 0.0, 0.0))
    fine = g.finer(3)
    assert np.allclose(fine.angles_deg, (10.0 + 30.0 * np.arange(12)) % 360)
    assert np.allclose(fine.radii_mm[:4], [200.0, 213.333, 226.667, 240.0], atol=1e-3)
    assert np.allclose(fine.radii_mm[-2:], [226.667, 213.333], atol=1e-3)  # back to view 0
    uneven = Geometry(angles_deg=np.array([0.0, 80.0, 180.0, 270.0]), radii_mm=g.radii_mm,
                      bins=8, rows=4, pixel_mm=4.0, origin_mm=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="not evenly spaced"):
        uneven.finer(2)


@pytest.fixture(scope="module")
def expected():
    """Fourteen acquisitions' expected counts (48 views) of random ellipsoids in a water
    cylinder."""
    grid = centred_grid((12, 32, 32), (8.84, 8.84, 8.84))
    z, y, x = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    body = ((y - 15.5) / 12) ** 2 + ((x - 15.5) / 14) ** 2 <= 1
    matrix = system_matrix(geometry_of(grid, 48), mu_per_cm=body * np.float32(0.135),
                           collimator="SY-ME", energy_kev=208.4)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(14):
        activity = 0.5 * body.astype(np.float32)
        for _ in range(rng.integers(2, 6)):
            c = rng.uniform([2, 8, 8], [10, 24, 24])
            r = rng.uniform(1.5, 5.0, 3)
            inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + \
                ((x - c[2]) / r[2]) ** 2 <= 1
            activity += rng.uniform(1, 10) * inside
        out.append(forward_project(matrix, activity * 20))
    return out


@pytest.fixture(scope="module")
def acquisitions(expected):
    rng = np.random.default_rng(1)
    return [rng.poisson(e).astype(np.float32) for e in expected]


@pytest.fixture(scope="module")
def trained(acquisitions):
    config = ProjectionNetworkConfig(task="views", factor=FACTOR, max_epochs=6,
                                     max_minutes=1.5, seed=1)
    return ViewSynthesizer(config).fit(acquisitions[:12])


def test_the_network_synthesises_views_closer_than_linear_interpolation(acquisitions, trained):
    for views in acquisitions[12:]:  # objects it never saw
        sparse = sparse_of(views, FACTOR)
        net = nrmse(trained.fill(sparse), views, FACTOR)
        linear = nrmse(interpolate_views(sparse, FACTOR), views, FACTOR)
        assert net < 0.9 * linear, (net, linear)
    assert trained.history_[-1] < trained.history_[0]


def test_acquired_views_are_kept_and_a_saved_network_fills_the_same(acquisitions, trained,
                                                                     tmp_path):
    sparse = sparse_of(acquisitions[13], FACTOR)
    filled = trained.fill(sparse)
    assert filled.shape == acquisitions[13].shape and filled.min() >= 0
    assert np.array_equal(filled[::FACTOR], sparse)
    again = load_network(trained.save(tmp_path / "net"))
    assert isinstance(again, ViewSynthesizer) and again.config == trained.config
    assert np.array_equal(again.fill(sparse), filled)
    with pytest.raises(FileNotFoundError, match="not a saved projection network"):
        load_network(tmp_path)
    with pytest.raises(RuntimeError, match="not trained"):
        ViewSynthesizer().fill(sparse)
    with pytest.raises(ValueError, match="needs task 'denoise'"):
        Denoiser(trained.config)


def test_the_denoiser_brings_a_quarter_of_the_counts_closer_to_their_expectation(
        expected, acquisitions, tmp_path):
    config = ProjectionNetworkConfig(task="denoise", count_fraction=0.25, max_epochs=6,
                                     max_minutes=1.5, seed=2)
    denoiser = Denoiser(config).fit(acquisitions[:12])
    rng = np.random.default_rng(5)
    for full, mean in zip(acquisitions[12:], expected[12:], strict=True):
        low = thinned(full, 0.25, rng)  # a quarter of the acquisition time
        truth = 0.25 * mean
        restored = denoiser.apply(low)
        assert restored.shape == low.shape
        assert nrmse(restored, truth) < 0.7 * nrmse(low, truth), (nrmse(restored, truth),
                                                                 nrmse(low, truth))
        assert restored.sum() == pytest.approx(truth.sum(), rel=0.05)  # no count bias
    again = load_network(denoiser.save(tmp_path / "denoiser"))
    assert isinstance(again, Denoiser) and again.config.count_fraction == 0.25
