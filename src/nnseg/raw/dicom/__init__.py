"""DICOM in and out: series discovery, geometry checks, volume reading, DICOM SEG writing, ``convert-dicom``.

pydicom, highdicom and dicomweb-client are optional (``pip install nnseg[dicom]``); every module imports them inside
the functions that need them, through :func:`require`, so ``import nnseg`` stays light.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str) -> ModuleType:
    """Import an optional DICOM library, or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"DICOM support needs {module.split('.')[0]} ({e}); install it with: "
                          "pip install nnseg[dicom]") from None
