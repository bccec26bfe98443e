"""Radionuclide decay data from ICRP Publication 107 (package ``icrp107-database``).

Energies are in MeV, yields per decay, half-lives in hours. The mean energy emitted per
decay is derived from the ICRP-107 line data (beta mean energies, internal-conversion and
Auger electrons, gamma, X and annihilation photons), e.g. Lu-177: all electrons 147.9 keV,
photons 35.1 keV.

Ac-225 is an alpha emitter whose short-lived daughters (Fr-221, At-217, Bi-213, Po-213 /
Tl-209, Pb-209) deliver most of the chain's energy: use :func:`chain_energy_per_decay_mev`
for the chain in secular equilibrium, the parent alone underestimates the dose ~4-fold.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

__all__ = [
    "Nuclide",
    "get_nuclide",
    "normalize_name",
    "chain_energy_per_decay_mev",
    "chain_branching",
    "SUPPORTED",
    "MEV_TO_J",
]

MEV_TO_J = 1.602176634e-13
_TIME_TO_H = {"s": 1 / 3600.0, "m": 1 / 60.0, "h": 1.0, "d": 24.0, "y": 24.0 * 365.25}
SUPPORTED = (
    "Lu-177", "Y-90", "I-131", "Tb-161", "Ac-225", "Ga-68", "F-18", "Cu-64", "Zr-89", "Tc-99m",
)
# Decay chains in secular equilibrium: (daughter, branching from its parent path).
# Branching ratios are derived from the ICRP-107 alpha/beta yields of the branching nuclide.
_CHAINS: dict[str, tuple[str, ...]] = {
    "Ac-225": ("Fr-221", "At-217", "Bi-213", "Po-213", "Tl-209", "Pb-209"),
}


def _db_dir() -> Path:
    import icrp107_database

    return Path(icrp107_database.__file__).parent / "icrp107"


def normalize_name(name: str) -> str:
    """Return the canonical ``Xx-NNN[m]`` name for ``Lu177``, ``177Lu``, ``lu-177`` ...

    Raises:
        ValueError: if the string is not a nuclide name.
    """
    if not isinstance(name, str):
        raise ValueError(f"nuclide name must be a string, got {name!r}")
    s = name.strip().replace("_", "-").replace(" ", "")
    m = re.fullmatch(r"([A-Za-z]{1,2})-?(\d{1,3})(m?)", s)
    if m is None:
        m2 = re.fullmatch(r"(\d{1,3})(m?)([A-Za-z]{1,2})", s)
        if m2 is None:
            raise ValueError(f"unknown nuclide {name!r}: expected a name like 'Lu-177'")
        sym, mass, meta = m2.group(3), m2.group(1), m2.group(2)
    else:
        sym, mass, meta = m.group(1), m.group(2), m.group(3)
    return f"{sym.capitalize()}-{int(mass)}{meta.lower()}"


@dataclass(frozen=True)
class Nuclide:
    """Decay data of one nuclide (ICRP-107).

    Attributes:
        name: canonical name, e.g. ``Lu-177``.
        half_life_h: physical half-life in hours.
        electron_lines_mev: (n, 2) array of discrete electrons (IC and Auger): energy, yield.
        beta_mean_lines_mev: (n, 2) beta branches: mean energy, yield (beta- and beta+).
        beta_spectrum: (n, 2) continuous beta spectrum: energy (MeV), number per MeV per
            decay (summed over branches), or an empty array.
        photon_lines_mev: (n, 2) gamma, X and annihilation photons: energy, yield.
        alpha_lines_mev: (n, 2) alpha particles: energy, yield.
    """

    name: str
    half_life_h: float
    electron_lines_mev: np.ndarray
    beta_mean_lines_mev: np.ndarray
    beta_spectrum: np.ndarray
    photon_lines_mev: np.ndarray
    alpha_lines_mev: np.ndarray
    notes: str = field(default="")

    @property
    def decay_constant_per_h(self) -> float:
        """Physical decay constant ln2/T½ (1/h)."""
        return math.log(2.0) / self.half_life_h

    @property
    def beta_mean_energy_mev(self) -> float:
        """Mean beta energy per decay (MeV)."""
        return float(np.sum(self.beta_mean_lines_mev[:, 0] * self.beta_mean_lines_mev[:, 1]))

    @property
    def discrete_electron_energy_mev(self) -> float:
        """Energy per decay in conversion and Auger electrons (MeV)."""
        return float(np.sum(self.electron_lines_mev[:, 0] * self.electron_lines_mev[:, 1]))

    @property
    def electron_energy_mev(self) -> float:
        """Mean energy per decay carried by all electrons and positrons (MeV)."""
        return self.beta_mean_energy_mev + self.discrete_electron_energy_mev

    @property
    def photon_energy_mev(self) -> float:
        """Mean energy per decay carried by photons (gamma, X, annihilation) (MeV)."""
        return float(np.sum(self.photon_lines_mev[:, 0] * self.photon_lines_mev[:, 1]))

    @property
    def alpha_energy_mev(self) -> float:
        """Mean alpha energy per decay (MeV)."""
        return float(np.sum(self.alpha_lines_mev[:, 0] * self.alpha_lines_mev[:, 1]))

    @property
    def beta_yield(self) -> float:
        """Number of beta particles per decay."""
        return float(np.sum(self.beta_mean_lines_mev[:, 1]))


def _pairs(data: dict, key: str) -> np.ndarray:
    arr = np.asarray(data["emissions"].get(key, []), dtype=float)
    return arr.reshape(-1, 2)


@cache
def get_nuclide(name: str) -> Nuclide:
    """Load one nuclide from ICRP-107.

    Raises:
        ValueError: for an unknown nuclide.
    """
    canon = normalize_name(name)
    path = _db_dir() / f"{canon}.json"
    if not path.exists():
        raise ValueError(f"unknown nuclide {name!r}: not in the ICRP-107 database")
    with open(path, "rb") as fh:
        data = json.loads(json.load(fh))
    t_h = float(data["half_life"]) * _TIME_TO_H[data["time_unit"]]
    electrons = np.concatenate([_pairs(data, "IE"), _pairs(data, "auger")])
    betas = np.concatenate([_pairs(data, "beta-"), _pairs(data, "beta+")])
    photons = np.concatenate(
        [_pairs(data, "gamma"), _pairs(data, "X"), _pairs(data, "annihilation")]
    )
    spec = _pairs(data, "b-spectra")
    if len(spec) and betas[:, 1].sum() > 0:
        # Normalise the shape to the ICRP-107 number of betas per decay.
        area = float(np.trapezoid(spec[:, 1], spec[:, 0]))
        spec = np.column_stack([spec[:, 0], spec[:, 1] * betas[:, 1].sum() / area])
    notes = ""
    if canon in _CHAINS:
        notes = (
            f"{canon} daughters {', '.join(_CHAINS[canon])} contribute most of the energy; "
            "use chain_energy_per_decay_mev()."
        )
    return Nuclide(
        name=canon,
        half_life_h=t_h,
        electron_lines_mev=electrons,
        beta_mean_lines_mev=betas,
        beta_spectrum=spec,
        photon_lines_mev=photons,
        alpha_lines_mev=_pairs(data, "alpha"),
        notes=notes,
    )


def chain_branching(name: str) -> dict[str, float]:
    """Number of decays of each chain member per decay of the parent (secular equilibrium).

    Branching at Bi-213 is taken from its ICRP-107 alpha (-> Tl-209) and beta (-> Po-213)
    yields.
    """
    canon = normalize_name(name)
    out = {canon: 1.0}
    if canon == "Ac-225":
        bi = get_nuclide("Bi-213")
        p_alpha = float(bi.alpha_lines_mev[:, 1].sum())
        p_beta = 1.0 - p_alpha
        out.update({"Fr-221": 1.0, "At-217": 1.0, "Bi-213": 1.0, "Po-213": p_beta,
                    "Tl-209": p_alpha, "Pb-209": 1.0})
    return out


def chain_energy_per_decay_mev(name: str) -> dict[str, float]:
    """Energy per parent decay (MeV) by radiation type, summed over the chain.

    Returns:
        dict with keys ``alpha``, ``electron``, ``photon``, ``total``.
    """
    tot = {"alpha": 0.0, "electron": 0.0, "photon": 0.0}
    for member, n in chain_branching(name).items():
        nuc = get_nuclide(member)
        tot["alpha"] += n * nuc.alpha_energy_mev
        tot["electron"] += n * nuc.electron_energy_mev
        tot["photon"] += n * nuc.photon_energy_mev
    tot["total"] = sum(tot.values())
    return tot
