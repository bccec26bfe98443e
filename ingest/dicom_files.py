"""Finding DICOM files, reading their headers and grouping them into series."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

from theralake.ingest.errors import IngestError

log = logging.getLogger(__name__)

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}
#: a header ends before the per-frame functional groups (geometry of each frame, thousands of
#: items in a SEG: read with the pixels) and the pixel data
HEADER_END_TAG = 0x52009230


def _header_end(tag, vr, length) -> bool:  # noqa: ANN001 - pydicom's stop_when signature
    return tag >= HEADER_END_TAG


def _read_header(path: Path, force: bool) -> Dataset:
    with open(path, "rb") as fp:
        return read_partial(fp, stop_when=_header_end, force=force)


@dataclass
class Series:
    """The files of one DICOM series (one SeriesInstanceUID)."""

    uid: str
    modality: str
    headers: list[tuple[Path, Dataset]] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        return self.headers[0][1]

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self.headers]

    @property
    def label(self) -> str:
        """How errors name the series: its folder, or its single file."""
        if len(self.headers) == 1:
            return str(self.headers[0][0])
        parents = {p.parent for p in self.paths}
        where = parents.pop() if len(parents) == 1 else self.paths[0]
        return f"{where} ({self.modality} series, {len(self.headers)} files)"


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file, None for a file that is clearly not DICOM.

    Raises:
        IngestError: a file that claims to be DICOM (suffix or preamble) but is unreadable.
    """
    try:
        ds = _read_header(path, force=False)
        if "SOPClassUID" not in ds and "Modality" not in ds:  # cut off after the file meta
            raise IngestError(path, "damaged or truncated DICOM file (the data set has no "
                                    "SOPClassUID and no Modality)")
        return ds
    except IngestError:
        raise
    except InvalidDicomError:
        pass  # no preamble: try to read it as a bare data set below
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on damaged files
        raise IngestError(path, f"damaged or truncated DICOM file ({exc})") from exc
    try:
        ds = _read_header(path, force=True)
        if "SOPClassUID" in ds or "Modality" in ds:
            return ds
    except Exception as exc:  # noqa: BLE001
        if path.suffix.lower() in {".dcm", ".dicom"}:
            raise IngestError(path, f"damaged or truncated DICOM file ({exc})") from exc
        return None
    if path.suffix.lower() in {".dcm", ".dicom"}:
        raise IngestError(path, "not a DICOM file (no DICOM header found)")
    return None


def read_full(path: Path) -> Dataset:
    """The whole data set, pixels included."""
    try:
        ds = pydicom.dcmread(path, force=True)
        _ = ds.PixelData if "PixelData" in ds else None
        return ds
    except Exception as exc:  # noqa: BLE001
        raise IngestError(path, f"damaged or truncated DICOM file ({exc})") from exc


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
_LITTLE_ENDIAN = {"1.2.840.10008.1.2.1": True, "1.2.840.10008.1.2": False}  # UID: explicit VR


def plane_pixels(path: Path, header: Dataset) -> np.ndarray | None:
    """The pixels of a one-plane, uncompressed little-endian file, read from its end with the
    geometry its header gives; None when the file is anything else (compressed, several
    frames, bits stored below bits allocated, or elements after the pixel data), for pydicom to
    read. The element header in front of the bytes is checked, so a wrong guess cannot pass."""
    meta = getattr(header, "file_meta", None)
    explicit = _LITTLE_ENDIAN.get(str(meta.get("TransferSyntaxUID", "")) if meta else "")
    try:
        rows, cols = int(header.Rows), int(header.Columns)
        bits, stored = int(header.BitsAllocated), int(header.get("BitsStored") or 0)
        frames = int(header.get("NumberOfFrames") or 1)
        samples = int(header.get("SamplesPerPixel") or 1)
        signed = int(header.get("PixelRepresentation") or 0) == 1
    except (AttributeError, TypeError, ValueError):
        return None
    if explicit is None or bits not in (8, 16, 32) or stored != bits or frames != 1 \
            or samples != 1:
        return None
    n = rows * cols * bits // 8
    head = 12 if explicit else 8
    with open(path, "rb") as fp:
        size = fp.seek(0, 2)
        if size < n + head:
            return None
        fp.seek(size - n - head)
        element, data = fp.read(head), fp.read(n)
    length = element[8:12] if explicit else element[4:8]
    if element[:4] != _PIXEL_DATA_TAG or int.from_bytes(length, "little") != n or \
            (explicit and (element[4:6] not in (b"OW", b"OB") or element[6:8] != b"\0\0")):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    return np.frombuffer(data, dtype).reshape(rows, cols)


