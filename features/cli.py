"""``theralake features``: the feature job over the lake's patients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.features.job import run_features
from theralake.lake import Lake


def features(
    patient: Annotated[str | None, typer.Option(help="lake patient_id (default: all)")] = None,
    set_name: Annotated[str, typer.Option("--set", help="feature set name or YAML path")
                        ] = "default",
    workers: Annotated[int, typer.Option(help="worker processes")] = 2,
    lake: Annotated[Path | None, typer.Option(help="lake folder")] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Radiomics, dosiomics, DVH and uptake metrics per VOI, image and cycle, into the lake."""
    the_lake = Lake(lake, create=False)
    try:
        counts = run_features(the_lake, [patient] if patient else None, set_name, workers,
                              progress=not (quiet or as_json))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        print_json(counts)
        return
    typer.echo(f"{counts['patients']} patient(s): {counts['features']} feature values, "
               f"{counts['errors']} skipped (see the feature_errors table)")


def register(app: typer.Typer) -> None:
    """Add ``features`` to ``app``."""
    app.command("features")(features)
