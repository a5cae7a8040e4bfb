"""A model folder and its networks turned into logits (imports nothing from the other prediction sub-packages).

* ``options``: :class:`PredictOptions`, the one declaration of how a model predicts (folds, device, precision, ...).
* ``defaults``: nnU-Net's default folds and export configurations (no heavy imports: command-line help uses them).
* ``model_folder``: a trained model folder (plans, dataset.json, folds, checkpoints) and its networks.
* ``checkpoint``: loading checkpoints safely (the format is owned by ``nnseg.training.checkpoint``).
* ``sliding_window``: tiling, Gaussian weighting, the whole-image sliding window.
* ``streaming_window``: the same window handing finished slabs of logits downstream.
* ``tta``: mirroring test-time augmentation.
* ``memory_plan``: how much memory a case takes, the budget, and whether the one-shot or bounded path fits.
* ``predictor``: :class:`Predictor` (a loaded model on a device), its timings and report types.
* ``onnx_backend``: ONNX export and the onnxruntime backend; :func:`load_predictor` for either backend.
"""

from __future__ import annotations

from nnseg._facade import lazy_facade

_HOMES = {
    "PredictOptions": "options",
    "DEFAULT_FOLDS": "defaults",
    "TrainedModel": "model_folder",
    "load_trained_model": "model_folder",
    "resolve_model_folder": "model_folder",
    "sliding_window_predict": "sliding_window",
    "sliding_window_slabs": "streaming_window",
    "mirror_tta": "tta",
    "CaseDoesNotFit": "memory_plan",
    "memory_budget": "memory_plan",
    "plan_case": "memory_plan",
    "Predictor": "predictor",
    "PredictionReport": "predictor",
    "resolve_device": "predictor",
    "export_onnx": "onnx_backend",
    "load_predictor": "onnx_backend",
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_facade(__name__, _HOMES)
