"""Stage 6: evaluation of segmentations (nnU-Net's ``summary.json`` metrics, optional surface metrics).

Submodules are imported explicitly (``from nnseg.metrics.evaluate import evaluate_folder``); importing this package
does no work.
"""
