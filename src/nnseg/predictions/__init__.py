"""Stage 5: prediction. Start at :func:`run_prediction` with a :class:`PredictRequest` (or :func:`predict_arrays`).

Sub-packages, each built on the ones before it:

* ``inference/``: a model folder and its networks turned into logits: :class:`PredictOptions` (``options``), the
  trained model folder and its checkpoints (``model_folder``, ``checkpoint``, ``defaults``), the sliding window whole
  (``sliding_window``) or streamed in slabs (``streaming_window``), mirroring TTA (``tta``), :class:`Predictor`
  (``predictor``), the onnxruntime backend (``onnx_backend``) and the memory estimate (``memory_plan``).
* ``export/``: logits to files in the original image space: resampling, cropping undone, arg-max and writing
  (``from_logits``, nnU-Net's ``export_prediction_from_logits``), the same slab by slab (``slab_resample``,
  ``streaming_export``, ``logit_spill``), and the ``.npz``/``.pkl`` files beside a prediction (``predict_io``,
  ``npz_stream``).
* ``run/``: cases in, files or arrays out, with every guarantee: input checks (``input_checks``), the one per-case
  function and the folder pipeline with its lock (``pipeline``), the bounded-memory path (``bounded``), in-memory
  arrays (``array_case``), and the folder/array entry points :func:`predict` and :func:`predict_arrays` (``predict``).
* ``dicom/``: DICOM folders and zips (``dicom_predict``), DICOMweb studies (``dicomweb``, ``dicomweb_http``,
  ``dicomweb_multipart``).
* ``request.py``: :class:`PredictRequest` + :func:`run_prediction`, the one request every entry point builds.

Importing this package does no work: the names below are imported from their modules on first use.
"""

from __future__ import annotations

from nnseg._facade import lazy_facade

_HOMES = {
    "PredictOptions": "inference.options",
    "PredictRequest": "request",
    "DicomWebSource": "request",
    "run_prediction": "request",
    "predict": "run.predict",
    "predict_arrays": "run.predict",
    "load_predictor": "inference.onnx_backend",
    "Predictor": "inference.predictor",
    "PredictionReport": "inference.predictor",
    "CaseDoesNotFit": "inference.memory_plan",
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_facade(__name__, _HOMES)
