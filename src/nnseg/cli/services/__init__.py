"""The commands nnU-Net lacks, built on the workflow: the warm HTTP server and ONNX export (``serve_cmds``), DICOM to a
raw dataset (``dicom_cmds``), cross-validation on a Dask cluster (``cluster_cmds``), interactive correction
(``refine_cmds``), the HTML training report (``report_cmds``), the whole workflow on generated data (``demo_cmd``) and
where the data folders are (``paths_cmd``).

Modules here may import ``nnseg.cli.workflow`` (``cluster_cmds`` reuses ``train``'s recipe options), not the reverse.
"""
