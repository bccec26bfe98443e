"""In-memory voxel volumes and their lossless encoding into lake rows."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa

COMPRESSION = "zstd"


def require_finite(voxels: np.ndarray) -> None:
    """Refuse voxels that are not finite numbers (NaN, infinity).

    Raises:
        ValueError: saying how many voxels are not finite.
    """
    array = np.asanyarray(voxels)
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ValueError(f"{bad} of {array.size} voxels are not finite numbers (NaN or "
                         "infinite); a quantitative image must be measured everywhere")


def read_image(path: str | os.PathLike[str]) -> Volume:
    """A 3D image file SimpleITK reads (NIfTI, NRRD, MHA, ...) as a :class:`Volume`.

    Raises:
        ValueError: the file is unreadable, not 3D, or holds NaN or infinite voxels (counted
            in a NIfTI file itself: ITK's reader turns NaN into 0, a measured-looking zero).
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"unreadable image ({str(exc).strip().splitlines()[-1]})") from exc
    if img.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {img.GetDimension()}D")
    volume = Volume.from_sitk(img)
    nifti = path.name.endswith((".nii", ".nii.gz"))
    require_finite(np.asanyarray(nib.load(path).dataobj) if nifti else volume.array)
    return volume


@dataclass
class Volume:
    """A 3D voxel array with its world geometry (SimpleITK conventions).

    ``array`` is indexed (z, y, x); ``spacing_mm``, ``origin_mm`` are (x, y, z) and
    ``direction`` is the 3x3 matrix whose columns are the x, y, z axes in patient (LPS)
    coordinates.
    """

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a volume needs a 3D array, got shape {self.array.shape}")
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)  # type: ignore[assignment]
        self.origin_mm = tuple(float(o) for o in self.origin_mm)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if min(self.spacing_mm) <= 0:
            raise ValueError(f"voxel spacing must be positive, got {self.spacing_mm}")

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.array.shape
        return (x, y, z)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) voxel indices, shape (..., 3), to world mm."""
        scaled = np.asarray(ijk, dtype=float) * np.asarray(self.spacing_mm)
        return scaled @ self.direction.T + np.asarray(self.origin_mm)

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """World mm, shape (..., 3), to continuous (x, y, z) voxel indices."""
        rel = np.asarray(xyz, dtype=float) - np.asarray(self.origin_mm)
        return (rel @ np.linalg.inv(self.direction).T) / np.asarray(self.spacing_mm)

    def same_grid(self, other: Volume, tol_mm: float = 1e-3) -> bool:
        return (
            self.array.shape == other.array.shape
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=tol_mm)
            and np.allclose(self.origin_mm, other.origin_mm, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def like(self, array: np.ndarray) -> Volume:
        """A volume on the same grid holding another array."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from grid {self.array.shape}")
        return Volume(array, self.spacing_mm, self.origin_mm, self.direction.copy())

    def crop(self, box: tuple[slice, slice, slice]) -> Volume:
        """The sub-volume ``array[box]`` (z, y, x slices with steps of 1), at its place in the
        world."""
        start = [s.indices(n)[0] for s, n in zip(box, self.array.shape, strict=True)]
        origin = self.index_to_world(np.array(start[::-1], dtype=float))
        return Volume(self.array[box], self.spacing_mm, tuple(origin), self.direction.copy())

    def to_sitk(self):  # noqa: ANN201 - SimpleITK image
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing_mm)
        img.SetOrigin(self.origin_mm)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img) -> Volume:  # noqa: ANN001
        import SimpleITK as sitk

        return cls(
            sitk.GetArrayFromImage(img),
            img.GetSpacing(),
            img.GetOrigin(),
            np.array(img.GetDirection()).reshape(3, 3),
        )

    # -- lake encoding -----------------------------------------------------------------
    def geometry_columns(self) -> dict:
        """Lake columns holding the geometry and the compressed voxels."""
        arr = np.ascontiguousarray(self.array)
        return {
            "shape": list(self.shape_xyz),
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "direction": [float(v) for v in self.direction.ravel()],
            "dtype": arr.dtype.str,
            "compression": COMPRESSION,
            "voxels": pa.compress(arr.tobytes(), codec=COMPRESSION, asbytes=True),
        }

    @classmethod
    def from_row(cls, row: dict) -> Volume:
        """Decode a lake row (mapping with the voxel columns) into a volume."""
        x, y, z = (int(v) for v in row["shape"])
        dtype = np.dtype(row["dtype"])
        raw = pa.decompress(
            row["voxels"], decompressed_size=x * y * z * dtype.itemsize,
            codec=row["compression"], asbytes=True,
        )
        array = np.frombuffer(raw, dtype=dtype).reshape(z, y, x).copy()
        return cls(array, tuple(row["spacing_mm"]), tuple(row["origin_mm"]),
                   np.array(row["direction"]).reshape(3, 3))

    def content_hash(self, *extra: object) -> str:
        """SHA-256 of the voxels, the geometry and any extra identifying values."""
        h = hashlib.sha256()
        arr = np.ascontiguousarray(self.array)
        h.update(arr.dtype.str.encode())
        h.update(repr((self.shape_xyz, _r(self.spacing_mm), _r(self.origin_mm),
                       _r(self.direction.ravel()))).encode())
        h.update(arr.tobytes())
        for e in extra:
            h.update(repr(e).encode())
        return h.hexdigest()


def bounding_box(array: np.ndarray, margin=0) -> tuple[slice, ...] | None:  # noqa: ANN001
    """The slices around the non-zero voxels of ``array``, widened by ``margin`` voxels (one
    number, or one per axis) and clipped to the array; None when every voxel is zero."""
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (array.ndim,))
    box = []
    for axis, n in enumerate(array.shape):
        hit = np.flatnonzero(np.any(array, axis=tuple(a for a in range(array.ndim) if a != axis)))
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - int(margin[axis]), 0),
                         min(int(hit[-1]) + int(margin[axis]) + 1, n)))
    return tuple(box)


def _r(values) -> tuple[float, ...]:  # noqa: ANN001
    return tuple(round(float(v), 6) for v in values)
