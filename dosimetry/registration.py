"""CT-to-CT registration (rigid, then B-spline) and activity-preserving resampling.

Serial SPECT/CT time points are aligned by registering each CT onto the reference CT; the
transform then carries the SPECT (concentration times the Jacobian determinant, so that
activity is conserved) and VOI masks (nearest neighbour).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

from theralake.lake import Volume

log = logging.getLogger(__name__)


def load_preset(path: str | Path | None = None) -> dict:
    """The registration parameters: the packaged default, or a YAML file of the same shape."""
    text = Path(path).read_text() if path else resources.files("theralake.dosimetry").joinpath(
        "data/registration_default.yaml").read_text()
    preset = yaml.safe_load(text)
    for key in ("rigid", "bspline", "quality"):
        if key not in preset:
            raise ValueError(f"registration preset {path or 'default'} lacks section {key!r}")
    return preset


@dataclass
class RegistrationResult:
    """A transform mapping fixed-space points to moving-space points, with its quality."""

    transform: sitk.Transform
    ncc_before: float
    ncc_after: float
    mi_before: float
    mi_after: float
    jacobian_min: float = 1.0
    jacobian_max: float = 1.0
    failed: bool = False
    reasons: list[str] = field(default_factory=list)


def _float_image(vol: Volume) -> sitk.Image:
    return sitk.Cast(vol.to_sitk(), sitk.sitkFloat32)


def _sampling(stage: dict, voxels: int) -> list[float]:
    """The share of voxels sampled at each level: the preset's, raised so that every level
    has at least ``min_samples`` points (a coarse CT has few voxels to begin with)."""
    shares = stage["sampling_percentage"]
    levels = list(stage["shrink_factors"])
    shares = list(shares) if isinstance(shares, list | tuple) else [shares] * len(levels)
    floor = float(stage.get("min_samples", 0))
    return [min(1.0, max(float(p), floor * f**3 / voxels)) for p, f in zip(shares, levels,
                                                                          strict=True)]


def _method(stage: dict, voxels: int) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    metric = stage.get("metric", "mattes")
    if metric == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(stage["histogram_bins"]))
    elif metric == "correlation":  # same-modality (CT to CT); fast with many parameters
        reg.SetMetricAsCorrelation()
    elif metric == "mean_squares":
        reg.SetMetricAsMeanSquares()
    else:
        raise ValueError(f"unknown registration metric {metric!r}; mattes, correlation or "
                         "mean_squares")
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel(_sampling(stage, voxels), seed=7)
    reg.SetInterpolator(sitk.sitkLinear)
    # image gradients at the sample points only, not filtered over every voxel of both images
    # at every level: that set-up was most of a rigid registration's time
    reg.MetricUseFixedImageGradientFilterOff()
    reg.MetricUseMovingImageGradientFilterOff()
    reg.SetShrinkFactorsPerLevel(list(stage["shrink_factors"]))
    reg.SetSmoothingSigmasPerLevel(list(stage["smoothing_sigmas_mm"]))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


#: images above this many voxels are compared on every second voxel along each axis
SIMILARITY_MAX_VOXELS = 1_000_000


def similarity(fixed: Volume, moving: Volume, transform: sitk.Transform | None = None
               ) -> tuple[float, float]:
    """(NCC, Mattes MI) of the moving image resampled onto the fixed grid (MI: higher=better).

    MI is evaluated on every second voxel along each axis (within about 1 % of all voxels'
    value, at an eighth of the cost); for a fixed image above ``SIMILARITY_MAX_VOXELS`` both
    are, the moving image being resampled onto that coarser grid.
    """
    f = _float_image(fixed)
    coarse = np.prod(fixed.shape_xyz) > SIMILARITY_MAX_VOXELS
    if coarse:
        f = f[::2, ::2, ::2]
    m = sitk.Resample(_float_image(moving), f, transform or sitk.Transform(3, sitk.sitkIdentity),
                      sitk.sitkLinear, -1024.0)
    a, b = sitk.GetArrayViewFromImage(f).ravel(), sitk.GetArrayViewFromImage(m).ravel()
    ncc = float(np.corrcoef(a, b)[0, 1])
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(50)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(sitk.Transform(3, sitk.sitkIdentity))
    step = 1 if coarse else 2  # MI on every second voxel of the full grid
    mi = -float(reg.MetricEvaluate(f[::step, ::step, ::step], m[::step, ::step, ::step]))
    return ncc, mi


def register_ct(fixed: Volume, moving: Volume, preset: dict | None = None,
                deformable: bool | None = None) -> RegistrationResult:
    """Register ``moving`` CT onto ``fixed`` CT: rigid (Euler, MI), then optionally B-spline."""
    preset = preset or load_preset()
    f, m = _float_image(fixed), _float_image(moving)
    ncc0, mi0 = similarity(fixed, moving)
    rigid = preset["rigid"]
    init = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = _method(rigid, int(np.prod(fixed.shape_xyz)))
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(rigid["learning_rate"]), minStep=float(rigid["min_step"]),
        numberOfIterations=int(rigid["iterations"]))
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(init, inPlace=False)
    transform: sitk.Transform = reg.Execute(f, m)
    use_bspline = preset["bspline"]["enabled"] if deformable is None else deformable
    if use_bspline:
        stage = preset["bspline"]
        size_mm = np.array(fixed.shape_xyz) * np.array(fixed.spacing_mm)
        mesh = [max(1, int(round(s / float(stage["mesh_spacing_mm"])))) for s in size_mm]
        bspline = sitk.BSplineTransformInitializer(f, mesh)
        reg = _method(stage, int(np.prod(fixed.shape_xyz)))
        reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5,
                                 numberOfIterations=int(stage["iterations"]))
        reg.SetMovingInitialTransform(transform)
        reg.SetInitialTransform(bspline, inPlace=True)
        reg.Execute(f, m)
        composite = sitk.CompositeTransform(3)
        composite.AddTransform(transform)
        composite.AddTransform(bspline)
        transform = composite
    ncc1, mi1 = similarity(fixed, moving, transform)
    jac = jacobian_determinant(transform, fixed)
    result = RegistrationResult(transform, ncc0, ncc1, mi0, mi1, float(jac.min()),
                                float(jac.max()))
    flag_quality(result, preset["quality"])
    return result


def no_registration(fixed: Volume, moving: Volume) -> RegistrationResult:
    """The identity (images taken as they lie in the world), with the CTs' similarity."""
    ncc, mi = similarity(fixed, moving)
    return RegistrationResult(sitk.Transform(3, sitk.sitkIdentity), ncc, ncc, mi, mi)


