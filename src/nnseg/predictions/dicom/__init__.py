"""DICOM in, NIfTI or DICOM SEG out (built on ``run/``; needs ``pip install nnseg[dicom]``).

* ``dicom_predict``: each image series of a folder or zip is one case; output NIfTI or a DICOM SEG per series.
* ``dicomweb``: a study on a DICOMweb server: retrieve each series (WADO-RS), predict, store SEGs (STOW-RS), resumable.
* ``dicomweb_http``: the HTTP side (QIDO-RS search, streamed WADO-RS retrieval, STOW-RS store).
* ``dicomweb_multipart``: the streaming ``multipart/related`` parser and the size limits of a retrieval.
"""

from __future__ import annotations

from nnseg._facade import lazy_facade

_HOMES = {
    "predict_dicom": "dicom_predict",
    "SeriesRefusedError": "dicom_predict",
    "predict_dicomweb": "dicomweb",
    "DicomWebClient": "dicomweb_http",
    "DicomWebLimits": "dicomweb_multipart",
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_facade(__name__, _HOMES)
