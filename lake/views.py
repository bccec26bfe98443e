"""The lake's meaning: the only code that decides which rows count.

- **Current row**: among rows of the same key, the newest ``created_utc`` (ties: the larger
  id). A dosimetry result is taken whole: per patient, cycle and method the rows of the newest
  run (``params_hash``), so VOIs of two settings are never mixed.
- **Therapy administration** of a cycle: its therapy row, the earliest if several.
- **Time points** of a cycle: each quantitative SPECT (Bq/mL) with the CT of its frame of
  reference, else the CT acquired closest in time (within 2 h).
- **Reference CT** of a cycle: the CT of the current dose map (what dosimetry used); before
  dosimetry, the time point whose CT has the most contoured VOIs (ties: the earliest).
- **VOIs on an image**: one row per VOI name, by source (imported contours, then carried,
  then AI, then thresholds), the current one within a source.
- **Preferred dosimetry**: per patient the first method of a list that it has.

Everything that reads "the" row of something asks this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from theralake.lake.store import Lake, stable_hash

__all__ = [
    "IMPORTED_VOI_SOURCES", "SEGMENTED_LESION_SOURCES", "SOURCE_RANK", "CycleRows", "current",
    "current_run",
    "cycle_rows", "cycle_input_ids", "dose_map", "dosimetry", "dosimetry_vois", "bed_sums",
    "frame_ct", "newest_first", "pre_therapy_pet",
    "one_per_acquisition", "pair_time_points", "preferred_dosimetry", "quality",
    "reference_ct", "reference_index", "spect_recovery_curves",
    "spect_cycles", "therapy_administration", "therapy_administrations", "vois_on_image",
]

#: ``vois.source`` of the VOIs that come from the user's data (not computed by theralake)
IMPORTED_VOI_SOURCES = ("rtstruct", "seg", "nifti")
#: ``vois.source`` of the lesions the dosimetry segments on the reference SPECT
SEGMENTED_LESION_SOURCES = ("threshold", "lesion_network")
#: precedence of VOI sources on one image (lower wins)
SOURCE_RANK = {"rtstruct": 0, "seg": 0, "nifti": 0, "transferred": 1, "ai": 2,
               "totalsegmentator": 2, "threshold": 3, "lesion_network": 3}
#: a SPECT without a CT of its frame of reference takes the closest CT within this time
MAX_CT_GAP_H = 2.0
#: SPECTs of one cycle closer in time than this are one acquisition (reconstructed twice)
SAME_ACQUISITION_H = 0.1


# ----------------------------------------------------------------------------- current rows
def current(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The current row per ``keys``: the newest ``created_utc``, ties broken by the larger id."""
    if df.empty:
        return df
    order = [c for c in ("created_utc", "id") if c in df.columns]
    return df.sort_values(order).groupby(list(keys), dropna=False, sort=False).tail(1) \
        .sort_index()


def current_run(df: pd.DataFrame, keys: Sequence[str] = ("patient_id", "cycle", "method"),
                item: str = "voi") -> pd.DataFrame:
    """The rows of the newest run (``params_hash``) per ``keys``, one per ``item``."""
    if df.empty:
        return df
    newest = current(df, keys)[[*keys, "params_hash"]]
    mine = df.merge(newest, on=[*keys, "params_hash"], how="inner")
    return current(mine, [*keys, item]).reset_index(drop=True)


