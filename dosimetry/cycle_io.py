"""Read a patient-cycle's inputs from the lake, and write its result: the two ends of
``read_cycle -> compute_cycle -> write_cycle``. Which rows count is decided by
:mod:`theralake.lake.views`; the rows written are built by :mod:`theralake.lake.rows`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from theralake.lake import Lake, Volume
from theralake.lake.views import (
    SEGMENTED_LESION_SOURCES,
    CycleRows,
    cycle_rows,
    one_per_acquisition,
    pair_time_points,
    spect_recovery_curves,
)

__all__ = ["Contour", "CtImage", "CycleInputs", "PetImage", "TimePoint", "read_cycle",
           "write_cycle"]


@dataclass
class Contour:
    """A VOI mask on a CT and its ``vois`` row (voxel columns left out)."""

    row: dict
    mask: Volume

    @property
    def id(self) -> str:
        return self.row["id"]


@dataclass
class CtImage:
    """A CT, its ``images`` row (no voxels) and the contours imported on it."""

    row: dict
    volume: Volume
    contours: dict[str, Contour] = field(default_factory=dict)
    pet_ct: bool = False

    @property
    def id(self) -> str:
        return self.row["id"]


@dataclass
class TimePoint:
    """One SPECT/CT of the cycle (``ct`` None when the SPECT has no CT)."""

    time_h: float
    spect_row: dict
    spect: Volume
    ct: CtImage | None
    recovery: pd.DataFrame | None = None  # the camera's sphere recovery (volume_ml, recovery)


@dataclass
class PetImage:
    """The pre-therapy PET, its ``images`` row (no voxels) and its CT."""

    row: dict
    volume: Volume
    ct: CtImage


@dataclass
class CycleInputs:
    """Everything a patient-cycle's dosimetry reads (see :func:`compute_cycle`)."""

    patient_id: str
    cycle: int
    administration: dict | None
    time_points: list[TimePoint]
    other_cts: list[CtImage]  # other cycles' and the pre-therapy PET/CT's CTs
    earlier: pd.DataFrame  # organ_dosimetry rows of the earlier cycles (current runs)
    previous_lesions: tuple[CtImage, dict[str, Contour]] | None = None
    cached: dict[str, dict[str, Contour]] = field(default_factory=dict)  # AI masks per CT id
    ids: list[str] = field(default_factory=list)
    pet: PetImage | None = None
    # (kept, left out) SPECT rows (no voxels) of acquisitions reconstructed more than once
    duplicates: list[tuple[dict, dict]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"patient {self.patient_id} cycle {self.cycle}"


def _meta(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "voxels"}


def _contours(vois: pd.DataFrame, ct_id: str) -> dict[str, Contour]:
    mine = vois[vois.image_id == ct_id].sort_values("id")
    return {r["voi"]: Contour(_meta(r), Volume.from_row(r))
            for r in mine.drop_duplicates("voi").to_dict("records")}


def read_cycle(lake: Lake, patient_id: str, cycle: int) -> CycleInputs:
    """The rows one patient-cycle's dosimetry needs, voxels decoded."""
    rows: CycleRows = cycle_rows(lake, patient_id, cycle)
    imported = rows.vois[~rows.vois.source.isin(SEGMENTED_LESION_SOURCES)]
    images = rows.images
    cts: dict[str, CtImage] = {}

    def ct(row: dict) -> CtImage:
        if row["id"] not in cts:
            cts[row["id"]] = CtImage(_meta(row), Volume.from_row(row),
                                     _contours(imported, row["id"]),
                                     row["id"] in rows.pet_ct_ids)
        return cts[row["id"]]

    mine = images[(images.cycle == cycle) & ~images.id.isin(rows.pet_ct_ids)]
    pairs = pair_time_points(mine)
    curves = spect_recovery_curves(lake, [s["id"] for s, _ in pairs])
    points = [TimePoint(float(s["time_h"]), _meta(s), Volume.from_row(s),
                        ct(c) if c is not None else None, curves.get(s["id"]))
              for s, c in pairs]
    used = {p.ct.id for p in points if p.ct is not None}
    others = [ct(r) for r in images[(images.kind == "ct") & ~images.id.isin(used)]
              .sort_values(["acquisition_h", "id"], na_position="first").to_dict("records")]
    cached: dict[str, dict[str, Contour]] = {}
    for r in rows.cached_vois.sort_values("id").to_dict("records"):
        cached.setdefault(r["image_id"], {}).setdefault(
            f"{r['source_name']}\x1f{r['voi']}", Contour(_meta(r), Volume.from_row(r)))
    return CycleInputs(patient_id, cycle, rows.administration, points, others,
                       rows.earlier, _previous_lesions(rows, cts), cached, rows.ids,
                       _pet(rows, ct), [(_meta(k), _meta(d))
                                        for k, d in one_per_acquisition(mine)[1]])


def _pet(rows: CycleRows, ct: Callable[[dict], CtImage]) -> PetImage | None:
    if rows.pet_id is None:
        return None
    images = rows.images
    pet = images[images.id == rows.pet_id].iloc[0].to_dict()
    pet_ct = images[(images.kind == "ct") & (images.frame_of_reference_key
                                            == pet["frame_of_reference_key"])]
    return PetImage(_meta(pet), Volume.from_row(pet), ct(pet_ct.iloc[0].to_dict()))


def _previous_lesions(rows: CycleRows, cts: dict[str, CtImage]
                      ) -> tuple[CtImage, dict[str, Contour]] | None:
    """The segmented lesions of the latest earlier cycle, on its reference CT."""
    lesions = rows.vois[rows.vois.source.isin(SEGMENTED_LESION_SOURCES)]
    if lesions.empty:
        return None
    latest = lesions[lesions.cycle == lesions.cycle.max()]
    ct_id = latest.image_id.iloc[0]
    if ct_id not in cts:
        return None
    return cts[ct_id], {r["voi"]: Contour(_meta(r), Volume.from_row(r))
                        for r in latest[latest.image_id == ct_id].to_dict("records")}


def write_cycle(lake: Lake, result: object) -> None:
    """Append a :class:`~theralake.dosimetry.cycle.CycleResult`'s rows in one commit: the
    patient-cycle's results land whole or not at all (idempotent: the same inputs and
    settings add nothing)."""
    with lake.batch():
        lake.append("vois", result.voi_rows)
        lake.append("registrations", result.registration_rows)
        lake.append("dose_maps", result.map_rows)
        lake.append("tacs", result.tac_rows)
        lake.append("organ_dosimetry", result.organ_rows)
        lake.append("quality", result.quality_rows)
