"""SPECT projections, reconstruction and camera calibration (issue 22): the system model's
inputs against NIST and PyTomography's own DICOM reader, TEW against its trapezoid, and the
synthetic cameras' phantoms reconstructed back to their known activities."""

from __future__ import annotations

import copy
import json

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pytomography.io.SPECT import dicom as pyt_dicom
from scipy import ndimage

from theralake.ingest.errors import IngestError
from theralake.ingest.phantom_calibration import (
    read_phantom_acquisition,
    recovery,
    sensitivity,
)
from theralake.ingest.phantoms import fractions, read_phantom
from theralake.ingest.projections import read_views, windows_of
from theralake.ingest.reconstruction import (
    ReconSettings,
    ReconstructionError,
    counts_to_bq_per_ml,
    reconstruct,
    scatter_estimate,
    tew_scatter,
)
from theralake.ingest.spect_system import UnknownCollimator, collimator_code, hu_to_mu
from theralake.synth.patient import CAMERAS
from theralake.synth.phantoms import write_phantoms

VIEWS = 24
SETTINGS = ReconSettings(iterations=8, subsets=4)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, small=True, views=VIEWS, seed=3)
    return out


def test_collimator_names_resolve_to_pytomography_codes_or_fail_naming_them():
    assert collimator_code("SY-ME") == "SY-ME"
    assert collimator_code("megp", "GE MEDICAL SYSTEMS") == "G8-MEGP"
    assert collimator_code("ME", "SIEMENS NM") == "SY-ME"
    with pytest.raises(UnknownCollimator, match="'XYZ-9'.*--collimator"):
        collimator_code("XYZ-9", "ACME")
    with pytest.raises(UnknownCollimator, match=r"'\(none\)'"):
        collimator_code("", "")


def test_attenuation_of_water_is_nist_xcom_at_the_photopeak():
    # NIST XCOM, water: mu/rho 0.1370 cm2/g at 200 keV and 0.1186 at 300 keV; log-log between
    expected = 0.1370 * (208.4 / 200.0) ** (np.log(0.1186 / 0.1370) / np.log(1.5))
    mu = hu_to_mu(np.array([-1000.0, 0.0, 1000.0]), 208.4)
    assert mu[0] == pytest.approx(0.0, abs=1e-6)
    assert mu[1] == pytest.approx(expected, rel=2e-3)
    assert mu[1] < mu[2] < 2 * mu[1]  # bone: denser, but Compton-dominated at 208 keV


def test_tew_recovers_the_scatter_under_its_trapezoid():
    rng = np.random.default_rng(0)
    scatter = rng.uniform(10, 100, (6, 8, 5)).astype(np.float32)
    widths = {"peak": 41.6, "lower": 20.8, "upper": 20.8}
    # count densities at the photopeak's edges: 1.6 and 0.4 x its mean scatter density
    lower = 1.6 * scatter / widths["peak"] * widths["lower"]
    upper = 0.4 * scatter / widths["peak"] * widths["upper"]
    assert np.allclose(tew_scatter(lower, upper, widths), scatter, rtol=1e-5)
    estimate, how, findings = scatter_estimate(
        {"photopeak": scatter, "scatter_lower": lower},
        {"photopeak": 41.6, "scatter_lower": 20.8})
    assert how == "dew" and findings[0][1] == "warn"
    assert np.allclose(estimate, 0.8 * scatter, rtol=1e-5)  # the upper edge taken as zero
    assert scatter_estimate({"photopeak": scatter}, {"photopeak": 41.6})[1] == "none"


def test_views_are_those_pytomography_reads_from_the_same_file(phantoms):
    path = phantoms / "SYNCAM01_nema_iec" / "NM_TOMO.dcm"
    ds = pydicom.dcmread(path)
    windows, views, geometry = read_views(ds, ds.pixel_array, "Lu-177", path)
    theirs = pyt_dicom.get_projections(str(path)).numpy()
    obj_meta, proj_meta = pyt_dicom.get_metadata(str(path))
    assert [w.role for w in windows] == ["photopeak", "scatter_lower", "scatter_upper"]
    for i, w in enumerate(windows):
        assert np.array_equal(views[w.index], theirs[i])
    assert np.allclose(geometry.angles_deg, proj_meta.angles.numpy())
    assert np.allclose(geometry.radii_mm / 10.0, proj_meta.radii)
    assert np.allclose(geometry.origin_mm, obj_meta.affine_matrix[:3, 3])


