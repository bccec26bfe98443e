"""Camera calibration for quantitative SPECT: sensitivity (cps/MBq) and, optionally, the
system resolution (FWHM, mm) that partial-volume correction needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from theralake.ingest.errors import IngestError
from theralake.ingest.radiopharm import canonical_nuclide


@dataclass
class CalibrationTable:
    """Sensitivity per camera and nuclide; ``default_cps_per_mbq`` applies to every camera."""

    rows: dict[tuple[str, str | None], float] = field(default_factory=dict)
    default_cps_per_mbq: float | None = None
    fwhm_mm: dict[tuple[str, str | None], float] = field(default_factory=dict)

    @classmethod
    def from_csv(cls, path: Path, default: float | None = None) -> CalibrationTable:
        """Columns ``camera, cps_per_mbq`` and optionally ``nuclide`` and ``fwhm_mm`` (the
        reconstructed SPECT's resolution)."""
        try:
            df = pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001
            raise IngestError(path, f"unreadable calibration table ({exc})") from exc
        missing = {"camera", "cps_per_mbq"} - set(df.columns)
        if missing:
            raise IngestError(path, f"calibration table lacks columns {sorted(missing)}")
        table = cls(default_cps_per_mbq=default)
        for i, row in df.iterrows():
            try:
                value = float(row["cps_per_mbq"])
                nuclide = canonical_nuclide(row["nuclide"]) if "nuclide" in df.columns and \
                    pd.notna(row["nuclide"]) else None
            except ValueError as exc:
                raise IngestError(path, f"row {i + 2}: {exc}") from exc
            if not value > 0:
                raise IngestError(path, f"row {i + 2}: cps_per_mbq must be positive")
            key = (str(row["camera"]).strip(), nuclide)
            table.rows[key] = value
            fwhm = row.get("fwhm_mm")
            if fwhm is not None and pd.notna(fwhm):
                if not float(fwhm) > 0:
                    raise IngestError(path, f"row {i + 2}: fwhm_mm must be positive")
                table.fwhm_mm[key] = float(fwhm)
        return table

    def merge(self, other: CalibrationTable) -> None:
        self.rows.update(other.rows)
        self.fwhm_mm.update(other.fwhm_mm)
        self.default_cps_per_mbq = self.default_cps_per_mbq or other.default_cps_per_mbq

    def lookup(self, camera_ids: list[str], nuclide: str | None) -> float | None:
        if self.default_cps_per_mbq:
            return self.default_cps_per_mbq
        return _find(self.rows, camera_ids, nuclide)

    def lookup_fwhm(self, camera_ids: list[str], nuclide: str | None) -> float | None:
        """The camera's SPECT resolution (FWHM, mm) for the nuclide, if the table has it."""
        return _find(self.fwhm_mm, camera_ids, nuclide)


def _find(table: dict[tuple[str, str | None], float], camera_ids: list[str],
          nuclide: str | None) -> float | None:
    for cam in camera_ids:
        for key in ((cam.strip(), nuclide), (cam.strip(), None)):
            if key in table:
                return table[key]
    return None
