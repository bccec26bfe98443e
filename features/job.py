"""The feature job: radiomics, dosiomics, DVH and uptake metrics per VOI, image and cycle.

For one patient (:func:`patient_features`), every VOI (organs and lesions; the body is too
large to be informative and is left out) is matched to every image of its frame of reference
(its mask resampled onto the image grid, voxels filled by half or more):

========================  =====================================================  ==========
image (``image_kind``)    feature classes                                        units
========================  =====================================================  ==========
``ct`` (reference CT)     pyradiomics classes of the feature set (``shape``,    HU
                          ``firstorder``, ``glcm``...; IBSI names where mapped)
``pet``                   pyradiomics classes; ``uptake`` (SUVmax/mean/peak,     SUVbw
                          MTV, TLA, TLF); ``burden`` (lesions, ``tumor_total``)
``spect`` (each time)     ``uptake`` (max/mean/peak Bq/mL, MBq, %IA); pyradiomics  Bq/mL
                          classes on the first time point; ``burden``
``dose``                  pyradiomics classes (dosiomics); ``dvh``                Gy
``bed``                   the same on the VOI's BED map                          Gy
========================  =====================================================  ==========

The BED map of a VOI is ``BED = D + k D²`` with ``k = (BED_VOI - D_VOI) / D_VOI²`` from its
``organ_dosimetry`` row (the Lea-Catcheside term depends on the kinetics, not on the dose).

Across cycles every value also yields ``delta:<class>`` (minus the previous cycle's) and
``reldelta:<class>`` (relative to it) rows, and ``delta_baseline:<class>`` (minus the first
cycle's: for PET, the pre-therapy scan). A VOI or class that cannot be computed (empty or
one-voxel VOI on the grid, NaN or negative doses, a mask not on the image) is recorded in
``feature_errors`` with the reason; the job goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from theralake.dosimetry.nuclides import get_nuclide
from theralake.dosimetry.voi_activity import mask_on
from theralake.features import dvh, uptake
from theralake.features.radiomics import ENGINE, FeatureSet, extract_radiomics, load_feature_set
from theralake.lake import Lake, Volume, stable_hash

__all__ = ["PatientFeatures", "patient_features", "run_features", "wide"]

log = logging.getLogger(__name__)


@dataclass
class PatientFeatures:
    """Feature rows and skip records of one patient."""

    patient_id: str
    rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    dvhs: list[dict] = field(default_factory=list)

    def add_dvh(self, image: dict, voi: str, quantity: str, dose_gy: np.ndarray,
                mask: np.ndarray, voxel_ml: float) -> None:
        curve = dvh.cumulative_dvh(dose_gy, mask, voxel_ml)
        self.dvhs.append({
            "id": stable_hash("dvh", self.patient_id, image["id"], voi, quantity),
            "patient_id": self.patient_id, "cycle": image["cycle"], "voi": voi,
            "quantity": quantity, "image_id": image["id"], "volume_ml": curve.volume_ml,
            "dose_gy": curve.dose_gy.tolist(), "volume_fraction": curve.volume_fraction.tolist(),
            "input_ids": [image["id"]], "params_hash": "dvh"})

    def add(self, image: dict, voi: str, kind: str, cls: str, values: dict[str, float],
            settings_hash: str, engine: str = "theralake") -> None:
        for name, value in values.items():
            if value is None or not math.isfinite(value):
                continue
            self.rows.append({
                "id": stable_hash("feature", self.patient_id, image["cycle"], voi, kind,
                                  image["id"], cls, name, settings_hash),
                "patient_id": self.patient_id, "cycle": image["cycle"], "voi": voi,
                "image_kind": kind, "feature_class": cls, "feature": name,
                "value": float(value), "engine": engine, "settings_hash": settings_hash,
                "image_id": image["id"], "time_h": image.get("time_h"),
                "input_ids": [image["id"]], "params_hash": settings_hash})

    def skip(self, image: dict, voi: str, kind: str, cls: str, reason: str,
             settings_hash: str) -> None:
        self.errors.append({
            "id": stable_hash("feature_error", self.patient_id, image["id"], voi, kind, cls,
                              settings_hash),
            "patient_id": self.patient_id, "cycle": image["cycle"], "voi": voi,
            "image_kind": kind, "feature_class": cls, "image_id": image["id"],
            "reason": reason, "input_ids": [image["id"]], "params_hash": settings_hash})

    def attempt(self, image: dict, voi: str, kind: str, cls: str, settings_hash: str,
                compute: Callable[..., dict[str, float]], *args: object
                ) -> dict[str, float] | None:
        """Add ``compute(*args)``'s values, or record why it could not be computed."""
        try:
            values = compute(*args)
        except ValueError as exc:
            self.skip(image, voi, kind, cls, str(exc), settings_hash)
            return None
        self.add(image, voi, kind, cls, values, settings_hash)
        return values


