"""Shared small synthetic cohorts (generated once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from theralake.synth.cli import register


def make_app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _main() -> None:  # keeps "synth" a sub-command
        pass

    return app


def run_cli(*args: str):  # noqa: ANN201 - click Result
    return CliRunner().invoke(make_app(), ["synth", *args])


@pytest.fixture(scope="session")
def synth_cli():  # noqa: ANN201 - the run_cli helper
    return run_cli


@pytest.fixture(scope="session")
def dicom_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_dicom")
    res = run_cli("--patients", "2", "--cycles", "2", "--seed", "5", "--small",
                  "--time-points", "4,24,96", "--missing-prob", "0.3", "--out", str(out))
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def nifti_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_nifti")
    res = run_cli("--patients", "1", "--cycles", "1", "--seed", "5", "--small",
                  "--time-points", "4,48", "--format", "nifti", "--out", str(out))
    assert res.exit_code == 0, res.output
    return out
