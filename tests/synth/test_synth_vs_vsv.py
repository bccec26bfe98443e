"""Cross-check: the truth dose agrees with theralake.dosimetry's voxel S-value convolution.

Two independent implementations (the truth: local electrons + sphere photon AF; the engine:
Monte-Carlo-style voxel kernel). Skipped while the dosimetry package is not available.
"""

from __future__ import annotations

import numpy as np
import pytest

from theralake.synth.config import SynthConfig
from theralake.synth.imaging import dose_map, tia_map
from theralake.synth.patient import simulate_patient, voi_labels


def test_truth_dose_close_to_vsv_convolution() -> None:
    kernels = pytest.importorskip("theralake.dosimetry.kernels")
    dose_mod = pytest.importorskip("theralake.dosimetry.dose")
    pt = simulate_patient(SynthConfig(patients=1, cycles=1, seed=11, small=False), 0)
    c = pt.cycles[0]
    tia = tia_map(c)
    truth = dose_map(c, tia)
    try:
        k = kernels.voxel_s_kernel("Lu-177", 4.0, size=31)
        vsv = dose_mod.vsv_dose(tia, k, density_g_cm3=c.anatomy.density)
    except (TypeError, AttributeError) as err:  # engine API still moving
        pytest.skip(f"dosimetry API not usable here: {err}")
    rho = c.anatomy.density
    vois = voi_labels(pt.lesion_names)
    for voi, tol in (("kidney_left", 0.05), ("kidney_right", 0.05), ("liver", 0.08),
                     ("parotid_gland_left", 0.05), ("tumor_total", 0.06)):
        if voi not in vois:
            continue
        m = np.isin(c.anatomy.labels, vois[voi])
        a = (truth[m] * rho[m]).sum() / rho[m].sum()
        b = (vsv[m] * rho[m]).sum() / rho[m].sum()
        assert b == pytest.approx(a, rel=tol), voi
