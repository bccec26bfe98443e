"""The demo: ingest the sample DICOM files that ship with pydicom into a lake."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake

SAMPLE_FILES = ("CT_small.dcm", "rtstruct.dcm", "rtdose.dcm", "liver_1frame.dcm")


def sample_dicom_folder(dest: Path) -> Path:
    """Copy pydicom's bundled CT, RTSTRUCT, RTDOSE and SEG test files into ``dest``."""
    from pydicom.data import get_testdata_file

    dest.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_FILES:
        shutil.copy(get_testdata_file(name), dest / name)
    return dest


def run_demo(lake_path: Path | None = None) -> None:
    from rich.console import Console

    console = Console()
    lake = Lake(lake_path or Path("demo_lake"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = sample_dicom_folder(Path(tmp) / "pydicom_samples")
        report = ingest(folder, lake, IngestOptions())
    console.print(report.summary())
    console.print(f"lake: {lake.path}")
    console.print({table: n for table, n in lake.counts().items() if n})
    console.print(lake.sql("SELECT patient_id, modality, kind, units, shape, spacing_mm, "
                           "origin_mm FROM images ORDER BY modality").to_string(index=False))
    console.print(lake.sql("SELECT patient_id, voi, source, voxel_count, round(volume_ml, 2) "
                           "AS volume_ml FROM vois").to_string(index=False))
    console.print('next: theralake sql "SELECT * FROM images" --lake ' + str(lake.path))
