"""Stage 5: prediction (sliding window, mirroring TTA, checkpoint loading, export of segmentations).

Submodules are imported explicitly (``from nnseg.predictions.inference.sliding_window import sliding_window_predict``);
importing this package does no work.
"""
