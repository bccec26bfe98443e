"""Every derived row of the lake is built here: VOIs, TACs, organ dosimetry, dose maps,
registrations, quality findings, features, feature errors and DVHs.

Ids are content hashes of what makes a row itself, so writing the same result twice adds
nothing. Each builder checks its columns against the table's schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from theralake.lake.schemas import SCHEMAS
from theralake.lake.store import LakeError, stable_hash
from theralake.lake.volume import Volume

__all__ = ["QUALITY_STATUSES", "dose_map_row", "dvh_row", "feature_error_row", "feature_row",
           "organ_dosimetry_row", "quality_row", "registration_row", "tac_row", "voi_row"]

#: quality statuses, from best to worst
QUALITY_STATUSES = ("pass", "warn", "fail")


def _checked(table: str, row: dict) -> dict:
    unknown = set(row) - set(SCHEMAS[table].names)
    if unknown:
        raise LakeError(f"{table}: unknown columns {sorted(unknown)}")
    return row


def voi_row(patient_id: str, voi: str, mask: Volume, image: Mapping | None, source: str,
            source_name: str | None, *, frame_of_reference_key: str | None = None,
            input_ids: Iterable[str] = (), params_hash: str | None = None,
            key: Iterable[object] = ()) -> dict:
    """A ``vois`` row: ``mask`` on the grid of ``image`` (None: on its own grid); its frame of
    reference is ``frame_of_reference_key`` when given, else the image's."""
    image = dict(image or {})
    binary = mask.like((np.asarray(mask.array) > 0).astype(np.uint8))
    count = int(binary.array.sum())
    row = {"patient_id": patient_id, "voi": voi, "image_id": image.get("id"),
           "cycle": image.get("cycle"), "time_h": image.get("time_h"), "source": source,
           "source_name": source_name, "volume_ml": count * binary.voxel_volume_ml,
           "voxel_count": count,
           "frame_of_reference_key": frame_of_reference_key
           or image.get("frame_of_reference_key"),
           **binary.geometry_columns(), "input_ids": list(input_ids), "params_hash": params_hash}
    row["id"] = binary.content_hash(patient_id, voi, image.get("id"), source, *key)
    return _checked("vois", row)


def tac_row(patient_id: str, cycle: int, voi: str, voi_id: str, time_h: float,
            activity_mbq: float, image_id: str, params_hash: str,
            sigma_mbq: float | None = None) -> dict:
    """A ``tacs`` row: one VOI's activity at one time point."""
    return _checked("tacs", {
        "id": stable_hash("tac", patient_id, cycle, voi, round(float(time_h), 4), params_hash,
                          voi_id),
        "patient_id": patient_id, "cycle": cycle, "voi": voi, "time_h": float(time_h),
        "activity_mbq": float(activity_mbq), "activity_sigma_mbq": sigma_mbq,
        "image_id": image_id, "input_ids": [image_id, voi_id], "params_hash": params_hash})


def organ_dosimetry_row(patient_id: str, cycle: int, voi: str, method: str,
                        voi_id: str | None, spect_ids: list[str], params_hash: str, *,
                        part_ids: Iterable[str] = (), **values: object) -> dict:
    """An ``organ_dosimetry`` row; ``values`` are its quantities (mass_g, tia_mbq_h, ...).
    A VOI made of others (``tumor_total``) has no ``voi_id`` and names its parts' VOI rows in
    ``part_ids``."""
    parts = sorted(part_ids)
    row = {"id": stable_hash("organ", patient_id, cycle, voi, method, params_hash, voi_id,
                             spect_ids, *([parts] if parts else [])),
           "patient_id": patient_id, "cycle": cycle, "voi": voi, "method": method,
           "voi_id": voi_id, **values,
           "input_ids": [*spect_ids, *([voi_id] if voi_id else []), *parts],
           "params_hash": params_hash}
    return _checked("organ_dosimetry", row)


def dose_map_row(patient_id: str, cycle: int, quantity: str, method: str, units: str,
                 volume: Volume, reference_ct: Mapping, spect_ids: list[str],
                 params_hash: str) -> dict:
    """A ``dose_maps`` row (``quantity`` tia or dose) on the reference SPECT grid."""
    return _checked("dose_maps", {
        "id": stable_hash("dose_map", patient_id, cycle, quantity, method, params_hash,
                          spect_ids),
        "patient_id": patient_id, "cycle": cycle, "quantity": quantity, "method": method,
        "units": units, "frame_of_reference_key": reference_ct.get("frame_of_reference_key"),
        "reference_ct_id": reference_ct["id"], **volume.geometry_columns(),
        "input_ids": spect_ids, "params_hash": params_hash})


