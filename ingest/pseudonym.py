"""Pseudonymisation: keyed hashes for identifiers and a keyed per-patient date shift."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path

log = logging.getLogger(__name__)

KEY_ENV = "THERALAKE_PSEUDONYM_KEY"
KEY_FILE_ENV = "THERALAKE_KEY_FILE"
_MAX_SHIFT_DAYS = 3650


def default_key_file() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV, Path.home() / ".theralake" / "pseudonym.key"))


class Pseudonymizer:
    """Maps identifiers to keyed hashes (HMAC-SHA256) so no identifier enters the lake.

    The key comes from ``$THERALAKE_PSEUDONYM_KEY``, else from a key file
    (``$THERALAKE_KEY_FILE`` or ``~/.theralake/pseudonym.key``), created on first use with
    a warning. The same key always gives the same pseudonyms; keep it secret and backed up.
    """

    def __init__(self, key: bytes | str | None = None, key_file: Path | None = None):
        if key is None:
            key = os.environ.get(KEY_ENV) or self._key_from_file(key_file or default_key_file())
        self._key = key.encode() if isinstance(key, str) else key

    @staticmethod
    def _key_from_file(path: Path) -> str:
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
        log.warning("created a new pseudonymisation key at %s: keep it secret and back it up; "
                    "without it the same patients get new ids", path)
        return key

    def _digest(self, purpose: str, value: str) -> str:
        message = f"{purpose}:{value.strip()}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def patient_id(self, raw_id: str) -> str:
        """The lake's patient_id for a source PatientID."""
        if not str(raw_id).strip():
            raise ValueError("empty PatientID")
        return "P" + self._digest("patient", str(raw_id))[:15]

    def uid(self, raw_uid: str | None) -> str | None:
        """A keyed hash of a DICOM UID (series, frame of reference)."""
        return None if not raw_uid else self._digest("uid", str(raw_uid))[:32]

    def date_shift(self, raw_id: str) -> timedelta:
        """A secret per-patient shift applied to the one stored reference time."""
        days = int(self._digest("dateshift", str(raw_id))[:8], 16) % _MAX_SHIFT_DAYS
        return timedelta(days=days + 365)

    def shifted(self, raw_id: str, when: datetime) -> datetime:
        return when - self.date_shift(raw_id)

    def unshifted(self, raw_id: str, when: datetime) -> datetime:
        return when + self.date_shift(raw_id)


#: Header keywords whose values identify a person, place or day (never stored in free text).
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "StationName", "DeviceSerialNumber", "StudyDate", "SeriesDate", "AcquisitionDate",
    "ContentDate", "StructureSetDate",
)
_DATE_LIKE = re.compile(r"\b(?:19|20)\d{2}(?:[-./]?)(?:0[1-9]|1[0-2])(?:[-./]?)"
                        r"(?:0[1-9]|[12]\d|3[01])\b")
REMOVED = "[removed]"


def identifying_values(ds: object) -> list[str]:
    """The identifying strings of a DICOM data set (names split into their components)."""
    out: set[str] = set()
    for key in IDENTIFYING_KEYWORDS:
        value = ds.get(key) if hasattr(ds, "get") else None  # type: ignore[attr-defined]
        if value in (None, ""):
            continue
        values = value if isinstance(value, (list, tuple)) or type(value).__name__ == \
            "MultiValue" else [value]
        for v in values:
            text = str(v).strip()
            if not text:
                continue
            out.add(text)
            out.update(p.strip() for p in re.split(r"[\^\s,]+", text) if len(p.strip()) > 2)
    return sorted(out, key=len, reverse=True)


def scrub_text(text: str | None, identifiers: list[str] | tuple[str, ...] = ()) -> str | None:
    """Free text (descriptions, ROI names) with identifying values and dates removed."""
    if text is None:
        return None
    out = str(text)
    for ident in identifiers:
        if ident and len(ident) > 2:
            out = re.sub(re.escape(ident), REMOVED, out, flags=re.I)
    out = _DATE_LIKE.sub(REMOVED, out)
    return out.strip() or None
