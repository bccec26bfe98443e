"""Radiomic features of one image and one VOI with pyradiomics (pyradiomics-bhklab build) or
MIRP (the IBSI reference implementation, :mod:`.mirp_engine`).

A *feature set* is a pyradiomics parameter file (``features/data/sets/NAME.yaml``, or a path)
with three optional keys of theralake's: ``engine`` (``pyradiomics``, the default, or
``mirp``), ``mirp`` (MIRP's settings) and ``bin_width`` (one width for every image kind).
Otherwise the bin width is set per image kind from ``features/data/bin_widths.yaml`` (fixed
bin size in the image's units, IBSI; MIRP's bins start at the kind's lower bound,
:data:`LOWER_BOUNDS`). The effective settings and the engine are
hashed (:attr:`FeatureSet.hash_for`) and the hash is stored with every feature row. A feature
computed by the IBSI definition is stored under its IBSI name (pyradiomics' through
:func:`theralake.features.ibsi.to_ibsi`, MIRP's all 74 IBSI-1 ones); any other under the
engine's own name (pyradiomics' texture features with its own grey-level numbering, MIRP's
texture tags).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

from theralake.features.ibsi import ibsi_key, load_feature_map, to_ibsi
from theralake.features.mirp_engine import DEFAULT_SETTINGS, MIRP_ENGINE, extract_mirp
from theralake.lake import Volume
from theralake.lake.volume import bounding_box

__all__ = ["ENGINE", "ENGINES", "FeatureSet", "LOWER_BOUNDS", "extract_radiomics",
           "load_feature_set"]

log = logging.getLogger(__name__)


def _engine() -> str:
    from importlib.metadata import version

    return f"pyradiomics {version('pyradiomics-bhklab')}"


ENGINE = _engine()
ENGINES = ("pyradiomics", "mirp")
#: MIRP's fixed bins start here per image kind (IBSI: the re-segmentation range's lower
#: bound; CT at air)
LOWER_BOUNDS = {"ct": -1000.0, "pet": 0.0, "spect": 0.0, "dose": 0.0, "bed": 0.0}
MAX_GREY_LEVELS = 1000  # beyond this the texture matrices say more about units than tissue


@dataclass(frozen=True)
class FeatureSet:
    """A named parameter set, its engine and the bin width per image kind."""

    name: str
    params: dict
    bin_widths: dict[str, float]
    engine: str = "pyradiomics"
    mirp: dict | None = None

    @property
    def engine_version(self) -> str:
        """The engine and its version, stored with every feature row."""
        return MIRP_ENGINE if self.engine == "mirp" else ENGINE

    def with_engine(self, engine: str | None) -> FeatureSet:
        """The same set computed by another engine (None: unchanged).

        Raises:
            ValueError: an unknown engine.
        """
        if engine is None:
            return self
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; one of {', '.join(ENGINES)}")
        return dataclasses.replace(self, engine=engine)

    def mirp_settings_for(self, kind: str) -> dict:
        """MIRP's settings for an image kind: the set's (or :data:`DEFAULT_SETTINGS`), with
        the kind's bin width and lower bound where fixed bins are asked for and not given."""
        settings = json.loads(json.dumps(self.mirp if self.mirp is not None
                                         else DEFAULT_SETTINGS))
        if settings.get("base_discretisation_method") == "fixed_bin_size":
            if kind not in self.bin_widths:
                raise ValueError(f"feature set {self.name}: no bin width for image kind "
                                 f"{kind!r}")
            settings.setdefault("base_discretisation_bin_width", float(self.bin_widths[kind]))
            settings.setdefault("resegmentation_intensity_range",
                                [LOWER_BOUNDS.get(kind, 0.0), math.inf])
        return settings

    def params_for(self, kind: str) -> dict:
        params = json.loads(json.dumps(self.params))
        if kind not in self.bin_widths:
            raise ValueError(f"feature set {self.name}: no bin width for image kind {kind!r}")
        params.setdefault("setting", {})["binWidth"] = float(self.bin_widths[kind])
        return params

    def hash_for(self, kind: str) -> str:
        params = self.params_for(kind) if self.engine == "pyradiomics" else \
            self.mirp_settings_for(kind)
        text = json.dumps({"engine": self.engine_version, "params": params}, sort_keys=True,
                          default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_feature_set(name: str = "default") -> FeatureSet:
    """A packaged set by name (``features/data/sets/NAME.yaml``) or a YAML file path.

    Raises:
        ValueError: unknown set name or a file pyradiomics rejects.
    """
    data = resources.files("theralake.features").joinpath("data")
    path = Path(name) if name.endswith((".yaml", ".yml")) else None
    if path is None:
        packaged = data.joinpath(f"sets/{name}.yaml")
        if not packaged.is_file():
            known = sorted(p.name[:-5] for p in data.joinpath("sets").iterdir()
                           if p.name.endswith(".yaml"))
            raise ValueError(f"unknown feature set {name!r}; packaged sets: {', '.join(known)}")
        text = packaged.read_text()
    else:
        if not path.is_file():
            raise ValueError(f"{path}: no such feature-set file")
        text = path.read_text()
    params = yaml.safe_load(text) or {}
    engine = params.pop("engine", "pyradiomics")
    mirp = params.pop("mirp", None)
    bin_width = params.pop("bin_width", None)
    if engine not in ENGINES:
        raise ValueError(f"feature set {name}: unknown engine {engine!r}; one of "
                         f"{', '.join(ENGINES)}")
    if mirp is not None and not isinstance(mirp, dict):
        raise ValueError(f"feature set {name}: 'mirp' must be a mapping of MIRP settings")
    _validate(params, name)
    widths = yaml.safe_load(data.joinpath("bin_widths.yaml").read_text())
    if bin_width is not None:  # the set's own width for every kind
        widths = {kind: bin_width for kind in widths}
    return FeatureSet(Path(name).stem, params, {k: float(v) for k, v in widths.items()},
                      engine, mirp)


def _validate(params: dict, name: str) -> None:
    from radiomics import featureextractor

    try:
        featureextractor.RadiomicsFeatureExtractor(params)
    except Exception as exc:  # pykwalify's schema errors
        raise ValueError(f"feature set {name}: pyradiomics rejects it: {exc}") from exc


@functools.cache
def _ibsi_names() -> dict[str, tuple[str, ...]]:
    """pyradiomics feature name -> its IBSI keys (read once, not per VOI): one pyradiomics
    value can give several IBSI features (``SphericalDisproportion`` gives spherical
    disproportion and asphericity)."""
    out: dict[str, tuple[str, ...]] = {}
    for r in load_feature_map().itertuples(index=False):
        out[r.pyradiomics] = (*out.get(r.pyradiomics, ()), ibsi_key(r.family, r.ibsi))
    return out


@functools.lru_cache(maxsize=16)
def _extractor(params_json: str):  # noqa: ANN202 (pyradiomics object)
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return featureextractor.RadiomicsFeatureExtractor(json.loads(params_json))


def _voxel_count(raw: dict, params: dict, image: Volume) -> int | None:
    """The ROI's voxel count on the grid the shape features used (their voxel volume over one
    voxel's), so that pyradiomics' diagnostics (``additionalInfo``, which hashes every image)
    can stay off."""
    volume = raw.get("original_shape_VoxelVolume")
    if volume is None:
        return None
    spacing = resampled_spacing(params["setting"].get("resampledPixelSpacing"),
                                image.spacing_mm)
    return round(float(volume) / float(np.prod(spacing)))


def resampled_spacing(asked: list | tuple | None, native_mm: tuple[float, ...]
                      ) -> tuple[float, ...]:
    """The spacing pyradiomics resamples to: ``resampledPixelSpacing`` with a 0 meaning
    "keep that axis" (as pyradiomics reads it), the native spacing without one."""
    if not asked:
        return tuple(float(v) for v in native_mm)
    return tuple(float(n) if float(a) == 0 else float(a) for a, n in zip(asked, native_mm,
                                                                          strict=True))


def _crop_box(mask: np.ndarray, setting: dict, spacing_mm) -> tuple[slice, ...] | None:  # noqa: ANN001
    """The VOI's box with a margin wider than pyradiomics' own crop (``padDistance`` voxels),
    or None where cropping could change a value: a resampling grid is anchored to the
    image's corner (and B-spline weights see the whole image), and without ``preCrop``
    filters see the whole image."""
    target = setting.get("resampledPixelSpacing")
    if target and not np.allclose(resampled_spacing(target, spacing_mm), spacing_mm):
        return None
    if not target and not setting.get("preCrop"):
        return None
    return bounding_box(mask, int(setting.get("padDistance", 5)) + 2)


def extract_radiomics(image: Volume, mask: np.ndarray, kind: str, feature_set: FeatureSet
                      ) -> dict[tuple[str, str], float]:
    """Radiomic features ``{(feature_class, feature): value}`` of ``mask`` (on the image grid).

    Raises:
        ValueError: mask not on the image grid, empty, or too small for the set; NaN or
            infinite intensities inside the VOI.
    """
    m = np.asarray(mask, bool)
    if m.shape != image.array.shape:
        raise ValueError(f"mask shape {m.shape} is not the image's {image.array.shape}")
    if m.sum() < 2:
        raise ValueError(f"VOI has {int(m.sum())} voxel(s) on the image grid")
    values = image.array[m]
    if not np.all(np.isfinite(values)):
        raise ValueError("image has NaN or infinite values inside the VOI")
    if feature_set.engine == "mirp":
        return extract_mirp(image, m, feature_set.mirp_settings_for(kind))
    params = feature_set.params_for(kind)
    levels = (values.max() - values.min()) / params["setting"]["binWidth"]
    if levels > MAX_GREY_LEVELS:
        raise ValueError(f"{levels:.0f} grey levels at bin width {params['setting']['binWidth']}"
                         f" for a {kind} image (more than {MAX_GREY_LEVELS}: wrong units?)")
    extractor = _extractor(json.dumps(params, sort_keys=True))
    box = _crop_box(m, params["setting"], image.spacing_mm)
    if box is not None:  # pyradiomics crops too: same values, without scanning the whole image
        image, m = image.crop(box), m[box]
    img = sitk.Cast(image.to_sitk(), sitk.sitkFloat64)
    msk = image.like(m.astype(np.uint8)).to_sitk()
    try:
        raw = extractor.execute(img, msk, label=1)
    except (ValueError, RuntimeError, IndexError) as exc:
        raise ValueError(f"pyradiomics: {exc}") from exc
    # IBSI names and definitions where pyradiomics has the feature
    ibsi = to_ibsi(raw, n_voxels=_voxel_count(raw, params, image))
    names = _ibsi_names()
    out: dict[tuple[str, str], float] = {}
    for key, raw_value in raw.items():
        if key.startswith("diagnostics_"):
            continue
        image_type, feature_class, name = key.split("_", 2)
        cls = feature_class if image_type == "original" else f"{image_type}:{feature_class}"
        mapped = {k: ibsi[k] for k in names.get(key, ()) if k in ibsi}
        for feature, value in (mapped or {name: float(raw_value)}).items():
            if np.isfinite(value):
                out[(cls, feature)] = value
    return out
