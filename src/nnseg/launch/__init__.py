"""Running a training: one process, ``-num_gpus N`` local ranks or one rank of a torchrun job, then the final
validation (:func:`run_training` over a typed :class:`TrainRequest`).

* ``request``: :class:`TrainRequest` (what a run is asked to do) and how it becomes the training stage's fold job.
* ``train``: :func:`run_training`: train one fold, then validate it (``nnUNetv2_train``).
* ``ddp``: ``-num_gpus N`` local ranks, or one rank of a torchrun job.
* ``hooks``: the loggers and hooks every run gets.
* ``full_val``: whole-image validation during training (``--set full_val_every=N``).
* ``validate``: the final validation: predict the validation cases, evaluate them, write next-stage inputs;
  ``validate_cases`` predicts and exports the cases, ``next_stage`` writes the cascade's ``predicted_next_stage``.
"""

from __future__ import annotations

from nnseg._facade import lazy_facade

_HOMES = {
    "TrainRequest": "request",
    "TrainOutcome": "request",
    "run_training": "train",
    "final_validation": "validate",
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_facade(__name__, _HOMES)
