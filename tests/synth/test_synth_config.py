"""Bad arguments give clear errors."""

from __future__ import annotations

import pytest

from theralake.synth.config import SynthConfig, SynthConfigError, parse_time_points
from theralake.synth.constants import get_nuclide


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patients": -1}, "--patients must be a positive integer"),
        ({"patients": 0}, "--patients must be a positive integer"),
        ({"cycles": 0}, "--cycles must be a positive integer"),
        ({"time_points_h": (24.0, 4.0)}, "strictly increasing"),
        ({"time_points_h": (4.0, 4.0)}, "strictly increasing"),
        ({"time_points_h": (-4.0, 24.0)}, "positive hours"),
        ({"nuclide": "Xx-999"}, "unknown nuclide 'Xx-999'"),
        ({"nuclide": "Ga-68"}, "not a modelled therapy nuclide"),
        ({"missing_prob": 1.0}, "--missing-prob"),
        ({"activity_gbq": -7.4}, "--activity-gbq"),
        ({"fmt": "nrrd"}, "--format must be"),
        ({"projections": 4}, "--views must be 8 to 360"),
        ({"projections": 60, "fmt": "nifti"}, "NIfTI has no projection format"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(SynthConfigError, match=match):
        SynthConfig(**kwargs)


def test_parse_time_points() -> None:
    assert parse_time_points("4, 24,48;168") == (4.0, 24.0, 48.0, 168.0)
    with pytest.raises(SynthConfigError, match="comma-separated hours"):
        parse_time_points("4,a,48")


def test_unknown_nuclide_lookup() -> None:
    with pytest.raises(ValueError, match="unknown nuclide"):
        get_nuclide("Tc-99x")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--patients", "-3"], "positive integer"),
        (["--time-points", "48,24"], "strictly increasing"),
        (["--nuclide", "I-131"], "unknown nuclide"),
        (["--format", "png"], "--format"),
        (["--projections", "--views", "3"], "--views must be 8 to 360"),
        (["--projections", "--format", "nifti"], "use --format dicom"),
    ],
)
def test_cli_errors(args: list[str], match: str, tmp_path, synth_cli) -> None:  # noqa: ANN001
    res = synth_cli(*args, "--out", str(tmp_path / "x"), "--small")
    assert res.exit_code != 0
    assert match in res.output
    assert not (tmp_path / "x").exists()
