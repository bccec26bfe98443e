"""The ``theralake synth`` command."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig, SynthConfigError, parse_time_points

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the ``synth`` command to a Typer app."""

    @app.command("synth")
    def synth(
        patients: int = typer.Option(3, "--patients", help="number of patients"),
        cycles: int = typer.Option(2, "--cycles", help="therapy cycles per patient"),
        seed: int = typer.Option(0, "--seed", help="random seed (output is deterministic)"),
        out: Path = typer.Option(Path("synthetic"), "--out", help="output folder"),
        small: bool = typer.Option(False, "--small/--full-size",
                                   help="coarse, fast grids (tests) or clinical ones"),
        fmt: str = typer.Option("dicom", "--format", help="dicom or nifti"),
        time_points: str = typer.Option("4,24,48,168", "--time-points",
                                        help="SPECT/CT times after administration (h)"),
        missing_prob: float = typer.Option(0.0, "--missing-prob",
                                           help="probability a later time point is missing"),
        activity_gbq: float = typer.Option(7.4, "--activity-gbq",
                                           help="nominal activity per cycle (GBq)"),
        nuclide: str = typer.Option("Lu-177", "--nuclide", help="therapy nuclide"),
        workers: int = typer.Option(1, "--workers", help="patients written in parallel"),
        contours: str = typer.Option(
            "all", "--contours", help="where the contours (SEG) are: all | first | later | "
            "cycle1 | pet | none"),
        spect_grids: str = typer.Option(
            "same", "--spect-grids", help="same | varied (finer voxels at the second time "
            "point, a limited axial field of view at the last)"),
        projections: bool = typer.Option(
            False, "--projections", help="write each SPECT as its raw acquisition (NM "
            "projections, photopeak and scatter windows) plus calibration phantoms"),
        views: int = typer.Option(120, "--views", help="projections per SPECT acquisition"),
        as_json: JsonOption = False,
        quiet: QuietOption = False,
        verbose: VerboseOption = False,
    ) -> None:
        """Generate a synthetic theranostics cohort with known truth (digital twins)."""
        try:
            cfg = SynthConfig(patients=patients, cycles=cycles, seed=seed, small=small,
                              time_points_h=parse_time_points(time_points),
                              missing_prob=missing_prob, activity_gbq=activity_gbq,
                              nuclide=nuclide, fmt=fmt.lower(), contours=contours,
                              spect_grids=spect_grids, projections=views if projections else 0)
        except SynthConfigError as err:
            raise typer.BadParameter(str(err)) from None
        t0 = time.perf_counter()
        res = generate_cohort(cfg, out, workers=workers, progress=not (quiet or as_json))
        seconds = time.perf_counter() - t0
        if as_json:
            print_json({"out": out, "patients": len(res.patients), "seconds": seconds})
            return
        typer.echo(f"wrote {len(res.patients)} synthetic patients to {out} in {seconds:.1f} s")
