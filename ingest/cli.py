"""`theralake ingest`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake

LakeOption = Annotated[Path | None, typer.Option("--lake", help="lake folder "
                                                 "(default $THERALAKE_LAKE or ./lake)")]


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest_command(
        path: Annotated[Path, typer.Argument(help="a file or folder (scanned recursively)")],
        lake: LakeOption = None,
        calibration_cps_per_mbq: Annotated[float | None, typer.Option(
            help="SPECT sensitivity for every camera (cps/MBq)")] = None,
        calibration: Annotated[Path | None, typer.Option(
            help="calibration CSV: camera, [nuclide,] cps_per_mbq")] = None,
        mapping: Annotated[Path | None, typer.Option(
            help="YAML column/VOI-name mapping (default: mapping.yaml in PATH)")] = None,
        keep_going: Annotated[bool, typer.Option(
            help="exit 0 even when inputs were skipped")] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress, no summary "
                                            "unless something was skipped")] = False,
        new_key: Annotated[bool, typer.Option(
            "--new-key", help="create the pseudonymisation key file if it is missing (a new "
            "lake); a lake made with another key is refused")] = False,
    ) -> None:
        """Ingest DICOM (CT, PT, NM, RTSTRUCT, SEG, RTDOSE), NIfTI + sidecars and CSV tables."""
        if quiet:
            logging.getLogger("theralake").setLevel(logging.ERROR)
        try:
            report = ingest(path, Lake(lake), IngestOptions(
                calibration_cps_per_mbq, calibration, mapping, show_progress=not quiet,
                new_key=new_key))
        except FileNotFoundError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if not quiet or report.skipped or report.warnings:
            typer.echo(report.summary())
        if report.skipped and not keep_going:
            raise typer.Exit(1)
