"""`theralake calibrate` (camera sensitivity and sphere recovery from phantom acquisitions) and
`theralake reconstruct` (a patient's SPECT from its projections)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.dosimetry.quality import fit_resolution_fwhm_mm
from theralake.ingest.cli import LakeOption
from theralake.ingest.errors import IngestError
from theralake.ingest.phantom_calibration import (
    PhantomAcquisition,
    calibration_row,
    find_phantoms,
    read_phantom_acquisition,
    recovery,
    recovery_rows,
    sensitivity,
)
from theralake.ingest.pseudonym import PseudonymKeyError, lake_pseudonymizer
from theralake.ingest.reconstruction import ReconSettings, ReconstructionError
from theralake.ingest.records import camera_key
from theralake.ingest.spect_step import (
    compute_reconstruction,
    read_acquisitions,
    write_reconstruction,
)
from theralake.ingest.spect_system import UnknownCollimator
from theralake.lake import Lake, LakeError, views

#: the spheres the resolution is fitted to: an iterative reconstruction's point-spread function
#: is no Gaussian (its tails recover small spheres less than any Gaussian that fits large ones),
#: and the organs and lesions the partial-volume correction serves are the large ones
RESOLUTION_MIN_DIAMETER_MM = 22.0

Method = Annotated[str, typer.Option("--method", help="osem or bsrem")]
Iterations = Annotated[int, typer.Option("--iterations", help="iterations")]
Subsets = Annotated[int, typer.Option("--subsets", help="subsets (views split into)")]
Beta = Annotated[float, typer.Option("--beta", help="BSREM relative-difference prior weight")]


def _fail(message: object, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _calibrate(lake: Lake, acqs: list[PhantomAcquisition], settings: ReconSettings,
               key: dict[str, str | None], progress: Progress) -> tuple[list[dict], list[dict]]:
    """Cylinders first (the sensitivities), then the NEMA IEC phantoms with them."""
    calibrations: list[dict] = []
    curves: list[dict] = []
    task = progress.add_task("reconstructing phantoms", total=len(acqs))
    for acq in sorted(acqs, key=lambda a: a.phantom.kind != "cylinder"):
        if acq.phantom.kind == "cylinder":
            cps, activity = sensitivity(acq, settings)
            calibrations.append(calibration_row(acq, settings, cps, activity, key[acq.camera]))
        else:
            match = [c for c in calibrations if c["camera_key"] == key[acq.camera] and
                     c["collimator"] == acq.collimator and c["nuclide"] == acq.phantom.nuclide]
            cal = match[-1] if match else views.camera_calibration(
                lake, key[acq.camera], acq.phantom.nuclide, acq.photopeak_kev, acq.collimator)
            if cal is None:
                raise IngestError(acq.source, f"no sensitivity for camera {acq.camera} and "
                                  f"collimator {acq.collimator}: calibrate a cylinder "
                                  "acquisition of it first (or in the same run)")
            spheres = recovery(acq, settings, cal["cps_per_mbq"])
            large = [s for s in spheres if s["diameter_mm"] >= RESOLUTION_MIN_DIAMETER_MM]
            fwhm = fit_resolution_fwhm_mm(
                [s["volume_ml"] for s in large], [s["recovery"] for s in large],
                spheres[0]["background_bq_per_ml"] / spheres[0]["sphere_bq_per_ml"])
            curves += recovery_rows(acq, settings, cal, [s | {"resolution_fwhm_mm": fwhm}
                                                         for s in spheres])
        progress.advance(task)
    return calibrations, curves


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
        """Camera sensitivity (cylinder) and sphere recovery curve (NEMA IEC) into the lake."""
        try:
            settings = ReconSettings(method=method, iterations=iterations, subsets=subsets,
                                     beta=beta)
            acqs = [read_phantom_acquisition(f) for f in find_phantoms(paths)]
            if not acqs:
                _fail(f"no {', '.join(map(str, paths))}/**/phantom.json found")
            the_lake = Lake(lake)
            pseudo = lake_pseudonymizer(the_lake, new_key)
            key = {a.camera: camera_key(pseudo, a.camera) for a in acqs}
            with Progress(disable=quiet or as_json, transient=True) as progress:
                calibrations, curves = _calibrate(the_lake, acqs, settings, key, progress)
            with the_lake.batch():
                the_lake.append("camera_calibrations", calibrations)
                the_lake.append("recovery_curves", curves)
        except (IngestError, ReconstructionError, UnknownCollimator, PseudonymKeyError,
                LakeError, FileNotFoundError) as exc:
            _fail(exc)
        by_key = {v: k for k, v in key.items()}
        result = {"calibrations": [{"camera": by_key[c["camera_key"]], "collimator":
                                    c["collimator"], "cps_per_mbq": c["cps_per_mbq"]}
                                   for c in calibrations],
                  "recovery": [{"camera": by_key[r["camera_key"]], "diameter_mm":
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
        attenuation: Annotated[bool, typer.Option(
            "--attenuation/--no-attenuation", help="CT-based attenuation correction")] = True,
        scatter: Annotated[bool, typer.Option(
            "--scatter/--no-scatter", help="energy-window scatter correction")] = True,
        as_json: JsonOption = False, quiet: QuietOption = False, verbose: VerboseOption = False,
    ) -> None:
        """Reconstruct a patient's SPECT acquisitions (PyTomography) into Bq/mL SPECTs."""
        the_lake = Lake(lake, create=False)
        written = []
        try:
            settings = ReconSettings(method=method, iterations=iterations, subsets=subsets,
                                     beta=beta, attenuation=attenuation, scatter=scatter)
            cycles = [cycle] if cycle is not None else sorted(
                {int(c) for c in views.acquisitions(the_lake, patient).cycle.dropna()})
            todo = [a for c in cycles for a in read_acquisitions(
                the_lake, patient, c, photopeak_kev=photopeak_kev, cps_per_mbq=cps_per_mbq,
                collimator=collimator)]
            if not todo:
                _fail(f"patient {patient}: no SPECT projections in the lake"
                      + (f" for cycle {cycle}" if cycle is not None else ""))
            with Progress(disable=quiet or as_json, transient=True) as progress:
                task = progress.add_task("reconstructing", total=len(todo))
                for inputs in todo:
                    result = compute_reconstruction(inputs, settings, cps_per_mbq)
                    image = write_reconstruction(the_lake, inputs, result)
                    written.append({"cycle": inputs.cycle, "time_h": inputs.time_h,
                                    "image_id": image["id"], "description":
                                    image["description"], "cps_per_mbq": result.cps_per_mbq,
                                    "warnings": [m for _, s, m in result.findings]})
                    progress.advance(task)
        except (ReconstructionError, UnknownCollimator, LakeError) as exc:
            _fail(exc)
        if as_json:
            print_json({"patient": patient, "reconstructions": written})
        elif not quiet:
            for w in written:
                typer.echo(f"{patient} cycle {w['cycle']} {w['time_h']:g} h: "
                           f"{w['description']} ({w['cps_per_mbq']:.3f} cps/MBq)")
                for m in w["warnings"]:
                    typer.echo(f"  warning: {m}")
