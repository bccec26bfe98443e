"""The quality record in one console line (``theralake run`` and ``theralake demo``)."""

from __future__ import annotations

from theralake.lake import Lake, views

__all__ = ["quality_line"]


def quality_line(lake: Lake) -> str:
    """Patient-cycles by dosimetry quality and the most frequent findings."""
    found = views.quality(lake)
    if found.empty:
        return "quality: no dosimetry in the lake yet"
    cycles = found[found.check == "cycle"].status.value_counts()
    problems = found[(found.status != "pass") & (found.check != "cycle")]
    common = problems.check.value_counts().head(3)
    return (f"quality of {int(cycles.sum())} patient-cycles: " + ", ".join(
        f"{int(cycles.get(s, 0))} {s}" for s in ("pass", "warn", "fail"))
        + ("; most frequent: " + ", ".join(f"{c} ({n})" for c, n in common.items())
           if not common.empty else "")
        + f" (theralake sql \"SELECT * FROM quality WHERE status <> 'pass'\" --lake "
        f"{lake.path})")
