"""The synthetic cameras' calibration acquisitions: a uniform cylinder (Jaszczak-sized, 6.8 L)
and a NEMA IEC body phantom (spheres 10 to 37 mm at 40:1 over the background, a lesion-like
contrast: an iterative reconstruction recovers a sphere the better the higher its contrast),
acquired with the same system model as the patients, each written with its ``phantom.json``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import NuclearMedicineImageStorage

from theralake.ingest.phantoms import NEMA_SPHERES_MM, Phantom, Sphere, activity_bq, fractions
from theralake.ingest.spect_system import hu_to_mu
from theralake.synth.constants import LU177
from theralake.synth.dicom_writer import MANUFACTURER, UidFactory, radiopharm_item, set_file_meta
from theralake.synth.grid import Grid, centred_grid
from theralake.synth.patient import CAMERAS, FIRST_DAY
from theralake.synth.projections import (
    PHOTOPEAK_KEV,
    acquire,
    geometry_of,
    projection_dataset,
    write_projections,
)

ACQUIRED = FIRST_DAY - dt.timedelta(days=7)
#: seconds per view: long, as a calibration is acquired (the spheres' recovery needs counts)
FRAME_DURATION_S = 60.0


def phantom_grid(small: bool) -> Grid:
    """The phantoms' SPECT grid: the patients' transaxial field, 28 cm axially."""
    if small:
        return centred_grid((32, 64, 64), (8.84, 8.84, 8.84), z0=0.0)
    return centred_grid((64, 128, 128), (4.42, 4.42, 4.42), z0=0.0)


def phantoms(grid: Grid) -> dict[str, Phantom]:
    centre = (0.0, 0.0, float(grid.origin[2] + (grid.shape[0] - 1) * grid.spacing[2] / 2))
    ring = 57.2  # mm: the NEMA IEC spheres' centres around the body's axis
    angles = np.deg2rad(np.arange(6) * 60.0)
    spheres = tuple(Sphere(diameter_mm=d, centre_mm=(centre[0] + ring * float(np.cos(a)),
                                                     centre[1] + ring * float(np.sin(a)),
                                                     centre[2]))
                    for d, a in zip(NEMA_SPHERES_MM, angles, strict=True))
    return {
        "cylinder": Phantom(kind="cylinder", nuclide="Lu-177", reference_time=ACQUIRED,
                            semi_axes_mm=(108.0, 108.0), length_mm=186.0, centre_mm=centre,
                            activity_mbq=200.0),
        "nema_iec": Phantom(kind="nema_iec", nuclide="Lu-177", reference_time=ACQUIRED,
                            semi_axes_mm=(147.0, 112.0), length_mm=180.0, centre_mm=centre,
                            background_bq_per_ml=10e3, sphere_bq_per_ml=400e3,
                            spheres=spheres),
    }


def _base(camera: str, kind: str, uids: UidFactory, total_bq: float) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.PatientName = f"PHANTOM^{kind}"
    ds.PatientID = f"PHANTOM_{camera}_{kind}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids("study", kind), uids("series", kind)
    ds.FrameOfReferenceUID = uids("for", kind)
    for prefix in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{prefix}Date", ACQUIRED.strftime("%Y%m%d"))
        setattr(ds, f"{prefix}Time", ACQUIRED.strftime("%H%M%S"))
    ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ds.AccessionNumber = ""
    ds.StudyID = kind[:16]
    ds.Laterality = ds.PositionReferenceIndicator = ""
    ds.PatientOrientationCodeSequence = ds.PatientGantryRelationshipCodeSequence = []
    ds.Modality = "NM"
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"{kind} phantom Lu-177"
    ds.Manufacturer = MANUFACTURER
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.RadiopharmaceuticalInformationSequence = [
        radiopharm_item(LU177, "Lu-177 phantom", ACQUIRED, total_bq)]
    return ds


def write_phantoms(out: Path, small: bool, views: int, seed: int) -> list[Path]:
    """Each camera's cylinder and NEMA IEC acquisitions under ``out/<camera>_<kind>/``."""
    grid = phantom_grid(small)
    geometry = geometry_of(grid, views)
    written = []
    for c, (camera, cps) in enumerate(sorted(CAMERAS.items())):
        for kind, phantom in phantoms(grid).items():
            rng = np.random.default_rng(np.random.SeedSequence([seed, 9901, c, len(kind)]))
            mu = fractions(phantom, geometry)[0] * hu_to_mu(np.zeros(1), PHOTOPEAK_KEV)[0]
            bq = activity_bq(phantom, geometry)
            acq = acquire(bq * 1e-6, mu, grid, views=views,
                          frame_duration_s=FRAME_DURATION_S, cps_per_mbq=cps, rng=rng)
            uids = UidFactory(seed, f"phantom-{camera}")
            ds = projection_dataset(_base(camera, kind, uids, float(bq.sum())), acq, camera=camera,
                                    sop_uid=uids("sop", kind))
            set_file_meta(ds)
            folder = out / f"{camera}_{kind}"
            written.append(write_projections(ds, folder))
            (folder / "phantom.json").write_text(json.dumps(phantom.as_json(), indent=2))
    return written
