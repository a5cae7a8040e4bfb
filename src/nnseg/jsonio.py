"""JSON and file persistence helpers: numpy-safe, atomic (write to a temporary name, then rename)."""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nnseg.fs_errors import with_path


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and tuples (recursively) into plain JSON types."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a parse error names the file and the position."""
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix or regenerate the file") from None


@functools.cache
def _default_file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open(path, 'w')`` gives a new file."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_TMP_MARK = ".tmp"
# Windows refuses a rename while another program holds the target (or source) open without delete sharing: a viewer
# showing the file, an antivirus or indexer scanning a new file, a cloud-sync client. These holders let go within
# moments, so the rename is retried for about 3 s before giving up. WinError 32: sharing violation, 33: lock
# violation, 5: access denied (what a pending delete or a scanner's handle gives).
WINDOWS_FILE_IN_USE = (5, 32, 33)
RENAME_RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.5)


class FileInUseError(PermissionError):
    """A rename into place kept failing because another program holds the file open (Windows)."""


def replace_path(source: str | os.PathLike[str], target: str | os.PathLike[str], *,
                 delays: Iterable[float] = RENAME_RETRY_DELAYS_S) -> None:
    """``os.replace(source, target)`` (a file, or a folder onto a free name), retried while Windows reports the file
    in use by another program; every rename into place in nnseg goes through here.

    Raises:
        FileInUseError: still in use after the retries (one line naming the file, the likely holder and the fix).
        OSError: any other failure, at once (on Linux and macOS a rename never waits for readers).
    """
    for delay in (*delays, None):
        try:
            os.replace(source, target)
            return
        except PermissionError as e:
            if getattr(e, "winerror", None) not in WINDOWS_FILE_IN_USE:
                raise
            if delay is None:
                raise FileInUseError(
                    f"cannot write {target}: another program holds it open (an image viewer showing it, an antivirus "
                    f"scan, a cloud-sync client; Windows: {e.strerror or e}); close it or wait, then rerun") from None
            time.sleep(delay)




def _temporary_prefix(name: str) -> str:
    """How the temporary files of :func:`atomic_path` for the file ``name`` begin (hidden, then the name)."""
    return f".{name}."


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed onto ``path``.

    Nothing half-written is ever left under the final name; on error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=_TMP_MARK + "".join(path.suffixes),
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, _default_file_mode())  # mkstemp makes 0600; give the mode a plain open() would
        replace_path(tmp_path, path)
    except OSError as e:  # name the target, not the temporary file (or no file: a write on an open handle)
        if e.errno is None or (e.filename is not None and os.fspath(e.filename) != str(tmp_path)):
            raise
        raise with_path(OSError(e.errno, e.strerror or str(e)), path) from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_temporary_files(folder: str | os.PathLike[str], *, targets: Iterable[str] | None = None) -> list[Path]:
    """Delete what :func:`atomic_path` left in ``folder`` in processes killed while writing (SIGKILL, power loss):
    hidden ``.NAME.*.tmp*`` files, all of them or only those of the file names ``targets``. Call it only when no
    writer of those files can still be running. Returns the files removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    prefixes = (".",) if targets is None else tuple(_temporary_prefix(name) for name in targets)
    # a writer that itself writes through atomic_path (an image writer) nests them: "..NAME.x.tmp.nii.gz.y.tmp.nii.gz"
    stale = [p for p in folder.iterdir()
             if ("." + p.name.lstrip(".")).startswith(prefixes) and _TMP_MARK in p.name and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_atomic(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and rename the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)


def save_json(obj: Any, path: str | os.PathLike[str], *, sort_keys: bool = False, indent: int = 4) -> None:
    """Write JSON atomically the way nnU-Net does (``indent=4``); numpy values are converted."""
    text = json.dumps(to_jsonable(obj), sort_keys=sort_keys, indent=indent)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
