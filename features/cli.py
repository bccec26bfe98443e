"""``theralake features``: the feature job over the lake's patients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.features.job import run_features
from theralake.features.radiomics import ENGINES, extract_radiomics, load_feature_set
from theralake.lake import Lake, Volume
from theralake.lake.volume import read_image


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


def _read(path: Path, what: str) -> Volume:
    if not path.exists():
        raise ValueError(f"{path}: no such {what} file")
    try:
        return read_image(path)
    except ValueError as exc:
        raise ValueError(f"{path} ({what}): {exc}") from exc


def feature_key(feature_class: str, feature: str) -> str:
    """The output key of one feature: its IBSI key (``"<IBSI family>: <IBSI feature>"``)
    when computed by the IBSI definition, else ``"<engine class>: <engine name>"``."""
    return feature if ": " in feature else f"{feature_class}: {feature}"


def radiomics(
    image: Annotated[Path, typer.Argument(help="image file (NIfTI, NRRD, MHA, ...)")],
    mask: Annotated[Path, typer.Argument(help="mask file on the image's grid")],
    set_name: Annotated[str, typer.Option("--set", help="feature set name or YAML path")
                        ] = "default",
    engine: Annotated[str | None, typer.Option(
        help=f"{'|'.join(ENGINES)} (default: the set's own)")] = None,
    kind: Annotated[str, typer.Option(help="image kind for the bin width: ct, pet, spect, "
                                           "dose, bed")] = "ct",
    label: Annotated[int | None, typer.Option(help="mask label (default: every non-zero "
                                                   "voxel)")] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Radiomic features of one image and mask, as pyradiomics' command line has (no lake):
    IBSI features keyed "<IBSI family>: <IBSI feature>", others by the engine's names."""
    try:
        fs = load_feature_set(set_name).with_engine(engine)
        vol, roi = _read(image, "image"), _read(mask, "mask")
        if not vol.same_grid(roi):
            raise ValueError(f"{mask}: not on the grid of {image}")
        selected = roi.array != 0 if label is None else roi.array == label
        values = extract_radiomics(vol, selected, kind, fs)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    out = {feature_key(cls, name): value for (cls, name), value in sorted(values.items())}
    if as_json:
        print_json(out)
        return
    if not quiet:
        typer.echo(f"{fs.engine_version}, set {fs.name}, {int(np.sum(selected))} voxels")
    width = max(map(len, out), default=0)
    for key, value in out.items():
        typer.echo(f"{key:<{width}}  {value:.6g}")


def register(app: typer.Typer) -> None:
    """Add ``features`` and ``radiomics`` to ``app``."""
    app.command("features")(features)
    app.command("radiomics")(radiomics)
