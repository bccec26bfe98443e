"""The `theralake` command line."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from theralake.dosimetry.cli import register as register_dosimetry
from theralake.features.cli import register as register_features
from theralake.ingest.cli import LakeOption
from theralake.ingest.cli import register as register_ingest
from theralake.lake import Lake, LakeError
from theralake.modeling.cli import register as register_modeling
from theralake.modeling.registration_training import register as register_registration_training
from theralake.modeling.segmentation_training import register as register_segmentation_training
from theralake.synth.cli import register as register_synth

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

app = typer.Typer(help="theralake: image-based dosimetry for radiopharmaceutical therapy.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
register_ingest(app)
register_dosimetry(app)
register_synth(app)
register_segmentation_training(app)
register_registration_training(app)
register_features(app)
register_modeling(app)


@app.command("sql")
def sql_command(
    query: Annotated[str, typer.Argument(help="a DuckDB SQL query over the lake's tables")],
    lake: LakeOption = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
) -> None:
    """Query the lake with DuckDB SQL."""
    import duckdb

    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")
    try:
        df = Lake(lake, create=False).sql(query)
    except (duckdb.Error, LakeError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for col in df.columns:  # voxel blobs are shown by size, not dumped
        if df[col].map(lambda v: isinstance(v, (bytes, bytearray))).any():
            df[col] = df[col].map(lambda v: f"<{len(v)} bytes>" if isinstance(
                v, (bytes, bytearray)) else v)
    if fmt == "csv":
        typer.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        typer.echo(json.dumps(json.loads(df.to_json(orient="records", date_format="iso")),
                              indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_lines=False)
        for col in df.columns:
            table.add_column(str(col), overflow="fold")
        for rec in df.itertuples(index=False):
            table.add_row(*[_cell(v) for v in rec])
        Console(width=max(200, 20 * len(df.columns))).print(table)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.6g}" if isinstance(x, float) else str(x) for x in v) + "]"
    return "" if v is None else str(v)


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option(help="output folder (or .nii.gz file with --image-id)")],
    image_id: Annotated[str | None, typer.Option(
        help="id of a row of images, vois or dose_maps, written as NIfTI")] = None,
    table: Annotated[str, typer.Option(help="table of --image-id")] = "images",
    patient: Annotated[str | None, typer.Option(help="lake patient_id")] = None,
    cycle: Annotated[int | None, typer.Option(help="cycle")] = None,
    what: Annotated[str, typer.Option(help="dose | tia | vois")] = "dose",
    fmt: Annotated[str, typer.Option("--format", help="nifti | rtdose | rtstruct")] = "nifti",
    method: Annotated[str | None, typer.Option(help="dose method (default: latest)")] = None,
    lake: LakeOption = None,
) -> None:
    """Export a patient-cycle's dose, TIA or VOIs (NIfTI, RTDOSE, RTSTRUCT) or any voxel row."""
    from theralake.pipelines.export import export

    try:
        the_lake = Lake(lake, create=False)
        if image_id:
            dest = out / f"{image_id[:16]}.nii.gz" if out.suffix not in (".gz", ".nii") else out
            typer.echo(str(the_lake.export_nifti(image_id, dest, table=table)))
            return
        if patient is None or cycle is None:
            raise LakeError("give --image-id, or --patient and --cycle")
        paths = export(the_lake, patient, cycle, what, fmt, out, method)
        typer.echo(f"wrote {len(paths)} files to {out}")
    except (LakeError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("demo")
def demo_command(lake: LakeOption = None) -> None:
    """Ingest the sample DICOM shipped with pydicom into a lake and show what it holds."""
    from theralake.pipelines.demo import run_demo

    run_demo(lake)


def main() -> None:
    logging.basicConfig(level=os.environ.get("THERALAKE_LOG", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
