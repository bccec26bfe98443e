"""A SEG's per-frame segment numbers, positions and pixels read straight from its bytes.

pydicom builds a Dataset for every element of the per-frame functional groups: ~0.5 s for a
SEG of 700 frames, most of a patient's SEG ingest. This reader walks those bytes and keeps the
two values a binary or fractional SEG needs per frame. It handles uncompressed explicit VR
little endian files whose orientation and pixel spacing are shared by all frames (what
highdicom and the synthesizer write) and answers None for anything else, which pydicom then
reads; a file that does not parse as expected also gives None, never a wrong answer.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_PER_FRAME = b"\x00\x52\x30\x92SQ\x00\x00"  # (5200,9230) PerFrameFunctionalGroupsSequence
_ITEM, _ITEM_END, _SEQ_END = 0xE000, 0xE00D, 0xE0DD
_POSITION, _SEGMENT = (0x0020, 0x0032), (0x0062, 0x000B)
_PER_FRAME_GEOMETRY = {(0x0020, 0x0037), (0x0028, 0x0030)}  # orientation, pixel spacing
_PIXEL_DATA = (0x7FE0, 0x0010)
_UNDEFINED = 0xFFFFFFFF


class _Unsupported(Exception):
    """The bytes are not what this reader handles; pydicom reads the file."""


def _element(buf: bytes, pos: int) -> tuple[tuple[int, int], bytes, int, int]:
    """(tag, VR, value length, value offset) of the element at ``pos``."""
    if pos + 8 > len(buf):
        raise _Unsupported("truncated")
    group, elem = struct.unpack_from("<HH", buf, pos)
    if group == 0xFFFE:
        return (group, elem), b"", struct.unpack_from("<I", buf, pos + 4)[0], pos + 8
    vr = buf[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        return (group, elem), vr, struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
    if not vr.isalpha():
        raise _Unsupported("not explicit VR")
    return (group, elem), vr, struct.unpack_from("<H", buf, pos + 6)[0], pos + 8


def _elements(buf: bytes, pos: int, end: int | None, found: dict) -> int:
    """Walk the elements of an item from ``pos`` to ``end`` (None: to the item delimiter),
    collecting the wanted values at any depth; returns the offset after the item."""
    while end is None or pos < end:
        tag, vr, length, value = _element(buf, pos)
        if tag == (0xFFFE, _ITEM_END):
            if end is not None:
                raise _Unsupported("item delimiter in a defined-length item")
            return value
        if vr == b"SQ":
            pos = _sequence(buf, value, length, found)
            continue
        if length == _UNDEFINED:
            raise _Unsupported(f"undefined length outside a sequence at {tag}")
        if tag in _PER_FRAME_GEOMETRY:
            raise _Unsupported("per-frame orientation or pixel spacing")
        if tag in (_POSITION, _SEGMENT):
            found.setdefault(tag, []).append(buf[value:value + length])
        pos = value + length
    if pos != end:
        raise _Unsupported("item overruns its length")
    return pos


def _sequence(buf: bytes, pos: int, length: int, found: dict) -> int:
    """Walk a sequence's items from ``pos``; returns the offset after the sequence."""
    end = None if length == _UNDEFINED else pos + length
    while end is None or pos < end:
        tag, _, item_length, value = _element(buf, pos)
        if tag == (0xFFFE, _SEQ_END) and end is None:
            return value
        if tag != (0xFFFE, _ITEM):
            raise _Unsupported(f"expected an item, found {tag}")
        pos = _elements(buf, value, None if item_length == _UNDEFINED else value + item_length,
                        found)
    if pos != end:
        raise _Unsupported("sequence overruns its length")
    return pos


def _per_frame(buf: bytes, start: int) -> tuple[list[tuple[int, np.ndarray]], int]:
    """(segment number, position) per frame item, and the offset after the sequence."""
    tag, _, length, pos = _element(buf, start)
    end = None if length == _UNDEFINED else pos + length
    frames = []
    while end is None or pos < end:
        tag, _, item_length, value = _element(buf, pos)
        if tag == (0xFFFE, _SEQ_END) and end is None:
            return frames, value
        if tag != (0xFFFE, _ITEM):
            raise _Unsupported(f"expected a frame item, found {tag}")
        found: dict = {}
        pos = _elements(buf, value, None if item_length == _UNDEFINED else value + item_length,
                        found)
        if len(found.get(_POSITION, ())) != 1 or len(found.get(_SEGMENT, ())) != 1:
            raise _Unsupported("a frame without exactly one position and segment number")
        segment = found[_SEGMENT][0]
        if len(segment) != 2:
            raise _Unsupported("segment number is not one US value")
        position = np.array([float(v) for v in
                             found[_POSITION][0].decode("ascii").strip(" \0").split("\\")])
        if position.shape != (3,):
            raise _Unsupported("image position is not 3 values")
        frames.append((struct.unpack("<H", segment)[0], position))
    if pos != end:
        raise _Unsupported("per-frame sequence overruns its length")
    return frames, pos


def _pixel_bytes(buf: bytes, pos: int) -> bytes:
    while pos < len(buf):
        tag, _, length, value = _element(buf, pos)
        if length == _UNDEFINED:
            raise _Unsupported("encapsulated or undefined-length element")
        if tag == _PIXEL_DATA:
            return buf[value:value + length]
        pos = value + length
    raise _Unsupported("no pixel data")


def seg_frame_values(path: Path, header: Dataset
                     ) -> tuple[list[tuple[int, np.ndarray]], np.ndarray] | None:
    """Per frame (segment number, ImagePositionPatient) and the frames' raw pixel values
    (n, rows, cols), or None when pydicom must read the file (see the module docstring)."""
    meta = getattr(header, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID", "")) != EXPLICIT_VR_LITTLE_ENDIAN:
        return None
    try:
        rows, cols = int(header.Rows), int(header.Columns)
        bits = int(header.BitsAllocated)
        n_frames = int(header.get("NumberOfFrames") or 0)
    except (AttributeError, TypeError, ValueError):
        return None
    if bits not in (1, 8) or int(header.get("SamplesPerPixel") or 1) != 1 or n_frames < 1:
        return None
    buf = Path(path).read_bytes()
    start = buf.find(_PER_FRAME)
    if start < 0:
        return None
    try:
        frames, after = _per_frame(buf, start)
        data = _pixel_bytes(buf, after)
    except (_Unsupported, struct.error, UnicodeDecodeError, ValueError):
        return None
    n = n_frames * rows * cols
    if len(frames) != n_frames:
        return None
    if bits == 1:
        if len(data) < (n + 7) // 8:
            return None
        pixels = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:n]
    else:
        if len(data) < n:
            return None
        pixels = np.frombuffer(data, np.uint8)[:n]
    return frames, pixels.reshape(n_frames, rows, cols)
