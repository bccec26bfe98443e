"""The one scrubber of free text: whatever string a source gives (descriptions, ROI names,
pharmaceutical names, clinical text) loses the patient's own names and identifiers, collected
from every source the patient has, and anything shaped like a date, an address, a postcode,
an e-mail, a phone number or an identifier number, before it enters the lake."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

REMOVED = "[removed]"

#: Header keywords whose values identify a person, place or day (never stored in free text).
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "ReferringPhysicianName", "PerformingPhysicianName",
    "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "StationName", "DeviceSerialNumber", "StudyDate", "SeriesDate", "AcquisitionDate",
    "ContentDate", "StructureSetDate", "PatientBirthTime", "MilitaryRank", "BranchOfService",
    "MedicalRecordLocator", "IssuerOfPatientID", "RegionOfResidence", "CountryOfResidence",
)

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
           r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?|januar|februar|"
           r"märz|mai|juni|juli|oktober|dezember)")
_STREET = (r"(?:street|st|road|rd|avenue|ave|lane|ln|drive|dr|way|close|court|ct|place|pl|"
           r"boulevard|blvd|square|sq|terrace|crescent|gardens|hill|row|walk|parkway)")
_CARE = (r"(?:hospital|clinic|clinics|infirmary|medical cent(?:er|re)|health cent(?:er|re)|"
         r"klinikum|klinik|krankenhaus|universitätsklinikum|spital|ziekenhuis|hôpital|"
         r"practice|surgery)")
#: (what, pattern) in the order they are applied: the more specific first
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("e-mail", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("date", re.compile(r"\b(?:19|20)\d{2}[-./](?:0?[1-9]|1[0-2])[-./](?:0?[1-9]|[12]\d|3[01])"
                        r"(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?\b")),
    ("date", re.compile(r"\b(?:0?[1-9]|[12]\d|3[01])[-./](?:0?[1-9]|1[0-2])[-./](?:19|20)?\d{2}"
                        r"\b")),
    ("date", re.compile(r"\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b")),
    ("date", re.compile(rf"\b(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?\.?\s+{_MONTHS}\.?,?\s+"
                        r"(?:19|20)?\d{2}\b", re.I)),
    ("date", re.compile(rf"\b{_MONTHS}\.?\s+(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?,?\s+"
                        r"(?:19|20)\d{2}\b", re.I)),
    ("date", re.compile(rf"\b{_MONTHS}\.?\s+(?:19|20)\d{{2}}\b", re.I)),
    ("address", re.compile(rf"\b\d{{1,5}}[a-z]?,?\s+(?:[A-Z][\w'.-]*\s+){{1,4}}{_STREET}\b\.?",
                           re.I)),
    ("address", re.compile(r"\b[A-ZÄÖÜ][\wäöüß-]*(?:straße|strasse|str\.|weg|gasse|platz|"
                           r"allee|ring|damm)\s*\d{1,4}[a-z]?\b", re.I)),
    ("postcode", re.compile(r"\b[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2}\b")),
    ("postcode", re.compile(r"\b\d{4}\s?[A-Z]{2}\b")),
    ("institution", re.compile(rf"\b(?:(?:St\.?|Saint|[A-Z][\w'.-]*)\s+){{1,4}}(?i:{_CARE})\b")),
    ("institution", re.compile(rf"\b(?i:{_CARE})(?:\s+(?:of|the|de|la|der|des|am|an|[A-Z]"
                               r"[\w'.-]*)){1,4}")),
    ("person", re.compile(r"\b(?:Dr|Prof|Mr|Mrs|Ms|Miss|Herr|Frau|Dott)\.?\s+"
                          r"[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+)?")),
    ("labelled phone", re.compile(r"(?i:tel|phone|fax|mobile|mob)\.?:?\s*\+?[\d ()/.-]{5,}\d")),
    ("phone", re.compile(r"\+?\(?\d[\d ()/.-]{6,}\d")),
    ("identifier", re.compile(r"\b[A-Za-z]{0,4}\d{5,}[A-Za-z\d]*\b")),
)
_MIN_DIGITS = {"phone": 9}


def identifying_values(ds: object) -> list[str]:
    """The identifying strings of a DICOM data set (names split into their components)."""
    out: set[str] = set()
    for key in IDENTIFYING_KEYWORDS:
        value = ds.get(key) if hasattr(ds, "get") else None  # type: ignore[attr-defined]
        if value in (None, ""):
            continue
        values = value if isinstance(value, (list, tuple)) or type(value).__name__ == \
            "MultiValue" else [value]
        out.update(identifier_parts(str(v) for v in values))
    return sorted(out, key=len, reverse=True)


def identifier_parts(values: Iterable[str]) -> set[str]:
    """Each value and its components (a DICOM name's ``^`` parts, words of 3 letters or
    more), the forms in which it can turn up in free text."""
    out: set[str] = set()
    for v in values:
        text = str(v).strip()
        if not text or text.lower() in ("nan", "none"):
            continue
        out.add(text)
        out.update(p.strip() for p in re.split(r"[\^\s,;/]+", text) if len(p.strip()) > 2)
    return out


def _remove(pattern: re.Pattern[str], what: str, text: str) -> str:
    least = _MIN_DIGITS.get(what, 0)

    def replace(m: re.Match[str]) -> str:
        return REMOVED if sum(c.isdigit() for c in m.group(0)) >= least else m.group(0)

    return pattern.sub(replace, text)


def scrub_text(text: str | None, identifiers: Iterable[str] = ()) -> str | None:
    """Free text with the given identifying values and every identifying pattern removed."""
    if text is None:
        return None
    out = str(text)
    for ident in sorted({i for i in identifiers if i and len(i) > 2}, key=len, reverse=True):
        out = re.sub(rf"(?<!\w){re.escape(ident)}(?!\w)", REMOVED, out, flags=re.I)
    for what, pattern in PATTERNS:
        out = _remove(pattern, what, out)
    out = re.sub(rf"(?:{re.escape(REMOVED)}[\s,;:.-]*)+(?={re.escape(REMOVED)})", "", out)
    return out.strip() or None


class Scrubber:
    """Collects each patient's identifiers from every source, then scrubs that patient's
    free text with them (and the identifying patterns every text loses)."""

    def __init__(self) -> None:
        self._identifiers: dict[str, set[str]] = defaultdict(set)

    def add(self, raw_patient_id: str, values: Iterable[str]) -> None:
        raw = str(raw_patient_id).strip()
        self._identifiers[raw] |= identifier_parts([raw, *values])

    def identifiers(self, raw_patient_id: str) -> set[str]:
        raw = str(raw_patient_id).strip()
        return self._identifiers.get(raw, set()) | identifier_parts([raw])

    def scrub(self, text: object, raw_patient_id: str) -> str | None:
        """``text`` without the patient's identifiers or any identifying pattern."""
        if text is None or (isinstance(text, float) and text != text):
            return None
        return scrub_text(str(text), self.identifiers(raw_patient_id))
