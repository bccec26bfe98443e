"""Pixels of plain one-plane files read from the end of the file equal pydicom's, and any file
that is not plain goes back to pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from theralake.ingest.dicom_files import plane_pixels, read_header


def _write(path: Path, syntax=ExplicitVRLittleEndian, bits_stored=16, signed=True,
           trailer=False) -> np.ndarray:
    rng = np.random.default_rng(1)
    pixels = rng.integers(-1024 if signed else 0, 3000, (12, 10)).astype(
        np.int16 if signed else np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, generate_uid(), "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation, ds.SamplesPerPixel = int(signed), 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels.tobytes()
    if trailer:
        ds.add_new(0xFFFCFFFC, "OB", b"\0\0")  # data set trailing padding after the pixels
    ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True,
               enforce_file_format=True)
    return pixels


@pytest.mark.parametrize("syntax, signed", [(ExplicitVRLittleEndian, True),
                                            (ExplicitVRLittleEndian, False),
                                            (ImplicitVRLittleEndian, True)])
def test_plain_planes_equal_pydicom(tmp_path, syntax, signed):
    path = tmp_path / "ct.dcm"
    pixels = _write(path, syntax, signed=signed)
    fast = plane_pixels(path, read_header(path))
    assert fast is not None and fast.dtype == pixels.dtype
    assert np.array_equal(fast, pixels)
    assert np.array_equal(fast, pydicom.dcmread(path).pixel_array)


def test_anything_else_goes_to_pydicom(tmp_path):
    _write(tmp_path / "padded.dcm", trailer=True)
    _write(tmp_path / "12bit.dcm", bits_stored=12)
    for name in ("padded.dcm", "12bit.dcm"):
        assert plane_pixels(tmp_path / name, read_header(tmp_path / name)) is None, name
    header = read_header(tmp_path / "padded.dcm")
    header.file_meta.TransferSyntaxUID = RLELossless  # compressed: never guessed
    assert plane_pixels(tmp_path / "padded.dcm", header) is None
