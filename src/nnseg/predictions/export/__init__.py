"""Logits to files in the original image space (uses nothing from the other prediction sub-packages).

* ``from_logits``: nnU-Net's ``export_prediction_from_logits``: resample to the original spacing, undo the crop,
  arg-max (or regions), write the segmentation and, if asked, ``CASE.npz``/``CASE.pkl``; ensembling of folders.
* ``slab_resample``: the same resampling applied to a few output rows at a time.
* ``streaming_export``: :class:`SlabExporter`, streamed logits exported slab by slab into the label map and ``.npz``.
* ``logit_spill``: network-resolution logits parked on disk when the network and the export stream along
  different axes.
* ``predict_io``: the ``CASE.npz`` (probabilities) and ``CASE.pkl`` (properties) files nnU-Net reads.
* ``npz_stream``: ``.npz`` files written as a stream, compressed on every core.
"""

from __future__ import annotations

from nnseg._facade import lazy_facade

_HOMES = {
    "export_prediction": "from_logits",
    "convert_logits": "from_logits",
    "write_segmentation": "from_logits",
    "ensemble_folders": "from_logits",
    "SlabExporter": "streaming_export",
    "save_probabilities_npz": "predict_io",
    "load_probabilities_npz": "predict_io",
    "save_properties_pkl": "predict_io",
    "load_properties_pkl": "predict_io",
    "NpzStreamWriter": "npz_stream",
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_facade(__name__, _HOMES)