def preferred_dosimetry(df: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """``organ_dosimetry`` rows of one method per patient (the first of ``methods`` it has,
    else any), the current run of each cycle."""
    if df.empty:
        return df
    rank = df.method.map({m: i for i, m in enumerate(methods)}).fillna(len(methods))
    df = df[rank == rank.groupby(df.patient_id).transform("min")]
    return current_run(df)


def dosimetry(lake: Lake, methods: Sequence[str], patient_id: str | None = None,
              before_cycle: int | None = None) -> pd.DataFrame:
    """The preferred current ``organ_dosimetry`` rows (of one patient, of cycles before one)."""
    where, params = _where(patient_id=patient_id)
    if before_cycle is not None:
        where, params = _and(where, params, "cycle < ?", before_cycle)
    return preferred_dosimetry(lake.read("organ_dosimetry", where, params), methods)


def bed_sums(rows: pd.DataFrame, method: str) -> dict[str, tuple[float, float]]:
    """Per VOI, BED and EQD2 summed over the cycles of ``organ_dosimetry`` rows (the current
    run of each cycle, this method): what a later cycle adds its own to."""
    mine = current_run(rows[rows.method == method]) if not rows.empty else rows
    return {voi: (float(g.bed_gy.sum()), float(g.eqd2_gy.sum()))
            for voi, g in mine.groupby("voi")} if not mine.empty else {}


def quality(lake: Lake, patient_id: str | None = None, cycle: int | None = None,
            step: str = "dosimetry") -> pd.DataFrame:
    """The current quality record (the newest run per patient-cycle)."""
    where, params = _where(patient_id=patient_id, cycle=cycle)
    where, params = _and(where, params, "step = ?", step)
    df = lake.read("quality", where, params)
    if df.empty:
        return df
    newest = current(df, ["patient_id", "cycle"])[["patient_id", "cycle", "params_hash"]]
    return df.merge(newest, on=["patient_id", "cycle", "params_hash"]).sort_values(
        ["patient_id", "cycle", "voi", "check"], na_position="first").reset_index(drop=True)


def newest_first(df: pd.DataFrame) -> pd.DataFrame:
    """Rows from the newest to the oldest (a history, as shown in reports)."""
    if df.empty:
        return df
    return df.sort_values(["created_utc", "id"], ascending=False).reset_index(drop=True)


# ----------------------------------------------------------------------------- administrations
def therapy_administrations(lake: Lake, cycle: int | None = None,
                            patient_id: str | None = None) -> pd.DataFrame:
    """One therapy administration per patient and cycle (the earliest of a cycle)."""
    where, params = _where(patient_id=patient_id, cycle=cycle)
    where, params = _and(where, params, "purpose = 'therapy'", None)
    df = lake.read("administrations", where, params)
    if df.empty:
        return df
    df = current(df, ["patient_id", "cycle", "administration_h"])
    return df.sort_values("administration_h").groupby(["patient_id", "cycle"]).head(1) \
        .sort_values(["patient_id", "cycle"]).reset_index(drop=True)


def therapy_administration(lake: Lake, patient_id: str, cycle: int) -> dict | None:
    """The therapy administration of a cycle (the earliest if there are several)."""
    df = therapy_administrations(lake, cycle, patient_id)
    return None if df.empty else df.iloc[0].to_dict()


# ----------------------------------------------------------------------------- images
def spect_cycles(lake: Lake, patient_id: str | None = None, cycle: int | None = None
                 ) -> pd.DataFrame:
    """(patient_id, cycle) of every cycle with a quantitative SPECT, sorted."""
    where, params = _where(patient_id=patient_id, cycle=cycle)
    where, params = _and(where, params, "kind = 'spect' AND units = 'BQML' AND cycle IS NOT "
                         "NULL", None)
    return lake.sql(f"SELECT DISTINCT patient_id, cycle FROM images WHERE {where} "
                    "ORDER BY patient_id, cycle", params)


def one_per_acquisition(spects: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[dict, dict]]]:
    """The quantitative SPECTs of one cycle, one per acquisition, in time order; and the
    (kept, left out) rows where one acquisition has several reconstructions.

    SPECTs less than :data:`SAME_ACQUISITION_H` apart are one acquisition reconstructed twice
    (a vendor's reconstruction and theralake's from its projections, or two exports). The one
    theralake reconstructed is kept (its calibration and resolution are in the lake), else the
    newest.
    """
    spects = spects[(spects.kind == "spect") & (spects.units == "BQML")]
    spects = current(spects, ["series_key", "time_h"]).sort_values(["time_h", "id"])
    if spects.empty:
        return spects, []
    times = spects.time_h.to_numpy(float)
    group = np.concatenate([[0], np.cumsum(~(np.diff(times) < SAME_ACQUISITION_H))])  # NaN: apart
    ours = spects["params_hash"].notna() if "params_hash" in spects else False
    ranked = spects.assign(_group=group, _ours=ours)
    ranked = ranked.sort_values([c for c in ("_group", "_ours", "created_utc", "id")
                                 if c in ranked])
    kept = ranked.groupby("_group").tail(1)
    left = [(kept[kept._group == r["_group"]].iloc[0].drop(["_group", "_ours"]).to_dict(),
             {k: v for k, v in r.items() if k not in ("_group", "_ours")})
            for r in ranked[~ranked.index.isin(kept.index)].to_dict("records")]
    return kept.drop(columns=["_group", "_ours"]).sort_values(["time_h", "id"]), left