def group_series(headers: list[tuple[Path, Dataset]]) -> list[Series]:
    """Group headers by SeriesInstanceUID (files without one are their own series)."""
    groups: dict[str, Series] = {}
    for path, ds in headers:
        uid = str(ds.get("SeriesInstanceUID") or f"nouid:{path}")
        modality = str(ds.get("Modality") or "").upper()
        series = groups.setdefault(uid, Series(uid, modality))
        series.headers.append((path, ds))
    return list(groups.values())


def parse_datetime(date: str | None, time: str | None) -> datetime | None:
    """A DICOM DA + TM pair to a naive datetime (None when absent)."""
    if not date:
        return None
    text = str(date).strip() + (str(time).strip() if time else "")
    return parse_dt(text)


def parse_dt(text: str | None) -> datetime | None:
    """A DICOM DT value (YYYYMMDDHHMMSS.FFFFFF, offsets ignored) to a naive datetime."""
    if not text:
        return None
    text = str(text).strip().split("+")[0].split("-")[0]
    main, _, frac = text.partition(".")
    fmt = "%Y%m%d%H%M%S"[: {8: 6, 10: 8, 12: 10, 14: 12}.get(len(main), 0)]
    if not fmt:
        raise ValueError(f"unreadable DICOM date/time {text!r}")
    value = datetime.strptime(main, fmt)
    if frac:
        value = value.replace(microsecond=int((frac + "000000")[:6]))
    return value


def acquisition_datetime(ds: Dataset) -> datetime | None:
    """When an image was acquired: AcquisitionDateTime, Acquisition, Series, Content."""
    if ds.get("AcquisitionDateTime"):
        return parse_dt(ds.AcquisitionDateTime)
    for d, t in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"),
                 ("ContentDate", "ContentTime"), ("StudyDate", "StudyTime")):
        if ds.get(d):
            return parse_datetime(ds.get(d), ds.get(t))
    return None


def series_datetime(ds: Dataset) -> datetime | None:
    if ds.get("SeriesDate"):
        return parse_datetime(ds.SeriesDate, ds.get("SeriesTime"))
    return acquisition_datetime(ds)


def scan(roots: Path | Sequence[Path], on_file: Callable[[int], None] | None = None
         ) -> tuple[list[tuple[Path, Dataset]], list[IngestError], list[Path]]:
    """Recursively find DICOM files under files and folders; returns (headers, errors, other
    files).

    ``on_file(total)`` is called once per file examined (for a progress bar).
    """
    headers: list[tuple[Path, Dataset]] = []
    errors: list[IngestError] = []
    others: list[Path] = []
    files = [f for root in ([roots] if isinstance(roots, Path) else roots)
             for f in ([root] if root.is_file() else
                       sorted(p for p in root.rglob("*") if p.is_file()))]
    for path in files:
        if on_file is not None:
            on_file(len(files))
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz", ".json", ".csv", ".yaml", ".yml")):
            others.append(path)
            continue
        if path.suffix.lower() not in DICOM_SUFFIXES and not path.suffix.lower()[1:].isdigit():
            continue
        try:
            ds = read_header(path)
        except IngestError as exc:
            errors.append(exc)
            continue
        if ds is not None:
            headers.append((path, ds))
    return headers, errors, others
