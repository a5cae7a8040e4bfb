"""Safe loading and atomic saving of nnU-Net v2 checkpoints (``checkpoint_final.pth`` ...).

A checkpoint is read with ``torch.load(weights_only=True)`` plus an explicit allowlist of the few
non-tensor globals nnU-Net checkpoints hold: numpy scalars (``numpy._core.multiarray.scalar``, written by
numpy 2, or ``numpy.core.multiarray.scalar``, written by numpy 1) in the training log and the ``numpy.dtype``
objects (and numpy 2 dtype classes) they need. Any other global is refused and named in the error; it is
never unpickled, so a checkpoint cannot run code when it is opened.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseg._types import PathLike
from nnseg.jsonio import atomic_path

CHECKPOINT_KEYS: tuple[str, ...] = (
    "network_weights",
    "optimizer_state",
    "grad_scaler_state",
    "logging",
    "_best_ema",
    "current_epoch",
    "init_args",
    "trainer_name",
    "inference_allowed_mirroring_axes",
)
REQUIRED_FOR_INFERENCE: tuple[str, ...] = ("network_weights",)
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def allowed_globals() -> list[Any]:
    """The allowlist given to ``torch.serialization.safe_globals`` (objects or ``(object, name)`` pairs)."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar  # type: ignore[attr-defined]
    allowed: list[Any] = [
        np.dtype,
        (scalar, "numpy._core.multiarray.scalar"),
        (scalar, "numpy.core.multiarray.scalar"),
    ]
    dtypes_module = getattr(np, "dtypes", None)
    if dtypes_module is not None:
        for name in dir(dtypes_module):
            obj = getattr(dtypes_module, name)
            if isinstance(obj, type) and name.endswith("DType"):
                allowed.append((obj, f"numpy.dtypes.{name}"))
    return allowed


def allowed_global_names() -> set[str]:
    """Dotted names of every allowed global (for error messages and checks)."""
    names = set()
    for item in allowed_globals():
        if isinstance(item, tuple):
            names.add(item[1])
        else:
            names.add(f"{item.__module__}.{item.__qualname__}")
    return names


def unsafe_globals(path: PathLike) -> list[str]:
    """Globals in the checkpoint at ``path`` that are not on the allowlist (read without unpickling)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be scanned; the load error is reported instead
        return []
    allowed = allowed_global_names()
    return sorted(name for name in found if name not in allowed)


def load_checkpoint(path: PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an nnU-Net v2 (or nnseg) checkpoint without unpickling arbitrary objects.

    Args:
        path: a ``.pth`` file written by nnU-Net's trainer or by :func:`save_checkpoint`.
        map_location: where tensors are loaded (default CPU).

    Returns:
        The checkpoint dict (keys as nnU-Net: see :data:`CHECKPOINT_KEYS`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds a global outside the allowlist (named in the message), is not a
            checkpoint, or lacks ``network_weights``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the model folder and the -chk/-f arguments")
    try:
        with torch.serialization.safe_globals(allowed_globals()):
            ckpt = torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        names = unsafe_globals(path) or _GLOBAL_RE.findall(str(e))
        if not names:
            raise ValueError(f"{path} is not a readable torch checkpoint ({str(e).splitlines()[0]}); "
                             "re-download or re-train it") from None
        raise ValueError(
            f"refusing to load {path}: it holds objects nnseg does not unpickle ({', '.join(names)}); only tensors, "
            f"plain Python values and numpy scalars/dtypes are allowed. Re-save the checkpoint with plain values "
            f"or remove those entries"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path} is not a readable torch checkpoint ({e}); re-download or re-train it") from None
    return _check_checkpoint(ckpt, path)


def _check_checkpoint(ckpt: Any, path: Path) -> dict[str, Any]:
    if not isinstance(ckpt, dict):
        raise ValueError(  # noqa: TRY004 (the CLI reports ValueError as a user error)
            f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict; expected nnU-Net's keys {list(CHECKPOINT_KEYS)}")
    missing = [k for k in REQUIRED_FOR_INFERENCE if k not in ckpt]
    if missing:
        raise ValueError(f"{path} lacks {missing}; found keys {sorted(ckpt)}. Is this an nnU-Net v2 checkpoint?")
    return ckpt


def network_state_dict(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network weights with wrapper prefixes (``module.`` from DDP, ``_orig_mod.`` from compile) removed."""
    weights = ckpt["network_weights"]
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def mirroring_axes(ckpt: Mapping[str, Any]) -> tuple[int, ...] | None:
    """``inference_allowed_mirroring_axes`` of the checkpoint (None: mirroring not allowed / unknown)."""
    axes = ckpt.get("inference_allowed_mirroring_axes")
    return None if axes is None else tuple(int(a) for a in axes)


def save_checkpoint(ckpt: Mapping[str, Any], path: PathLike) -> None:
    """Write a checkpoint atomically (temporary name, then rename); loadable by nnU-Net and :func:`load_checkpoint`.

    Raises:
        ValueError: ``ckpt`` lacks ``network_weights``.
        OSError: the file cannot be written (disk full, read-only, permissions): one line naming ``path`` and the
            cause, instead of torch's ``enforce fail at inline_container.cc``; no partial file is left.
    """
    missing = [k for k in REQUIRED_FOR_INFERENCE if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint for {path} lacks {missing}; nnU-Net's keys are {list(CHECKPOINT_KEYS)}")
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a Python file: its OSError keeps the errno
            torch.save(dict(ckpt), f)
    except (OSError, RuntimeError) as e:
        raise checkpoint_write_error(Path(path), e) from None


def checkpoint_write_error(path: Path, error: BaseException) -> OSError:
    """One-line OSError for a failed checkpoint write: the path, the cause (errno text, or free space) and the fix."""
    original = error if isinstance(error, OSError) else (error.__context__ if isinstance(error.__context__, OSError)
                                                           else None)
    code = getattr(original, "errno", None)
    if original is not None and original.strerror:
        cause = original.strerror
    else:
        import shutil

        try:
            free = shutil.disk_usage(path.parent).free
            cause = f"{str(error).splitlines()[0]}; {free / 2**20:.0f} MiB free on that disk"
        except OSError:
            cause = str(error).splitlines()[0]
    message = (f"cannot write checkpoint {path}: {cause}. Free disk space or make {path.parent} writable, then rerun "
               "with --c to continue from the last checkpoint")
    return OSError(code, message) if code else OSError(message)
