"""Physicist commands: ``theralake tac`` and ``theralake kernel``.

``register(app)`` adds them to a Typer app (the main CLI calls it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import typer

from theralake.cli_output import JsonOption, QuietOption, VerboseOption, print_json
from theralake.dosimetry.kernels import voxel_s_kernel
from theralake.dosimetry.kinetics import fit_tac, select_tac_model
from theralake.dosimetry.nuclides import get_nuclide

__all__ = ["register"]


def _read_tac(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import pandas as pd

    if not path.exists():
        raise typer.BadParameter(f"file not found: {path}")
    df = pd.read_csv(path)
    for col in ("time_h", "activity_mbq"):
        if col not in df.columns:
            raise typer.BadParameter(f"{path} lacks column {col!r} (need time_h, activity_mbq)")
    sigma = df["sigma"].to_numpy(float) if "sigma" in df.columns else None
    return df["time_h"].to_numpy(float), df["activity_mbq"].to_numpy(float), sigma


def tac(
    file: Path = typer.Argument(..., help="CSV with time_h, activity_mbq[, sigma]"),
    model: str = typer.Option("auto", help="auto|mono|bi|tri|two_washout|trapezoid"),
    nuclide: str = typer.Option(None, help="nuclide, bounds clearance by physical decay"),
    as_json: JsonOption = False,
    plot: Path = typer.Option(None, help="write a PNG of the data and fits"),
    bootstrap: int = typer.Option(0, help="parametric bootstrap resamples"),
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Fit a time-activity curve, compare models by AICc (AIC where a candidate has one
    residual degree of freedom), and print the TIA."""
    t, a, s = _read_tac(file)
    lam = get_nuclide(nuclide).decay_constant_per_h if nuclide else None
    try:
        if model == "auto":
            sel = select_tac_model(t, a, sigma_mbq=s,
                                   decay_constant_per_h=lam, bootstrap=bootstrap)
            fits, chosen, rule = sel.fits, sel.chosen, sel.rule
        else:
            chosen = fit_tac(t, a, model, sigma_mbq=s, decay_constant_per_h=lam,
                             bootstrap=bootstrap)
            fits, rule = [chosen], "model given by the user"
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    if as_json:
        out = {"models": [f.as_dict() for f in fits], "chosen": chosen.model, "rule": rule,
               "result": chosen.as_dict()}
        typer.echo(json.dumps(out, indent=2, default=float))
    else:
        kind = next(iter(fits[0].extra.get("criterion", {"aicc": None})))
        typer.echo(f"{'model':<12}{'k':>3}{kind.upper().replace('AICC', 'AICc'):>12}  "
                   "plausible  notes")
        for f in fits:
            value = f.extra.get("criterion", {}).get(kind, f.aicc)
            shown = f"{value:.3f}" if value is not None else "n/a"
            notes = [*f.reasons, *(f"{n} at its bound" for n in f.at_bound)]
            typer.echo(f"{f.model:<12}{f.n_params:>3}{shown:>12}  {str(f.plausible):<9}  "
                       f"{'; '.join(notes)}")
        typer.echo(f"chosen: {chosen.model} ({rule})")
        for n, v, sd in zip(chosen.param_names, chosen.params, chosen.param_sd, strict=False):
            sd_s = f"{sd:.4g}" if math.isfinite(sd) else "n/a"
            typer.echo(f"  {n} = {v:.6g} ± {sd_s}")
        sd = chosen.tia_sd_mbq_h
        typer.echo(f"TIA = {chosen.tia_mbq_h:.6g} ± {sd:.3g} MBq·h  "
                   f"(extrapolated {100 * chosen.extrapolated_fraction:.1f} %)")
        if chosen.tia_bootstrap_sd_mbq_h is not None:
            typer.echo(f"bootstrap sd = {chosen.tia_bootstrap_sd_mbq_h:.3g} MBq·h")
        typer.echo(f"effective half-life = {chosen.effective_half_life_h:.4g} h")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tt = np.linspace(0, t[-1] * 1.5, 300)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.errorbar(t, a, yerr=s, fmt="ko", label="data")
        for f in fits:
            ax.plot(tt, f.predict(tt), label=f"{f.model}" + (" (chosen)" if f is chosen else ""))
        ax.set_xlabel("time (h)")
        ax.set_ylabel("activity (MBq)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=100)
        plt.close(fig)


def kernel(
    nuclide: str = typer.Option("Lu-177", help="nuclide, e.g. Lu-177"),
    voxel_mm: float = typer.Option(..., "--voxel-mm", help="cubic voxel edge (mm)"),
    size: int = typer.Option(11, help="odd kernel edge in voxels"),
    density: float = typer.Option(1.0, help="medium density (g/cm³)"),
    beta_only: bool = typer.Option(False, help="beta electrons only (Lanconelli convention)"),
    out: Path = typer.Option(None, help="write kernel (.npy or .csv with i,j,k,value)"),
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Compute a voxel S-value kernel and print its central values in mGy/(MBq·s)."""
    try:
        k = voxel_s_kernel(nuclide, voxel_mm, size, density, beta_only=beta_only)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    half = k.size // 2
    central = {str(ijk): k.value(*ijk) for ijk in ((0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 1, 1),
                                                   (0, 0, 2)) if max(ijk) <= half}
    absorbed_kev = k.absorbed_energy_mev() * 1000
    if as_json:
        print_json({"nuclide": k.nuclide, "voxel_mm": k.voxel_mm, "size": k.size,
                    "density_g_cm3": k.density_g_cm3, "central_mgy_per_mbq_s": central,
                    "absorbed_kev_per_decay": absorbed_kev, "out": out})
    else:
        typer.echo(f"{k.nuclide} voxel {k.voxel_mm} mm, density {k.density_g_cm3} g/cm3, "
                   f"{k.size}^3 voxels, mGy/(MBq·s)")
        for ijk, value in central.items():
            typer.echo(f"  {ijk}: {value:.4e}")
        typer.echo(f"energy absorbed in kernel volume: {absorbed_kev:.2f} keV/decay")
    if out is not None:
        arr = k.values_mgy_per_mbq_s
        if out.suffix == ".npy":
            np.save(out, arr)
        elif out.suffix == ".csv":
            idx = np.indices(arr.shape).reshape(3, -1).T - half
            np.savetxt(out, np.column_stack([idx, arr.ravel()]), delimiter=",",
                       header="i,j,k,s_mgy_per_mbq_s", comments="", fmt=["%d"] * 3 + ["%.6e"])
        else:
            typer.echo("error: --out must end in .npy or .csv", err=True)
            raise typer.Exit(code=2)
        if not as_json:
            typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the ``tac`` and ``kernel`` commands to ``app``."""
    app.command("tac")(tac)
    app.command("kernel")(kernel)
