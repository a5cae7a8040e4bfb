"""The automatic models of ``nnseg serve`` (``--models``): one uploaded case through ``nnseg predict``'s flow.

Modules, in the order they depend on each other: :mod:`~nnseg.serve.automatic.models` (models loaded once per device,
the header checks and memory plan, one case end to end), :mod:`~nnseg.serve.automatic.uploads` (safe uploads: size
limit, allowed endings, temporary files), :mod:`~nnseg.serve.automatic.dicom_upload` (a zip of one DICOM series in,
NIfTI or DICOM SEG out), :mod:`~nnseg.serve.automatic.jobs` (the bounded job queue, one worker per device, memory
reserved from the server's budget) and :mod:`~nnseg.serve.automatic.service` (what the routes call: jobs from
forms, waiting for results).
"""
