"""nnU-Net's defaults of the prediction and model-sharing commands, in a module that imports nothing heavy.

The command-line parsers are built from these values, and printing ``--help`` must not import torch (it took
2-6 s); the modules that use them (``model_folder``, ``export_model``) re-export them.
"""

from __future__ import annotations

Fold = int | str
DEFAULT_FOLDS: tuple[int, ...] = (0, 1, 2, 3, 4)
EXPORT_CONFIGURATIONS: tuple[str, ...] = ("3d_lowres", "3d_fullres", "2d", "3d_cascade_fullres")
