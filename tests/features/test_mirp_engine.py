"""MIRP, the IBSI reference implementation, as the second radiomics engine (issue 20.6, 20.10).

``theralake radiomics IMAGE MASK --set ibsi-phantom --json`` on the IBSI-1 digital phantom
(tests/data/ibsi, CC BY 4.0) gives all 74 reference features within tolerance, keyed as in the
reference table; pyradiomics gives the 32 it has, and nothing under an IBSI name it does not
compute by the IBSI definition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from theralake.features import ibsi
from theralake.features.mirp_engine import IBSI_TAGS
from theralake.features.radiomics import extract_radiomics, load_feature_set
from theralake.lake import Volume
from theralake.pipelines.cli import app

DATA = Path(__file__).resolve().parents[1] / "data" / "ibsi"
PHANTOM = [str(DATA / "phantom.nii.gz"), str(DATA / "mask.nii.gz")]
RUNNER = CliRunner()


@pytest.fixture(scope="module")
def reference():
    return ibsi.load_reference(DATA / "digital_phantom_reference.csv")


def _radiomics(*args: str) -> dict[str, float]:
    result = RUNNER.invoke(app, ["radiomics", *PHANTOM, "--set", "ibsi-phantom", "--json",
                                 *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _misses(values: dict[str, float], reference) -> dict[str, tuple[float, float]]:
    out = {}
    for row in reference.itertuples(index=False):
        key = ibsi.ibsi_key(row.family, row.feature)
        tolerance = max(float(row.tolerance), ibsi.precision_tolerance(float(row.value)))
        value = values.get(key, math.nan)
        if not abs(value - float(row.value)) <= tolerance * (1 + 1e-9):
            out[key] = (value, float(row.value))
    return out


def test_mirp_gives_all_74_reference_features(reference):
    values = _radiomics()
    assert len(reference) == 74 == len(IBSI_TAGS)
    assert _misses(values, reference) == {}
    # texture features under MIRP's own tags, not under IBSI names
    texture = [k for k in values if k.startswith("mirp: ")]
    assert any(k.startswith("mirp: cm_joint_max") for k in texture)
    assert len(values) == 74 + len(texture)


def test_pyradiomics_keeps_to_what_it_computes(reference):
    values = _radiomics("--engine", "pyradiomics")
    misses = _misses(values, reference)
    ibsi_keys = {k for k in values if not k.startswith(("shape: ", "firstorder: "))}
    assert len(ibsi_keys) == 32 and not set(misses) & ibsi_keys
    assert "intensity histogram: mode" not in values  # not computed by pyradiomics
    assert "intensity-based statistics: mean" in values


def test_engine_settings_per_kind_and_hash():
    fs = load_feature_set("default").with_engine("mirp")
    ct = fs.mirp_settings_for("ct")
    assert ct["base_discretisation_bin_width"] == 25.0
    assert ct["resegmentation_intensity_range"][0] == -1000.0  # IBSI: bins from the bound
    assert fs.hash_for("ct") != load_feature_set("default").hash_for("ct")
    assert fs.engine_version.startswith("mirp ")
    with pytest.raises(ValueError, match="unknown engine"):
        fs.with_engine("radiomics2")


def test_mirp_in_the_feature_job_keeps_ibsi_columns():
    """The job's classes: one column per IBSI feature whichever engine computed it."""
    z, y, x = np.indices((24, 24, 24)) - 12
    ball = x**2 + y**2 + z**2 <= 36
    rng = np.random.default_rng(0)
    image = Volume(np.where(ball, 40.0 + 10 * rng.random(ball.shape), -900.0), (2.0, 2.0, 2.0),
                   (0.0, 0.0, 0.0), np.eye(3))
    fs = load_feature_set("minimal").with_engine("mirp")
    mirp = extract_radiomics(image, ball, "ct", fs)
    pyrad = extract_radiomics(image, ball, "ct", load_feature_set("minimal"))
    key = ("firstorder", "intensity-based statistics: mean")
    assert mirp[key] == pytest.approx(pyrad[key], rel=1e-6)  # MIRP keeps float32 voxels
    assert ("shape", "morphology: volume (voxel counting)") in mirp


def test_errors_name_the_file(tmp_path):
    result = RUNNER.invoke(app, ["radiomics", str(tmp_path / "none.nii.gz"), PHANTOM[1]])
    assert result.exit_code == 2 and "none.nii.gz: no such image file" in result.output
    result = RUNNER.invoke(app, ["radiomics", *PHANTOM, "--engine", "other"])
    assert result.exit_code == 2 and "unknown engine" in result.output
    # ITK reads a NIfTI's NaN as 0: the features would have counted a measured zero there
    phantom = nib.load(PHANTOM[0])
    data = np.asanyarray(phantom.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, phantom.affine), tmp_path / "nan.nii.gz")
    result = RUNNER.invoke(app, ["radiomics", str(tmp_path / "nan.nii.gz"), PHANTOM[1]])
    assert result.exit_code == 2 and "nan.nii.gz (image): 1 of" in result.output
    assert "voxels are not finite numbers" in result.output
