"""The `theralake` command line."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from theralake.cli_output import (
    JsonOption,
    QuietOption,
    VerboseOption,
    configure_logging,
    print_json,
)
from theralake.dosimetry.cli import register as register_dosimetry
from theralake.features.cli import register as register_features
from theralake.ingest.cli import LakeOption
from theralake.ingest.cli import register as register_ingest
from theralake.ingest.errors import printable
from theralake.lake import SCHEMAS, Lake, LakeError
from theralake.lake.migrate import migrate
from theralake.modeling.cli import register as register_modeling
from theralake.modeling.lesion_segmentation_training import register as register_lesion_training
from theralake.modeling.projection_network_training import register as register_view_training
from theralake.modeling.registration_training import register as register_registration_training
from theralake.modeling.segmentation_training import register as register_segmentation_training
from theralake.pipelines.dosimetry_cli import register as register_dosimetry_run
from theralake.pipelines.quality import quality_line
from theralake.pipelines.report import register as register_report
from theralake.pipelines.spect_cli import register as register_spect
from theralake.synth.cli import register as register_synth

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

app = typer.Typer(help="theralake: image-based dosimetry for radiopharmaceutical therapy.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
register_ingest(app)
register_dosimetry(app)
register_dosimetry_run(app)
register_synth(app)
register_segmentation_training(app)
register_registration_training(app)
register_view_training(app)
register_lesion_training(app)
register_features(app)
register_modeling(app)
register_report(app)
register_spect(app)


@app.command("sql")
def sql_command(
    query: Annotated[str, typer.Argument(help="a DuckDB SQL query over the lake's tables")],
    lake: LakeOption = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False,
    at: Annotated[int | None, typer.Option(
        "--at", help="read the lake as it was at this snapshot (theralake lake snapshots; "
                     "run_log.lake_snapshot and a model card name the ones used)")] = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Query the lake with DuckDB SQL."""
    import duckdb

    fmt = "json" if as_json else fmt
    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("--format must be table, csv or json")
    try:
        df = Lake(lake, create=False, snapshot=at).sql(query)
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


lake_app = typer.Typer(help="The lake itself: copy, compact, snapshots, open elsewhere.",
                       no_args_is_help=True)
app.add_typer(lake_app, name="lake")


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2) from exc


def _existing_lake(lake: str | None) -> Lake:
    """The lake of ``--lake``, or exit 2 with the reason in one line."""
    try:
        return Lake(lake, create=False)
    except LakeError as exc:
        _fail(exc)


