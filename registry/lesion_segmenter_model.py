"""The PET-to-SPECT lesion segmenter as an MLflow ``pyfunc`` model.

The logged model holds the segmenter's files (``pet.pt``, ``spect.pt``, ``config.json``, as
written by :meth:`LesionSegmenter.save`) as the artifact ``lesion_segmenter``. ``predict``
takes the CT, the SPECT on the CT's grid and, optionally, the PET prior, stacked as
``(2 or 3, z, y, x)`` float32, and returns the lesion probability ``(z, y, x)``::

    model = mlflow.pyfunc.load_model("models:/lesion-segmenter@champion")
    probability = model.predict(np.stack([ct_hu, spect_bqml, prior]).astype("float32"),
                                params={"spacing_mm": [sx, sy, sz], "origin_mm": [ox, oy, oz]})
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402

from theralake.registry.segmenter_model import geometry, volume  # noqa: E402

ARTIFACT = "lesion_segmenter"


class LesionSegmenterModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: (CT, SPECT[, prior]) on one grid -> lesion probability."""

    _skip_type_hint_validation = True

    def load_context(self, context) -> None:  # noqa: ANN001 - mlflow PythonModelContext
        from theralake.dosimetry.lesion_segmentation import LesionSegmenter

        self.segmenter = LesionSegmenter.load(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        if isinstance(model_input, dict):  # a named tensor
            (model_input,) = model_input.values()
        stack = np.asarray(model_input, dtype=np.float32)
        ct, spect = volume(stack[0], params), volume(stack[1], params)
        prior = volume(stack[2], params) if len(stack) > 2 else None
        return self.segmenter.probability(ct, spect, prior).array


def signature():  # noqa: ANN201 - mlflow ModelSignature
    """Input: (channels, z, y, x) float32; output: (z, y, x) float32; geometry as params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]), params=geometry())


def input_example() -> tuple[np.ndarray, dict]:
    """A water cube in air with a hot sphere, 10 mm voxels, no prior."""
    ct = np.full((8, 8, 8), -1000.0, np.float32)
    ct[1:7, 1:7, 1:7] = 0.0
    spect = np.where(ct > -500, 1.0, 0.0).astype(np.float32)
    spect[3:5, 3:5, 3:5] = 20.0
    return np.stack([ct, spect]), {"spacing_mm": [10.0, 10.0, 10.0],
                                   "origin_mm": [0.0, 0.0, 0.0]}
