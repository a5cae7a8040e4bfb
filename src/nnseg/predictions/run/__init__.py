"""Cases in, files or arrays out, with every guarantee (built on ``inference/`` and ``export/``).

* ``input_checks``: checks of the output folder and of each case against the model, before any work.
* ``pipeline``: the case selection, the output-folder lock, the run-info JSON, :func:`predict_case` (the one per-case
  function every entry point calls) and the folder pipeline overlapping reading, network and writing.
* ``bounded``: a case predicted and written in bounded memory (streamed window, slab export) and the memory policy.
* ``array_case``: one case held in memory, checked and predicted like a file case.
* ``predict``: ``predict`` (a folder or file lists) and :func:`predict_arrays` (arrays in, label maps out); the
  ``predict`` function is in ``nnseg.predictions.__all__`` (here the name is the module's).
"""

from __future__ import annotations

from nnseg._facade import lazy_facade

_HOMES = {
    "check_prediction_case": "input_checks",
    "check_output_folder": "input_checks",
    "predict_case": "pipeline",
    "locked_output": "pipeline",
    "predict_case_bounded": "bounded",
    "MemoryPolicy": "bounded",
    "predict_arrays": "predict",
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_facade(__name__, _HOMES)