@lake_app.command("migrate")
def lake_migrate_command(
    old: Annotated[Path, typer.Argument(help="a lake of Parquet parts (the layout before "
                                        "DuckLake)")],
    new: Annotated[str, typer.Argument(help="the DuckLake lake (a folder, created if missing, "
                                       "or postgresql://…?data_path=…)")],
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Copy every table of OLD into the lake NEW, row for row, in one transaction (and its
    registry, reports and pseudonym-key fingerprint); run again later, it copies only the new
    rows. Prints the two DuckDB lines that open NEW wherever it is moved."""
    from rich.progress import Progress

    try:
        with Progress(transient=True, disable=quiet or as_json) as bar:
            task = bar.add_task("copying the tables", total=len(SCHEMAS))
            lake, copied = migrate(old, new, progress=lambda table, n: bar.update(
                task, advance=1, description=f"copied {table} ({n} rows)"))
    except LakeError as exc:
        _fail(exc)
    lines = lake.open_lines()
    if as_json:
        print_json({"rows_copied": copied, "snapshot": lake.snapshot(), "open_with": lines})
        return
    if not quiet:
        typer.echo(f"copied {sum(copied.values())} rows into {lake.path}: " + ", ".join(
            f"{table} {n}" for table, n in copied.items() if n))
        typer.echo("open it in DuckDB with:\n  " + "\n  ".join(lines))


@lake_app.command("open-lines")
def lake_open_lines_command(lake: LakeOption = None, as_json: JsonOption = False,
                            quiet: QuietOption = False, verbose: VerboseOption = False) -> None:
    """Print the two lines that open the lake read-only in any DuckDB 1.4.4."""
    lines = _existing_lake(lake).open_lines()
    if as_json:
        print_json({"open_with": lines})
    else:
        typer.echo("\n".join(lines))


@lake_app.command("snapshots")
def lake_snapshots_command(lake: LakeOption = None, as_json: JsonOption = False,
                           quiet: QuietOption = False, verbose: VerboseOption = False) -> None:
    """List the lake's snapshots (``theralake sql --at N`` reads the lake as it was at N)."""
    df = _existing_lake(lake).snapshots()
    df["changes"] = df["changes"].map(lambda c: "; ".join(
        f"{k} {', '.join(map(str, v))}" for k, v in (c or {}).items()))
    if as_json:
        print_json(json.loads(df.to_json(orient="records", date_format="iso")))
    else:
        for rec in df.itertuples(index=False):
            typer.echo(f"{rec.snapshot_id:>6}  {rec.snapshot_time:%Y-%m-%d %H:%M:%S}  "
                       f"{rec.changes}")


@lake_app.command("compact")
def lake_compact_command(
    lake: LakeOption = None,
    keep_days: Annotated[float | None, typer.Option(
        help="expire snapshots older than this many days and delete the files only they "
             "use (default: keep every snapshot)")] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Merge the lake's small data files into larger ones (what a query reads is unchanged);
    with --keep-days, retire old snapshots and their files."""
    the_lake = _existing_lake(lake)
    try:
        with the_lake.exclusive("run"):  # not while a run writes
            result = the_lake.compact(keep_snapshots_days=keep_days)
    except LakeError as exc:
        _fail(exc)
    if as_json:
        print_json(result)
    elif not quiet:
        typer.echo(f"data files: {result['data_files_before']} -> "
                   f"{result['data_files_after']}")


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option(help="output folder (or .nii.gz file with --image-id)")],
    image_id: Annotated[str | None, typer.Option(
        help="id of a row of images, vois or dose_maps, written as NIfTI")] = None,
    table: Annotated[str, typer.Option(help="table of --image-id")] = "images",
    patient: Annotated[str | None, typer.Option(help="lake patient_id")] = None,
    cycle: Annotated[int | None, typer.Option(help="cycle")] = None,
    what: Annotated[str, typer.Option(help="dose | tia | vois")] = "dose",
    fmt: Annotated[str, typer.Option("--format", help="nifti | rtdose | rtstruct | seg")] = "nifti",
    method: Annotated[str | None, typer.Option(help="dose method (default: latest)")] = None,
    pet: Annotated[bool, typer.Option(
        "--pet", help="the pre-therapy PET/CT's VOIs on its CT (--what vois; no --cycle)")
    ] = False,
    lake: LakeOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Export a patient-cycle's dose, TIA or VOIs (NIfTI, RTDOSE, RTSTRUCT, SEG) or any voxel
    row."""
    from theralake.pipelines.export import export

    try:
        the_lake = Lake(lake, create=False)
        if image_id:
            dest = out / f"{image_id[:16]}.nii.gz" if out.suffix not in (".gz", ".nii") else out
            path = the_lake.export_nifti(image_id, dest, table=table)
            if as_json:
                print_json({"paths": [path]})
            else:
                typer.echo(str(path))
            return
        if patient is None or (cycle is None and not pet):
            raise LakeError("give --image-id, or --patient and --cycle (or --pet)")
        paths = export(the_lake, patient, cycle, what, fmt, out, method, pet)
        if as_json:
            print_json({"paths": paths})
        else:
            typer.echo(f"wrote {len(paths)} files to {out}")
    except (LakeError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("run")
def run_command(
    source: Annotated[Path | None, typer.Option(
        help="folder to ingest (one sub-folder per patient, tables at the top)")] = None,
    steps: Annotated[str | None, typer.Option(
        help="comma-separated steps: ingest,calibrate,reconstruct,dosimetry,features,train "
        "(default: all)")] = None,
    engine: Annotated[str, typer.Option(help="local (process pool) | ray")] = "local",
    workers: Annotated[int, typer.Option(help="parallel tasks")] = 2,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address (e.g. auto); default: start a local Ray")] = None,
    config: Annotated[Path | None, typer.Option(
        help="pipeline YAML (updates the packaged default)")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait/--no-wait", help="wait for another run on this lake instead of refusing")
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    new_key: Annotated[bool, typer.Option(
        "--new-key", help="create the pseudonymisation key file if it is missing (a new lake)")
    ] = False,
    lake: LakeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the whole flow (or some steps) over a cohort: incremental (unchanged tasks are
    skipped), resumable after a crash, on local processes or Ray."""
    from theralake.pipelines.lock import LakeBusy
    from theralake.pipelines.runner import load_pipeline_settings, run_pipeline

    try:
        settings = load_pipeline_settings(config)
        chosen = [s.strip() for s in steps.split(",") if s.strip()] if steps else None
        if chosen and "ingest" in chosen and source is None:
            raise ValueError("the ingest step needs --source")
        if chosen is None and source is None:
            chosen = [s for s in settings["steps"] if s != "ingest"]
        the_lake = Lake(lake, create=source is not None)
        summary = run_pipeline(the_lake, chosen, source, engine, workers, address, settings,
                               wait, progress=not (quiet or as_json), new_key=new_key)
    except LakeBusy as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from exc
    except (LakeError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    quality = quality_line(the_lake) if chosen is None or "dosimetry" in chosen else None
    if as_json:
        print_json({**dataclasses.asdict(summary), "ok": summary.ok, "quality": quality})
    else:
        typer.echo(summary.table())
        if quality:
            typer.echo(quality)
    if not summary.ok:
        raise typer.Exit(1)


@app.command("demo")
def demo_command(
    patients: Annotated[int, typer.Option(help="synthetic patients")] = 24,
    cycles: Annotated[int, typer.Option(help="therapy cycles per patient")] = 2,
    small: Annotated[bool, typer.Option(
        "--small/--full-size", help="coarse 8 mm grids (default) or clinical 4 mm grids")
    ] = True,
    workers: Annotated[int, typer.Option(help="parallel tasks")] = 2,
    engine: Annotated[str, typer.Option(help="local | ray")] = "local",
    seed: Annotated[int, typer.Option(help="cohort seed")] = 7,
    lake: Annotated[Path | None, typer.Option("--lake", help=(
        "the demo's lake folder (default ./demo_lake); its cohort, with the demo's own "
        "pseudonym key, goes beside it in <lake>_cohort (default ./demo_lake_cohort)"))] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """The whole flow on a synthetic cohort: synthesise, ingest, dosimetry, features, models,
    promotion, recommendations and a cohort report, with a short summary. Writes ./demo_lake
    and ./demo_lake_cohort (``make clean`` removes both)."""
    from theralake.pipelines.demo import DemoOptions, run_demo

    try:
        result = run_demo(DemoOptions(patients, cycles, small, workers, engine, seed,
                                      lake or Path("demo_lake"), show=not (quiet or as_json)))
    except (LakeError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        print_json({**dataclasses.asdict(result), "ok": result.run.ok})


#: what a user can get wrong (a path, a file, a key, a full disk): one line, never a traceback
USER_ERRORS = (LakeError, ValueError, OSError)


def user_error_message(exc: BaseException) -> str:
    """One line saying what went wrong with what."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"no space left on the device{where}; nothing half-written is visible in the "
                "lake: free some space and run the command again")
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    """The console script: a user error is one line on stderr and exit code 2 (set
    ``THERALAKE_DEBUG=1`` for the traceback)."""
    configure_logging()
    try:
        app(args=argv)
    except USER_ERRORS as exc:
        if os.environ.get("THERALAKE_DEBUG"):
            raise
        print(f"error: {printable(user_error_message(exc))}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