def flag_quality(result: RegistrationResult, quality: dict, extra: list[str] | None = None
                 ) -> RegistrationResult:
    """Flag a registration that lowered NCC or folded space (thresholds from the preset)."""
    if result.ncc_after < result.ncc_before - 0.01:
        result.reasons.append(f"NCC fell from {result.ncc_before:.3f} to {result.ncc_after:.3f}")
    result.reasons.extend(extra or [])
    if result.jacobian_min < quality["min_jacobian"] or \
            result.jacobian_max > quality["max_jacobian"]:
        result.reasons.append(f"Jacobian range {result.jacobian_min:.2f}-"
                              f"{result.jacobian_max:.2f} outside {quality['min_jacobian']}-"
                              f"{quality['max_jacobian']}")
    result.failed = bool(result.reasons)
    if result.failed:
        log.warning("registration flagged: %s", "; ".join(result.reasons))
    return result


def jacobian_determinant(transform: sitk.Transform, grid: Volume) -> np.ndarray:
    """det(dT/dx) of the fixed-to-moving transform on the grid's voxels (z, y, x)."""
    if transform.IsLinear():  # T(x) = A x + b: det A, from the images of the unit vectors
        origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
        columns = [np.array(transform.TransformPoint(tuple(e))) - origin for e in np.eye(3)]
        return np.full(grid.array.shape, float(np.linalg.det(np.array(columns).T)))
    ref = _float_image(grid)
    field_filter = sitk.TransformToDisplacementFieldFilter()
    field_filter.SetReferenceImage(ref)
    disp = field_filter.Execute(transform)
    return sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(disp))


