"""Image planes (frames) from DICOM objects, and their stacking into a checked 3D volume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from theralake.ingest.errors import IngestError
from theralake.lake import Volume

#: Relative tolerance on slice gaps before a series counts as irregular.
GAP_TOLERANCE = 0.05


@dataclass
class Frame:
    """One image plane in patient coordinates (LPS, mm)."""

    position: np.ndarray  # ImagePositionPatient of the first pixel
    orientation: np.ndarray  # (row direction, column direction), shape (2, 3)
    spacing: tuple[float, float]  # PixelSpacing: (between rows, between columns)
    pixels: np.ndarray  # (rows, columns), real-world values
    source: Path
    time: float | None = None  # seconds after the series start, where frames differ


def _floats(value, n: int, what: str, source: Path) -> np.ndarray:  # noqa: ANN001
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise IngestError(source, f"unreadable {what}") from exc
    if out.size != n:
        raise IngestError(source, f"{what} has {out.size} values, expected {n}")
    return out


def _pixels(ds: Dataset, source: Path) -> np.ndarray:
    if "PixelData" not in ds:
        raise IngestError(source, "no pixel data (not an image object)")
    check_pixel_length(ds, source)
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many kinds
        raise IngestError(source, f"pixel data cannot be decoded ({exc})") from exc


def check_pixel_length(ds: Dataset, source: Path) -> None:
    """Refuse native (uncompressed) pixel data whose length is not Rows x Columns x frames x
    samples x bits: read anyway, its planes would be cut or shifted without a word.

    Raises:
        IngestError: naming the file, the length found and the length the header gives.
    """
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise IngestError(source, f"image geometry unreadable ({exc})") from exc
    expected = (rows * cols * frames * samples * bits + 7) // 8
    found = len(ds.PixelData)
    if found not in (expected, expected + expected % 2):
        raise IngestError(source, f"pixel data holds {found} bytes, but Rows {rows} x Columns "
                                  f"{cols} x {frames} frame(s) x {samples} sample(s) x {bits} "
                                  f"bits make {expected}: the header does not describe the image")


def _rescale(pixels: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    if slope == 1.0 and intercept == round(intercept):
        return pixels.astype(np.int32) + int(intercept)
    return pixels.astype(np.float64) * slope + intercept


def single_frame(ds: Dataset, source: Path, pixels: np.ndarray | None = None) -> Frame:
    """A classic one-plane image (CT, PET, MR): rescale slope/intercept applied (``pixels``:
    the stored values when already read, else decoded from ``ds``)."""
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if key not in ds:
            raise IngestError(source, f"missing {key}: geometry unknown")
    pixels = _pixels(ds, source) if pixels is None else pixels
    if pixels.ndim != 2:
        raise IngestError(source, f"expected one image plane, got pixel array {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return Frame(
        _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", source),
        _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", source).reshape(2, 3),
        tuple(_floats(ds.PixelSpacing, 2, "PixelSpacing", source)),
        _rescale(pixels, slope, intercept),
        source,
    )


def enhanced_frames(ds: Dataset, source: Path) -> list[Frame]:
    """Planes of an enhanced multi-frame image (per-frame functional groups)."""
    pixels = _pixels(ds, source)
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds \
        else Dataset()
    frames = []
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        def item(name: str, group=group, i=i) -> Dataset:  # noqa: ANN001
            seq = group.get(name) or shared.get(name)
            if not seq:
                raise IngestError(source, f"frame {i + 1}: missing {name}")
            return seq[0]
        pos = item("PlanePositionSequence").ImagePositionPatient
        ori = item("PlaneOrientationSequence").ImageOrientationPatient
        spacing = item("PixelMeasuresSequence").PixelSpacing
        slope, intercept = 1.0, 0.0
        if group.get("PixelValueTransformationSequence") or \
                shared.get("PixelValueTransformationSequence"):
            tr = item("PixelValueTransformationSequence")
            slope, intercept = float(tr.RescaleSlope), float(tr.RescaleIntercept)
        frames.append(Frame(
            _floats(pos, 3, "ImagePositionPatient", source),
            _floats(ori, 6, "ImageOrientationPatient", source).reshape(2, 3),
            tuple(_floats(spacing, 2, "PixelSpacing", source)),
            _rescale(pixels[i], slope, intercept), source))
    return frames


def nm_frames(ds: Dataset, source: Path) -> list[Frame]:
    """Slices of a reconstructed NM (SPECT) multi-frame object."""
    image_type = [str(t).upper() for t in ds.get("ImageType", [])]
    if image_type and not any(t in ("RECON TOMO", "RECON GATED TOMO") for t in image_type):
        raise IngestError(source, f"NM image type {'/'.join(image_type)} is not a "
                                  "reconstructed SPECT (planar NM is not supported)")
    det = ds.DetectorInformationSequence[0] if "DetectorInformationSequence" in ds else ds
    for key in ("ImagePositionPatient", "ImageOrientationPatient"):
        if key not in det:
            raise IngestError(source, f"NM without {key} in DetectorInformationSequence")
    spacing = ds.get("PixelSpacing") or det.get("PixelSpacing")
    if spacing is None:
        raise IngestError(source, "NM without PixelSpacing")
    step = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 0)
    if step <= 0:
        raise IngestError(source, "NM without SpacingBetweenSlices or SliceThickness")
    pixels = _pixels(ds, source)
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    pos0 = _floats(det.ImagePositionPatient, 3, "ImagePositionPatient", source)
    ori = _floats(det.ImageOrientationPatient, 6, "ImageOrientationPatient", source).reshape(2, 3)
    normal = np.cross(ori[0], ori[1])
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return [Frame(pos0 + k * step * normal, ori, tuple(_floats(spacing, 2, "PixelSpacing", source)),
                  _rescale(pixels[k], slope, intercept), source) for k in range(pixels.shape[0])]


def rtdose_frames(ds: Dataset, source: Path) -> list[Frame]:
    """Planes of an RTDOSE grid (GridFrameOffsetVector), scaled by DoseGridScaling."""
    pixels = _pixels(ds, source)
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    pos0 = _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", source)
    ori = _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", source).reshape(2, 3)
    normal = np.cross(ori[0], ori[1])
    offsets = np.array([float(v) for v in ds.get("GridFrameOffsetVector", [0.0])])
    if offsets.size != pixels.shape[0]:
        raise IngestError(source, f"GridFrameOffsetVector has {offsets.size} values for "
                                  f"{pixels.shape[0]} frames")
    if offsets[0] != 0:  # absolute positions along the normal (DICOM allows both forms)
        offsets = offsets - float(pos0 @ normal)
    scale = float(ds.get("DoseGridScaling", 1) or 1)
    spacing = tuple(_floats(ds.PixelSpacing, 2, "PixelSpacing", source))
    return [Frame(pos0 + off * normal, ori, spacing, pixels[k].astype(np.float64) * scale, source)
            for k, off in enumerate(offsets)]


def stack(frames: list[Frame], label: str, single_step: float = 1.0
          ) -> tuple[Volume, np.ndarray]:
    """Sort planes along their normal and build a volume, checking that they form a grid.

    Returns the volume and the order used (indices into ``frames``).

    Raises:
        IngestError: mixed orientations or sizes, duplicate positions, missing slices or
            inconsistent slice spacing.
    """
    if not frames:
        raise IngestError(label, "no image planes")
    ori = frames[0].orientation
    if any(not np.allclose(f.orientation, ori, atol=1e-4) for f in frames):
        raise IngestError(label, "slices with different orientations in one series")
    if any(f.pixels.shape != frames[0].pixels.shape for f in frames):
        raise IngestError(label, "slices of different sizes in one series")
    if any(not np.allclose(f.spacing, frames[0].spacing, rtol=1e-4) for f in frames):
        raise IngestError(label, "slices with different pixel spacing in one series")
    normal = np.cross(ori[0], ori[1])
    along = np.array([f.position @ normal for f in frames])
    order = np.argsort(along, kind="stable")
    along = along[order]
    if len(frames) > 1:
        gaps = np.diff(along)
        if np.any(gaps < 1e-3):
            raise IngestError(label, "two slices at the same position (duplicates or "
                                     "several acquisitions in one series)")
        step = float(np.median(gaps))
        bad = np.abs(gaps - step) > GAP_TOLERANCE * step
        if np.any(bad):
            ratio = gaps[bad] / step
            if np.all(np.abs(ratio - np.round(ratio)) < GAP_TOLERANCE) and np.all(ratio > 1.5):
                missing = int(np.sum(np.round(ratio) - 1))
                raise IngestError(label, f"{missing} missing slice(s): gaps of "
                                         f"{', '.join(f'{g:.2f}' for g in gaps[bad])} mm "
                                         f"where the spacing is {step:.2f} mm")
            raise IngestError(label, "inconsistent slice spacing: gaps from "
                                     f"{gaps.min():.3f} to {gaps.max():.3f} mm")
        # the in-plane origin must not drift between slices (a sheared stack)
        first = frames[order[0]].position
        drift = [frames[i].position - first - (frames[i].position - first) @ normal * normal
                 for i in order]
        if np.max(np.abs(drift)) > 0.01 * max(frames[0].spacing):
            raise IngestError(label, "slice positions are not along the slice normal "
                                     "(gantry tilt or sheared stack is not supported)")
    else:
        step = single_step
    array = np.stack([frames[i].pixels for i in order])
    direction = np.column_stack([ori[0], ori[1], normal])
    row_spacing, col_spacing = frames[0].spacing
    vol = Volume(array, (col_spacing, row_spacing, step), tuple(frames[order[0]].position),
                 direction)
    return vol, order
