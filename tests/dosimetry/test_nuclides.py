import math

import pytest

from theralake.dosimetry.nuclides import (
    SUPPORTED,
    chain_energy_per_decay_mev,
    get_nuclide,
    normalize_name,
)


def test_lu177_against_references():
    lu = get_nuclide("Lu-177")
    assert lu.half_life_h == pytest.approx(159.53, abs=0.01)  # 6.647 d
    assert lu.decay_constant_per_h == pytest.approx(math.log(2) / 159.53, rel=1e-4)
    assert lu.beta_mean_energy_mev * 1e3 == pytest.approx(133.3, abs=0.1)
    assert lu.electron_energy_mev * 1e3 == pytest.approx(147.9, abs=0.1)
    assert lu.photon_energy_mev * 1e3 == pytest.approx(35.1, abs=0.1)
    yields = {round(e * 1e3): y for e, y in lu.photon_lines_mev if e > 0.1}
    assert yields[113] == pytest.approx(0.064, abs=0.002)
    assert yields[208] == pytest.approx(0.11, abs=0.002)
    # beta spectrum: number per decay and mean energy consistent with the line data
    import numpy as np

    spec = lu.beta_spectrum
    assert np.trapezoid(spec[:, 1], spec[:, 0]) == pytest.approx(1.0, rel=1e-6)
    assert np.trapezoid(spec[:, 0] * spec[:, 1], spec[:, 0]) * 1e3 == pytest.approx(133.3, rel=0.01)
    assert spec[:, 0].max() == pytest.approx(0.498, abs=0.001)


@pytest.mark.parametrize("name", SUPPORTED)
def test_all_supported_load(name):
    n = get_nuclide(name)
    assert n.half_life_h > 0
    assert n.electron_energy_mev + n.photon_energy_mev + n.alpha_energy_mev > 0


def test_names_and_errors():
    assert normalize_name("lu177") == "Lu-177"
    assert normalize_name("177Lu") == "Lu-177"
    assert normalize_name("Tc99m") == "Tc-99m"
    with pytest.raises(ValueError, match="unknown nuclide"):
        get_nuclide("Xx-999")
    with pytest.raises(ValueError, match="unknown nuclide"):
        get_nuclide("not a nuclide")


def test_ac225_daughters_matter():
    parent = get_nuclide("Ac-225")
    chain = chain_energy_per_decay_mev("Ac-225")
    assert "daughters" in parent.notes
    # four alphas in the chain: ~27.5 MeV vs 5.8 MeV for the parent alone
    assert chain["alpha"] > 4 * parent.alpha_energy_mev
    assert chain["alpha"] == pytest.approx(27.5, abs=0.3)