def registration_row(patient_id: str, cycle: int | None, fixed: Mapping, moving: Mapping,
                     result: object, params_hash: str, activity_error: float | None = None,
                     dice: tuple[float | None, float | None] = (None, None)) -> dict:
    """A ``registrations`` row: the pair, its similarity, Jacobian range, organ Dice before
    and after, and its flags (``result``: a dosimetry RegistrationResult)."""
    r = result
    return _checked("registrations", {
        "id": stable_hash("registration", fixed["id"], moving["id"], params_hash),
        "patient_id": patient_id, "cycle": cycle, "fixed_image_id": fixed["id"],
        "moving_image_id": moving["id"], "time_h": moving.get("time_h"),
        "ncc_before": r.ncc_before, "ncc_after": r.ncc_after, "mi_before": r.mi_before,
        "mi_after": r.mi_after, "jacobian_min": r.jacobian_min, "jacobian_max": r.jacobian_max,
        "organ_dice_before": dice[0], "organ_dice_after": dice[1],
        "activity_error": activity_error, "failed": r.failed, "reasons": "; ".join(r.reasons),
        "input_ids": [fixed["id"], moving["id"]], "params_hash": params_hash})


def quality_row(patient_id: str, cycle: int | None, step: str, check: str, status: str,
                message: str, params_hash: str, voi: str | None = None,
                value: float | None = None, image_id: str | None = None) -> dict:
    """A ``quality`` finding: ``status`` pass, warn or fail, ``message`` the reason."""
    if status not in QUALITY_STATUSES:
        raise LakeError(f"quality status {status!r}; one of {QUALITY_STATUSES}")
    return _checked("quality", {
        "id": stable_hash("quality", patient_id, cycle, step, voi, check, message, params_hash),
        "patient_id": patient_id, "cycle": cycle, "step": step, "voi": voi, "check": check,
        "status": status, "message": message,
        "value": None if value is None else float(value), "image_id": image_id,
        "input_ids": [image_id] if image_id else [], "params_hash": params_hash})


def feature_row(patient_id: str, image: Mapping, voi: str, kind: str, cls: str, name: str,
                value: float, settings_hash: str, engine: str) -> dict:
    """A ``features`` row: one value of one VOI on one image."""
    return _checked("features", {
        "id": stable_hash("feature", patient_id, image["cycle"], voi, kind, image["id"], cls,
                          name, settings_hash),
        "patient_id": patient_id, "cycle": image["cycle"], "voi": voi, "image_kind": kind,
        "feature_class": cls, "feature": name, "value": float(value), "engine": engine,
        "settings_hash": settings_hash, "image_id": image["id"], "time_h": image.get("time_h"),
        "input_ids": [image["id"]], "params_hash": settings_hash})


def feature_error_row(patient_id: str, image: Mapping, voi: str, kind: str, cls: str,
                      reason: str, settings_hash: str) -> dict:
    """A ``feature_errors`` row: why a VOI/class could not be computed on an image."""
    return _checked("feature_errors", {
        "id": stable_hash("feature_error", patient_id, image["id"], voi, kind, cls,
                          settings_hash),
        "patient_id": patient_id, "cycle": image["cycle"], "voi": voi, "image_kind": kind,
        "feature_class": cls, "image_id": image["id"], "reason": reason,
        "input_ids": [image["id"]], "params_hash": settings_hash})


def dvh_row(patient_id: str, image: Mapping, voi: str, quantity: str, volume_ml: float,
            dose_gy: np.ndarray, volume_fraction: np.ndarray, basis: str) -> dict:
    """A ``dvhs`` row: the cumulative DVH of a VOI on a dose (or BED) map."""
    return _checked("dvhs", {
        "id": stable_hash("dvh", patient_id, image["id"], voi, quantity),
        "patient_id": patient_id, "cycle": image["cycle"], "voi": voi, "quantity": quantity,
        "image_id": image["id"], "volume_ml": volume_ml, "dose_gy": list(map(float, dose_gy)),
        "volume_fraction": list(map(float, volume_fraction)), "basis": basis,
        "input_ids": [image["id"]], "params_hash": "dvh"})
