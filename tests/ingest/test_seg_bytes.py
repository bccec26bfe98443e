"""The SEG byte reader gives exactly what pydicom gives, or steps aside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from synthetic_segs import write_both_segs

from theralake.ingest.dicom_files import read_full, read_header
from theralake.ingest.seg_bytes import seg_frame_values
from theralake.ingest.segmentations import read_seg, seg_frames


@pytest.fixture(scope="module")
def segs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("segs")
    fast, highdicom = write_both_segs(out)
    implicit = pydicom.dcmread(highdicom)
    implicit.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    implicit.save_as(out / "implicit.dcm", enforce_file_format=True)
    return {"fast writer": fast, "highdicom": highdicom, "implicit VR": out / "implicit.dcm"}


@pytest.mark.parametrize("kind", ["fast writer", "highdicom", "implicit VR"])
def test_frames_equal_pydicom(segs: dict[str, Path], kind: str) -> None:
    path = segs[kind]
    header = read_header(path)
    assert (seg_frame_values(path, header) is None) == (kind == "implicit VR")
    _, fast = read_seg(path, header, str(path))
    slow = seg_frames(read_full(path), str(path))
    assert len(fast) == len(slow) > 10
    for a, b in zip(fast, slow, strict=True):
        assert a["segment"] == b["segment"]
        assert np.array_equal(a["position"], b["position"])
        assert np.array_equal(a["orientation"], b["orientation"])
        assert a["measures"].PixelSpacing == b["measures"].PixelSpacing
        assert np.array_equal(a["pixels"], b["pixels"])
    assert any(f["pixels"].any() for f in fast)


def test_damaged_bytes_step_aside(segs: dict[str, Path], tmp_path: Path) -> None:
    path = segs["highdicom"]
    header = read_header(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])  # the pixel data is gone
    assert seg_frame_values(cut, header) is None
    start = data.find(b"\x00\x52\x30\x92SQ")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(data[: start + 12] + b"\x00\x00\x00\x00" + data[start + 16:])  # no item
    assert seg_frame_values(bad, header) is None
