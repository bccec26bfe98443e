"""Synthetic SPECT acquisitions: the truth forward-projected through theralake's SPECT system
model (attenuation, collimator-detector response), a scatter component, three energy windows
with Poisson noise, written as NM tomographic projection DICOM.

Scatter model (stated, not simulated): the photopeak's scatter is ``SCATTER_FRACTION`` of the
primary counts spread by a Gaussian of ``SCATTER_SIGMA_MM``; the lower and upper windows hold
count densities of 1.6 and 0.4 times the photopeak's mean scatter density, a trapezoid whose
TEW estimate is the photopeak scatter in expectation (on real data TEW is an approximation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from scipy import ndimage

from theralake.ingest.spect_system import Geometry, forward_project, system_matrix
from theralake.synth.grid import Grid

SCATTER_FRACTION = 0.30
SCATTER_SIGMA_MM = 40.0
#: Lu-177 energy windows (name, lower keV, upper keV): 208 keV photopeak +-10 % and its two
#: adjacent scatter windows
WINDOWS = (("Lu177_208keV", 187.2, 228.8), ("Lu177_scat_low", 166.4, 187.2),
           ("Lu177_scat_high", 228.8, 249.6))
PHOTOPEAK_KEV = 208.4
#: the synthetic cameras' collimator (a code of PyTomography's collimator table)
COLLIMATOR = "SY-ME"
ORBIT_RADIUS_MM = 280.0
#: the camera's intrinsic resolution at 208 keV (FWHM, mm)
INTRINSIC_FWHM_MM = 3.8


@dataclass
class Acquisition:
    """Counts per energy window, views (angle, r, z), and how they were taken."""

    windows: dict[str, np.ndarray]
    geometry: Geometry
    frame_duration_s: float


def geometry_of(grid: Grid, views: int) -> Geometry:
    """A 360 degree circular orbit over a SPECT grid (square transaxially)."""
    nz, ny, nx = grid.shape
    if nx != ny or not np.isclose(grid.spacing[0], grid.spacing[2]):
        raise ValueError("projections need a grid of cubic voxels, square transaxially")
    return Geometry(angles_deg=np.arange(views) * 360.0 / views,
                    radii_mm=np.full(views, ORBIT_RADIUS_MM), bins=nx, rows=nz,
                    pixel_mm=float(grid.spacing[0]), origin_mm=tuple(grid.origin))


def acquire(activity_mbq: np.ndarray, mu_per_cm: np.ndarray, grid: Grid, *, views: int,
            frame_duration_s: float, cps_per_mbq: float, rng: np.random.Generator
            ) -> Acquisition:
    """Counts of the three windows for activity (MBq per voxel) and attenuation (1/cm at the
    photopeak) on ``grid``."""
    geometry = geometry_of(grid, views)
    matrix = system_matrix(geometry, mu_per_cm=mu_per_cm,
                           collimator=COLLIMATOR, energy_kev=PHOTOPEAK_KEV,
                           intrinsic_fwhm_mm=INTRINSIC_FWHM_MM)
    primary = forward_project(matrix, activity_mbq * cps_per_mbq * frame_duration_s)
    sigma = SCATTER_SIGMA_MM / geometry.pixel_mm
    scatter = SCATTER_FRACTION * ndimage.gaussian_filter(primary, (0, sigma, sigma),
                                                         mode="constant")
    widths = [hi - lo for _, lo, hi in WINDOWS]
    expected = {WINDOWS[0][0]: primary + scatter,
                WINDOWS[1][0]: 1.6 * scatter * widths[1] / widths[0],
                WINDOWS[2][0]: 0.4 * scatter * widths[2] / widths[0]}
    counts = {k: np.clip(rng.poisson(v), 0, 65535).astype(np.uint16)
              for k, v in expected.items()}
    return Acquisition(counts, geometry, frame_duration_s)


def frames_of(views: np.ndarray) -> np.ndarray:
    """DICOM frames (rows top to bottom, columns) of views (angle, r, z): the inverse of
    PyTomography's reader (it flips the rows and transposes)."""
    return np.ascontiguousarray(np.transpose(views, (0, 2, 1))[:, ::-1, :])


def projection_dataset(base: Dataset, acq: Acquisition, *, camera: str, sop_uid: str
                       ) -> Dataset:
    """An NM image (TOMO) of the acquisition's windows, on ``base`` (patient, study, series,
    radiopharmaceutical). Views start at 180 degrees and run counter-clockwise, so view i is
    PyTomography's angle i x step."""
    g = acq.geometry
    ds = base
    n = len(g.angles_deg)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"]
    ds.PixelRepresentation = 0
    ds.Rows, ds.Columns = g.rows, g.bins
    ds.PixelSpacing = [f"{g.pixel_mm:g}", f"{g.pixel_mm:g}"]
    ds.NumberOfFrames = n * len(acq.windows)
    ds.FrameIncrementPointer = [0x00540010, 0x00540020, 0x00540050, 0x00540090]
    ds.EnergyWindowVector = [w + 1 for w in range(len(acq.windows)) for _ in range(n)]
    ds.NumberOfEnergyWindows = len(acq.windows)
    ds.DetectorVector = [1] * (n * len(acq.windows))
    ds.NumberOfDetectors = 1
    ds.RotationVector = [1] * (n * len(acq.windows))
    ds.NumberOfRotations = 1
    ds.AngularViewVector = [i + 1 for _ in acq.windows for i in range(n)]
    ds.Units = "CNTS"
    ds.CountsAccumulated = int(sum(int(v.sum()) for v in acq.windows.values()))
    ds.DeviceSerialNumber = camera
    ds.CorrectedImage = ["UNIF", "COR"]
    det = Dataset()
    top = g.origin_mm[2] + (g.rows - 1) * g.pixel_mm
    det.ImagePositionPatient = [f"{g.origin_mm[0]:.4f}", f"{g.origin_mm[1]:.4f}", f"{top:.4f}"]
    det.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    det.CollimatorType = "PARA"
    det.CollimatorGridName = COLLIMATOR
    det.StartAngle = "180"
    det.RadialPosition = [f"{r:.2f}" for r in g.radii_mm]
    ds.DetectorInformationSequence = [det]
    rot = Dataset()
    rot.StartAngle = "180"
    rot.AngularStep = f"{360.0 / n:g}"
    rot.RotationDirection = "CC"
    rot.ScanArc = "360"
    rot.ActualFrameDuration = int(round(acq.frame_duration_s * 1000))
    rot.NumberOfFramesInRotation = n
    rot.TableHeight = "0"
    ds.RotationInformationSequence = [rot]
    items = []
    for name, lo, hi in WINDOWS[:len(acq.windows)]:
        ew, rng_item = Dataset(), Dataset()
        ew.EnergyWindowName = name
        rng_item.EnergyWindowLowerLimit = f"{lo:g}"
        rng_item.EnergyWindowUpperLimit = f"{hi:g}"
        ew.EnergyWindowRangeSequence = [rng_item]
        items.append(ew)
    ds.EnergyWindowInformationSequence = items
    frames = np.concatenate([frames_of(acq.windows[name]) for name, _, _ in WINDOWS])
    ds.PixelData = frames.astype(np.uint16).tobytes()
    return ds


def write_projections(ds: Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "NM_TOMO.dcm"
    dcmwrite(path, ds, enforce_file_format=True)
    return path
