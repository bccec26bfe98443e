"""Organ-level MIRD dose: D = Σ_sources TIA × S(target ← source), S-values from CSV tables.

CSV columns: ``nuclide, source, target, s_gy_per_bq_s, reference_mass_g, provenance``
(``reference_mass_g`` is the mass of the source region for self-S rows). Self-S values are
scaled to a patient's organ mass: the electron (non-penetrating) part ∝ 1/m and the photon
part ∝ m^(-2/3) (absorbed fraction ∝ m^(1/3) for photons in small organs, MIRD practice).

The shipped table ``data/s_values_spheres.csv`` holds unit-density sphere self-S values
computed by this package's sphere model (:mod:`.sphere`), not copied from any source.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .nuclides import normalize_name
from .sphere import sphere_self_s

__all__ = ["STable", "load_s_table", "scale_self_s", "mird_dose", "OrganDose",
           "default_s_table_path", "write_sphere_s_table"]

REQUIRED = ("nuclide", "source", "target", "s_gy_per_bq_s")


@dataclass
class STable:
    """S-values keyed by (nuclide, source, target), with reference masses and provenance."""

    values: dict[tuple[str, str, str], float]
    reference_mass_g: dict[tuple[str, str, str], float]
    photon_fraction: dict[tuple[str, str, str], float]
    provenance: dict[tuple[str, str, str], str]
    path: str = ""

    def s(self, nuclide: str, source: str, target: str) -> float:
        """S-value in Gy/(Bq·s); raises ValueError when the pair is absent."""
        key = (normalize_name(nuclide), source, target)
        if key not in self.values:
            raise ValueError(f"no S-value for {key} in {self.path or 'table'}")
        return self.values[key]


def default_s_table_path() -> Path:
    """Path of the shipped sphere S table."""
    return Path(__file__).parent / "data" / "s_values_spheres.csv"


def load_s_table(path: str | Path | None = None) -> STable:
    """Load an S-value CSV (comment lines start with ``#``).

    Raises:
        ValueError: missing columns, non-positive or non-numeric S-values.
    """
    p = Path(path) if path is not None else default_s_table_path()
    with open(p, newline="") as fh:
        rows = [r for r in csv.DictReader(line for line in fh if not line.startswith("#"))]
    if not rows:
        raise ValueError(f"S table {p} is empty")
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise ValueError(f"S table {p} lacks columns {missing}")
    tab = STable({}, {}, {}, {}, str(p))
    for i, r in enumerate(rows):
        try:
            s = float(r["s_gy_per_bq_s"])
        except ValueError as exc:
            raise ValueError(f"row {i + 1}: s_gy_per_bq_s is not a number") from exc
        if not (np.isfinite(s) and s >= 0):
            raise ValueError(f"row {i + 1}: s_gy_per_bq_s must be finite and >= 0")
        key = (normalize_name(r["nuclide"]), r["source"].strip(), r["target"].strip())
        tab.values[key] = s
        if r.get("reference_mass_g"):
            tab.reference_mass_g[key] = float(r["reference_mass_g"])
        if r.get("photon_fraction"):
            tab.photon_fraction[key] = float(r["photon_fraction"])
        tab.provenance[key] = r.get("provenance", "")
    return tab


def scale_self_s(s_ref_gy_per_bq_s: float, reference_mass_g: float, mass_g: float,
                 photon_fraction: float = 0.0) -> float:
    """Scale a self-S value to another mass: electrons ∝ 1/m, photons ∝ m^(-2/3).

    Raises:
        ValueError: non-positive masses or photon fraction outside [0, 1].
    """
    if not (reference_mass_g > 0 and mass_g > 0):
        raise ValueError("masses must be > 0")
    if not 0.0 <= photon_fraction <= 1.0:
        raise ValueError("photon_fraction must be in [0, 1]")
    ratio = reference_mass_g / mass_g
    return s_ref_gy_per_bq_s * ((1 - photon_fraction) * ratio
                                + photon_fraction * ratio ** (2.0 / 3.0))


@dataclass
class OrganDose:
    """Absorbed dose per target (Gy) and the contribution of each source."""

    dose_gy: dict[str, float]
    contributions_gy: dict[tuple[str, str], float] = field(default_factory=dict)


def mird_dose(tia_mbq_h: dict[str, float], table: STable, nuclide: str,
              targets: list[str] | None = None,
              masses_g: dict[str, float] | None = None) -> OrganDose:
    """MIRD absorbed dose ``D(target) = Σ_source TIA(source) × S(target ← source)``.

    Args:
        tia_mbq_h: TIA per source region (MBq·h).
        table: S-value table.
        nuclide: nuclide name.
        targets: targets to compute (default: the sources).
        masses_g: patient masses; self-S values are mass-scaled when the table gives a
            reference mass.

    Raises:
        ValueError: negative or NaN TIA, missing S-values.
    """
    nuc = normalize_name(nuclide)
    for src, v in tia_mbq_h.items():
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"TIA of {src!r} must be finite and >= 0, got {v}")
    targets = list(tia_mbq_h) if targets is None else targets
    out = OrganDose({})
    for tgt in targets:
        total = 0.0
        for src, tia in tia_mbq_h.items():
            key = (nuc, src, tgt)
            if key not in table.values:
                if src == tgt:
                    raise ValueError(f"no self S-value for {src!r} ({nuc})")
                continue
            s = table.values[key]
            if src == tgt and masses_g and tgt in masses_g and key in table.reference_mass_g:
                s = scale_self_s(s, table.reference_mass_g[key], masses_g[tgt],
                                 table.photon_fraction.get(key, 0.0))
            d = tia * 1e6 * 3600.0 * s
            out.contributions_gy[(tgt, src)] = d
            total += d
        out.dose_gy[tgt] = total
    return out


def write_sphere_s_table(path: str | Path, nuclides: list[str], masses_g: list[float]) -> None:
    """Write a sphere self-S table computed with :func:`.sphere.sphere_self_s`."""
    with open(path, "w", newline="") as fh:
        fh.write("# Unit-density sphere self-S values computed by theralake.dosimetry.sphere\n")
        fh.write("# (ICRP-107 spectra; electron condensed-history MC + photon MC point kernels\n")
        fh.write("# in water; sphere geometric factor). Reproduce: "
                 f"{__name__}.write_sphere_s_table\n")
        w = csv.writer(fh)
        w.writerow(["nuclide", "source", "target", "s_gy_per_bq_s", "reference_mass_g",
                    "photon_fraction", "provenance"])
        for n in nuclides:
            for m in masses_g:
                s = sphere_self_s(n, m)
                name = f"sphere_{m:g}g"
                w.writerow([normalize_name(n), name, name, f"{s.s_gy_per_bq_s:.5e}", f"{m:g}",
                            f"{s.photon_gy_per_bq_s / s.s_gy_per_bq_s:.4f}",
                            "theralake sphere model v0.1 (computed)"])
