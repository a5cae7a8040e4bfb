"""Reading nnU-Net's pickles (``CASE.pkl`` properties, ``postprocessing.pkl``) without running their code.

nnseg never pickles its own artifacts, but nnU-Net writes a few pickles that nnseg must read. Only numpy arrays,
dtypes and scalars, a few plain containers, and the extra names a caller allows are ever built; any other global is
refused by name, so a crafted file cannot import or call anything.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}


def numpy_globals() -> dict[tuple[str, str], Any]:
    """The numpy internals a pickled array, dtype or scalar refers to (numpy 1 and 2 module names)."""
    core = np._core if hasattr(np, "_core") else np.core  # type: ignore[attr-defined]
    out: dict[tuple[str, str], Any] = {}
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        out[(module, "scalar")] = core.multiarray.scalar
        out[(module, "_reconstruct")] = core.multiarray._reconstruct
    for module in ("numpy._core.numeric", "numpy.core.numeric"):
        out[(module, "_frombuffer")] = core.numeric._frombuffer
    dtypes = getattr(np, "dtypes", None)
    for name in dir(dtypes) if dtypes is not None else []:
        obj = getattr(dtypes, name)
        if isinstance(obj, type) and name.endswith("DType"):
            out[("numpy.dtypes", name)] = obj
    return out


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only :data:`PLAIN_GLOBALS`, numpy internals and ``extra`` (module, name) entries."""

    def __init__(self, file: io.BufferedIOBase, *, extra: Mapping[tuple[str, str], Any] | None = None) -> None:
        super().__init__(file)
        self.allowed = {**PLAIN_GLOBALS, **numpy_globals(), **(extra or {})}

    def find_class(self, module: str, name: str) -> Any:
        obj = self.allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return obj


def restricted_loads(data: bytes, *, extra: Mapping[tuple[str, str], Any] | None = None) -> Any:
    """``pickle.loads`` limited to plain values, numpy and ``extra``.

    Raises:
        pickle.UnpicklingError: the data names any other global (the message is ``module.name``).
    """
    return RestrictedUnpickler(io.BytesIO(data), extra=extra).load()
