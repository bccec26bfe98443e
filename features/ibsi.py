"""Map pyradiomics features to IBSI names and definitions (IBSI-1 reference manual).

``data/ibsi_feature_map.csv`` lists, one row per IBSI feature that pyradiomics provides, the
pyradiomics output name, the IBSI feature family and name (exactly as in the IBSI-1 digital
phantom reference table), the transform that turns the pyradiomics value into the IBSI one,
whether the result matches the IBSI reference on the digital phantom, and a note. Transforms:

``identity``
    pyradiomics already computes the IBSI definition.
``minus_3``
    pyradiomics ``Kurtosis`` is the Pearson kurtosis ``m4 / m2**2``; IBSI uses the excess
    kurtosis, 3 less.
``minus_1``
    IBSI asphericity is pyradiomics' ``SphericalDisproportion`` minus 1.
``unbiased_covariance``
    pyradiomics derives the major/minor/least axis lengths from the covariance of the voxel
    centres normalised by ``N``; IBSI normalises by ``N - 1`` (pyradiomics issue #610), so the
    length is scaled by ``sqrt(N / (N - 1))``, ``N`` the number of voxels in the ROI.

Several IBSI families reuse feature names (``mean`` is both an intensity-based statistic and an
intensity-histogram feature), so :func:`to_ibsi` keys its output ``"<family>: <feature>"``,
e.g. ``"intensity-based statistics: (excess) kurtosis"`` (see :func:`ibsi_key`). pyradiomics
features with no IBSI counterpart (e.g. ``TotalEnergy``, ``Maximum2DDiameterSlice``, texture
classes, filtered image types) are left out of that output; :func:`unmapped_features` lists
them. Only the ``original`` (unfiltered) image type is mapped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "FAMILIES",
    "FEATURE_MAP_PATH",
    "PHANTOM_SETTINGS",
    "TRANSFORMS",
    "compare_with_reference",
    "compliance_markdown",
    "extract_phantom_features",
    "ibsi_key",
    "load_feature_map",
    "load_reference",
    "precision_tolerance",
    "to_ibsi",
    "unmapped_features",
]

FEATURE_MAP_PATH = Path(__file__).with_name("data") / "ibsi_feature_map.csv"

#: IBSI-1 families of the non-texture features, in the order of the reference manual, with the
#: number of digital-phantom reference rows and the first feature name of each block.
FAMILIES: tuple[tuple[str, int, str], ...] = (
    ("morphology", 25, "volume (mesh)"),
    ("local intensity", 2, "local intensity peak"),
    ("intensity-based statistics", 18, "mean"),
    ("intensity histogram", 23, "mean"),
    ("intensity-volume histogram", 6, "volume fraction at 10% intensity"),
)

TRANSFORMS: dict[str, str] = {
    "identity": "value unchanged",
    "minus_3": "value - 3 (Pearson kurtosis to excess kurtosis)",
    "minus_1": "value - 1 (spherical disproportion to asphericity)",
    "unbiased_covariance": "value * sqrt(N / (N - 1)), N = ROI voxel count",
}

#: pyradiomics diagnostics that hold the ROI voxel count, most specific first (shape features are
#: computed on the resampled mask when resampling is enabled).
_VOXEL_COUNT_KEYS = (
    "diagnostics_Mask-interpolated_VoxelNum",
    "diagnostics_Mask-original_VoxelNum",
)

#: pyradiomics settings for the IBSI-1 digital phantom: no resampling, no normalisation, no
#: re-segmentation, intensities used as grey levels (bin width 1: pyradiomics places its bin
#: edges on multiples of the bin width, so the phantom's integer levels 1..6 are kept as they
#: are; it has no "bin start" setting), no intensity shift for energy / RMS, mask label 1.
PHANTOM_SETTINGS: dict[str, object] = {
    "label": 1,
    "binWidth": 1,
    "resampledPixelSpacing": None,
    "preCrop": False,
    "normalize": False,
    "resegmentRange": None,
    "voxelArrayShift": 0,
    "force2D": False,
    "correctMask": False,
    "additionalInfo": True,  # diagnostics carry the ROI voxel count (axis-length transform)
}

#: IBSI families with digital-phantom reference values -> pyradiomics classes computing them.
_PHANTOM_CLASSES = ("firstorder", "shape")

_MAP_COLUMNS = ["pyradiomics", "family", "ibsi", "transform", "matches", "note"]


def ibsi_key(family: str, feature: str) -> str:
    """Unique key of an IBSI feature: ``"<family>: <feature>"``."""
    return f"{family}: {feature}"


@cache
def _feature_map() -> pd.DataFrame:
    table = pd.read_csv(FEATURE_MAP_PATH, dtype=str, keep_default_na=False)
    if list(table.columns) != _MAP_COLUMNS:
        raise ValueError(f"{FEATURE_MAP_PATH}: columns {list(table.columns)} != {_MAP_COLUMNS}")
    unknown = set(table["transform"]) - set(TRANSFORMS)
    if unknown:
        raise ValueError(f"{FEATURE_MAP_PATH}: unknown transform(s) {sorted(unknown)}")
    flags = table["matches"].str.strip().str.lower()
    if not flags.isin(["true", "false"]).all():
        raise ValueError(f"{FEATURE_MAP_PATH}: 'matches' must be true or false")
    table["matches"] = flags == "true"
    families = {name for name, _, _ in FAMILIES}
    if not set(table["family"]) <= families:
        raise ValueError(f"{FEATURE_MAP_PATH}: unknown family {set(table['family']) - families}")
    keys = [ibsi_key(f, n) for f, n in zip(table["family"], table["ibsi"], strict=True)]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{FEATURE_MAP_PATH}: an IBSI feature is mapped twice")
    return table


def load_feature_map() -> pd.DataFrame:
    """The pyradiomics -> IBSI map (columns ``pyradiomics, family, ibsi, transform, matches,
    note``; ``matches`` is boolean), validated."""
    return _feature_map().copy()


def _voxel_count(features: Mapping[str, object], n_voxels: int | None) -> int | None:
    if n_voxels is not None:
        return int(n_voxels)
    for key in _VOXEL_COUNT_KEYS:
        if key in features:
            return int(features[key])  # type: ignore[call-overload]
    return None


def _apply(transform: str, value: float, n_voxels: int | None, name: str) -> float:
    if transform == "identity":
        return value
    if transform == "minus_3":
        return value - 3.0
    if transform == "minus_1":
        return value - 1.0
    if transform == "unbiased_covariance":
        if n_voxels is None:
            raise ValueError(
                f"{name}: the IBSI axis length needs the ROI voxel count; pass n_voxels= or keep "
                f"pyradiomics' diagnostics ({_VOXEL_COUNT_KEYS[-1]})"
            )
        if n_voxels < 2:
            return math.nan
        return value * math.sqrt(n_voxels / (n_voxels - 1))
    raise ValueError(f"unknown transform {transform!r}")  # pragma: no cover - map is validated


def to_ibsi(
    features: Mapping[str, object],
    *,
    n_voxels: int | None = None,
    include_nonmatching: bool = False,
) -> dict[str, float]:
    """pyradiomics output -> ``{ibsi_key(family, feature): value}`` in IBSI definitions.

    Only features in the map are returned (see :func:`unmapped_features` for the rest). The
    axis lengths need the ROI voxel count: ``n_voxels`` if given, else pyradiomics'
    ``diagnostics_Mask-interpolated_VoxelNum`` / ``diagnostics_Mask-original_VoxelNum`` from
    ``features`` (pass ``n_voxels`` when shape features were computed on another mask, e.g.
    with ``resegmentShape``); ``ValueError`` when it is needed and missing. Rows marked as not
    matching IBSI are left out unless ``include_nonmatching``.
    """
    count = _voxel_count(features, n_voxels)
    out: dict[str, float] = {}
    for row in _feature_map().itertuples(index=False):
        if row.pyradiomics not in features or not (row.matches or include_nonmatching):
            continue
        value = float(features[row.pyradiomics])  # type: ignore[arg-type]
        out[ibsi_key(row.family, row.ibsi)] = _apply(row.transform, value, count, row.pyradiomics)
    return out


def unmapped_features(features: Mapping[str, object]) -> list[str]:
    """pyradiomics feature names in ``features`` with no IBSI counterpart in the map
    (``diagnostics_*`` entries are not features and are not listed)."""
    mapped = set(_feature_map()["pyradiomics"])
    return sorted(k for k in features if not k.startswith("diagnostics_") and k not in mapped)


def extract_phantom_features(image_path: str | Path, mask_path: str | Path) -> dict[str, float]:
    """Run pyradiomics' ``RadiomicsFeatureExtractor`` with :data:`PHANTOM_SETTINGS`.

    Enables every firstorder and shape feature, including those pyradiomics marks deprecated
    (``Compactness1``, ``Compactness2``, ``SphericalDisproportion``, ``StandardDeviation``),
    which it leaves out of "all features". Returns the feature values as floats, plus the ROI
    voxel count diagnostic(s) used by :func:`to_ibsi`; other diagnostics are dropped.
    """
    from radiomics import featureextractor, getFeatureClasses

    classes = getFeatureClasses()
    extractor = featureextractor.RadiomicsFeatureExtractor(**PHANTOM_SETTINGS)
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(
        **{name: sorted(classes[name].getFeatureNames()) for name in _PHANTOM_CLASSES}
    )
    radiomics_log = logging.getLogger("radiomics")
    level = radiomics_log.level
    # silence "Feature ... is deprecated" warnings: those features are enabled on purpose
    radiomics_log.setLevel(logging.ERROR)
    try:
        result = extractor.execute(str(image_path), str(mask_path))
    finally:
        radiomics_log.setLevel(level)
    return {
        key: float(np.asarray(value))
        for key, value in result.items()
        if not key.startswith("diagnostics_") or key in _VOXEL_COUNT_KEYS
    }


def load_reference(path: str | Path) -> pd.DataFrame:
    """The IBSI-1 digital-phantom reference table (``feature, value, tolerance, consensus``) with
    a ``family`` column added from its block order (:data:`FAMILIES`)."""
    table = pd.read_csv(path)
    expected = sum(n for _, n, _ in FAMILIES)
    if len(table) != expected:
        raise ValueError(f"{path}: {len(table)} rows, expected {expected}")
    families: list[str] = []
    for family, count, first in FAMILIES:
        if table["feature"].iloc[len(families)] != first:
            raise ValueError(f"{path}: the {family} block does not start with {first!r}")
        families += [family] * count
    table.insert(0, "family", families)
    return table


def precision_tolerance(reference: float) -> float:
    """Half a unit in the third significant digit of ``reference``: the manual reports values
    to 3 significant digits, so this is how far a value may be from a reference given with a
    tolerance of 0 (at most 0.5 % relative)."""
    if reference == 0:
        return 1e-12
    return 0.5 * 10.0 ** (math.floor(math.log10(abs(reference))) - 2)


def compare_with_reference(
    pyradiomics_features: Mapping[str, object], reference: pd.DataFrame
) -> pd.DataFrame:
    """One row per map entry: our IBSI value, the reference, the tolerance used
    (``max(tolerance, precision_tolerance(value))``), the difference, ``within`` tolerance, and
    the map's ``matches`` claim and ``note``."""
    values = to_ibsi(pyradiomics_features, include_nonmatching=True)
    ref = reference.set_index(["family", "feature"])
    rows = []
    for row in _feature_map().itertuples(index=False):
        ref_row = ref.loc[(row.family, row.ibsi)]
        value = values.get(ibsi_key(row.family, row.ibsi), math.nan)
        target = float(ref_row["value"])
        tolerance = max(float(ref_row["tolerance"]), precision_tolerance(target))
        difference = value - target
        rows.append(
            {
                "family": row.family,
                "ibsi": row.ibsi,
                "pyradiomics": row.pyradiomics,
                "transform": row.transform,
                "value": value,
                "reference": target,
                "reference_tolerance": float(ref_row["tolerance"]),
                "tolerance_used": tolerance,
                "difference": difference,
                "within": bool(abs(difference) <= tolerance * (1 + 1e-9)),
                "matches": bool(row.matches),
                "note": row.note,
            }
        )
    return pd.DataFrame(rows)