def _images(lake: Lake, patient_id: str) -> list[tuple[str, dict]]:
    """(kind, row) of the images features are computed on, per cycle."""
    imgs = lake.read("images", "patient_id = ? AND kind IN ('ct', 'pet', 'spect')",
                     [patient_id]).sort_values(["cycle", "time_h", "id"])
    out: list[tuple[str, dict]] = []
    spect = imgs[(imgs.kind == "spect") & (imgs.units == "BQML")]
    for _, s in spect.iterrows():
        out.append(("spect", s.to_dict()))
    for cycle, group in spect.groupby("cycle"):  # the reference CT: the first SPECT's
        first = group.iloc[0]
        cts = imgs[(imgs.kind == "ct") & (imgs.cycle == cycle)
                   & (imgs.frame_of_reference_key == first.frame_of_reference_key)]
        if not cts.empty:
            out.append(("ct", cts.iloc[0].to_dict()))
    for _, p in imgs[imgs.kind == "pet"].iterrows():
        out.append(("pet", p.to_dict()))
    maps = lake.read("dose_maps", "patient_id = ? AND quantity = 'dose'", [patient_id])
    for _, d in maps.sort_values("created_utc").groupby("cycle").tail(1).iterrows():
        out.append(("dose", {**d.to_dict(), "time_h": None}))
    return out


def _vois_by_frame(lake: Lake, patient_id: str) -> dict[str, dict[str, Volume]]:
    """Per frame of reference, one mask per VOI name (body excluded)."""
    rows = lake.read("vois", "patient_id = ? AND voi <> 'body'", [patient_id])
    out: dict[str, dict[str, Volume]] = {}
    for _, r in rows.sort_values(["time_h", "id"]).iterrows():
        out.setdefault(r.frame_of_reference_key, {}).setdefault(
            r.voi, Volume.from_row(r.to_dict()))
    return out


def _bed_factor(lake: Lake, patient_id: str) -> dict[tuple[int, str], float]:
    od = lake.read("organ_dosimetry", "patient_id = ?", [patient_id])
    out = {}
    for _, r in od.sort_values("created_utc").iterrows():
        if r.absorbed_dose_gy and r.absorbed_dose_gy > 0 and pd.notna(r.bed_gy):
            out[(int(r.cycle), r.voi)] = (r.bed_gy - r.absorbed_dose_gy) / r.absorbed_dose_gy ** 2
    return out


def _administered_now(lake: Lake, patient_id: str, image: dict) -> float | None:
    admin = lake.read("administrations", "patient_id = ? AND cycle = ? AND purpose = 'therapy'",
                      [patient_id, image["cycle"]])
    if admin.empty or image.get("time_h") is None:
        return None
    a = admin.iloc[0]
    return float(a.activity_mbq) * math.exp(
        -get_nuclide(a.nuclide).decay_constant_per_h * float(image["time_h"]))


