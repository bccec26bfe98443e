"""Clinical, outcome, administration and calibration tables (CSV) with a YAML column mapping."""

from __future__ import annotations

import logging
import math
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
#: Column names that suggest identifying data; such columns never enter the lake (their
#: values are scrubbed from the patient's free text).
PHI_COLUMN = re.compile(r"(name|birth|dob|address|street|postcode|zip_?code|phone|mrn|"
                        r"accession|email|ssn|insurance|physician|institution)", re.I)
#: the keys a mapping section may have, with their types
SECTION_KEYS = {"file": str, "patient_id": str, "rename": dict, "text": list}
_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M",
                 "%Y-%m-%d %H:%M:%S", "%d.%m.%Y", "%d/%m/%Y", "%Y/%m/%d", "%d-%m-%Y", "%Y%m%d")


def parse_date(value: object, column: str = "") -> datetime | None:
    """A cell holding a calendar date (ISO 8601, d.m.Y, d/m/Y, or YYYYMMDD in a column named
    like a date); None when it is anything else."""
    text = str(value).strip()
    if re.fullmatch(r"\d{8}(\.0)?", text) and not re.search(r"dat|dt|day", column, re.I):
        return None
    for fmt in _DATE_FORMATS:
        try:
            when = datetime.strptime(text.removesuffix(".0") if fmt == "%Y%m%d" else text, fmt)
        except ValueError:
            continue
        return when if 1900 <= when.year <= 2100 else None
    return None
_TIME_UNITS_D = {"d": 1.0, "days": 1.0, "weeks": 7.0, "w": 7.0, "months": 30.4375, "m": 30.4375,
                 "years": 365.25, "y": 365.25}


@dataclass
class Mapping:
    """The column mapping: per table kind, its file, patient-id column and renames."""

    tables: dict[str, dict] = field(default_factory=dict)
    voi_names: dict[str, str] = field(default_factory=dict)
    source: Path | None = None

    problems: list[IngestError] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Mapping:
        """The mapping file; a malformed entry is a problem of the file (in ``problems``) and
        is left out, the rest is used.

        Raises:
            IngestError: the file cannot be read, or is not a YAML mapping.
        """
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise IngestError(path, f"unreadable mapping file ({exc})") from exc
        if not isinstance(data, dict):
            raise IngestError(path, "mapping file must be a YAML mapping")
        problems = []
        unknown = set(data) - set(TABLE_KINDS) - {"voi_names"}
        if unknown:
            problems.append(IngestError(path, f"unknown mapping sections {sorted(unknown)} "
                                              f"ignored; known: {', '.join(TABLE_KINDS)}, "
                                              "voi_names"))
        tables = {}
        for kind in TABLE_KINDS:
            if kind in data:
                tables[kind] = _section(data[kind], kind, path, problems)
        names = data.get("voi_names") or {}
        if not isinstance(names, dict):
            problems.append(IngestError(path, f"voi_names must map source names to VOI names, "
                                              f"got {names!r}; ignored"))
            names = {}
        return cls(tables, {str(k): str(v) for k, v in names.items()}, path, problems)

    def kind_of(self, csv: Path) -> str | None:
        for kind, spec in self.tables.items():
            if spec.get("file") and self.source and \
                    (self.source.parent / spec["file"]).resolve() == csv.resolve():
                return kind
        stem = csv.stem.lower()
        return next((k for k in TABLE_KINDS if stem.startswith(k)), None)

    def spec(self, kind: str) -> dict:
        return dict(self.tables.get(kind) or {})


def _section(spec: object, kind: str, path: Path, problems: list[IngestError]) -> dict:
    """A mapping section with its malformed entries left out (each one a problem)."""
    if isinstance(spec, str):
        spec = {"file": spec}
    if not isinstance(spec, dict):
        problems.append(IngestError(path, f"{kind}: expected a mapping such as "
                                          f"{{file: {kind}.csv}}, got {spec!r}; ignored"))
        return {}
    out = {}
    for key, value in spec.items():
        want = SECTION_KEYS.get(key)
        if want is None:
            problems.append(IngestError(path, f"{kind}.{key}: unknown key ignored; known: "
                                              f"{', '.join(SECTION_KEYS)}"))
        elif not isinstance(value, want) or (want is dict and not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items())) or (
                want is list and not all(isinstance(v, str) for v in value)):
            shape = {str: "a text", dict: "a mapping of column names",
                     list: "a list of column names"}[want]
            problems.append(IngestError(path, f"{kind}.{key}: expected {shape}, got {value!r}; "
                                              "ignored"))
        else:
            out[key] = value
    return out