def resample_activity(activity: Volume, transform: sitk.Transform, grid: Volume,
                      conserve: bool = True) -> tuple[Volume, float]:
    """Move an activity-concentration map (Bq/mL) onto ``grid`` through ``transform``.

    Concentration is interpolated linearly and multiplied by the Jacobian determinant (a
    compressed region holds more activity per mL); with ``conserve`` the result is scaled so
    that the total activity equals the input's. Returns the map and the relative error in
    total activity before that scaling.
    """
    src = _float_image(activity)
    out = sitk.Resample(src, _float_image(grid), transform, sitk.sitkLinear, 0.0)
    arr = sitk.GetArrayFromImage(out).astype(np.float64)
    arr *= jacobian_determinant(transform, grid)
    total_in = float(activity.array.astype(np.float64).sum()) * activity.voxel_volume_ml
    total_out = float(arr.sum()) * grid.voxel_volume_ml
    error = (total_out - total_in) / total_in if total_in else 0.0
    if conserve and total_out > 0:
        arr *= total_in / total_out
    return grid.like(arr.astype(np.float32)), error


def resample_map(vol: Volume, transform: sitk.Transform, grid: Volume, default: float = 0.0
                 ) -> Volume:
    """Any map (CT numbers, a probability) on ``grid`` through ``transform``: linear, no
    Jacobian (use :func:`resample_activity` for activity), float32."""
    out = sitk.Resample(sitk.Cast(vol.to_sitk(), sitk.sitkFloat32), grid.to_sitk(), transform,
                        sitk.sitkLinear, default, sitk.sitkFloat32)
    return grid.like(sitk.GetArrayFromImage(out))


def resample_labels(labels: Volume, transform: sitk.Transform, grid: Volume) -> np.ndarray:
    """A label map (uint8) carried onto ``grid`` through ``transform`` (nearest neighbour)."""
    src = sitk.Cast(labels.to_sitk(), sitk.sitkUInt8)
    out = sitk.Resample(src, sitk.Cast(grid.to_sitk(), sitk.sitkUInt8), transform,
                        sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out)


def resample_mask(mask: Volume, transform: sitk.Transform, grid: Volume) -> np.ndarray:
    """A mask carried onto ``grid`` through ``transform`` (nearest neighbour), boolean."""
    return resample_labels(mask.like((mask.array > 0).astype(np.uint8)), transform, grid) > 0


def resample_masks(masks: dict[str, Volume], transform: sitk.Transform, grid: Volume
                   ) -> dict[str, np.ndarray]:
    """Several masks of one grid carried onto ``grid`` (nearest neighbour), boolean: masks
    that do not overlap share one label map, so a few resamplings carry many masks."""
    layers: list[tuple[np.ndarray, list[str]]] = []
    for name, mask in masks.items():
        m = mask.array > 0
        layer = next((lay for lay in layers if len(lay[1]) < 65535 and not (lay[0][m]).any()),
                     None)
        if layer is None:
            layer = (np.zeros(m.shape, np.uint16), [])
            layers.append(layer)
        layer[1].append(name)
        layer[0][m] = len(layer[1])
    out = {}
    like = next(iter(masks.values())) if masks else grid
    for labels, names in layers:
        src = sitk.Cast(like.like(labels).to_sitk(), sitk.sitkUInt16)
        moved = sitk.GetArrayFromImage(sitk.Resample(
            src, sitk.Cast(grid.to_sitk(), sitk.sitkUInt16), transform,
            sitk.sitkNearestNeighbor, 0))
        out.update({n: moved == i for i, n in enumerate(names, start=1)})
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity coefficient of two boolean masks."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    if total == 0:
        raise ValueError("Dice of two empty masks is undefined")
    return float(2.0 * np.logical_and(a, b).sum() / total)
