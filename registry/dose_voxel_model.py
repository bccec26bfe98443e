"""The voxel dose network as an MLflow ``pyfunc`` model.

The logged model holds the network's own files (``weights.pt`` + ``config.json``, as written by
:meth:`VoxelDoseModel.save`) as the artifact ``voxel_dose_model``; ``mlflow.pyfunc.load_model``
gives a model whose ``predict`` takes the pre-therapy PET (SUVbw), its CT and the lesions drawn
on the PET (occupancy 0..1, zeros where there are none) on one grid and returns the dose per GBq
map (Gy/GBq) on that grid::

    model = mlflow.pyfunc.load_model("models:/theralake-dose-voxel@champion")
    dose = model.predict({"pet_suv": suv_zyx, "ct_hu": hu_zyx, "pet_lesions": lesions_zyx},
                         params={"spacing_mm": [sx, sy, sz], "origin_mm": [ox, oy, oz]})

A model trained without the lesion channel (``lesion_channel: false``) takes the first two.

theralake loads the artifact folder itself with
:func:`theralake.modeling.train_voxel.load_voxel_model` (no pickle).
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow.pyfunc  # noqa: E402
import numpy as np  # noqa: E402

from theralake.registry.segmenter_model import geometry, volume  # noqa: E402

ARTIFACT = "voxel_dose_model"
INPUTS = ("pet_suv", "ct_hu")
LESIONS = "pet_lesions"  # the third input of a model with the lesion channel


class VoxelDoseModelWrapper(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: ``{"pet_suv", "ct_hu"[, "pet_lesions"]}`` float32 ``(z, y, x)`` arrays
    on one grid ->
    dose per GBq ``(z, y, x)`` float32. Params: the grid's geometry (see
    :func:`~theralake.registry.segmenter_model.geometry`)."""

    _skip_type_hint_validation = True  # the signature is given when logging

    def load_context(self, context) -> None:  # noqa: ANN001 - mlflow PythonModelContext
        from theralake.modeling.dose_voxel import VoxelDoseModel

        self.model = VoxelDoseModel.load(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        pet, ct = (volume(model_input[k], params) for k in INPUTS)
        lesions = volume(model_input[LESIONS], params) if LESIONS in model_input else None
        return self.model.predict(pet, ct, lesions).array


def signature(lesion_channel: bool = True):  # noqa: ANN201 - mlflow ModelSignature
    """Inputs: the PET's SUV, the CT's HU and (``lesion_channel``) the PET's lesion occupancy
    (3D float32, same grid); output: Gy/GBq."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    spec = TensorSpec(np.dtype(np.float32), (-1, -1, -1))
    names = INPUTS + ((LESIONS,) if lesion_channel else ())
    return ModelSignature(
        inputs=Schema([TensorSpec(spec.type, spec.shape, name) for name in names]),
        outputs=Schema([spec]), params=geometry())


def input_example(lesion_channel: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """A tiny PET/CT (a hot water cube in air with a hotter lesion voxel, 10 mm voxels) with its
    geometry params."""
    ct = np.full((8, 8, 8), -1000.0, np.float32)
    ct[2:6, 2:6, 2:6] = 0.0
    suv = np.where(ct > -500, 4.0, 0.0).astype(np.float32)
    lesions = np.zeros_like(suv)
    lesions[3, 3, 3], suv[3, 3, 3] = 1.0, 12.0
    inputs = {"pet_suv": suv, "ct_hu": ct, **({LESIONS: lesions} if lesion_channel else {})}
    return inputs, {"spacing_mm": [10.0, 10.0, 10.0], "origin_mm": [0.0, 0.0, 0.0]}
