"""Organ VOIs from CT for the dosimetry run when the imported contours lack some organs.

Imported RTSTRUCT/SEG/NIfTI VOIs always take precedence: only organs missing from a CT are
segmented, and the masks are written to the lake's ``vois`` table (``source`` = the backend,
``source_name`` = the model and its version) so that later runs reuse them.

Backends (``segmentation.backend`` in the dosimetry settings):

- ``monai``: the project's organ segmenter (:mod:`theralake.dosimetry.segmentation`), from
  the user's weights folder (``segmentation.model``) or the lake's MLflow registry
  (``organ-segmenter@champion``, trained by ``theralake train-seg``).
- ``totalsegmentator``: TotalSegmentator (Wasserthal et al., Radiol Artif Intell 2023), used
  only when the package and its weights are installed; its class names are the project's.
- ``auto``: ``monai`` when the registry holds a champion, else ``totalsegmentator`` when
  installed, else none (organs without contours are then simply absent).
- ``none``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from theralake.lake import Lake, Volume

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "SegmentationUnavailable", "segment_missing_organs",
           "totalsegmentator_available"]

BACKENDS = ("auto", "monai", "totalsegmentator", "none")


class SegmentationUnavailable(RuntimeError):
    """The chosen segmentation backend cannot run here (no model, not installed)."""


def totalsegmentator_available() -> bool:
    """TotalSegmentator importable and its weights present (nothing is downloaded)."""
    if importlib.util.find_spec("totalsegmentator") is None:
        return False
    home = Path(os.environ.get("TOTALSEG_HOME_DIR", Path.home() / ".totalsegmentator"))
    return any((home / "nnunet" / "results").glob("Dataset*")) if home.exists() else False


def _totalsegmentator(organs: list[str]) -> Callable[[Volume], dict[str, np.ndarray]]:
    if not totalsegmentator_available():
        raise SegmentationUnavailable(
            "TotalSegmentator is not installed with its weights (pip install TotalSegmentator, "
            "then download the weights where TOTALSEG_HOME_DIR points)")
    import SimpleITK as sitk
    from totalsegmentator.python_api import totalsegmentator

    def run(ct: Volume) -> dict[str, np.ndarray]:
        out = {}
        with tempfile.TemporaryDirectory(prefix="theralake-ts-") as tmp:
            src, dst = Path(tmp) / "ct.nii.gz", Path(tmp) / "masks"
            sitk.WriteImage(ct.to_sitk(), str(src))
            totalsegmentator(str(src), str(dst), roi_subset=organs, quiet=True)
            for organ in organs:  # one NIfTI per class, named as the project names VOIs
                path = dst / f"{organ}.nii.gz"
                if path.exists():
                    mask = sitk.Resample(sitk.ReadImage(str(path)), ct.to_sitk(),
                                         sitk.Transform(), sitk.sitkNearestNeighbor, 0)
                    out[organ] = sitk.GetArrayFromImage(mask) > 0
        return out

    return run


@functools.lru_cache(maxsize=4)
def _monai(lake_path: str, model: str | None) -> tuple[object, str] | str:
    """The MONAI segmenter and its name, or why there is none (cached either way)."""
    from theralake.modeling.segmentation_training import DEFAULT_NAME, load_segmenter
    from theralake.registry.tracking import ModelNotFoundError

    try:
        if model and Path(model).is_dir():
            return load_segmenter(weights_dir=model), f"weights {Path(model).name}"
        name, _, alias = (model or f"{DEFAULT_NAME}@champion").partition("@")
        seg = load_segmenter(lake_path, name=name, alias=alias or "champion")
        return seg, f"{name} v{seg.registry_version_}"
    except (ModelNotFoundError, FileNotFoundError) as exc:
        return str(exc)


def _backend(lake: Lake, settings: dict, organs: list[str]
             ) -> tuple[str, str, Callable[[Volume], dict[str, np.ndarray]]] | None:
    backend = settings.get("backend", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"unknown segmentation backend {backend!r}; one of {BACKENDS}")
    if backend == "none":
        return None
    if backend in ("monai", "auto"):
        found = _monai(str(Path(lake.path).resolve()), settings.get("model"))
        if isinstance(found, str):
            if backend == "monai":
                raise SegmentationUnavailable(found)
        else:
            seg, name = found
            if not set(organs) & set(seg.config.organs):
                return None  # the model does not know the missing organs

            def run(ct: Volume) -> dict[str, np.ndarray]:
                labels = seg.predict(ct).array
                return {o: labels == i for i, o in enumerate(seg.config.organs, start=1)}

            return "ai", name, run
    if backend == "totalsegmentator" or totalsegmentator_available():
        return "totalsegmentator", "TotalSegmentator", _totalsegmentator(organs)
    return None


def segment_missing_organs(lake: Lake, ct_row: dict, organs: list[str], settings: dict
                           ) -> list[dict]:
    """Segment the organs that CT lacks, append them to ``vois`` and return the new rows.

    Raises:
        SegmentationUnavailable: an explicitly chosen backend cannot run.
    """
    have = set(lake.read("vois", "image_id = ?", [ct_row["id"]]).voi)
    missing = [o for o in organs if o not in have and o != "body"]
    if not missing:
        return []
    chosen = _backend(lake, settings, missing)
    if chosen is None:
        return []
    source, model_name, run = chosen
    ct = Volume.from_row(ct_row)
    rows = []
    for organ, mask in run(ct).items():
        if organ not in missing or not mask.any():
            continue
        vol = ct.like(mask.astype(np.uint8))
        row = {"patient_id": ct_row["patient_id"], "voi": organ, "image_id": ct_row["id"],
               "cycle": ct_row["cycle"], "time_h": ct_row["time_h"], "source": source,
               "source_name": model_name, "volume_ml": float(mask.sum() * ct.voxel_volume_ml),
               "voxel_count": int(mask.sum()),
               "frame_of_reference_key": ct_row["frame_of_reference_key"],
               **vol.geometry_columns(), "input_ids": [ct_row["id"]]}
        row["id"] = vol.content_hash(ct_row["patient_id"], organ, ct_row["id"], model_name)
        rows.append(row)
    lake.append("vois", rows)
    log.info("segmented %d organ(s) on CT %s with %s", len(rows), ct_row["id"], model_name)
    return rows