def _read_csv(path: Path, spec: dict, problems: list[IngestError]) -> pd.DataFrame:
    """The table with its patient id column as ``raw_patient_id`` and the identifying
    columns dropped; a row without a patient id is a problem of the file and is left out."""
    df = _csv_with_ids(path, spec)
    blank = df["raw_patient_id"].isna() | (df["raw_patient_id"].astype(str).str.strip() == "")
    for i in df.index[blank]:
        problems.append(IngestError(path, f"row {i + 2}: no patient id; row not ingested"))
    df = df[~blank].copy()
    df["raw_patient_id"] = df["raw_patient_id"].astype(str).str.strip()
    dropped = [c for c in df.columns if c != "raw_patient_id" and PHI_COLUMN.search(c)]
    if dropped:
        log.warning("%s: columns %s look identifying and are not ingested", path, dropped)
    return df.drop(columns=dropped)


def _csv_with_ids(path: Path, spec: dict) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:  # noqa: BLE001
        raise IngestError(path, f"unreadable CSV ({exc})") from exc
    df = df.rename(columns=spec.get("rename") or {})
    pid = spec.get("patient_id", "PatientID")
    if pid not in df.columns and "patient_id" not in df.columns:
        raise IngestError(path, f"no patient id column {pid!r} (set patient_id in the mapping)")
    return df.rename(columns={pid: "raw_patient_id"} if pid in df.columns
                     else {"patient_id": "raw_patient_id"})


def read_identifiers(path: Path, spec: dict) -> dict[str, list[str]]:
    """Per patient, the values of the table's identifying columns (names, birth dates,
    addresses...): never ingested, they are scrubbed from that patient's free text."""
    df = _csv_with_ids(path, spec)
    df = df[df["raw_patient_id"].notna()]
    cols = [c for c in df.columns if c != "raw_patient_id" and PHI_COLUMN.search(c)]
    return {str(raw).strip(): [str(v) for v in g[cols].to_numpy().ravel() if pd.notna(v)]
            for raw, g in df.groupby("raw_patient_id")}