def pair_time_points(images: pd.DataFrame) -> list[tuple[dict, dict | None]]:
    """(SPECT row, CT row or None) per quantitative SPECT acquisition of ``images`` (one cycle,
    see :func:`one_per_acquisition`), in time order: the CT of the SPECT's frame of
    reference, else the closest CT within 2 h."""
    spects, _ = one_per_acquisition(images)
    cts = images[images.kind == "ct"]
    out = []
    for s in spects.to_dict("records"):
        same = cts[cts.frame_of_reference_key == s["frame_of_reference_key"]]
        if same.empty and not cts.empty:
            gap = (cts.time_h - s["time_h"]).abs()
            same = cts[gap == gap.min()]
            same = same[(same.time_h - s["time_h"]).abs() <= MAX_CT_GAP_H]
        out.append((s, same.sort_values(["time_h", "id"]).iloc[0].to_dict()
                    if not same.empty else None))
    return out


def reference_index(contoured: Sequence[int]) -> int:
    """The reference time point: the most contoured VOIs on its CT, the earliest on a tie."""
    return max(range(len(contoured)), key=lambda i: (contoured[i], -i)) if contoured else 0


def reference_ct(lake: Lake, patient_id: str, cycle: int, methods: Sequence[str] = ()
                 ) -> dict | None:
    """The reference CT of a cycle: the one its current dose map was computed on, else the
    time point whose CT carries the most contoured VOIs (dosimetry's ``auto`` rule)."""
    found = dose_map(lake, patient_id, cycle, "dose", methods)
    if found is not None and found.get("reference_ct_id"):
        ct = lake.read("images", "id = ?", [found["reference_ct_id"]])
        if not ct.empty:
            return ct.iloc[0].to_dict()
    images = lake.read("images", "patient_id = ? AND cycle = ? AND kind IN ('spect', 'ct')",
                       [patient_id, cycle])
    pairs = [(s, c) for s, c in pair_time_points(images) if c is not None]
    if not pairs:
        return None
    vois = lake.read("vois", "patient_id = ?", [patient_id], columns=["image_id", "voi", "source"])
    imported = vois[vois.source.isin(IMPORTED_VOI_SOURCES)]
    counts = [int(imported[imported.image_id == c["id"]].voi.nunique()) for _, c in pairs]
    return pairs[reference_index(counts)][1]


def frame_ct(lake: Lake, patient_id: str, frame_of_reference_key: str) -> dict | None:
    """The CT of a frame of reference (the current one)."""
    df = lake.read("images", "patient_id = ? AND kind = 'ct' AND frame_of_reference_key = ?",
                   [patient_id, frame_of_reference_key])
    return None if df.empty else current(df, ["patient_id"]).iloc[0].to_dict()


