"""The commands of nnU-Net v2's own workflow, most also an ``nnUNetv2_*`` script with nnU-Net's arguments: raw data
(``raw_cmds``), fingerprint/plan/preprocess (``plan_cmds``), training (``train_cmds``) and its torchrun entry points
(``ddp_cmds``), prediction and ensembling (``predict_cmds``), evaluation (``metrics_cmds``), model selection and
postprocessing (``select_cmds``), model zips and overlay pictures (``share_cmds``).

Modules here import only the top of ``nnseg.cli`` (``context``, ``table``, ``main``) and each other, never
``nnseg.cli.services`` (``tools/check_style.py`` checks it).
"""
