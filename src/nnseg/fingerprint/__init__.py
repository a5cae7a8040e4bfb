"""Stage 1: the dataset fingerprint (``dataset_fingerprint.json``): spacings, shapes after cropping to the non-zero
region, relative size after cropping and foreground intensity statistics per channel.

``nnseg.fingerprint.fingerprint``: :class:`Fingerprint`, ``extract_fingerprint``, ``save_fingerprint``,
``load_fingerprint``; ``nnseg.fingerprint.case_stats``: the pure per-case statistics; ``nnseg.fingerprint.pool``: the
spawn worker pool shared with preprocessing (``open_pool``, ``pool_map``).
"""
