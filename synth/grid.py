"""Voxel grids in DICOM patient coordinates (LPS, mm), arrays indexed (z, y, x)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid.

    Attributes:
        shape: array shape (nz, ny, nx).
        spacing: voxel size (sx, sy, sz) in mm.
        origin: centre of the first voxel (x, y, z) in mm, LPS.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def axis(self, dim: int) -> np.ndarray:
        """World coordinates (mm) of voxel centres along x (0), y (1) or z (2)."""
        n = self.shape[2 - dim]
        return self.origin[dim] + self.spacing[dim] * np.arange(n, dtype=np.float32)

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """World (x, y, z) mm, shape (..., 3), to continuous (x, y, z) indices."""
        return (np.asarray(xyz) - np.asarray(self.origin)) / np.asarray(self.spacing)

    def bbox(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Array slices (z, y, x) covering the world box [lo, hi]; None if outside."""
        lo = np.floor(self.world_to_index(lo_xyz)).astype(int)
        hi = np.ceil(self.world_to_index(hi_xyz)).astype(int) + 1
        n = np.array(self.shape[::-1])
        lo = np.clip(lo, 0, n)
        hi = np.clip(hi, 0, n)
        if np.any(hi <= lo):
            return None
        return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))

    @property
    def extent_max(self) -> np.ndarray:
        """World coordinates of the last voxel centre (x, y, z)."""
        return np.asarray(self.origin) + np.asarray(self.spacing) * (np.array(self.shape[::-1]) - 1)


def centred_grid(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], z0: float = 0.0
) -> Grid:
    """A grid centred on x = y = 0 whose first slice lies at z0."""
    nz, ny, nx = shape
    origin = (-(nx - 1) * spacing[0] / 2.0, -(ny - 1) * spacing[1] / 2.0, z0)
    return Grid(shape, spacing, origin)


def ct_grid(small: bool) -> Grid:
    """The CT grid: about 4 mm voxels over trunk, head and neck (8 x 8 x 10 mm if small)."""
    if small:
        return centred_grid((92, 48, 64), (8.0, 8.0, 10.0), z0=0.0)
    return centred_grid((230, 88, 128), (4.0, 4.0, 4.0), z0=0.0)


#: SPECT grid variants of ``--spect-grids varied``: ``fine`` has 0.8x the voxel size over the
#: same field of view; ``limited`` keeps the lower 61 % of the axial field of view (one
#: abdominal bed: kidneys, liver, spleen and bladder in, the head and neck out)
SPECT_VARIANTS = ("standard", "fine", "limited")


def spect_grid(small: bool, variant: str = "standard") -> Grid:
    """The SPECT reconstruction grid: 4.42 mm, 128 x 128 (8.84 mm, 64 x 64 if small)."""
    shape, voxel = ((104, 64, 64), 8.84) if small else ((208, 128, 128), 4.42)
    if variant == "fine":
        shape, voxel = tuple(int(round(n * 1.25)) for n in shape), voxel * 0.8
    elif variant == "limited":
        shape = (int(round(shape[0] * 0.61)), *shape[1:])
    elif variant != "standard":
        raise ValueError(f"unknown SPECT grid {variant!r}; one of {SPECT_VARIANTS}")
    return centred_grid(shape, (voxel, voxel, voxel), z0=0.0)
