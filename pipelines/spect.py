"""The SPECT work both `theralake calibrate`/`reconstruct` and `theralake run` do: calibrate
a batch of phantom acquisitions, reconstruct a patient-cycle's acquisitions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from theralake.dosimetry.quality import fit_resolution_fwhm_mm
from theralake.ingest.errors import IngestError
from theralake.ingest.phantom_calibration import (
    PhantomAcquisition,
    calibration_row,
    read_phantom_acquisition,
    recovery,
    recovery_rows,
    sensitivity,
)
from theralake.ingest.pseudonym import Pseudonymizer, lake_pseudonymizer
from theralake.ingest.reconstruction import ReconSettings
from theralake.ingest.records import camera_key
from theralake.ingest.spect_step import (
    NetworkModel,
    compute_reconstruction,
    read_acquisitions,
    write_reconstruction,
)
from theralake.lake import Lake, views
from theralake.modeling.projection_network_training import load_projection_network

#: the spheres the resolution is fitted to: an iterative reconstruction's point-spread function
#: is no Gaussian (its tails recover small spheres less than any Gaussian that fits large ones),
#: and the organs and lesions the partial-volume correction serves are the large ones
RESOLUTION_MIN_DIAMETER_MM = 22.0


def recon_settings(options: dict | None) -> ReconSettings:
    """Reconstruction settings from a settings mapping (``theralake run``'s ``reconstruct``;
    its ``views_model`` and ``denoise_model`` are read by :func:`projection_network`)."""
    keys = ("method", "iterations", "subsets", "beta")
    return ReconSettings(**{k: v for k, v in (options or {}).items() if k in keys})


def calibrate(lake: Lake, folders: list[Path], settings: ReconSettings, *, new_key: bool = False,
              pseudonymizer: Pseudonymizer | None = None,
              on_done: Callable[[], None] | None = None) -> tuple[list[dict], list[dict], dict]:
    """Calibrate the phantom acquisitions of ``folders`` (cylinders first: the sensitivities,
    then the NEMA IEC phantoms with them) and write the rows in one commit; returns the
    ``camera_calibrations`` and ``recovery_curves`` rows and each camera's key (keyed with
    ``pseudonymizer``, default the lake's).

    Raises:
        IngestError: an unreadable phantom, or a NEMA IEC phantom of a camera without a
            sensitivity (in this batch or the lake).
    """
    acqs = [read_phantom_acquisition(f) for f in folders]
    pseudo = pseudonymizer or lake_pseudonymizer(lake, new_key)
    keys = {a.camera: camera_key(pseudo, a.camera) for a in acqs}
    calibrations: list[dict] = []
    curves: list[dict] = []
    for acq in sorted(acqs, key=lambda a: a.phantom.kind != "cylinder"):
        if acq.phantom.kind == "cylinder":
            cps, activity = sensitivity(acq, settings)
            calibrations.append(calibration_row(acq, settings, cps, activity, keys[acq.camera]))
        else:
            curves += _curve(lake, acq, settings, keys[acq.camera], calibrations)
        if on_done:
            on_done()
    with lake.batch():
        lake.append("camera_calibrations", calibrations)
        lake.append("recovery_curves", curves)
    return calibrations, curves, keys


def _curve(lake: Lake, acq: PhantomAcquisition, settings: ReconSettings, key: str | None,
           calibrations: list[dict]) -> list[dict]:
    match = [c for c in calibrations if c["camera_key"] == key and
             c["collimator"] == acq.collimator and c["nuclide"] == acq.phantom.nuclide]
    cal = match[-1] if match else views.camera_calibration(
        lake, key, acq.phantom.nuclide, acq.photopeak_kev, acq.collimator)
    if cal is None:
        raise IngestError(acq.source, f"no sensitivity for camera {acq.camera} and collimator "
                          f"{acq.collimator}: calibrate a cylinder acquisition of it first (or "
                          "in the same run)")
    spheres = recovery(acq, settings, cal["cps_per_mbq"])
    large = [s for s in spheres if s["diameter_mm"] >= RESOLUTION_MIN_DIAMETER_MM]
    fwhm = fit_resolution_fwhm_mm([s["volume_ml"] for s in large], [s["recovery"] for s in large],
                                  spheres[0]["background_bq_per_ml"]
                                  / spheres[0]["sphere_bq_per_ml"])
    return recovery_rows(acq, settings, cal, [s | {"resolution_fwhm_mm": fwhm} for s in spheres])


def network_model(lake: Lake, spec: str | None, task: str) -> NetworkModel | None:
    """The projection network of a setting (a weights folder or ``name[@alias]`` in the
    lake's registry), or None.

    Raises:
        ValueError: the network does another task than ``task`` (views or denoise).
    """
    if not spec:
        return None
    network, name = load_projection_network(lake, spec)
    if network.task != task:
        raise ValueError(f"{name} is a {network.task} network, not a {task} one")
    return NetworkModel(network, name)


def projection_network(lake: Lake, views_model: str | None, denoise_model: str | None
                       ) -> NetworkModel | None:
    """The one network a reconstruction applies, from the two settings.

    Raises:
        ValueError: both given (one network per reconstruction), or the wrong task.
    """
    if views_model and denoise_model:
        raise ValueError("give a views model or a denoise model, not both: one projection "
                         "network per reconstruction")
    return network_model(lake, views_model, "views") or \
        network_model(lake, denoise_model, "denoise")


def reconstruct_cycle(lake: Lake, patient_id: str, cycle: int, settings: ReconSettings, *,
                      photopeak_kev: float = 208.4, cps_per_mbq: float | None = None,
                      collimator: str | None = None, network: NetworkModel | None = None,
                      on_done: Callable[[dict, list[str]], None] | None = None) -> list[dict]:
    """Reconstruct every acquisition of a patient-cycle (through a projection ``network``
    first, when given); returns the SPECT image rows (no voxels).
    ``on_done(image, findings)`` hears each as it is written."""
    written = []
    for inputs in read_acquisitions(lake, patient_id, cycle, photopeak_kev=photopeak_kev,
                                    cps_per_mbq=cps_per_mbq, collimator=collimator):
        result = compute_reconstruction(inputs, settings, cps_per_mbq, network)
        image = write_reconstruction(lake, inputs, result)
        written.append(image)
        if on_done:
            on_done(image, [m for _, status, m in result.findings if status != "pass"])
    return written
