"""``nnseg serve``: a warm inference server (FastAPI + uvicorn) over :mod:`nnseg.predictions`.

Modules: :mod:`~nnseg.serve.models` (models loaded once per device, one case end to end), :mod:`~nnseg.serve.jobs`
(the bounded job queue, one worker per device), :mod:`~nnseg.serve.uploads` (safe uploads: size limit, allowed
endings, temporary files), :mod:`~nnseg.serve.auth` (bearer token), :mod:`~nnseg.serve.app` (the native REST API),
:mod:`~nnseg.serve.monai_label` (the MONAI Label subset 3D Slicer uses), :mod:`~nnseg.serve.page` (the browser
page at ``/`` and the routes only it uses) and :mod:`~nnseg.serve.server` (start-up).
fastapi and uvicorn are imported only when a server is built (``pip install nnseg[serve]``).
"""
