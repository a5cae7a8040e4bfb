"""``nnseg serve``: a warm inference server (FastAPI + uvicorn) over :mod:`nnseg.predictions`.

Top level (the server itself): :mod:`~nnseg.serve.server` (start-up), :mod:`~nnseg.serve.app` (the native REST API),
:mod:`~nnseg.serve.auth` (bearer token, Host and Origin rules), :mod:`~nnseg.serve.timeouts` (slow-client limits),
:mod:`~nnseg.serve.memory` (the one memory budget that jobs and interactive sessions share) and
:mod:`~nnseg.serve.monai_label` (the MONAI Label subset 3D Slicer uses).

Sub-packages: :mod:`~nnseg.serve.automatic` (automatic models: loading, uploads, DICOM zips, the job queue and the
service layer the routes call), :mod:`~nnseg.serve.interactive` (nnInteractive's server protocol for
``--interactive``) and :mod:`~nnseg.serve.page` (the browser page at ``/`` and the routes only it uses).
fastapi and uvicorn are imported only when a server is built (``pip install nnseg[serve]``).
"""
