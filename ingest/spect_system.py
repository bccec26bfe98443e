"""The SPECT system model, built with PyTomography: attenuation from the CT, the collimator-
detector response of the named collimator, and the projection geometry of an acquisition.

The same model forward-projects the synthetic cohort's truth and reconstructs every acquisition
(``reconstruction.py``). Arrays are theralake's (z, y, x) on the reconstruction grid; views are
PyTomography's (angle, r, z) with angles ascending in its detector convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from pytomography.io.SPECT.dicom import get_psfmeta_from_scanner_params
from pytomography.metadata.SPECT import SPECTObjectMeta, SPECTProjMeta
from pytomography.projectors.SPECT import SPECTSystemMatrix
from pytomography.transforms.SPECT import SPECTAttenuationTransform, SPECTPSFTransform

#: the principal gamma lines (keV) of the nuclides theralake reconstructs (ICRP-107)
GAMMA_LINES_KEV = {"Lu-177": (112.9, 208.4)}
#: the effective energy (keV) of a 120 kVp CT beam, for the CT number to mu conversion
CT_EFFECTIVE_KEV = 70.0
#: DICOM collimator names (CollimatorGridName, upper case) per manufacturer keyword, to the
#: code of PyTomography's collimator table (collim.col, from SIMIND)
COLLIMATOR_ALIASES = {
    ("SIEMENS", "ME"): "SY-ME", ("SIEMENS", "MELP"): "SY-ME", ("GE", "MEGP"): "G8-MEGP",
    ("PHILIPS", "MEGP"): "PB-MEGP", ("MEDISO", "MEGP"): "ME-MEGP",
}


class UnknownCollimator(ValueError):
    """A collimator without hole length and diameter in PyTomography's table."""


def _collimator_table() -> dict[str, str]:
    """Code -> description of every collimator in PyTomography's collim.col."""
    text = (resources.files("pytomography") / "data" / "collim.col").read_text(errors="replace")
    out = {}
    for line in text.splitlines():
        if line.startswith("*") and len(line.split()) > 3:
            out[line.split()[0][1:]] = line
    return out


def collimator_code(name: str, manufacturer: str = "") -> str:
    """The collimator-table code of a DICOM collimator name: the code itself (``SY-ME``,
    ``G8-MEGP``), or the manufacturer's name for it (``MEGP`` on a GE camera).

    Raises:
        UnknownCollimator: naming the collimator and where the known codes are listed.
    """
    table = _collimator_table()
    key = (name or "").strip().upper()
    if key in table:
        return key
    maker = (manufacturer or "").upper()
    for (brand, grid), code in COLLIMATOR_ALIASES.items():
        if brand in maker and grid == key:
            return code
    raise UnknownCollimator(
        f"collimator {name or '(none)'!r} of manufacturer {manufacturer or '(none)'!r} is not "
        f"in PyTomography's collimator table: give its code (e.g. SY-ME, G8-MEGP, PB-MEGP; "
        f"{len(table)} codes in pytomography/data/collim.col) with --collimator")


def _nist_mu_per_cm(material: str, energy_kev: float) -> float:
    """Linear attenuation (1/cm) of a NIST material at an energy, log-log interpolated in the
    XCOM table PyTomography ships (first line: density g/cm3; columns MeV, mu/rho, mu_en/rho)."""
    path = resources.files("pytomography") / "data" / "NIST_attenuation_data" / f"{material}.csv"
    lines = path.read_text().splitlines()
    density = float(lines[0].split()[0])
    rows = [line.split()[-3:] for line in lines[1:] if line.strip()]
    e_mev, mu_rho = (np.array([float(r[i]) for r in rows]) for i in (0, 1))
    keep = np.concatenate([[True], np.diff(e_mev) > 0])  # edges repeat an energy
    log_mu = np.interp(math.log(energy_kev / 1000.0), np.log(e_mev[keep]), np.log(mu_rho[keep]))
    return float(math.exp(log_mu) * density)


