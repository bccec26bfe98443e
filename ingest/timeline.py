"""Cycles and times: administrations numbered into cycles, images placed after them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from theralake.ingest.radiopharm import Administration

#: Administrations of one nuclide closer than this are the same administration.
SAME_ADMINISTRATION = timedelta(minutes=30)
#: An image acquired this long before an administration still counts after it (clock skew).
CLOCK_SLACK = timedelta(minutes=5)


@dataclass
class PatientTimeline:
    """A patient's administrations in time order, with cycles assigned."""

    reference: datetime  # the first administration (real time; never stored)
    administrations: list[Administration]

    def hours(self, when: datetime) -> float:
        return (when - self.reference).total_seconds() / 3600.0

    def place(self, acquired: datetime | None, nuclide: str | None
              ) -> tuple[int | None, float | None, Administration | None]:
        """(cycle, hours after that cycle's administration, the administration) of an image.

        Nuclide images follow the latest administration of their nuclide; images without a
        nuclide (CT) follow the latest administration of any kind.
        """
        if acquired is None:
            return None, None, None
        candidates = [a for a in self.administrations if a.time - CLOCK_SLACK <= acquired
                      and (nuclide is None or a.nuclide == nuclide)]
        if not candidates:
            return None, None, None
        admin = max(candidates, key=lambda a: a.time)
        return admin.cycle, (acquired - admin.time).total_seconds() / 3600.0, admin


def merge_administrations(admins: list[Administration]) -> list[Administration]:
    """One record per administration: sources agreeing in nuclide and time are merged.

    Tables (CSV, sidecars) win over DICOM for activity, pharmaceutical and cycle.
    """
    rank = {"csv": 0, "sidecar": 1, "lake": 2, "dicom": 3}
    merged: list[Administration] = []
    for a in sorted(admins, key=lambda a: (a.time, rank.get(a.source, 9))):
        same = next((m for m in merged if m.nuclide == a.nuclide
                     and abs(m.time - a.time) <= SAME_ADMINISTRATION), None)
        if same is None:
            merged.append(Administration(**vars(a)))
            continue
        better = rank.get(a.source, 9) < rank.get(same.source, 9)
        if better:  # a table outranks DICOM even when DICOM's record came first in time
            same.activity_mbq = a.activity_mbq if a.activity_mbq is not None \
                else same.activity_mbq
            same.pharmaceutical = a.pharmaceutical or same.pharmaceutical
            same.cycle = a.cycle if a.cycle is not None else same.cycle
        else:
            same.activity_mbq = same.activity_mbq if same.activity_mbq is not None \
                else a.activity_mbq
            same.pharmaceutical = same.pharmaceutical or a.pharmaceutical
            same.cycle = same.cycle if same.cycle is not None else a.cycle
        same.half_life_s = same.half_life_s or a.half_life_s
        if better:
            same.source, same.time, same.purpose = a.source, a.time, a.purpose
    return sorted(merged, key=lambda a: a.time)


def assign_cycles(admins: list[Administration]) -> list[Administration]:
    """Therapy administrations get cycles 1, 2, ... in time order unless a source states them;
    a diagnostic administration gets the cycle of the therapy it precedes (cycle 1 = pre-therapy
    imaging of cycle 1).

    Raises:
        ValueError: stated cycles that contradict the time order.
    """
    therapy = [a for a in admins if a.purpose == "therapy"]
    taken = {a.cycle for a in therapy if a.cycle is not None}
    next_cycle = 1
    for a in therapy:
        if a.cycle is None:
            while next_cycle in taken:
                next_cycle += 1
            a.cycle = next_cycle
            taken.add(next_cycle)
        next_cycle = max(next_cycle, a.cycle + 1)
    stated = [a.cycle for a in therapy]
    if stated != sorted(stated) or len(set(stated)) != len(stated):
        raise ValueError("therapy cycles are not in time order: "
                         + ", ".join(f"cycle {a.cycle} at {a.time:%Y-%m-%d}" for a in therapy))
    for a in admins:
        if a.purpose != "therapy" and a.cycle is None:
            later = [t.cycle for t in therapy if t.time >= a.time]
            a.cycle = min(later) if later else (max(stated) + 1 if stated else 1)
    return admins