def compliance_markdown(comparison: pd.DataFrame, reference: pd.DataFrame) -> str:
    """Markdown table of every IBSI reference feature: ours (from :func:`compare_with_reference`)
    or "not provided by pyradiomics"."""
    lines = [
        "| family | IBSI feature | pyradiomics feature | transform | our value "
        "| reference ± tolerance | match | note |",
        "|---|---|---|---|---:|---|---|---|",
    ]
    ours = comparison.set_index(["family", "ibsi"])
    for ref in reference.itertuples(index=False):
        tol = f"{ref.tolerance:g}" if ref.tolerance else f"0 (±{precision_tolerance(ref.value):g})"
        ref_text = f"{ref.value:g} ± {tol}"
        if (ref.family, ref.feature) in ours.index:
            row = ours.loc[(ref.family, ref.feature)]
            match = "yes" if row["within"] else "no"
            lines.append(
                f"| {ref.family} | {ref.feature} | `{row['pyradiomics']}` | {row['transform']} "
                f"| {row['value']:.4g} | {ref_text} | {match} | {row['note']} |"
            )
        else:
            lines.append(
                f"| {ref.family} | {ref.feature} | — | — | — | {ref_text} | — "
                "| not provided by pyradiomics |"
            )
    return "\n".join(lines) + "\n"
