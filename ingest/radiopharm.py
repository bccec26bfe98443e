"""Radiopharmaceutical data: nuclide names, administrations read from DICOM, decay."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset

from theralake.ingest.dicom_files import parse_datetime, parse_dt
from theralake.ingest.errors import IngestError

#: Half-lives (h) used only to name nuclides and sanity-check DICOM half-lives (ICRP-107).
HALF_LIFE_H: dict[str, float] = {
    "Lu-177": 159.53, "Y-90": 64.05, "I-131": 192.5, "Tb-161": 166.6, "Ac-225": 238.1,
    "Ga-68": 1.1285, "F-18": 1.8295, "Cu-64": 12.70, "Zr-89": 78.41, "Tc-99m": 6.0067,
    "In-111": 67.31, "I-123": 13.22, "Ra-223": 274.3, "Pb-212": 10.64, "I-124": 100.2,
}
#: Nuclides given for therapy (I-131 only above 400 MBq).
THERAPY_NUCLIDES = {"Lu-177", "Y-90", "Tb-161", "Ac-225", "Ra-223", "Pb-212"}

_SNOMED = {"C-145A4": "Lu-177", "C-131A3": "Ga-68", "C-111A1": "F-18", "C-127A2": "Cu-64",
           "C-B1031": "Tc-99m", "C-163A8": "Tc-99m", "C-114B5": "I-131", "C-162F9": "Y-90",
           "C-1018D": "Zr-89", "C-145A1": "In-111", "C-114A4": "I-123"}
_ELEMENTS = {"lutetium": "Lu", "gallium": "Ga", "fluorine": "F", "copper": "Cu",
             "technetium": "Tc", "iodine": "I", "yttrium": "Y", "zirconium": "Zr",
             "terbium": "Tb", "actinium": "Ac", "indium": "In", "radium": "Ra", "lead": "Pb"}


def canonical_nuclide(text: str) -> str:
    """'Lu177', '177Lu', '^177^Lutetium', 'lu-177' ... -> 'Lu-177'.

    Raises:
        ValueError: a name that is not a known nuclide.
    """
    raw = str(text).strip()
    if raw in _SNOMED:
        return _SNOMED[raw]
    s = raw.lower().replace("^", " ")
    for name, symbol in _ELEMENTS.items():
        s = s.replace(name, symbol.lower())
    m = re.search(r"([a-z]{1,2})\s*-?\s*(\d{1,3})(m?)\b", s) or \
        re.search(r"(\d{1,3})(m?)\s*-?\s*([a-z]{1,2})\b", s)
    if m:
        if m.group(1).isdigit():
            mass, meta, sym = m.group(1), m.group(2), m.group(3)
        else:
            sym, mass, meta = m.group(1), m.group(2), m.group(3)
        name = f"{sym.capitalize()}-{mass}{meta}"
        if name in HALF_LIFE_H:
            return name
    raise ValueError(f"unknown nuclide {text!r}; known: {', '.join(sorted(HALF_LIFE_H))}")


def purpose_of(nuclide: str, activity_mbq: float | None) -> str:
    if nuclide in THERAPY_NUCLIDES:
        return "therapy"
    if nuclide == "I-131" and (activity_mbq or 0) >= 400:
        return "therapy"
    return "diagnostic"


@dataclass
class Administration:
    """One administration of a radiopharmaceutical, in real time (before pseudonymisation)."""

    raw_patient_id: str
    nuclide: str
    time: datetime
    activity_mbq: float | None
    pharmaceutical: str | None
    purpose: str
    source: str
    cycle: int | None = None  # when the source states it
    half_life_s: float | None = None


def decay_factor(dt_h: float, half_life_h: float) -> float:
    """Fraction of activity left after dt_h hours."""
    return math.exp(-math.log(2) * dt_h / half_life_h)


def administration_from_dicom(ds: Dataset, source: Path | str) -> Administration | None:
    """The administration described by RadiopharmaceuticalInformationSequence, if any.

    Raises:
        IngestError: the sequence is there but incomplete or inconsistent.
    """
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        return None
    item = seq[0]
    when = parse_dt(item.get("RadiopharmaceuticalStartDateTime")) if item.get(
        "RadiopharmaceuticalStartDateTime") else None
    if when is None and item.get("RadiopharmaceuticalStartTime"):
        when = parse_datetime(ds.get("SeriesDate") or ds.get("StudyDate"),
                              item.RadiopharmaceuticalStartTime)
    if when is None:
        raise IngestError(source, "radiopharmaceutical start time missing")
    nuclide_text = None
    codes = item.get("RadionuclideCodeSequence")
    if codes:
        nuclide_text = codes[0].get("CodeMeaning") or codes[0].get("CodeValue")
    nuclide_text = nuclide_text or item.get("Radionuclide") or item.get("Radiopharmaceutical")
    if not nuclide_text:
        raise IngestError(source, "radionuclide not stated in RadiopharmaceuticalInformation")
    try:
        nuclide = canonical_nuclide(str(nuclide_text))
    except ValueError:
        code_value = codes[0].get("CodeValue") if codes else None
        try:
            nuclide = canonical_nuclide(str(code_value or item.get("Radiopharmaceutical", "")))
        except ValueError as exc:
            raise IngestError(source, str(exc)) from exc
    dose = item.get("RadionuclideTotalDose")
    activity_mbq = float(dose) / 1e6 if dose not in (None, "") else None
    half_life = item.get("RadionuclideHalfLife")
    half_life_s = float(half_life) if half_life not in (None, "") else None
    if half_life_s is not None:
        expected = HALF_LIFE_H[nuclide] * 3600
        if abs(half_life_s - expected) > 0.02 * expected:
            raise IngestError(source, f"RadionuclideHalfLife {half_life_s:g} s does not match "
                                      f"{nuclide} ({expected:.0f} s)")
    return Administration(
        raw_patient_id=str(ds.get("PatientID", "")), nuclide=nuclide, time=when,
        activity_mbq=activity_mbq, pharmaceutical=str(item.get("Radiopharmaceutical") or "")
        or None, purpose=purpose_of(nuclide, activity_mbq), source="dicom",
        half_life_s=half_life_s)
