"""Radiomic features by MIRP (the IBSI reference implementation), the second engine.

MIRP computes every IBSI-1 feature by its IBSI definition, so its values are stored under the
IBSI names (``"<IBSI family>: <IBSI feature>"``, spelled as in the IBSI-1 reference table) for
the 74 non-texture features of :data:`IBSI_TAGS`; its texture features keep MIRP's own tags
(``cm_joint_max_d1_3d_v_mrg``: the IBSI feature, distance and aggregation in one name), in a
class of their own (``mirp``). The settings are a feature set's ``mirp:`` block, passed to
``mirp.extract_features`` as they are (MIRP checks them); the image and mask go through
temporary NIfTI files, which keep the voxel spacing.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from theralake.features.ibsi import ibsi_key
from theralake.lake import Volume

__all__ = ["DEFAULT_SETTINGS", "IBSI_TAGS", "MIRP_ENGINE", "IBSI_CLASS", "extract_mirp"]

MIRP_ENGINE = f"mirp {version('mirp')}"

_MORPH = "morphology"
_LOC = "local intensity"
_STAT = "intensity-based statistics"
_IH = "intensity histogram"
_IVH = "intensity-volume histogram"
_SHARED = {  # statistics and intensity histogram share these feature names
    "mean": "mean", "var": "variance", "skew": "skewness", "kurt": "(excess) kurtosis",
    "median": "median", "min": "minimum", "p10": "10th percentile", "p90": "90th percentile",
    "max": "maximum", "iqr": "interquartile range", "range": "range",
    "mad": "mean absolute deviation", "rmad": "robust mean absolute deviation",
    "medad": "median absolute deviation", "cov": "coefficient of variation",
    "qcod": "quartile coefficient of dispersion",
}
#: MIRP's feature tag -> (IBSI family, IBSI feature) of the IBSI-1 reference table
IBSI_TAGS: dict[str, tuple[str, str]] = {
    "morph_volume": (_MORPH, "volume (mesh)"),
    "morph_vol_approx": (_MORPH, "volume (voxel counting)"),
    "morph_area_mesh": (_MORPH, "surface area (mesh)"),
    "morph_av": (_MORPH, "surface to volume ratio"),
    "morph_comp_1": (_MORPH, "compactness 1"),
    "morph_comp_2": (_MORPH, "compactness 2"),
    "morph_sph_dispr": (_MORPH, "spherical disproportion"),
    "morph_sphericity": (_MORPH, "sphericity"),
    "morph_asphericity": (_MORPH, "asphericity"),
    "morph_com": (_MORPH, "centre of mass shift"),
    "morph_diam": (_MORPH, "maximum 3D diameter"),
    "morph_pca_maj_axis": (_MORPH, "major axis length"),
    "morph_pca_min_axis": (_MORPH, "minor axis length"),
    "morph_pca_least_axis": (_MORPH, "least axis length"),
    "morph_pca_elongation": (_MORPH, "elongation"),
    "morph_pca_flatness": (_MORPH, "flatness"),
    "morph_vol_dens_aabb": (_MORPH, "volume density (AABB)"),
    "morph_area_dens_aabb": (_MORPH, "area density (AABB)"),
    "morph_vol_dens_aee": (_MORPH, "volume density (AEE)"),
    "morph_area_dens_aee": (_MORPH, "area density (AEE)"),
    "morph_vol_dens_conv_hull": (_MORPH, "volume density (convex hull)"),
    "morph_area_dens_conv_hull": (_MORPH, "area density (convex hull)"),
    "morph_integ_int": (_MORPH, "integrated intensity"),
    "morph_moran_i": (_MORPH, "Moran’s I index"),
    "morph_geary_c": (_MORPH, "Geary’s C measure"),
    "loc_peak_loc": (_LOC, "local intensity peak"),
    "loc_peak_glob": (_LOC, "global intensity peak"),
    **{f"stat_{tag}": (_STAT, name) for tag, name in _SHARED.items()},
    "stat_energy": (_STAT, "energy"),
    "stat_rms": (_STAT, "root mean square"),
    **{f"ih_{tag}": (_IH, name) for tag, name in _SHARED.items()},
    "ih_mode": (_IH, "mode"),
    "ih_entropy": (_IH, "entropy"),
    "ih_uniformity": (_IH, "uniformity"),
    "ih_max_grad": (_IH, "maximum histogram gradient"),
    "ih_max_grad_g": (_IH, "maximum histogram gradient intensity"),
    "ih_min_grad": (_IH, "minimum histogram gradient"),
    "ih_min_grad_g": (_IH, "minimum histogram gradient intensity"),
    "ivh_v10": (_IVH, "volume fraction at 10% intensity"),
    "ivh_v90": (_IVH, "volume fraction at 90% intensity"),
    "ivh_i10": (_IVH, "intensity at 10% volume"),
    "ivh_i90": (_IVH, "intensity at 90% volume"),
    "ivh_diff_v10_v90": (_IVH, "volume fraction difference between 10% and 90% intensity"),
    "ivh_diff_i10_i90": (_IVH, "intensity difference between 10% and 90% volume"),
}
#: the feature class an IBSI family is stored in (pyradiomics' class where it has the
#: family, so that one IBSI feature has one column whichever engine computed it)
IBSI_CLASS = {_MORPH: "shape", _LOC: "firstorder", _STAT: "firstorder", _IH: "firstorder",
              _IVH: "firstorder"}
#: MIRP's columns that describe the image and settings, not features
_DESCRIPTIVE = ("sample_", "image_")
#: the discretisation MIRP appends to a tag (``ih_mean_fbs_w1.0``: fixed bin size, width 1)
_DISCRETISATION = re.compile(r"_fb[a-z]*_[a-z][0-9.]+$")
#: the default MIRP settings of a feature set without a ``mirp:`` block
DEFAULT_SETTINGS = {"base_discretisation_method": "fixed_bin_size", "by_slice": False,
                    "intensity_normalisation": "none", "ibsi_compliant": True}


def extract_mirp(image: Volume, mask: np.ndarray, settings: dict
                 ) -> dict[tuple[str, str], float]:
    """MIRP's features ``{(feature_class, feature): value}`` of ``mask`` (on the image grid):
    IBSI keys for :data:`IBSI_TAGS`, MIRP's tags (class ``mirp``) for the rest.

    Raises:
        ValueError: MIRP rejects the settings or cannot compute the features.
    """
    from mirp import extract_features  # heavy (ITK, scikit-image): only when asked for

    logging.getLogger("mirp").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="theralake-mirp-") as tmp:
        image_path, mask_path = Path(tmp) / "image.nii.gz", Path(tmp) / "mask.nii.gz"
        sitk.WriteImage(sitk.Cast(image.to_sitk(), sitk.sitkFloat64), str(image_path))
        sitk.WriteImage(image.like(np.asarray(mask, np.uint8)).to_sitk(), str(mask_path))
        try:
            with warnings.catch_warnings():  # "not calibrated" for generic images
                warnings.simplefilter("ignore")
                tables = extract_features(image=str(image_path), mask=str(mask_path),
                                          **settings)
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:
            raise ValueError(f"mirp: {exc}") from exc
    if not tables or tables[0] is None or len(tables[0]) != 1:
        raise ValueError("mirp: no features computed for this VOI")
    row = tables[0].iloc[0]
    out: dict[tuple[str, str], float] = {}
    for tag, value in row.items():
        if str(tag).startswith(_DESCRIPTIVE):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(number):
            continue
        base = _DISCRETISATION.sub("", str(tag))
        if base in IBSI_TAGS:
            family, feature = IBSI_TAGS[base]
            out[(IBSI_CLASS[family], ibsi_key(family, feature))] = number
        else:
            out[("mirp", str(tag))] = number
    return out
