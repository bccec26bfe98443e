"""DICOM SEG objects to one boolean mask per segment on an image grid."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from theralake.ingest.dicom_files import read_full
from theralake.ingest.errors import IngestError
from theralake.ingest.seg_bytes import seg_frame_values
from theralake.lake import Volume

log = logging.getLogger(__name__)


def _item(group: Dataset, shared: Dataset, name: str, label: str, i: int) -> Dataset:
    seq = group.get(name) or shared.get(name)
    if not seq:
        raise IngestError(label, f"SEG frame {i + 1}: missing {name}")
    return seq[0]


def _threshold(ds: Dataset) -> float:
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        return 0.5 * float(ds.get("MaximumFractionalValue", 1) or 1)
    return 0.5


def _shared(ds: Dataset) -> Dataset:
    return ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds \
        else Dataset()


def _frame(segment: int, group: Dataset, shared: Dataset, position, pixels: np.ndarray,  # noqa: ANN001
           label: str, i: int) -> dict:
    return {
        "segment": segment,
        "position": np.asarray(position, dtype=float),
        "orientation": np.array([float(v) for v in _item(
            group, shared, "PlaneOrientationSequence", label, i).ImageOrientationPatient
        ]).reshape(2, 3),
        "measures": _item(group, shared, "PixelMeasuresSequence", label, i),
        "pixels": pixels,
    }


def seg_frames(ds: Dataset, label: str) -> list[dict]:
    """Per frame: segment number, position, orientation, pixel spacing, boolean pixels."""
    if "SegmentSequence" not in ds or "PerFrameFunctionalGroupsSequence" not in ds:
        raise IngestError(label, "SEG without SegmentSequence or per-frame functional groups")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        raise IngestError(label, f"SEG pixel data cannot be decoded ({exc})") from exc
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    threshold, shared = _threshold(ds), _shared(ds)
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    if len(groups) != pixels.shape[0]:
        if ds.get("NumberOfFrames") not in (None, ""):
            raise IngestError(label, f"SEG has {pixels.shape[0]} frames but "
                                     f"{len(groups)} per-frame descriptions")
        log.warning("%s: NumberOfFrames absent; using the first %d of %d frame descriptions",
                    label, pixels.shape[0], len(groups))
        groups = groups[: pixels.shape[0]]
    out = []
    for i, group in enumerate(groups):
        seg_id = _item(group, shared, "SegmentIdentificationSequence", label, i)
        position = [float(v) for v in _item(
            group, shared, "PlanePositionSequence", label, i).ImagePositionPatient]
        out.append(_frame(int(seg_id.ReferencedSegmentNumber), group, shared, position,
                          pixels[i] > threshold, label, i))
    return out


def read_seg(path: Path, header: Dataset, label: str) -> tuple[Dataset, list[dict]]:
    """A SEG file's data set and frames (:func:`seg_frames`); the per-frame groups and pixels
    are read from the bytes when :func:`seg_frame_values` can, and the data set is then the
    header (all but the per-frame groups and pixels)."""
    fast = seg_frame_values(path, header) if "SegmentSequence" in header else None
    if fast is None:
        ds = read_full(path)
        return ds, seg_frames(ds, label)
    values, pixels = fast
    threshold, shared, none = _threshold(header), _shared(header), Dataset()
    return header, [_frame(segment, none, shared, position, pixels[i] > threshold, label, i)
                    for i, (segment, position) in enumerate(values)]


def segment_labels(ds: Dataset) -> dict[int, str]:
    return {int(s.SegmentNumber): str(s.get("SegmentLabel") or s.get("SegmentDescription")
                                      or f"segment_{int(s.SegmentNumber)}")
            for s in ds.SegmentSequence}


def own_grid(frames: list[dict], label: str) -> Volume:
    """The grid the SEG frames span, when the image they reference is not available."""
    ori = frames[0]["orientation"]
    normal = np.cross(ori[0], ori[1])
    along = np.array([f["position"] @ normal for f in frames])
    m = frames[0]["measures"]
    step = float(m.get("SpacingBetweenSlices") or 0)
    if step <= 0:
        gaps = np.diff(np.unique(np.round(along, 3)))
        step = float(gaps.min()) if gaps.size else float(m.get("SliceThickness") or 1.0)
    n = int(round((along.max() - along.min()) / step)) + 1
    first = frames[int(np.argmin(along))]["position"]
    rows, cols = frames[0]["pixels"].shape
    row_sp, col_sp = (float(v) for v in m.PixelSpacing)
    grid = np.zeros((n, rows, cols), dtype=np.uint8)
    if n > 4096:
        raise IngestError(label, "SEG frames span an implausible number of slices")
    return Volume(grid, (col_sp, row_sp, step), tuple(first),
                  np.column_stack([ori[0], ori[1], normal]))


def paint(frames: list[dict], segment: int, grid: Volume, label: str) -> np.ndarray:
    """Boolean mask on ``grid`` of one segment (nearest voxel of every set SEG pixel)."""
    nz, ny, nx = grid.array.shape
    mask = np.zeros((nz, ny, nx), dtype=bool)
    hit = False
    for f in frames:
        if f["segment"] != segment or not f["pixels"].any():
            continue
        r, c = np.nonzero(f["pixels"])
        row_sp, col_sp = (float(v) for v in f["measures"].PixelSpacing)
        world = (f["position"] + np.outer(c * col_sp, f["orientation"][0])
                 + np.outer(r * row_sp, f["orientation"][1]))
        ijk = np.rint(grid.world_to_index(world)).astype(int)
        ok = ((ijk >= 0) & (ijk < np.array([nx, ny, nz]))).all(axis=1)
        if ok.any():
            hit = True
            mask[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]] = True
    if not hit:
        raise IngestError(label, f"segment {segment} lies outside the referenced image")
    return mask


def referenced_series_uids(ds: Dataset) -> list[str]:
    return [str(s.SeriesInstanceUID) for s in ds.get("ReferencedSeriesSequence", [])]
