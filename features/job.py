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

The BED map of a VOI is ``BED = D + k D²`` with ``k = G / (α/β)``: the Lea-Catcheside factor
and α/β its ``organ_dosimetry`` row stores (the quadratic term depends on the kinetics, not on
the dose). The DVH metrics are those of the dose map (no partial-volume correction; the
``dvhs`` rows say so in ``basis``), with the VOIs the cycle's dosimetry used.

``read_features(lake, patient) -> FeatureInputs`` (:mod:`theralake.features.inputs`), the
pure ``compute_features(inputs, feature_set) -> PatientFeatures`` and ``write_features(lake,
result)``.

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
from rich.progress import Progress

from theralake.dosimetry.nuclides import get_nuclide
from theralake.dosimetry.voi_activity import mask_on
from theralake.features import dvh, uptake
from theralake.features.inputs import FeatureInputs, read_features
from theralake.features.radiomics import FeatureSet, extract_radiomics, load_feature_set
from theralake.lake import Lake, Volume, stable_hash
from theralake.lake.rows import dvh_row, feature_error_row, feature_row
from theralake.lake.views import current

__all__ = ["PatientFeatures", "compute_features", "patient_features", "read_features",
           "run_features", "wide", "write_features"]

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
        basis = f"{image.get('method')} {quantity} map, voxel values (no partial-volume " \
            "correction)"
        self.dvhs.append(dvh_row(self.patient_id, image, voi, quantity, curve.volume_ml,
                                 curve.dose_gy, curve.volume_fraction, basis))

    def add(self, image: dict, voi: str, kind: str, cls: str, values: dict[str, float],
            settings_hash: str, engine: str = "theralake") -> None:
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self.rows.append(feature_row(self.patient_id, image, voi, kind, cls, name,
                                             value, settings_hash, engine))

    def skip(self, image: dict, voi: str, kind: str, cls: str, reason: str,
             settings_hash: str) -> None:
        self.errors.append(feature_error_row(self.patient_id, image, voi, kind, cls, reason,
                                             settings_hash))

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


def _administered_now(inputs: FeatureInputs, image: dict) -> float | None:
    therapy = inputs.therapy.get(image.get("cycle"))
    if therapy is None or image.get("time_h") is None:
        return None
    activity_mbq, nuclide = therapy
    return activity_mbq * math.exp(-get_nuclide(nuclide).decay_constant_per_h
                                   * float(image["time_h"]))


def compute_features(inputs: FeatureInputs, feature_set: FeatureSet | str = "default"
                     ) -> PatientFeatures:
    """All features of one patient (touches no lake)."""
    fs = load_feature_set(feature_set) if isinstance(feature_set, str) else feature_set
    out = PatientFeatures(inputs.patient_id)
    first_spect: dict[int, str] = {}
    for item in inputs.images:
        kind, image = item.kind, item.row
        vol = Volume.from_row(image)
        if kind == "pet":  # PET features are in SUVbw
            vol = vol.like(vol.array * float(image.get("suvbw_per_bqml") or np.nan))
        first = kind == "spect" and first_spect.setdefault(image["cycle"], image["id"]) \
            == image["id"]
        admin_now = _administered_now(inputs, image) if kind == "spect" else None
        lesions: list[dict[str, float]] = []
        for name, mask_vol in sorted(item.vois.items()):
            mask = mask_on(mask_vol, vol)
            if kind in ("ct", "pet", "dose") or first:
                _radiomics(out, image, name, kind, vol, mask, fs)
            found = None
            if kind == "pet":
                found = out.attempt(image, name, kind, "uptake", "uptake", uptake.pet_metrics,
                                    vol.array, mask, vol.spacing_mm, inputs.weight_kg)
            if kind == "spect":
                found = out.attempt(image, name, kind, "uptake", "uptake",
                                    uptake.spect_metrics, vol.array, mask, vol.spacing_mm,
                                    admin_now)
            if kind == "dose":
                _dose_features(out, image, vol, name, mask, inputs.bed_k_per_gy, fs)
            if found and name.startswith("lesion_"):
                lesions.append(found)
        if kind in ("pet", "spect") and lesions:
            key = ("mtv_ml", "tla") if kind == "pet" else ("volume_ml", "activity_mbq")
            out.add(image, "tumor_total", kind, "burden", uptake.burden(lesions, *key), "uptake")
    out.rows.extend(_deltas(out.rows))
    return out


def patient_features(lake: Lake, patient_id: str, feature_set: FeatureSet | str = "default"
                     ) -> PatientFeatures:
    """All features of one patient (rows not yet written)."""
    return compute_features(read_features(lake, patient_id), feature_set)


def _dose_features(out: PatientFeatures, image: dict, vol: Volume, name: str, mask: np.ndarray,
                   bed_k: dict[tuple[int, str], float], fs: FeatureSet) -> None:
    voxel_ml = vol.voxel_volume_ml
    if out.attempt(image, name, "dose", "dvh", "dvh", dvh.dvh_metrics, vol.array, mask,
                   voxel_ml):
        out.add_dvh(image, name, "dose", vol.array, mask, voxel_ml)
    k = bed_k.get((int(image["cycle"]), name))
    if k is None:
        out.skip(image, name, "bed", "dvh", "no BED kinetics for this VOI in organ_dosimetry "
                 "(no LQ parameters, or a dosimetry run of an older theralake)", "dvh")
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
        out.add(image, voi, kind, cls, class_values, settings_hash, fs.engine_version)


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
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("features", total=len(tasks))
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_one, tasks)
                for res in results:
                    write_features(lake, res, counts)
                    bar.advance(task)
        else:
            for t in tasks:
                write_features(lake, _one(t), counts)
                bar.advance(task)
    return counts


def write_features(lake: Lake, res: PatientFeatures, counts: dict[str, int] | None = None
                   ) -> dict[str, int]:
    """Append one patient's feature rows, skip records and DVHs (idempotent)."""
    counts = counts if counts is not None else {"patients": 0, "features": 0, "errors": 0}
    counts["features"] += lake.append("features", res.rows)
    counts["errors"] += lake.append("feature_errors", res.errors)
    lake.append("dvhs", res.dvhs)
    counts["patients"] += 1
    return counts


def wide(lake: Lake, where: str | None = None, params: list | None = None) -> pd.DataFrame:
    """Features as one row per patient and cycle, one column per
    ``image_kind/voi/feature_class/feature`` (the newest value of each)."""
    df = lake.read("features", where, params)
    if df.empty:
        return pd.DataFrame()
    df = current(df, ["patient_id", "cycle", "image_kind", "voi", "feature_class", "feature",
                      "time_h"])
    first_time = df.groupby(["patient_id", "cycle", "image_kind"]).time_h.transform("min")
    df = df[df.time_h.isna() | (df.time_h == first_time)]
    df["column"] = df.image_kind + "/" + df.voi + "/" + df.feature_class + "/" + df.feature
    return df.pivot_table(index=["patient_id", "cycle"], columns="column", values="value",
                          aggfunc="first")