def _weight_kg(lake: Lake, patient_id: str) -> float | None:
    rows = lake.read("clinical", "patient_id = ? AND variable = 'weight_kg'", [patient_id])
    return float(rows.iloc[0].value_num) if not rows.empty and pd.notna(rows.iloc[0].value_num) \
        else None


def patient_features(lake: Lake, patient_id: str, feature_set: FeatureSet | str = "default"
                     ) -> PatientFeatures:
    """All features of one patient (rows not yet written)."""
    fs = load_feature_set(feature_set) if isinstance(feature_set, str) else feature_set
    out = PatientFeatures(patient_id)
    frames = _vois_by_frame(lake, patient_id)
    bed_k = _bed_factor(lake, patient_id)
    weight = _weight_kg(lake, patient_id)
    first_spect = {}
    for kind, image in _images(lake, patient_id):
        vol = Volume.from_row(image)
        if kind == "pet":  # PET features are in SUVbw
            vol = vol.like(vol.array * float(image.get("suvbw_per_bqml") or np.nan))
        vois = frames.get(image.get("frame_of_reference_key"), {})
        if kind == "spect":
            first = first_spect.setdefault(image["cycle"], image["id"]) == image["id"]
            admin_now = _administered_now(lake, patient_id, image)
        lesions: list[dict[str, float]] = []
        for name, mask_vol in sorted(vois.items()):
            mask = mask_on(mask_vol, vol)
            radiomics_kinds = {"ct", "pet", "dose"} | ({"spect"} if kind == "spect" and first
                                                       else set())
            if kind in radiomics_kinds:
                _radiomics(out, image, name, kind, vol, mask, fs)
            found = None
            if kind == "pet":
                found = out.attempt(image, name, kind, "uptake", "uptake", uptake.pet_metrics,
                                    vol.array, mask, vol.spacing_mm, weight)
            if kind == "spect":
                found = out.attempt(image, name, kind, "uptake", "uptake",
                                    uptake.spect_metrics, vol.array, mask, vol.spacing_mm,
                                    admin_now)
            if kind == "dose":
                _dose_features(out, image, vol, name, mask, bed_k, fs)
            if found and name.startswith("lesion_"):
                lesions.append(found)
        if kind in ("pet", "spect") and lesions:
            key = ("mtv_ml", "tla") if kind == "pet" else ("volume_ml", "activity_mbq")
            out.add(image, "tumor_total", kind, "burden", uptake.burden(lesions, *key), "uptake")
    out.rows.extend(_deltas(out.rows))
    return out


def _dose_features(out: PatientFeatures, image: dict, vol: Volume, name: str, mask: np.ndarray,
                   bed_k: dict[tuple[int, str], float], fs: FeatureSet) -> None:
    voxel_ml = vol.voxel_volume_ml
    if out.attempt(image, name, "dose", "dvh", "dvh", dvh.dvh_metrics, vol.array, mask,
                   voxel_ml):
        out.add_dvh(image, name, "dose", vol.array, mask, voxel_ml)
    k = bed_k.get((int(image["cycle"]), name))
    if k is None:
        out.skip(image, name, "bed", "dvh", "no BED for this VOI in organ_dosimetry", "dvh")
        return
    bed = vol.like(vol.array + k * vol.array.astype(np.float64) ** 2)
    if out.attempt(image, name, "bed", "dvh", "dvh", dvh.dvh_metrics, bed.array, mask,
                   voxel_ml):
        out.add_dvh(image, name, "bed", bed.array, mask, voxel_ml)
    _radiomics(out, image, name, "bed", bed, mask, fs)


def _radiomics(out: PatientFeatures, image: dict, voi: str, kind: str, vol: Volume,
               mask: np.ndarray, fs: FeatureSet) -> None:
    """pyradiomics features, one feature_class per pyradiomics class, or one skip record."""
    settings_hash = fs.hash_for(kind)
    try:
        values = extract_radiomics(vol, mask, kind, fs)
    except ValueError as exc:
        out.skip(image, voi, kind, "radiomics", str(exc), settings_hash)
        return
    by_class: dict[str, dict[str, float]] = {}
    for (cls, name), value in values.items():
        by_class.setdefault(cls, {})[name] = value
    for cls, class_values in by_class.items():
        out.add(image, voi, kind, cls, class_values, settings_hash, ENGINE)


