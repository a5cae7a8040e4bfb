"""One case held in memory, predicted as :func:`nnseg.predictions.run.pipeline.predict_case` predicts a file case.

The same checks (channels, 2D vs 3D and the resampling factor, then the memory plan, then NaN/inf voxels) and the
same choice between the one-shot path and the bounded path, with the label map (and probabilities) returned instead
of written. Used by :func:`nnseg.predictions.run.predict.predict_arrays` (the Python API for arrays).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nnseg._types import Geometry
from nnseg.predictions.run.bounded import (
    MemoryPolicy,
    bounded_labels,
    check_case_shape,
    shapes_of_preprocessed,
)
from nnseg.predictions.export.from_logits import convert_logits
from nnseg.predictions.run.input_checks import check_prediction_case
from nnseg.predictions.inference.memory_plan import CaseDoesNotFit, plan_for_case
from nnseg.predictions.inference.predictor import Predictor
from nnseg.raw.discover import CaseFiles

__all__ = ["check_array_case", "predict_array_case"]


def check_array_case(predictor: Predictor, image: Any, geometry: Geometry, *, name: str,
                     memory: MemoryPolicy) -> None:
    """Refuse an in-memory image ``(C, X, Y, Z)`` the model cannot take, before any work: not 4-D, the wrong channel
    count, 2D for a 3D model or an implausible resampling, a case over the memory budget (bounded path included),
    non-finite voxels. ``name`` (e.g. ``image 0``) is how messages call it.

    Raises:
        ValueError (CaseDoesNotFit for the budget) naming ``name``, the value and the fix.
    """
    shape = tuple(np.shape(image))
    if len(shape) != 4:
        raise ValueError(f"{name} has shape {shape}; pass each image as (C, X, Y, Z) (channels first, a 2D image as "
                         "(C, 1, X, Y)), as a reader returns it")
    case = CaseFiles(identifier=name, images=(Path(name),), label=None)
    check_case_shape(predictor, case, shape, tuple(float(s) for s in geometry.spacing), memory)
    model = predictor.model
    check_prediction_case([Path(name)], np.asarray(image), geometry.spacing, plans=model.plans,
                          configuration=model.configuration, configuration_name=model.configuration_name)


def predict_array_case(predictor: Predictor, image: Any, geometry: Geometry, *, name: str, memory: MemoryPolicy,
                       prev_stage: np.ndarray | None = None, return_probabilities: bool = False) -> Any:
    """The label map ``(X, Y, Z)`` of one checked image (:func:`check_array_case`), or ``(seg, probabilities)``; the
    bounded path when the preprocessed case's one-shot estimate exceeds the budget.

    Raises:
        CaseDoesNotFit: the case needs the bounded path and its probabilities are asked for (they alone exceed it).
    """
    data, props = predictor.preprocess(np.asarray(image, dtype=np.float32), geometry, prev_stage)
    plan = plan_for_case(predictor.model, name, shapes_of_preprocessed(data, props), memory.options(predictor))
    model = predictor.model
    if plan.mode == "bounded":
        if return_probabilities:
            raise CaseDoesNotFit(f"{name}: its probabilities ({model.num_outputs} x {list(image.shape[1:])} float32) do "
                                 f"not fit the memory budget ({memory.budget / 2**30:.2f} GB, {memory.budget_source}) "
                                 "in one piece; ask for the label map only, or raise max_memory_gb")
        return bounded_labels(predictor, data, props, slab_rows=plan.slab_rows, tiles_per_call=plan.tiles)
    logits = predictor.predict_logits(data)
    del data
    seg, probs = convert_logits(logits, props, plans=model.plans, configuration=model.configuration, spec=model.spec,
                                return_probabilities=return_probabilities)
    return (seg, probs) if return_probabilities else seg
