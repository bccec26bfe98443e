"""Lake rows for ingested objects (pseudonymised; ids are content hashes)."""

from __future__ import annotations

import numpy as np

from theralake.ingest.dicom_images import PendingImage
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.radiopharm import Administration
from theralake.ingest.timeline import PatientTimeline
from theralake.lake import Volume, rows, stable_hash


def image_row(im: PendingImage, timeline: PatientTimeline | None, pseudo: Pseudonymizer) -> dict:
    pid = pseudo.patient_id(im.raw_patient_id)
    cycle = time_h = acquisition_h = None
    nuclide = im.nuclide
    if timeline is not None and im.acquired is not None:
        cycle, time_h, admin = timeline.place(im.acquired, im.nuclide)
        acquisition_h = round(timeline.hours(im.acquired), 6)
        time_h = None if time_h is None else round(time_h, 6)
    series_key = pseudo.uid(im.series_uid)
    frame_key = pseudo.uid(im.frame_of_reference_uid)
    row = {
        "patient_id": pid, "modality": im.modality, "kind": im.kind, "units": im.units,
        "cycle": cycle, "time_h": time_h, "acquisition_h": acquisition_h, "nuclide": nuclide,
        "suvbw_per_bqml": im.suvbw_per_bqml,
        "calibration_cps_per_mbq": im.calibration_cps_per_mbq,
        "acquisition_duration_s": im.acquisition_duration_s, "series_key": series_key,
        "frame_of_reference_key": frame_key, "description": im.description,
        "resolution_fwhm_mm": im.resolution_fwhm_mm, **im.volume.geometry_columns(),
    }
    resolution = () if im.resolution_fwhm_mm is None else (im.resolution_fwhm_mm,)
    row["id"] = im.volume.content_hash(pid, im.modality, im.units, series_key, cycle, time_h,
                                       im.suvbw_per_bqml, *resolution)
    return row


def voi_row(raw_patient_id: str, voi: str, source_name: str, mask: np.ndarray, grid: Volume,
            source: str, pseudo: Pseudonymizer, reference: dict | None,
            frame_of_reference_uid: str | None) -> dict:
    """A ``vois`` row of an imported contour (on its reference image's grid, or its own)."""
    return rows.voi_row(pseudo.patient_id(raw_patient_id), voi, grid.like(mask), reference,
                        source, source_name,
                        frame_of_reference_key=pseudo.uid(frame_of_reference_uid))


def administration_row(a: Administration, timeline: PatientTimeline,
                       pseudo: Pseudonymizer) -> dict:
    pid = pseudo.patient_id(a.raw_patient_id)
    hours = round(timeline.hours(a.time), 6)
    row = {"patient_id": pid, "cycle": a.cycle, "purpose": a.purpose, "nuclide": a.nuclide,
           "pharmaceutical": a.pharmaceutical, "activity_mbq": a.activity_mbq,
           "administration_h": hours, "source": a.source}
    row["id"] = stable_hash("administration", pid, a.nuclide, round(hours, 2), a.cycle,
                            a.activity_mbq)
    return row


def camera_key(pseudo: Pseudonymizer, camera: str | None) -> str | None:
    """A camera's key in the lake: its serial number is a device identifier (HIPAA), so the
    lake holds a keyed hash of it, the same in patients' acquisitions and calibrations."""
    return pseudo.token("camera", camera.strip()) if camera and camera.strip() else None


def projection_window_row(im: PendingImage, image: dict, pseudo: Pseudonymizer) -> dict:
    """A ``projection_windows`` row: the energy window and geometry of a projections image."""
    p = im.projection or {}
    w, g = p["window"], p["geometry"]
    row = {"patient_id": image["patient_id"], "image_id": image["id"],
           "series_key": image["series_key"], "cycle": image["cycle"],
           "time_h": image["time_h"], "window_index": w.index, "window_name": w.name,
           "lower_kev": w.lower_kev, "upper_kev": w.upper_kev, "role": w.role,
           "peak_kev": w.peak_kev, "angles_deg": [float(a) for a in g.angles_deg],
           "radii_mm": [float(r) for r in g.radii_mm], "bins": g.bins, "rows": g.rows,
           "pixel_mm": g.pixel_mm, "grid_origin_mm": [float(v) for v in g.origin_mm],
           "frame_duration_s": p["frame_duration_s"], "collimator_name": p["collimator"],
           "manufacturer": p["manufacturer"], "camera_key": camera_key(pseudo, p["camera"])}
    row["id"] = stable_hash("projection_window", image["id"], w.index)
    return row