def _finite(text: object) -> float | None:
    """The cell as a finite number; None when it is not a number; infinite raises."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def read_clinical(path: Path, spec: dict, problems: list[IngestError],
                  warnings: list[str] | None = None) -> list[dict]:
    """Long rows (raw_patient_id, variable, value_num, value_text or value_date), one per cell.

    A text value is kept only in a column the mapping declares (``clinical.text``), for the
    scrubber; a date becomes ``value_date`` (converted to hours after the patient's reference
    when written). A non-finite number is a problem of the file; an undeclared text column is
    left out with a warning.
    """
    df = _read_csv(path, spec, problems)
    declared = set(spec.get("text") or [])
    undeclared: set[str] = set()
    rows = []
    for i, rec in df.iterrows():
        for col in df.columns:
            if col == "raw_patient_id" or pd.isna(rec[col]):
                continue
            value = rec[col]
            row = {"raw_patient_id": rec["raw_patient_id"], "variable": str(col),
                   "value_num": None, "value_text": None}
            try:
                num = _finite(value)
            except ValueError as exc:
                problems.append(IngestError(path, f"row {i + 2}, column {col}: {exc}; value "
                                                  "not ingested"))
                continue
            when = parse_date(value, str(col))
            if when is not None:
                row["value_date"] = when
            elif num is not None:
                row["value_num"] = num
            elif col in declared:
                row["value_text"] = str(value)
            else:
                undeclared.add(str(col))
                continue
            rows.append(row)
    if undeclared:
        message = (f"{path}: text columns {sorted(undeclared)} are not ingested; declare them "
                   "in the mapping (clinical: {text: [...]}) to keep them, scrubbed")
        log.warning("%s", message)
        if warnings is not None:
            warnings.append(message)
    return rows


def read_outcomes(path: Path, spec: dict, problems: list[IngestError]) -> list[dict]:
    """Rows (raw_patient_id, endpoint, event, time_d, value) from a wide outcome table.

    ``<endpoint>_time_<unit>`` with ``<endpoint>_event`` make a time-to-event endpoint (unit d,
    weeks, months or years, stored in days); any other numeric column is a binary or graded
    endpoint stored in ``value``.
    """
    df = _read_csv(path, spec, problems)
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
    for i, rec in df.iterrows():
        for name, tcol, ecol, factor in endpoints:
            if pd.isna(rec[tcol]):
                continue
            try:
                t, event = _finite(rec[tcol]), _finite(rec[ecol]) if pd.notna(rec[ecol]) \
                    else None
                if t is None or t < 0:
                    raise ValueError(f"{tcol} {rec[tcol]!r} is not a time >= 0")
                if event not in (0.0, 1.0):
                    raise ValueError(f"{ecol} {rec[ecol]!r} is not 0 or 1")
            except ValueError as exc:
                problems.append(IngestError(path, f"row {i + 2}: {exc}; {name} not ingested"))
                continue
            rows.append({"raw_patient_id": rec["raw_patient_id"], "endpoint": name,
                         "event": bool(event), "time_d": t * factor, "value": None})
        for col in df.columns:
            if col in used or pd.isna(rec[col]):
                continue
            try:
                value = _finite(rec[col])
            except ValueError:
                value = None
            if value is None:
                problems.append(IngestError(path, f"row {i + 2}, column {col}: outcome "
                                                  f"{rec[col]!r} is not a finite number; not "
                                                  "ingested"))
                continue
            rows.append({"raw_patient_id": rec["raw_patient_id"], "endpoint": str(col),
                         "event": None, "time_d": None, "value": value})
    return rows


def read_administrations(path: Path, spec: dict,
                         problems: list[IngestError]) -> list[Administration]:
    """Columns nuclide, activity_mbq, administration_datetime (ISO 8601), optional
    pharmaceutical, purpose and cycle; a malformed row is a problem of the file and is left
    out."""
    df = _read_csv(path, spec, problems)
    need = {"nuclide", "activity_mbq", "administration_datetime"} - set(df.columns)
    if need:
        raise IngestError(path, f"administrations table lacks columns {sorted(need)}")
    out = []
    for i, rec in df.iterrows():
        try:
            out.append(_administration(rec, df.columns))
        except ValueError as exc:
            problems.append(IngestError(path, f"row {i + 2}: {exc}; row not ingested"))
    return out


def _administration(rec: pd.Series, columns: pd.Index) -> Administration:
    def cell(col: str) -> str | None:
        return str(rec[col]) if col in columns and pd.notna(rec[col]) else None

    nuclide = canonical_nuclide(cell("nuclide") or "")
    when = datetime.fromisoformat(cell("administration_datetime") or "")
    activity = _finite(cell("activity_mbq") or "")
    if activity is None or not activity > 0:
        raise ValueError(f"activity_mbq {cell('activity_mbq')!r} must be a positive number")
    cycle = _finite(cell("cycle")) if cell("cycle") else None
    if cycle is not None and (cycle < 1 or cycle != int(cycle)):
        raise ValueError(f"cycle {cell('cycle')}: cycles are numbered from 1 (leave it empty "
                         "for a diagnostic scan before therapy)")
    return Administration(rec["raw_patient_id"], nuclide, when.replace(tzinfo=None), activity,
                          cell("pharmaceutical"), cell("purpose") or purpose_of(nuclide, activity),
                          "csv", None if cycle is None else int(cycle))


def read_calibration(path: Path, spec: dict,
                     problems: list[IngestError] | None = None) -> CalibrationTable:
    return CalibrationTable.from_csv(path)
