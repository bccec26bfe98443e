"""Fast byte-level DICOM writing (explicit VR little endian) for many similar files.

pydicom's writer spends milliseconds per file re-encoding identical headers; a series of
hundreds of slices (and a SEG with hundreds of per-frame items) is dominated by that. Here
the constant part of a header is encoded once with pydicom and reused; only the few
elements that change are encoded per file. Output is standard Part 10.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

PREAMBLE = b"\x00" * 128 + b"DICM"
ITEM_START = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _fp() -> DicomBytesIO:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    return fp


_STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI", "PN", "LT"}
_BINARY_VRS = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i", "FL": "<f", "FD": "<d"}


def _header(tag: int, vr: str, length: int) -> bytes:
    return (struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
            + struct.pack("<H", length))


def encode_element(tag: int, vr: str, value: object) -> bytes:
    """One data element, explicit VR little endian (fast path for simple VRs)."""
    if vr in _STRING_VRS:
        vals = value if isinstance(value, (list, tuple)) else [value]
        raw = "\\".join(str(v) for v in vals).encode("ascii")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        return _header(tag, vr, len(raw)) + raw
    if vr in _BINARY_VRS:
        vals = value if isinstance(value, (list, tuple)) else [value]
        raw = struct.pack("<" + _BINARY_VRS[vr][1] * len(vals), *vals)
        return _header(tag, vr, len(raw)) + raw
    fp = _fp()
    write_data_element(fp, DataElement(tag, vr, value))
    return fp.getvalue()


def encode_dataset(ds: Dataset) -> bytes:
    """A dataset's elements (no preamble, no meta), explicit VR little endian."""
    fp = _fp()
    write_dataset(fp, ds)
    return fp.getvalue()


def sequence(tag: int, items: list[bytes]) -> bytes:
    """A sequence of undefined length from already encoded item contents."""
    t = tag.to_bytes(4, "big")
    head = t[1::-1] + t[3:1:-1] + b"SQ\x00\x00\xff\xff\xff\xff"
    return head + b"".join(ITEM_START + it + ITEM_END for it in items) + SEQ_END


def pixel_element(data: bytes, vr: str = "OW") -> bytes:
    """Pixel Data (7FE0,0010) with an even length."""
    if len(data) % 2:
        data += b"\x00"
    return b"\xe0\x7f\x10\x00" + vr.encode() + b"\x00\x00" + len(data).to_bytes(4, "little") + data


def file_meta(sop_class: str, sop_instance: str) -> bytes:
    """Part 10 file meta information group."""
    body = b"".join([
        encode_element(0x00020001, "OB", b"\x00\x01"),
        encode_element(0x00020002, "UI", sop_class),
        encode_element(0x00020003, "UI", sop_instance),
        encode_element(0x00020010, "UI", ExplicitVRLittleEndian),
        encode_element(0x00020012, "UI", PYDICOM_IMPLEMENTATION_UID),
    ])
    return encode_element(0x00020000, "UL", len(body)) + body


class SeriesWriter:
    """Writes many files that share a header and differ in a few elements.

    Args:
        base: dataset with the shared elements (no SOPInstanceUID, no PixelData).
    """

    def __init__(self, base: Dataset) -> None:
        self.sop_class = str(base.SOPClassUID)
        self.const: dict[int, bytes] = {}
        for elem in base:
            ds = Dataset()
            ds.add(elem)
            self.const[int(elem.tag)] = encode_dataset(ds)

    def write(self, path: Path, sop_instance: str, varying: dict[int, tuple[str, object]],
              pixels: bytes, pixel_vr: str = "OW") -> None:
        """Write one file with its own SOP Instance UID, varying elements and pixels."""
        parts = dict(self.const)
        parts[0x00080018] = encode_element(0x00080018, "UI", sop_instance)
        for tag, (vr, value) in varying.items():
            parts[tag] = encode_element(tag, vr, value)
        body = b"".join(parts[t] for t in sorted(parts))
        with open(path, "wb") as f:
            f.write(PREAMBLE)
            f.write(file_meta(self.sop_class, sop_instance))
            f.write(body)
            f.write(pixel_element(pixels, pixel_vr))
