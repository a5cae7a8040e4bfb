"""How a model predicts: :class:`PredictOptions`, the one declaration of prediction options.

Every entry point takes these: :func:`nnseg.predictions.request.run_prediction` (through its
:class:`~nnseg.predictions.request.PredictRequest`), :func:`~nnseg.predictions.run.predict.predict`,
:func:`~nnseg.predictions.run.predict.predict_arrays`, :func:`~nnseg.predictions.inference.onnx_backend.load_predictor`, the
cluster's tasks and ``nnseg serve`` (``ModelOptions`` there is this class). The values are checked once, here, when
the object is made (a bad step size, tile batch, backend or backend/precision pair raises ``ValueError`` naming the
option and the fix). Importing this module does no work (no torch).

Example:
    >>> PredictOptions(folds=(0,), device="cpu", use_tta=False).replace(step_size=0.25).step_size
    0.25
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["BACKENDS", "DEFAULT_CHECKPOINT", "PRECISIONS", "PredictOptions"]

BACKENDS = ("torch", "onnxruntime")
PRECISIONS = (None, "auto", "fp32", "bf16", "fp16")
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
_DEFAULT_FOLDS: tuple[Union[int, str], ...] = (0, 1, 2, 3, 4)  # = model_folder.DEFAULT_FOLDS (kept torch-free here)


@dataclass(frozen=True)
class PredictOptions:
    """Options of one prediction run (hashable: the cluster's workers key their loaded model on it).

    Attributes:
        folds: folds whose checkpoints are averaged (``("all",)`` for the ``fold_all`` model); None: every fold
            that has ``checkpoint``.
        checkpoint: checkpoint file name in each ``fold_X``.
        device: ``cuda``, ``cuda:1``, ``cpu``, ``mps``, ``auto`` or None (auto: CUDA, then MPS, then CPU).
        precision: autocast precision ``fp32``/``bf16``/``fp16``, or None/``auto`` (bf16/fp16 where the device has it).
        step_size: sliding-window step as a fraction of the patch, in (0, 1].
        use_tta: mirroring test-time augmentation.
        tile_batch_size: tiles per network call (None: what fits the memory budget).
        accumulate_on_device: accumulate the logits on the device (False: in CPU memory).
        backend: ``torch``, or ``onnxruntime`` (the files ``nnseg export-onnx`` wrote; fp32 only).
        max_memory_gb: memory budget of one case (None: 85 % of the free RAM, or free GPU memory); a case that does
            not fit is predicted in bounded memory, one that cannot fit even so is refused before any work.
    """

    folds: tuple[Union[int, str], ...] | None = _DEFAULT_FOLDS
    checkpoint: str = DEFAULT_CHECKPOINT
    device: str | None = None
    precision: str | None = None
    step_size: float = 0.5
    use_tta: bool = True
    tile_batch_size: int | None = None
    accumulate_on_device: bool = True
    backend: str = "torch"
    max_memory_gb: float | None = None

    def __post_init__(self) -> None:
        if self.folds is not None:
            object.__setattr__(self, "folds", _folds_tuple(self.folds))
        if self.device is not None and not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))
        _check(self)

    def replace(self, **changes: Any) -> PredictOptions:
        """A copy with ``changes`` (option names as above), checked again."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown prediction option(s) {unknown}; the options are "
                            f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)


def _folds_tuple(folds: Sequence[Union[int, str]] | str | int) -> tuple[Union[int, str], ...]:
    if isinstance(folds, (str, int)):
        folds = [folds]
    return tuple(int(f) if isinstance(f, str) and f.isdigit() else f for f in folds)


def _check(options: PredictOptions) -> None:
    """The option rules (one place): each message names the option, the bad value and what to pass instead."""
    if not (isinstance(options.step_size, (int, float)) and 0 < options.step_size <= 1):
        raise ValueError(f"step_size must be in (0, 1], got {options.step_size}")
    if options.tile_batch_size is not None and options.tile_batch_size < 1:
        raise ValueError(f"tile_batch_size must be >= 1, got {options.tile_batch_size}")
    if options.backend not in BACKENDS:
        raise ValueError(f"unknown backend {options.backend!r}; use one of {BACKENDS}")
    if options.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {options.precision!r}; use auto, fp32, bf16, fp16")
    if options.backend == "onnxruntime" and options.precision not in (None, "auto", "fp32"):
        raise ValueError(f"--backend onnxruntime runs the exported fp32 graph; precision {options.precision!r} does "
                         "not apply (use --precision fp32 or auto, or the torch backend)")
    budget = options.max_memory_gb
    if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"--max-memory must be a positive number of GB, got {budget}")
