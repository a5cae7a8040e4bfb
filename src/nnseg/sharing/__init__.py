"""Model sharing: trained models as zips, exchanged with nnU-Net (a stage after ``predictions``).

* ``export_model``: ``nnUNetv2_export_model_to_zip``: the zip nnU-Net's installer accepts.
* ``install``: ``nnUNetv2_install_pretrained_model_from_zip``, checked before anything is extracted.
* ``download``: ``nnUNetv2_download_pretrained_model_by_url``, resumable, then installed.
* ``zip_limits``: the limits on a model zip's size, compression ratio and layout, read from its central directory.
"""

from __future__ import annotations

from nnseg._facade import lazy_facade

_HOMES = {
    "export_model_zip": "export_model",
    "install_model_zip": "install",
    "download_model": "download",
    "ZipLimits": "zip_limits",
}
__all__ = list(_HOMES)
__getattr__, __dir__ = lazy_facade(__name__, _HOMES)
