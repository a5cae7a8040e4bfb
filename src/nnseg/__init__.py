"""nnseg: self-configuring medical image segmentation, file- and command-compatible with nnU-Net v2.

Importing nnseg does no work: no environment is read, no subprocess is started and no heavy
optional package is imported. Stage packages are imported on first use.

Data flow (each package imports only from the ones before it)::

    raw -> fingerprint -> plans -> preprocessed -> training -> predictions -> metrics
    (networks, _types, registry, jsonio and paths are shared by all stages; cli/ sits on top)
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
