"""Physicist commands: ``theralake tac`` and ``theralake kernel``.

``register(app)`` adds them to a Typer app (the main CLI calls it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import typer

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
    model: str = typer.Option("auto", help="auto|mono|bi|tri|trapezoid"),
    nuclide: str = typer.Option(None, help="nuclide, bounds clearance by physical decay"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    plot: Path = typer.Option(None, help="write a PNG of the data and fits"),
    bootstrap: int = typer.Option(0, help="parametric bootstrap resamples"),
) -> None:
    """Fit a time-activity curve, compare models by AICc, and print the TIA."""
    from .kinetics import fit_tac, select_tac_model
    from .nuclides import get_nuclide

    t, a, s = _read_tac(file)
    lam = get_nuclide(nuclide).decay_constant_per_h if nuclide else None
    try:
        if model == "auto":
            sel = select_tac_model(t, a, ("mono", "bi", "tri"), sigma_mbq=s,
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
        typer.echo(f"{'model':<10}{'k':>3}{'AICc':>12}  plausible  notes")
        for f in fits:
            aic = f"{f.aicc:.3f}" if f.aicc is not None else "n/a"
            typer.echo(f"{f.model:<10}{f.n_params:>3}{aic:>12}  {str(f.plausible):<9}  "
                       f"{'; '.join(f.reasons)}")
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
) -> None:
    """Compute a voxel S-value kernel and print its central values in mGy/(MBq·s)."""
    from .kernels import voxel_s_kernel

    try:
        k = voxel_s_kernel(nuclide, voxel_mm, size, density, beta_only=beta_only)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"{k.nuclide} voxel {k.voxel_mm} mm, density {k.density_g_cm3} g/cm3, "
               f"{k.size}^3 voxels, mGy/(MBq·s)")
    half = k.size // 2
    for ijk in ((0, 0, 0), (0, 0, 1), (0, 1, 1), (1, 1, 1), (0, 0, 2)):
        if max(ijk) <= half:
            typer.echo(f"  {ijk}: {k.value(*ijk):.4e}")
    typer.echo(f"energy absorbed in kernel volume: {k.absorbed_energy_mev() * 1000:.2f} keV/decay")
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
        typer.echo(f"wrote {out}")


def dosimetry(
    patient: str | None = typer.Option(None, help="lake patient_id (default: every patient)"),
    cycle: int | None = typer.Option(None, help="cycle (default: every cycle with SPECT)"),
    method: str | None = typer.Option(None, help="ldm | vsv | vsv-density | organ-s"),
    registration: str | None = typer.Option(
        None, help="deformable | rigid | none | ai (a model trained by train-reg)"),
    config: Path | None = typer.Option(None, help="YAML settings (see the packaged default)"),
    lake: Path | None = typer.Option(None, help="lake folder"),
) -> None:
    """Image-based dosimetry of patient-cycles: registration, VOIs, TACs, TIA, dose, BED."""
    from rich.progress import Progress

    from theralake.dosimetry.patient import (
        DosimetryError,
        load_config,
        record_config,
        resolve_config,
        run_cycle,
    )
    from theralake.lake import Lake

    the_lake = Lake(lake, create=False)
    try:
        settings = resolve_config(the_lake, load_config(config, method=method,
                                                        registration=registration))
    except DosimetryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    record_config(the_lake, settings)
    where, params = "kind = 'spect'", []
    if patient:
        where, params = where + " AND patient_id = ?", params + [patient]
    if cycle is not None:
        where, params = where + " AND cycle = ?", params + [cycle]
    todo = the_lake.sql(f"SELECT DISTINCT patient_id, cycle FROM images WHERE {where} "
                        "ORDER BY patient_id, cycle", params)
    if todo.empty:
        typer.echo("error: no SPECT in the lake for that selection", err=True)
        raise typer.Exit(2)
    failed = []
    with Progress(transient=True) as bar:
        task = bar.add_task("dosimetry", total=len(todo))
        for pid, cyc in todo.itertuples(index=False):
            try:
                res = run_cycle(the_lake, pid, int(cyc), settings)
                typer.echo(f"{pid} cycle {cyc}: {len(res.organ_rows)} VOIs")
            except DosimetryError as exc:
                failed.append(str(exc))
            except (ValueError, RuntimeError) as exc:  # physics refusing this patient's data
                failed.append(f"patient {pid} cycle {cyc}: {exc}")
            bar.advance(task)
    for msg in failed:
        typer.echo(f"failed: {msg}", err=True)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``tac``, ``kernel`` and ``dosimetry`` commands to ``app``."""
    app.command("tac")(tac)
    app.command("kernel")(kernel)
    app.command("dosimetry")(dosimetry)
