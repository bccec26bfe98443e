"""The organ segmenter as an MLflow ``pyfunc`` model.

The logged model holds the segmenter's own files (``weights.pt`` + ``config.json``, as written
by :meth:`OrganSegmenter.save`) as the artifact ``segmenter``; ``mlflow.pyfunc.load_model``
gives a model whose ``predict`` takes a CT array and returns its label map::

    model = mlflow.pyfunc.load_model("models:/organ-segmenter@champion")
    labels = model.predict(ct_hu_zyx.astype("float32"),
                           params={"spacing_mm": [sx, sy, sz], "origin_mm": [ox, oy, oz]})

theralake itself loads the artifact folder directly with :meth:`OrganSegmenter.load`
(``theralake.modeling.segmentation_training.load_segmenter``). Loading needs theralake installed
(the wrapper is pickled by reference); nothing is downloaded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402

from theralake.registry import tracking  # noqa: E402

ARTIFACT = "segmenter"
IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


class OrganSegmenterModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: CT in HU, ``(z, y, x)`` float32 -> labels ``(z, y, x)`` uint8.

    Params: ``spacing_mm`` and ``origin_mm`` as (x, y, z), ``direction`` as 9 row-major
    numbers (defaults 1 mm, origin 0, identity). Labels are 0 background, then the organs of
    the model's config (``organs`` in the registered version's tags) in order.
    """

    # the signature is given when logging: no type-hint validation (nor MLflow's warning)
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:  # noqa: ANN001 - mlflow PythonModelContext
        from theralake.dosimetry.segmentation import OrganSegmenter

        self.segmenter = OrganSegmenter.load(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        if isinstance(model_input, dict):  # a named tensor
            (model_input,) = model_input.values()
        return self.segmenter.predict(volume(model_input, params)).array


def volume(array: object, params: dict | None):  # noqa: ANN201 - theralake Volume
    """A float32 (z, y, x) array as a Volume with the geometry params of :func:`geometry`."""
    from theralake.lake import Volume

    params = params or {}
    return Volume(np.asarray(array, dtype=np.float32), params.get("spacing_mm", [1.0, 1.0, 1.0]),
                  params.get("origin_mm", [0.0, 0.0, 0.0]),
                  np.asarray(params.get("direction", IDENTITY), dtype=float).reshape(3, 3))


def geometry():  # noqa: ANN201 - mlflow ParamSchema
    """The params of a volume's geometry: ``spacing_mm``, ``origin_mm`` (x, y, z) and
    ``direction`` (9 row-major numbers)."""
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ParamSchema([
        ParamSpec("spacing_mm", "double", [1.0, 1.0, 1.0], (-1,)),
        ParamSpec("origin_mm", "double", [0.0, 0.0, 0.0], (-1,)),
        ParamSpec("direction", "double", IDENTITY, (-1,)),
    ])


def signature():  # noqa: ANN201 - mlflow ModelSignature
    """Input: a 3D float32 CT array; output: a 3D uint8 label array; geometry as params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
                          params=geometry())


def input_example() -> tuple[np.ndarray, dict]:
    """A tiny CT (air around a water cube, 10 mm voxels) with its geometry params."""
    ct = np.full((8, 8, 8), -1000.0, np.float32)
    ct[2:6, 2:6, 2:6] = 0.0
    return ct, {"spacing_mm": [10.0, 10.0, 10.0], "origin_mm": [0.0, 0.0, 0.0]}


REQUIREMENTS = ("theralake", "torch", "monai", "SimpleITK", "numpy", "scipy", "mlflow")


def pip_requirements(dists: tuple[str, ...] = REQUIREMENTS) -> list[str]:
    """Pinned requirements of the model (given explicitly: MLflow's inference is slow)."""
    out = []
    for dist in dists:
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def log_weights(python_model: mlflow.pyfunc.PythonModel, folder: Path, signature: object,
                input_example: object, registered_model_name: str | None = None):  # noqa: ANN201
    """Log (and register) a pyfunc model holding a saved weights folder as its artifact (the
    folder's name is the artifact's key); returns MLflow's ModelInfo."""
    return mlflow.pyfunc.log_model(
        name="model", python_model=python_model, artifacts={folder.name: str(folder)},
        signature=signature, input_example=input_example, pip_requirements=pip_requirements(),
        registered_model_name=registered_model_name)


def register_weights(lake: object, save: Callable[[Path], Path], python_model: object,
                     artifact: str, signature: object, input_example: object, name: str,
                     alias: str) -> str:
    """Save a model's weights (``save(folder)``) as the artifact ``artifact`` of a pyfunc model
    in the active run, register it as ``name`` and point ``alias`` at it; returns the version."""
    with tempfile.TemporaryDirectory(prefix="theralake-model-") as tmp:
        folder = save(Path(tmp) / artifact)
        info = log_weights(python_model, folder, signature, input_example, name)
    version = str(info.registered_model_version)
    tracking.client(lake).set_registered_model_alias(name, alias, version)
    return version