def pre_therapy_pet(lake: Lake, patient_id: str) -> dict | None:
    """The latest PET before the first therapy that has an SUVbw factor."""
    df = lake.read("images", "patient_id = ? AND kind = 'pet' AND suvbw_per_bqml IS NOT NULL "
                   "AND (cycle IS NULL OR cycle <= 1)", [patient_id])
    if df.empty:
        return None
    df = df.assign(_at=df.acquisition_h.fillna(-float("inf")))
    return current(df, ["_at"]).sort_values(["_at", "created_utc", "id"]).iloc[-1] \
        .drop("_at").to_dict()


def dose_map(lake: Lake, patient_id: str, cycle: int, quantity: str = "dose",
             methods: Sequence[str] = ()) -> dict | None:
    """The current map of a cycle (``dose``, ``tia``): the first of ``methods`` it has,
    else the newest."""
    df = lake.read("dose_maps", "patient_id = ? AND cycle = ? AND quantity = ?",
                   [patient_id, cycle, quantity])
    if df.empty:
        return None
    if methods and quantity == "dose":
        rank = df.method.map({m: i for i, m in enumerate(methods)}).fillna(len(methods))
        df = df[rank == rank.min()]
    return current(df, ["patient_id"]).iloc[0].to_dict()


# ----------------------------------------------------------------------------- VOIs
def vois_on_image(lake: Lake, image_id: str, names: Iterable[str] | None = None
                  ) -> pd.DataFrame:
    """One VOI row per name on an image: imported contours first, then carried, AI and
    thresholded ones; the current row within a source."""
    return _one_per_voi(lake.read("vois", "image_id = ?", [image_id]), names)


def _one_per_voi(df: pd.DataFrame, names: Iterable[str] | None = None) -> pd.DataFrame:
    if names is not None:
        df = df[df.voi.isin(list(names))]
    if df.empty:
        return df
    df = df.assign(_rank=df.source.map(SOURCE_RANK).fillna(len(SOURCE_RANK)))
    best = df[df._rank == df.groupby("voi")._rank.transform("min")]
    return current(best, ["voi"]).drop(columns="_rank").sort_values("voi").reset_index(
        drop=True)


def dosimetry_vois(lake: Lake, patient_id: str, cycle: int, methods: Sequence[str] = ()
                   ) -> pd.DataFrame:
    """The VOI rows the current dosimetry of a cycle used (one per VOI name); before any
    dosimetry, the VOIs on the reference CT."""
    od = lake.read("organ_dosimetry", "patient_id = ? AND cycle = ?", [patient_id, cycle])
    od = preferred_dosimetry(od, methods)
    ids = [i for i in od.get("voi_id", pd.Series(dtype=str)).dropna()]
    if ids:
        marks = ", ".join("?" * len(ids))
        return _one_per_voi(lake.read("vois", f"id IN ({marks})", ids))
    ct = reference_ct(lake, patient_id, cycle, methods)
    return vois_on_image(lake, ct["id"]) if ct else pd.DataFrame()


# ----------------------------------------------------------------------------- a cycle's inputs
@dataclass
class CycleRows:
    """The lake rows one patient-cycle's dosimetry reads (voxels included when read by
    :func:`cycle_rows`; metadata only inside :func:`cycle_input_ids`)."""

    patient_id: str
    cycle: int
    images: pd.DataFrame  # this cycle's SPECTs and CTs, and every CT with imported VOIs
    vois: pd.DataFrame  # imported VOIs of the patient's CTs, earlier cycles' thresholds
    cached_vois: pd.DataFrame  # AI VOIs of this cycle's CTs (reused, not inputs)
    administration: dict | None
    earlier: pd.DataFrame  # organ_dosimetry of the earlier cycles (every method, current)
    pet_ct_ids: list[str] = field(default_factory=list)
    pet_id: str | None = None  # the pre-therapy PET (the latest), its CT among ``images``
    input_image_ids: list[str] = field(default_factory=list)  # images read for themselves

    @property
    def ids(self) -> list[str]:
        """The ids of the imported rows read (images, contours, the administration); the
        earlier cycles' results (and the CT of their lesions) enter a task's hash through the
        task of the cycle before."""
        admin = [self.administration["id"]] if self.administration else []
        imported = self.vois[self.vois.source.isin(IMPORTED_VOI_SOURCES)]
        return self.input_image_ids + sorted(imported.id) + admin


