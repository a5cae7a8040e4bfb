"""The browser page of ``nnseg serve`` (``GET /``): the built single-page app and the few routes only it needs.

:mod:`~nnseg.serve.page.routes` serves the page and its assets (from ``static/``, built from the repository's
``web/`` folder with npm and shipped inside the package, so no Node.js is needed to run it) with a strict
Content-Security-Policy; :mod:`~nnseg.serve.page.info` describes a model for display (label colours, whether DICOM
and a training report are available) and renders its training report; :mod:`~nnseg.serve.page.dicom` converts an
uploaded DICOM series zip to the image the page shows and writes a (corrected) label map as a DICOM SEG.
"""