def _two_heads(ds: Dataset) -> Dataset:
    """The acquisition as a dual-head camera writes it: two detectors 180 degrees apart, each
    half the views, clockwise, frames detector after detector within each window."""
    out = copy.deepcopy(ds)
    n = int(ds.RotationInformationSequence[0].NumberOfFramesInRotation)
    n_win = int(ds.NumberOfEnergyWindows)
    frames = ds.pixel_array.reshape(n_win, n, *ds.pixel_array.shape[1:])
    # our views: DICOM angle 180 + step i, counter-clockwise; head 1 starts at 180 and head 2
    # at 0 going clockwise, so head 1's view j is DICOM angle 180 - step j
    step = 360.0 / n
    half = n // 2
    order = []
    for start in (180.0, 0.0):
        for j in range(half):
            angle = (start - step * j) % 360.0
            order.append(int(round(((angle - 180.0) % 360.0) / step)) % n)
    out.PixelData = np.ascontiguousarray(frames[:, order]).astype(np.uint16).tobytes()
    out.NumberOfDetectors = 2
    out.DetectorVector = [1 + (k // half) for _ in range(n_win) for k in range(n)]
    out.AngularViewVector = [1 + (k % half) for _ in range(n_win) for k in range(n)]
    heads = []
    for start in ("180", "0"):
        head = copy.deepcopy(ds.DetectorInformationSequence[0])
        head.StartAngle = start
        head.RadialPosition = [f"{250 + k:.1f}" for k in range(half)]
        heads.append(head)
    out.DetectorInformationSequence = heads
    rot = out.RotationInformationSequence[0]
    rot.RotationDirection, rot.NumberOfFramesInRotation, rot.ScanArc = "CW", half, "180"
    return out


def test_a_dual_head_clockwise_layout_reads_as_pytomography_reads_it(phantoms, tmp_path):
    ds = _two_heads(pydicom.dcmread(phantoms / "SYNCAM01_cylinder" / "NM_TOMO.dcm"))
    path = tmp_path / "dual.dcm"
    ds.save_as(path, enforce_file_format=True)
    windows, views, geometry = read_views(ds, ds.pixel_array, "Lu-177", path)
    theirs = pyt_dicom.get_projections(str(path)).numpy()
    _, proj_meta = pyt_dicom.get_metadata(str(path))
    for i, w in enumerate(windows):
        assert np.array_equal(views[w.index], theirs[i])
    assert np.allclose(geometry.angles_deg, proj_meta.angles.numpy())
    assert np.allclose(geometry.radii_mm / 10.0, proj_meta.radii)
    # and it is the same acquisition as the single-head file, views in the same order
    single = pydicom.dcmread(phantoms / "SYNCAM01_cylinder" / "NM_TOMO.dcm")
    _, views_1, geometry_1 = read_views(single, single.pixel_array, "Lu-177", path)
    assert np.allclose(geometry.angles_deg, geometry_1.angles_deg)
    assert all(np.array_equal(views[k], views_1[k]) for k in views)


def test_windows_get_roles_by_the_nuclide_lines_and_touching_edges():
    ds = Dataset()
    items = []
    for name, lo, hi in (("low", 166.4, 187.2), ("peak", 187.2, 228.8), ("high", 228.8, 249.6),
                         ("113", 101.7, 124.3), ("odd", 60.0, 80.0)):
        item, rng = Dataset(), Dataset()
        item.EnergyWindowName = name
        rng.EnergyWindowLowerLimit, rng.EnergyWindowUpperLimit = lo, hi
        item.EnergyWindowRangeSequence = [rng]
        items.append(item)
    ds.EnergyWindowInformationSequence = items
    roles = {w.name: (w.role, w.peak_kev) for w in windows_of(ds, "Lu-177", "x.dcm")}
    assert roles == {"low": ("scatter_lower", 208.4), "peak": ("photopeak", 208.4),
                     "high": ("scatter_upper", 208.4), "113": ("photopeak", 112.9),
                     "odd": ("other", None)}


def test_gated_projections_are_refused_naming_the_file(phantoms):
    path = phantoms / "SYNCAM01_cylinder" / "NM_TOMO.dcm"
    ds = pydicom.dcmread(path)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "GATED TOMO", "EMISSION"]
    with pytest.raises(IngestError, match="NM_TOMO.dcm.*gated"):
        read_views(ds, ds.pixel_array, "Lu-177", path)


@pytest.fixture(scope="module")
def cylinder(phantoms):
    acq = read_phantom_acquisition(phantoms / "SYNCAM01_cylinder")
    return acq, sensitivity(acq, SETTINGS)


def test_cylinder_gives_the_cameras_sensitivity(cylinder):
    acq, (cps, activity) = cylinder
    assert acq.camera == "SYNCAM01" and acq.collimator == "SY-ME"
    assert activity == pytest.approx(200.0 * acq.decay_factor)
    assert cps == pytest.approx(CAMERAS["SYNCAM01"], rel=0.02)


def test_uniform_cylinder_reconstructs_to_its_concentration_within_5_percent(cylinder):
    acq, (cps, _) = cylinder
    body = fractions(acq.phantom, acq.geometry)[0]
    mu = body * hu_to_mu(np.zeros(1), acq.photopeak_kev)[0]
    scatter = scatter_estimate(acq.views, acq.widths_kev)[0]
    counts = reconstruct(acq.geometry, acq.views["photopeak"], mu_per_cm=mu, scatter=scatter,
                         settings=ReconSettings(iterations=8, subsets=4, collimator="SY-ME"))
    bq_ml = counts_to_bq_per_ml(counts, cps_per_mbq=cps, frame_duration_s=acq.frame_duration_s,
                                voxel_ml=(acq.geometry.pixel_mm / 10) ** 3)
    inner = ndimage.binary_erosion(body > 0.5, iterations=2)  # 18 mm in from the wall
    true = acq.phantom.body_bq_per_ml * acq.decay_factor
    assert float(bq_ml[inner].mean()) / true == pytest.approx(1.0, abs=0.05)
    # without scatter correction the same data read too high: the correction is doing work
    plain = reconstruct(acq.geometry, acq.views["photopeak"], mu_per_cm=mu, scatter=None,
                        settings=ReconSettings(iterations=8, subsets=4, collimator="SY-ME"))
    assert float(plain[inner].mean()) / float(counts[inner].mean()) > 1.15
    # BSREM (relative-difference prior): as accurate, and smoother than OSEM inside
    smooth = reconstruct(acq.geometry, acq.views["photopeak"], mu_per_cm=mu, scatter=scatter,
                         settings=ReconSettings(method="bsrem", iterations=8, subsets=4,
                                                collimator="SY-ME"))
    assert float(smooth[inner].mean()) / float(counts[inner].mean()) == pytest.approx(1, abs=0.03)
    assert float(smooth[inner].std()) < 0.8 * float(counts[inner].std())


def test_nema_spheres_recover_more_the_larger_they_are(phantoms, cylinder):
    _, (cps, _) = cylinder
    acq = read_phantom_acquisition(phantoms / "SYNCAM01_nema_iec")
    curve = recovery(acq, SETTINGS, cps)
    rc = [s["recovery"] for s in curve]
    assert [s["diameter_mm"] for s in curve] == [10.0, 13.0, 17.0, 22.0, 28.0, 37.0]
    assert rc[-1] > rc[3] > rc[0] and 0.3 < rc[-1] < 1.0
    assert curve[0]["volume_ml"] == pytest.approx(np.pi / 6 * 1.0, rel=1e-9)


def test_phantom_descriptions_are_checked(tmp_path, phantoms):
    spec = json.loads((phantoms / "SYNCAM01_nema_iec" / "phantom.json").read_text())
    bad = tmp_path / "phantom.json"
    bad.write_text(json.dumps({k: v for k, v in spec.items() if k != "sphere_bq_per_ml"}))
    with pytest.raises(IngestError, match="phantom.json.*sphere_bq_per_ml"):
        read_phantom(bad)
    bad.write_text(json.dumps({**spec, "phantom": "jaszczak"}))
    with pytest.raises(IngestError, match="phantom.json.*'jaszczak'"):
        read_phantom(bad)
    wide = read_phantom(phantoms / "SYNCAM01_cylinder" / "phantom.json")
    acq = read_phantom_acquisition(phantoms / "SYNCAM01_cylinder")
    with pytest.raises(ValueError, match="beyond the reconstruction's field of view"):
        fractions(wide.__class__(**{**wide.__dict__, "length_mm": 400.0}), acq.geometry)


def test_reconstruction_settings_are_checked():
    with pytest.raises(ReconstructionError, match="'mlem'"):
        ReconSettings(method="mlem")
    with pytest.raises(ReconstructionError, match="at least 1"):
        ReconSettings(iterations=0)
