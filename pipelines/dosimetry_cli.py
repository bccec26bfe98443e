"""``theralake dosimetry``: the patient-cycles of the lake, with their quality warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.dosimetry.auto_vois import SegmentationUnavailable
from theralake.dosimetry.settings import DosimetryError, record_config
from theralake.ingest.cli import LakeOption
from theralake.lake import Lake
from theralake.lake.views import spect_cycles
from theralake.pipelines.stage_progress import StageProgress

__all__ = ["register"]


def dosimetry(
    patient: Annotated[str | None, typer.Option(
        help="lake patient_id (default: every patient)")] = None,
    cycle: Annotated[int | None, typer.Option(
        help="cycle (default: every cycle with SPECT)")] = None,
    method: Annotated[str | None, typer.Option(help="ldm | vsv | vsv-density | organ-s")] = None,
    registration: Annotated[str | None, typer.Option(
        help="deformable | rigid | none | ai (a model trained by train-reg)")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML settings (see the packaged default)")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="exit 1 on any quality warning, not only on failures")] = False,
    lake: LakeOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Image-based dosimetry of patient-cycles: registration, VOIs, TACs, TIA, dose, BED.

    Prints each patient-cycle's quality warnings (also in the lake's ``quality`` table). The
    exit code is 1 when a patient-cycle or a VOI failed, or with --strict on any warning.
    """
    from theralake.pipelines.cycle import dosimetry_cycle, dosimetry_settings  # torch: lazily

    the_lake = Lake(lake, create=False)
    try:
        settings = dosimetry_settings(the_lake, config, method=method,
                                      registration=registration)
    except DosimetryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    record_config(the_lake, settings)
    todo = spect_cycles(the_lake, patient, cycle)
    if todo.empty:
        typer.echo("error: no quantitative SPECT in the lake for that selection", err=True)
        raise typer.Exit(2)
    failed, warned, cycles = [], False, []
    with StageProgress(len(todo), enabled=not (quiet or as_json)) as progress:
        for pid, cyc in todo.itertuples(index=False):
            label = f"{pid} cycle {cyc}"
            try:
                res = dosimetry_cycle(the_lake, pid, int(cyc), settings,
                                      on_stage=progress.stage(label))
            except (DosimetryError, SegmentationUnavailable) as exc:
                failed.append(f"patient {pid} cycle {cyc}: {exc}")
                continue
            except (ValueError, RuntimeError) as exc:  # physics refusing this patient's data
                failed.append(f"patient {pid} cycle {cyc}: {exc}")
                continue
            finally:
                progress.done()
            problems = [f for f in res.warnings if f.check != "cycle"]
            cycles.append({"patient_id": pid, "cycle": int(cyc), "status": res.status,
                           "vois": len(res.organ_rows), "seconds": res.seconds,
                           "findings": problems})
            if not as_json:
                progress.echo(f"{label}: {len(res.organ_rows)} VOIs, quality {res.status}"
                              + (f" ({len(problems)} finding(s))" if problems else ""))
                for finding in problems:
                    progress.echo(f"  {finding.line()}")
            warned |= any(f.status == "warn" for f in problems)
            if res.status == "fail":
                failed.append(f"patient {pid} cycle {cyc}: a VOI failed (see above)")
    if as_json:
        print_json({"cycles": cycles, "failed": failed})
    for msg in failed:
        typer.echo(f"failed: {msg}", err=True)
    if failed or (strict and warned):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``dosimetry`` command to ``app``."""
    app.command("dosimetry")(dosimetry)
