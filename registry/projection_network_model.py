"""A SPECT projection network (view synthesis or denoising) as an MLflow ``pyfunc`` model.

The logged model holds the network's own files (``weights.pt`` + ``config.json``, as written
by :meth:`ProjectionNetwork.save`) as the artifact ``projection_network``; ``predict`` takes
views (angle, r, z) and returns the network's views: ``factor`` times as many (task views) or
the same denoised (task denoise); the registered version's tags say the task::

    model = mlflow.pyfunc.load_model("models:/view-synthesis@champion")
    full = model.predict(sparse_views.astype("float32"))
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402

ARTIFACT = "projection_network"


class ProjectionNetworkModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: views (angle, r, z) float32 -> the network's views float32."""

    _skip_type_hint_validation = True

    def load_context(self, context) -> None:  # noqa: ANN001 - mlflow PythonModelContext
        from theralake.ingest.projection_networks import load_network

        self.network = load_network(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        if isinstance(model_input, dict):  # a named tensor
            (model_input,) = model_input.values()
        return self.network.apply(np.asarray(model_input, dtype=np.float32))


def signature():  # noqa: ANN201 - mlflow ModelSignature
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    spec = TensorSpec(np.dtype(np.float32), (-1, -1, -1))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([spec]))


def input_example() -> np.ndarray:
    """Eight views of a 16-bin, 4-row detector with a few counts."""
    return np.random.default_rng(0).poisson(5.0, (8, 16, 4)).astype(np.float32)