def _select_cycle(patient_id: str, cycle: int, images: pd.DataFrame, vois: pd.DataFrame,
                  admins: pd.DataFrame, dosim: pd.DataFrame) -> CycleRows:
    """The selection behind :func:`cycle_rows` on one patient's tables (any columns kept)."""
    images = images[images.patient_id == patient_id]
    vois = vois[vois.patient_id == patient_id]
    imported = vois[vois.source.isin(IMPORTED_VOI_SOURCES)]
    pet_frames = set(images[images.kind == "pet"].frame_of_reference_key.dropna())
    cts = images[images.kind == "ct"]
    pet_cts = cts[cts.frame_of_reference_key.isin(pet_frames)
                  & (cts.cycle.isna() | (cts.cycle <= 1))]
    mine = images[(images.cycle == cycle) & images.kind.isin(["spect", "ct"])
                  & ~images.id.isin(pet_cts.id)]
    earlier = dosim[(dosim.patient_id == patient_id) & (dosim.cycle < cycle)]
    earlier = current_run(earlier) if not earlier.empty else earlier
    used = set(earlier.get("voi_id", pd.Series(dtype=str)).dropna())
    thresholds = vois[vois.source.isin(SEGMENTED_LESION_SOURCES) & vois.id.isin(used)]
    sources = cts[cts.id.isin(imported.image_id) & ~cts.id.isin(mine.id)]
    extra = pet_cts[~pet_cts.id.isin(sources.id)] if cycle == 1 else pet_cts.iloc[:0]
    inputs = pd.concat([mine, sources, extra]).drop_duplicates("id")
    lesion_cts = cts[cts.id.isin(thresholds.image_id) & ~cts.id.isin(inputs.id)]
    pet = _latest_pet(images, pet_cts)
    inputs = pd.concat([inputs, pet]).drop_duplicates("id")
    chosen = pd.concat([inputs, lesion_cts])
    therapy = admins[(admins.patient_id == patient_id) & (admins.cycle == cycle)
                     & (admins.purpose == "therapy")]
    admin = current(therapy, ["administration_h"]).sort_values("administration_h")
    cached = vois[vois.source.isin(["ai", "totalsegmentator"]) & vois.image_id.isin(mine.id)]
    return CycleRows(patient_id, int(cycle), chosen.reset_index(drop=True),
                     pd.concat([imported[imported.image_id.isin(chosen.id)], thresholds])
                     .reset_index(drop=True), cached.reset_index(drop=True),
                     admin.iloc[0].to_dict() if not admin.empty else None,
                     earlier.reset_index(drop=True), sorted(pet_cts.id),
                     str(pet.id.iloc[0]) if not pet.empty else None, sorted(inputs.id))


def _latest_pet(images: pd.DataFrame, pet_cts: pd.DataFrame) -> pd.DataFrame:
    """The latest pre-therapy PET with a CT of its frame of reference, and that CT (the
    PET-to-SPECT lesion network's prior); empty without one."""
    pets = images[(images.kind == "pet") & (images.cycle.isna() | (images.cycle <= 1))
                  & images.frame_of_reference_key.isin(pet_cts.frame_of_reference_key)]
    if pets.empty:
        return pets
    pets = pets.assign(_at=pets.acquisition_h.fillna(-float("inf")))
    pet = pets.sort_values(["_at", "created_utc", "id"]).iloc[-1:].drop(columns="_at")
    ct = pet_cts[pet_cts.frame_of_reference_key == pet.frame_of_reference_key.iloc[0]]
    return pd.concat([pet, ct.sort_values(["created_utc", "id"]).iloc[-1:]])


