"""`theralake calibrate` (camera sensitivity and sphere recovery from phantom acquisitions) and
`theralake reconstruct` (a patient's SPECT from its projections)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.ingest.cli import LakeOption
from theralake.ingest.errors import IngestError
from theralake.ingest.phantom_calibration import find_phantoms
from theralake.ingest.pseudonym import PseudonymKeyError
from theralake.ingest.reconstruction import ReconSettings, ReconstructionError
from theralake.ingest.spect_system import UnknownCollimator
from theralake.lake import Lake, LakeError, views
from theralake.pipelines.spect import calibrate, projection_network, reconstruct_cycle
from theralake.registry.tracking import ModelNotFoundError

Method = Annotated[str, typer.Option("--method", help="osem or bsrem")]
Iterations = Annotated[int, typer.Option("--iterations", help="iterations")]
Subsets = Annotated[int, typer.Option("--subsets", help="subsets (views split into)")]
Beta = Annotated[float, typer.Option("--beta", help="BSREM relative-difference prior weight")]
ERRORS = (IngestError, ReconstructionError, UnknownCollimator, PseudonymKeyError, LakeError,
          FileNotFoundError, ModelNotFoundError, ValueError)


def _fail(message: object) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate_command(
        paths: Annotated[list[Path], typer.Argument(
            help="phantom folders (each a phantom.json beside its NM projection file), or "
            "folders holding them")],
        lake: LakeOption = None,
        method: Method = "osem", iterations: Iterations = 4, subsets: Subsets = 8,
        beta: Beta = 0.3,
        new_key: Annotated[bool, typer.Option(
            "--new-key", help="create the pseudonymisation key file if missing")] = False,
        as_json: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False,
    ) -> None:
        """Camera sensitivity (cylinder) and sphere recovery curve (NEMA IEC) into the lake;
        reconstruct the patients with the same method, iterations and subsets."""
        try:
            settings = ReconSettings(method=method, iterations=iterations, subsets=subsets,
                                     beta=beta)
            folders = find_phantoms(paths)
            if not folders:
                _fail(f"no phantom.json found in {', '.join(map(str, paths))}")
            with Progress(disable=quiet or as_json, transient=True) as progress:
                task = progress.add_task("reconstructing phantoms", total=len(folders))
                calibrations, curves, keys = calibrate(
                    Lake(lake), folders, settings, new_key=new_key,
                    on_done=lambda: progress.advance(task))
        except ERRORS as exc:
            _fail(exc)
        camera = {v: k for k, v in keys.items()}
        result = {"calibrations": [{"camera": camera[c["camera_key"]], "collimator":
                                    c["collimator"], "cps_per_mbq": c["cps_per_mbq"]}
                                   for c in calibrations],
                  "recovery": [{"camera": camera[r["camera_key"]], "diameter_mm":
                                r["diameter_mm"], "recovery": r["recovery"],
                                "resolution_fwhm_mm": r["resolution_fwhm_mm"]} for r in curves]}
        if as_json:
            print_json(result)
        elif not quiet:
            for c in result["calibrations"]:
                typer.echo(f"{c['camera']} {c['collimator']}: {c['cps_per_mbq']:.3f} cps/MBq")
            for r in result["recovery"]:
                typer.echo(f"{r['camera']} sphere {r['diameter_mm']:g} mm: recovery "
                           f"{r['recovery']:.3f} (resolution fit {r['resolution_fwhm_mm']:.1f}"
                           " mm FWHM)")

    @app.command("reconstruct")
    def reconstruct_command(
        patient: Annotated[str, typer.Option("--patient", help="patient id in the lake")],
        cycle: Annotated[int | None, typer.Option(
            "--cycle", help="therapy cycle (default: every cycle with projections)")] = None,
        lake: LakeOption = None,
        method: Method = "osem", iterations: Iterations = 4, subsets: Subsets = 8,
        beta: Beta = 0.3,
        photopeak_kev: Annotated[float, typer.Option(
            "--photopeak-kev", help="the photopeak to reconstruct (Lu-177: 208.4 or 112.9)")
        ] = 208.4,
        collimator: Annotated[str | None, typer.Option(
            "--collimator", help="collimator-table code when the header's name is unknown "
            "(e.g. SY-ME, G8-MEGP)")] = None,
        cps_per_mbq: Annotated[float | None, typer.Option(
            "--cps-per-mbq", help="camera sensitivity (one view) instead of the lake's "
            "calibration")] = None,
        views_model: Annotated[str | None, typer.Option(
            "--views-model", help="synthesise the views between those acquired with this "
            "network: a weights folder or name[@alias] in the lake's registry (theralake "
            "train-views)")] = None,
        denoise_model: Annotated[str | None, typer.Option(
            "--denoise-model", help="denoise the photopeak's views with this network first "
            "(theralake train-denoiser)")] = None,
        attenuation: Annotated[bool, typer.Option(
            "--attenuation/--no-attenuation", help="CT-based attenuation correction")] = True,
        scatter: Annotated[bool, typer.Option(
            "--scatter/--no-scatter", help="energy-window scatter correction")] = True,
        as_json: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False,
    ) -> None:
        """Reconstruct a patient's SPECT acquisitions (PyTomography) into Bq/mL SPECTs."""
        written: list[dict] = []
        try:
            the_lake = Lake(lake, create=False)
            settings = ReconSettings(method=method, iterations=iterations, subsets=subsets,
                                     beta=beta, attenuation=attenuation, scatter=scatter)
            network = projection_network(the_lake, views_model, denoise_model)
            cycles = [cycle] if cycle is not None else sorted(
                {int(c) for c in views.acquisitions(the_lake, patient).cycle.dropna()})
            with Progress(disable=quiet or as_json, transient=True) as progress:
                task = progress.add_task("reconstructing", total=None)

                def done(image: dict, warnings: list[str]) -> None:
                    written.append({"cycle": image["cycle"], "time_h": image["time_h"],
                                    "image_id": image["id"],
                                    "description": image["description"],
                                    "cps_per_mbq": image["calibration_cps_per_mbq"],
                                    "warnings": warnings})
                    progress.advance(task)

                for c in cycles:
                    reconstruct_cycle(the_lake, patient, c, settings,
                                      photopeak_kev=photopeak_kev, cps_per_mbq=cps_per_mbq,
                                      collimator=collimator, network=network, on_done=done)
        except ERRORS as exc:
            _fail(exc)
        if not written:
            _fail(f"patient {patient}: no SPECT projections in the lake"
                  + (f" for cycle {cycle}" if cycle is not None else ""))
        if as_json:
            print_json({"patient": patient, "reconstructions": written})
        elif not quiet:
            for w in written:
                typer.echo(f"{patient} cycle {w['cycle']} {w['time_h']:g} h: "
                           f"{w['description']} ({w['cps_per_mbq']:.3f} cps/MBq)")
                for m in w["warnings"]:
                    typer.echo(f"  warning: {m}")
