"""VOI names: source names to the lake's names (lower snake case, _left/_right suffixes)."""

from __future__ import annotations

import re
from collections.abc import Mapping

_SIDES = {"left": "left", "lt": "left", "l": "left", "li": "left", "links": "left",
          "right": "right", "rt": "right", "r": "right", "re": "right", "rechts": "right"}
_SYNONYMS = {
    "external": "body", "outline": "body", "body_contour": "body", "skin": "body",
    "kidney": "kidney", "kidneys": "kidneys", "niere": "kidney",
    "parotid": "parotid_gland", "parotis": "parotid_gland",
    "submandibular": "submandibular_gland", "lacrimal": "lacrimal_gland",
    "bladder": "urinary_bladder", "marrow": "red_marrow", "bone_marrow": "red_marrow",
    "lesion": "lesion", "tumor": "lesion", "tumour": "lesion", "gtv": "lesion",
}


def voi_name(source_name: str, mapping: Mapping[str, str] | None = None) -> str:
    """The lake name of a VOI: the mapping file's entry, else normalised by the naming rules.

    >>> voi_name("Kidney L"), voi_name("Left Parotid"), voi_name("GTV 3")
    ('kidney_left', 'parotid_gland_left', 'lesion_003')
    """
    if mapping and source_name in mapping:
        return mapping[source_name]
    words = [w for w in re.split(r"[^a-z0-9]+", source_name.lower()) if w]
    if not words:
        raise ValueError(f"VOI name {source_name!r} has no letters or digits")
    side = None
    for i, w in enumerate(words):
        if w in _SIDES and (len(w) > 1 or len(words) > 1):
            side = _SIDES[w]
            words.pop(i)
            break
    number = None
    if words and words[-1].isdigit():
        number = int(words.pop())
    base = "_".join(words)
    base = _SYNONYMS.get(base, _SYNONYMS.get(words[0] if len(words) == 1 else "", base))
    if base in ("lesion",) and number is not None:
        return f"lesion_{number:03d}"
    name = base if number is None else f"{base}_{number}"
    return f"{name}_{side}" if side else name