def cycle_rows(lake: Lake, patient_id: str, cycle: int) -> CycleRows:
    """Every row one patient-cycle's dosimetry reads, voxels included."""
    p = [patient_id]
    return _select_cycle(
        patient_id, cycle,
        lake.read("images", "patient_id = ? AND kind IN ('spect', 'ct', 'pet')", p),
        lake.read("vois", "patient_id = ?", p),
        lake.read("administrations", "patient_id = ?", p),
        lake.read("organ_dosimetry", "patient_id = ? AND cycle < ?", [patient_id, cycle]))


_META = {
    "images": "id, patient_id, cycle, kind, units, time_h, frame_of_reference_key, "
              "acquisition_h, created_utc",
    "vois": "id, patient_id, voi, image_id, source",
    "administrations": "id, patient_id, cycle, purpose, administration_h, created_utc",
    "organ_dosimetry": "id, patient_id, cycle, method, voi, voi_id, params_hash, created_utc",
}


def cycle_input_ids(lake: Lake) -> dict[tuple[str, int], str]:
    """Per (patient_id, cycle) with SPECT, the hash of :attr:`CycleRows.ids` (one query per
    table for the whole lake)."""
    tables = {t: lake.sql(f"SELECT {cols} FROM {t}") for t, cols in _META.items()}
    out = {}
    for pid, cyc in spect_cycles(lake).itertuples(index=False):
        rows = _select_cycle(pid, int(cyc), *tables.values())
        out[(pid, int(cyc))] = stable_hash(rows.ids)
    return out


# ----------------------------------------------------------------------------- helpers
def _where(**equal: object) -> tuple[str | None, list]:
    clauses, params = [], []
    for column, value in equal.items():
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" AND ".join(clauses) or None), params


def _and(where: str | None, params: list, clause: str, value: object) -> tuple[str, list]:
    joined = f"{where} AND {clause}" if where else clause
    return joined, params + ([value] if value is not None else [])


# ----------------------------------------------------------------------------- SPECT
def acquisitions(lake: Lake, patient_id: str, cycle: int | None = None) -> pd.DataFrame:
    """The energy windows of a patient's SPECT acquisitions (one row per window, the current
    one per series and window), sorted by time and window."""
    where, params = _where(patient_id=patient_id, cycle=cycle)
    df = lake.read("projection_windows", where, params)
    if df.empty:
        return df
    return current(df, ["series_key", "window_index"]).sort_values(
        ["time_h", "series_key", "window_index"]).reset_index(drop=True)


def camera_calibration(lake: Lake, camera_key: str | None, nuclide: str | None,
                       photopeak_kev: float, collimator: str) -> dict | None:
    """A camera's sensitivity for a nuclide, photopeak and collimator: the newest
    calibration (None when the camera was never calibrated so)."""
    df = lake.read("camera_calibrations", "camera_key = ? AND nuclide = ? AND collimator = ? "
                   "AND abs(photopeak_kev - ?) < 1", [camera_key, nuclide, collimator,
                                                      photopeak_kev])
    return None if df.empty else newest_first(df).iloc[0].to_dict()


def spect_recovery_curves(lake: Lake, image_ids: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The sphere recovery curve (``volume_ml``, ``recovery``) of each SPECT theralake
    reconstructed with a calibrated camera that has one, by image id."""
    if not image_ids:
        return {}
    recons = lake.read("reconstructions", "list_contains(?, image_id) AND calibration_id IS "
                       "NOT NULL", [list(image_ids)], columns=["image_id", "calibration_id"])
    curves = {c: recovery_curve(lake, c) for c in set(recons.calibration_id)}
    return {r.image_id: curves[r.calibration_id][["volume_ml", "recovery"]]
            for r in recons.itertuples() if not curves[r.calibration_id].empty}


def recovery_curve(lake: Lake, calibration_id: str) -> pd.DataFrame:
    """The newest sphere recovery curve measured with a camera calibration, by volume."""
    df = lake.read("recovery_curves", "calibration_id = ?", [calibration_id])
    if df.empty:
        return df
    df = df[df.created_utc == df.created_utc.max()]
    return df.sort_values("volume_ml").reset_index(drop=True)