def hu_to_mu(hu: np.ndarray, energy_kev: float) -> np.ndarray:
    """Attenuation map (1/cm) from CT numbers: the bilinear model (air to water, water to
    cortical bone), with water and bone from NIST XCOM at the photon energy and at the CT's
    effective energy."""
    mu_w = _nist_mu_per_cm("water", energy_kev)
    mu_b = _nist_mu_per_cm("bonecortical", energy_kev)
    hu_bone = 1000.0 * (_nist_mu_per_cm("bonecortical", CT_EFFECTIVE_KEV)
                        / _nist_mu_per_cm("water", CT_EFFECTIVE_KEV) - 1.0)
    hu = np.asarray(hu, dtype=np.float32)
    soft = mu_w * (1.0 + hu / 1000.0)
    hard = mu_w + hu * (mu_b - mu_w) / hu_bone
    return np.clip(np.where(hu <= 0, soft, hard), 0.0, None).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """A tomographic acquisition on its reconstruction grid.

    ``angles_deg`` and ``radii_mm`` are per view, in PyTomography's order and convention;
    the grid is ``bins`` x ``bins`` x ``rows`` voxels of ``pixel_mm``; ``origin_mm`` is the
    LPS position of voxel (0, 0, 0) (the lowest slice)."""

    angles_deg: np.ndarray
    radii_mm: np.ndarray
    bins: int
    rows: int
    pixel_mm: float
    origin_mm: tuple[float, float, float]

    @property
    def grid_shape_zyx(self) -> tuple[int, int, int]:
        return (self.rows, self.bins, self.bins)

    def finer(self, factor: int) -> Geometry:
        """The geometry with ``factor`` times the views of this uniformly sampled orbit (the
        radii interpolated linearly between neighbouring views).

        Raises:
            ValueError: the views are not evenly spaced over 360 degrees.
        """
        n = len(self.angles_deg)
        step = 360.0 / n
        offsets = (np.asarray(self.angles_deg) - self.angles_deg[0] + 1e-6) % 360.0
        if not np.allclose(np.sort(offsets), np.arange(n) * step, atol=1e-3):
            raise ValueError(f"{n} views not evenly spaced over 360 degrees: views cannot be "
                             "synthesised between them")
        w = np.arange(factor) / factor
        radii = np.asarray(self.radii_mm, float)
        finer_radii = ((1 - w)[None, :] * radii[:, None]
                       + w[None, :] * np.roll(radii, -1)[:, None]).ravel()
        angles = self.angles_deg[0] + np.arange(n * factor) * step / factor
        return Geometry(angles_deg=angles % 360.0, radii_mm=finer_radii, bins=self.bins,
                        rows=self.rows, pixel_mm=self.pixel_mm, origin_mm=self.origin_mm)


def to_object(zyx: np.ndarray) -> torch.Tensor:
    """A theralake (z, y, x) array as a PyTomography object (x, y, z)."""
    return torch.from_numpy(np.ascontiguousarray(np.transpose(zyx, (2, 1, 0)), np.float32))


def from_object(obj: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(obj.detach().cpu().numpy(), (2, 1, 0)), np.float32)


def system_matrix(geometry: Geometry, *, mu_per_cm: np.ndarray | None, collimator: str,
                  energy_kev: float, intrinsic_fwhm_mm: float = 3.8) -> SPECTSystemMatrix:
    """Attenuation (``mu_per_cm`` on the grid, (z, y, x); None: none) and the depth-dependent
    collimator-detector response of ``collimator`` (a collimator-table code)."""
    cm = geometry.pixel_mm / 10.0
    obj_meta = SPECTObjectMeta((cm, cm, cm), (geometry.bins, geometry.bins, geometry.rows))
    proj_meta = SPECTProjMeta((geometry.bins, geometry.rows), (cm, cm),
                              np.asarray(geometry.angles_deg, float),
                              np.asarray(geometry.radii_mm, float) / 10.0)
    psf = get_psfmeta_from_scanner_params(collimator, energy_kev,
                                          intrinsic_resolution=intrinsic_fwhm_mm / 10.0)
    transforms = [SPECTAttenuationTransform(to_object(mu_per_cm))] if mu_per_cm is not None \
        else []
    return SPECTSystemMatrix([*transforms, SPECTPSFTransform(psf)], [], obj_meta, proj_meta)


def forward_project(matrix: SPECTSystemMatrix, activity_zyx: np.ndarray) -> np.ndarray:
    """Expected counts per view (angle, r, z) of an object (counts per view per voxel)."""
    with torch.no_grad():
        return matrix.forward(to_object(activity_zyx)).cpu().numpy()
