"""RTSTRUCT contours rasterised onto the image grid they reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset

from theralake.ingest.errors import IngestError
from theralake.lake import Volume


@dataclass
class RoiContours:
    """The closed planar contours of one ROI (world mm, one (n, 3) array each)."""

    number: int
    name: str
    frame_of_reference_uid: str | None
    polygons: list[np.ndarray]


def rtstruct_rois(ds: Dataset, label: str) -> list[RoiContours]:
    """The ROIs of an RTSTRUCT that have closed planar contours."""
    if "StructureSetROISequence" not in ds or "ROIContourSequence" not in ds:
        raise IngestError(label, "RTSTRUCT without StructureSetROISequence/ROIContourSequence")
    names = {int(r.ROINumber): (str(r.ROIName), str(r.get("ReferencedFrameOfReferenceUID") or "")
                                or None) for r in ds.StructureSetROISequence}
    rois = []
    for item in ds.ROIContourSequence:
        number = int(item.ReferencedROINumber)
        polys = []
        for c in item.get("ContourSequence", []):
            if str(c.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
                continue
            pts = np.array([float(v) for v in c.ContourData], dtype=float).reshape(-1, 3)
            if len(pts) >= 3:
                polys.append(pts)
        if polys:
            name, frame = names.get(number, (f"roi_{number}", None))
            rois.append(RoiContours(number, name, frame, polys))
    return rois


def rasterise(polygons: list[np.ndarray], grid: Volume, label: str) -> np.ndarray:
    """Fill closed planar contours on a grid (voxel centres inside, even-odd rule for holes).

    Returns a boolean mask shaped like ``grid.array`` (z, y, x).

    Raises:
        IngestError: a contour not parallel to the grid's slices, or all contours outside it.
    """
    nz, ny, nx = grid.array.shape
    mask = np.zeros((nz, ny, nx), dtype=bool)
    inside_any = False
    for pts in polygons:
        ijk = grid.world_to_index(pts)
        k = ijk[:, 2]
        if np.ptp(k) > 0.05:
            raise IngestError(label, "contour not parallel to the image slices")
        kk = int(np.round(k.mean()))
        if not 0 <= kk < nz:
            continue
        i0, j0 = np.floor(ijk[:, :2].min(axis=0)).astype(int)
        i1, j1 = np.ceil(ijk[:, :2].max(axis=0)).astype(int)
        i0, j0, i1, j1 = max(i0, 0), max(j0, 0), min(i1, nx - 1), min(j1, ny - 1)
        if i0 > i1 or j0 > j1:
            continue
        ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1))
        inside = PolygonPath(ijk[:, :2]).contains_points(
            np.column_stack([ii.ravel(), jj.ravel()])).reshape(ii.shape)
        mask[kk, j0:j1 + 1, i0:i1 + 1] ^= inside
        inside_any = True
    if not inside_any:
        raise IngestError(label, "all contours lie outside the referenced image")
    return mask


def referenced_frame_of_reference(ds: Dataset) -> str | None:
    seq = ds.get("ReferencedFrameOfReferenceSequence")
    if seq:
        return str(seq[0].get("FrameOfReferenceUID") or "") or None
    return str(ds.get("FrameOfReferenceUID") or "") or None


def referenced_series_uids(ds: Dataset) -> list[str]:
    """SeriesInstanceUIDs the RTSTRUCT says its contours were drawn on."""
    out = []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in fr.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                out.append(str(series.SeriesInstanceUID))
    return out
