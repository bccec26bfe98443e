"""Realism of a cohort of 20 (truth only, no DICOM): masses, doses per GBq, half-lives."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from theralake.synth.config import SynthConfig
from theralake.synth.patient import simulate_patient, whole_body_teff_h

#: Adult ranges (g) used as bounds; the generator targets ICRP-89 reference males.
MASS_RANGES = {
    "liver": (900, 3200), "spleen": (50, 450), "kidney_left": (80, 320),
    "kidney_right": (80, 320), "parotid_gland_left": (10, 50), "parotid_gland_right": (10, 50),
    "submandibular_gland_left": (4, 20), "submandibular_gland_right": (4, 20),
    "lung_left": (250, 900), "lung_right": (250, 900),
}


@pytest.fixture(scope="module")
def cohort():  # noqa: ANN201
    cfg = SynthConfig(patients=20, cycles=1, seed=101, small=True)
    return [simulate_patient(cfg, i) for i in range(20)]


def test_organ_masses_in_adult_ranges(cohort) -> None:  # noqa: ANN001
    for pt in cohort:
        for voi, (lo, hi) in MASS_RANGES.items():
            assert lo <= pt.cycles[0].voi_mass_g[voi] <= hi, (pt.patient_id, voi)


def test_organ_masses_full_grid() -> None:
    """At the full 4 mm grid, small glands keep their mass too."""
    cfg = SynthConfig(patients=2, cycles=1, seed=102, small=False)
    for i in range(2):
        c = simulate_patient(cfg, i).cycles[0]
        for voi, (lo, hi) in MASS_RANGES.items():
            assert lo <= c.voi_mass_g[voi] <= hi, voi
        assert 0.6 < c.voi_mass_g["body"] / 1000 / (0.55 * cfg_weight(cfg, i)) < 1.4


def cfg_weight(cfg: SynthConfig, i: int) -> float:
    return simulate_patient(cfg, i, raster=False).clinical.weight_kg


def _per_gbq(cohort, voi: str) -> np.ndarray:  # noqa: ANN001
    return np.array([c.dose_gy[voi] / (c.activity_mbq / 1000) for c in
                     (pt.cycles[0] for pt in cohort)])


@pytest.mark.parametrize("side", ["left", "right"])
def test_kidney_dose_per_gbq(cohort, side: str) -> None:  # noqa: ANN001
    d = _per_gbq(cohort, f"kidney_{side}")
    assert np.all((d >= 0.3) & (d <= 1.2))
    assert 0.5 <= np.median(d) <= 0.85


@pytest.mark.parametrize("side", ["left", "right"])
def test_parotid_dose_per_gbq(cohort, side: str) -> None:  # noqa: ANN001
    d = _per_gbq(cohort, f"parotid_gland_{side}")
    assert np.all((d >= 0.5) & (d <= 3.0))
    assert 1.0 <= np.median(d) <= 2.0


def test_whole_body_effective_half_life(cohort) -> None:  # noqa: ANN001
    t = np.array([whole_body_teff_h(pt.cycles[0]) for pt in cohort])
    assert np.all((t >= 25) & (t <= 60))
    assert 32 <= np.median(t) <= 50


def test_lu_uptake_follows_pet(cohort) -> None:  # noqa: ANN001
    """Lesion Lu-177 TIA per mL correlates with the PET SUV (what makes prediction work)."""
    suv, tia = [], []
    for pt in cohort:
        c = pt.cycles[0]
        for les in pt.lesion_names:
            suv.append(pt.pet.suv[les])
            tia.append(c.tia_mbq_h[les] / c.voi_volume_ml[les] / c.activity_mbq)
    rho = stats.spearmanr(suv, tia).statistic
    assert rho > 0.6


def test_kidneys_lie_in_a_fat_capsule() -> None:
    """Perirenal fat outlines each kidney on CT (as on a real non-contrast CT); the capsule
    replaces soft tissue only, so every organ keeps its voxels."""
    from dataclasses import replace

    from scipy import ndimage

    from theralake.synth.anatomy import rasterize, sample_anatomy
    from theralake.synth.grid import ct_grid
    from theralake.synth.tissues import ORGAN_VOIS

    params = sample_anatomy(np.random.default_rng(7), 80.0, 175.0, 2, 0.5)
    grid = ct_grid(False)
    labels = rasterize(params, grid).labels
    bare = rasterize(replace(params, organs=[replace(o, capsule_fat_mm=0.0)
                                             for o in params.organs]), grid).labels
    for kidney in ("kidney_left", "kidney_right"):
        organ = np.isin(labels, ORGAN_VOIS[kidney])
        ring = ndimage.binary_dilation(organ, iterations=1) & ~organ
        assert np.mean(labels[ring] == 2) > 0.6, kidney  # fat
        assert np.mean(bare[ring] == 2) < 0.2, kidney  # without the capsule: soft tissue
    changed = labels != bare
    assert (bare[changed] == 1).all() and (labels[changed] == 2).all()
