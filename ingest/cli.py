"""`theralake ingest`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake

LakeOption = Annotated[str | None, typer.Option("--lake", help=(
    "lake folder (default $THERALAKE_LAKE or ./lake), or postgresql://user@host:port/db"
    "?data_path=/shared/folder for a catalog in PostgreSQL"))]


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
        quiet: QuietOption = False,
        verbose: VerboseOption = False,
        new_key: Annotated[bool, typer.Option(
            "--new-key", help="create the pseudonymisation key file if it is missing (a new "
            "lake); a lake made with another key is refused")] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Ingest DICOM (CT, PT, NM, RTSTRUCT, SEG, RTDOSE), NIfTI + sidecars and CSV tables."""
        if quiet or as_json:
            logging.getLogger("theralake").setLevel(logging.ERROR)
        try:
            report = ingest(path, Lake(lake), IngestOptions(
                calibration_cps_per_mbq, calibration, mapping,
                show_progress=not (quiet or as_json), new_key=new_key))
        except FileNotFoundError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
        if as_json:
            print_json({"objects": report.objects, "added": dict(report.added),
                        "skipped": [{"source": e.source, "problem": e.problem}
                                    for e in report.skipped], "warnings": report.warnings})
        elif not quiet or report.skipped or report.warnings:
            typer.echo(report.summary())
        if report.skipped and not keep_going:
            raise typer.Exit(1)
