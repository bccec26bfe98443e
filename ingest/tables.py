"""Clinical, outcome, administration and calibration tables (CSV) with a YAML column mapping."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from theralake.ingest.calibration import CalibrationTable
from theralake.ingest.errors import IngestError
from theralake.ingest.radiopharm import Administration, canonical_nuclide, purpose_of

log = logging.getLogger(__name__)

TABLE_KINDS = ("clinical", "outcomes", "administrations", "calibration")
MAPPING_NAMES = ("mapping.yaml", "mapping.yml", "theralake_mapping.yaml")
#: Column names that suggest identifying data; such columns never enter the lake.
PHI_COLUMN = re.compile(r"(name|birth|dob|address|phone|mrn|accession|email|ssn)", re.I)
_TIME_UNITS_D = {"d": 1.0, "days": 1.0, "weeks": 7.0, "w": 7.0, "months": 30.4375, "m": 30.4375,
                 "years": 365.25, "y": 365.25}


@dataclass
class Mapping:
    """The column mapping: per table kind, its file, patient-id column and renames."""

    tables: dict[str, dict] = field(default_factory=dict)
    voi_names: dict[str, str] = field(default_factory=dict)
    source: Path | None = None

    @classmethod
    def load(cls, path: Path) -> Mapping:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise IngestError(path, f"unreadable mapping file ({exc})") from exc
        if not isinstance(data, dict):
            raise IngestError(path, "mapping file must be a YAML mapping")
        unknown = set(data) - set(TABLE_KINDS) - {"voi_names"}
        if unknown:
            raise IngestError(path, f"unknown mapping sections {sorted(unknown)}; "
                                    f"known: {', '.join(TABLE_KINDS)}, voi_names")
        return cls({k: v for k, v in data.items() if k in TABLE_KINDS},
                   dict(data.get("voi_names") or {}), path)

    def kind_of(self, csv: Path) -> str | None:
        for kind, spec in self.tables.items():
            if spec.get("file") and self.source and \
                    (self.source.parent / spec["file"]).resolve() == csv.resolve():
                return kind
        stem = csv.stem.lower()
        return next((k for k in TABLE_KINDS if stem.startswith(k)), None)

    def spec(self, kind: str) -> dict:
        return dict(self.tables.get(kind) or {})


def _read_csv(path: Path, spec: dict) -> pd.DataFrame:
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise IngestError(path, f"unreadable CSV ({exc})") from exc
    df = df.rename(columns=spec.get("rename") or {})
    pid = spec.get("patient_id", "PatientID")
    if pid not in df.columns and "patient_id" not in df.columns:
        raise IngestError(path, f"no patient id column {pid!r} (set patient_id in the mapping)")
    df = df.rename(columns={pid: "raw_patient_id"} if pid in df.columns
                   else {"patient_id": "raw_patient_id"})
    if df["raw_patient_id"].isna().any():
        raise IngestError(path, f"rows {list(df.index[df['raw_patient_id'].isna()] + 2)} "
                                "have no patient id")
    df["raw_patient_id"] = df["raw_patient_id"].astype(str).str.strip()
    dropped = [c for c in df.columns if c != "raw_patient_id" and PHI_COLUMN.search(c)]
    if dropped:
        log.warning("%s: columns %s look identifying and are not ingested", path, dropped)
    return df.drop(columns=dropped)


def read_clinical(path: Path, spec: dict) -> list[dict]:
    """Long rows (raw_patient_id, variable, value_num, value_text), one per cell."""
    df = _read_csv(path, spec)
    rows = []
    for _, rec in df.iterrows():
        for col in df.columns:
            if col == "raw_patient_id" or pd.isna(rec[col]):
                continue
            value = rec[col]
            num = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
            rows.append({"raw_patient_id": rec["raw_patient_id"], "variable": str(col),
                         "value_num": None if pd.isna(num) else float(num),
                         "value_text": None if not pd.isna(num) else str(value)})
    return rows


def read_outcomes(path: Path, spec: dict) -> list[dict]:
    """Rows (raw_patient_id, endpoint, event, time_d, value) from a wide outcome table.

    ``<endpoint>_time_<unit>`` with ``<endpoint>_event`` make a time-to-event endpoint (unit d,
    weeks, months or years, stored in days); any other numeric column is a binary or graded
    endpoint stored in ``value``.
    """
    df = _read_csv(path, spec)
    used: set[str] = {"raw_patient_id"}
    endpoints = []
    for col in df.columns:
        m = re.fullmatch(r"(.+)_time_([a-z]+)", col)
        if m and m.group(2) in _TIME_UNITS_D:
            ev = f"{m.group(1)}_event"
            if ev not in df.columns:
                raise IngestError(path, f"time column {col} without an event column {ev}")
            endpoints.append((m.group(1), col, ev, _TIME_UNITS_D[m.group(2)]))
            used |= {col, ev}
    rows = []
    for _, rec in df.iterrows():
        for name, tcol, ecol, factor in endpoints:
            if pd.isna(rec[tcol]):
                continue
            t = float(rec[tcol])
            if t < 0:
                raise IngestError(path, f"{tcol}: negative time {t}")
            rows.append({"raw_patient_id": rec["raw_patient_id"], "endpoint": name,
                         "event": bool(int(rec[ecol])), "time_d": t * factor, "value": None})
        for col in df.columns:
            if col in used or pd.isna(rec[col]):
                continue
            value = pd.to_numeric(pd.Series([rec[col]]), errors="coerce").iloc[0]
            if pd.isna(value):
                raise IngestError(path, f"column {col}: non-numeric outcome {rec[col]!r}")
            rows.append({"raw_patient_id": rec["raw_patient_id"], "endpoint": str(col),
                         "event": None, "time_d": None, "value": float(value)})
    return rows


def read_administrations(path: Path, spec: dict) -> list[Administration]:
    """Columns nuclide, activity_mbq, administration_datetime (ISO 8601), optional
    pharmaceutical, purpose and cycle."""
    df = _read_csv(path, spec)
    need = {"nuclide", "activity_mbq", "administration_datetime"} - set(df.columns)
    if need:
        raise IngestError(path, f"administrations table lacks columns {sorted(need)}")
    out = []
    for i, rec in df.iterrows():
        try:
            nuclide = canonical_nuclide(rec["nuclide"])
            when = datetime.fromisoformat(str(rec["administration_datetime"]))
            activity = float(rec["activity_mbq"])
        except ValueError as exc:
            raise IngestError(path, f"row {i + 2}: {exc}") from exc
        if not activity > 0:
            raise IngestError(path, f"row {i + 2}: activity_mbq must be positive")
        purpose = str(rec.get("purpose") or "") if "purpose" in df.columns and \
            pd.notna(rec.get("purpose")) else purpose_of(nuclide, activity)
        cycle = int(rec["cycle"]) if "cycle" in df.columns and pd.notna(rec["cycle"]) else None
        if cycle is not None and cycle < 1:
            raise IngestError(path, f"row {i + 2}: cycle {cycle}: cycles are numbered from 1 "
                                    "(leave it empty for a diagnostic scan before therapy)")
        pharma = str(rec["pharmaceutical"]) if "pharmaceutical" in df.columns and \
            pd.notna(rec.get("pharmaceutical")) else None
        out.append(Administration(rec["raw_patient_id"], nuclide, when.replace(tzinfo=None),
                                  activity, pharma, purpose, "csv", cycle))
    return out


def read_calibration(path: Path, spec: dict) -> CalibrationTable:
    return CalibrationTable.from_csv(path)