def _deltas(rows: list[dict]) -> list[dict]:
    """Changes of every value between consecutive cycles and from the first cycle."""
    if not rows:
        return []
    df = pd.DataFrame(rows)
    df = df[df.time_h.isna() | (df.image_kind != "spect") | df.image_id.isin(
        df[df.image_kind == "spect"].sort_values("time_h").groupby("cycle").image_id.first())]
    keys = ["voi", "image_kind", "feature_class", "feature"]
    df = df.sort_values("cycle").drop_duplicates(keys + ["cycle"])
    groups = df.groupby(keys, sort=False)
    prev_value, prev_id = groups.value.shift(), groups.id.shift()
    first_value, first_id = groups.value.transform("first"), groups.id.transform("first")
    has_prev = prev_id.notna()
    cur = df[has_prev]
    changes = {"delta": cur.value - prev_value[has_prev],
               "delta_baseline": cur.value - first_value[has_prev],
               "reldelta": ((cur.value - prev_value[has_prev]) / prev_value[has_prev].abs())
               .where(prev_value[has_prev] != 0)}
    out = []
    for i, base in zip(cur.index, cur.to_dict("records"), strict=True):
        for what in ("delta", "delta_baseline", "reldelta"):
            value = changes[what][i]
            if what == "reldelta" and pd.isna(value):
                continue
            out.append({**base, "feature_class": f"{what}:{base['feature_class']}",
                        "value": float(value), "id": stable_hash("feature", base["id"], what),
                        "input_ids": [prev_id[i], base["id"], first_id[i]]})
    return out


def _one(args: tuple[str, str, str]) -> PatientFeatures:
    lake_path, patient_id, set_name = args
    return patient_features(Lake(lake_path, create=False), patient_id, set_name)


def run_features(lake: Lake, patient_ids: Iterable[str] | None = None, set_name: str = "default",
                 workers: int = 1, progress: bool = True) -> dict[str, int]:
    """Compute and append features for patients (default: all with images) in a process pool.

    Each patient's rows are written atomically as they come back. Returns counts of feature
    rows, skip records and patients.
    """
    load_feature_set(set_name)  # fail early on a bad set
    ids = list(patient_ids) if patient_ids else sorted(
        lake.sql("SELECT DISTINCT patient_id FROM images").patient_id)
    counts = {"patients": 0, "features": 0, "errors": 0}
    tasks = [(str(lake.path), pid, set_name) for pid in ids]
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("features", total=len(tasks))
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_one, tasks)
                for res in results:
                    _write(lake, res, counts)
                    bar.advance(task)
        else:
            for t in tasks:
                _write(lake, _one(t), counts)
                bar.advance(task)
    return counts


def _write(lake: Lake, res: PatientFeatures, counts: dict[str, int]) -> None:
    counts["features"] += lake.append("features", res.rows)
    counts["errors"] += lake.append("feature_errors", res.errors)
    lake.append("dvhs", res.dvhs)
    counts["patients"] += 1


def wide(lake: Lake, where: str | None = None, params: list | None = None) -> pd.DataFrame:
    """Features as one row per patient and cycle, one column per
    ``image_kind/voi/feature_class/feature`` (the newest value of each)."""
    df = lake.read("features", where, params)
    if df.empty:
        return pd.DataFrame()
    df = df.sort_values("created_utc")
    first_time = df.groupby(["patient_id", "cycle", "image_kind"]).time_h.transform("min")
    df = df[df.time_h.isna() | (df.time_h == first_time)]
    df["column"] = df.image_kind + "/" + df.voi + "/" + df.feature_class + "/" + df.feature
    return df.pivot_table(index=["patient_id", "cycle"], columns="column", values="value",
                          aggfunc="last")
