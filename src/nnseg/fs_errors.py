"""One line for any ``OSError`` (disk full, read-only, permission, ...): the path, the cause, and what to do.

Every command runs through ``nnseg.cli.main.run_command``, which prints :func:`describe_os_error` for an ``OSError``
that carries an error number, instead of a traceback. Writers name the path they were writing
(:func:`with_path`), so the line says where the disk is full even when the OS call itself only knew a file handle.
"""

from __future__ import annotations

import errno
import os

_FIXES = {
    errno.ENOSPC: "the disk is full: free space there, or point the output (-o, nnUNet_preprocessed, nnUNet_results) "
                  "to a disk with room",
    errno.EDQUOT: "your disk quota is used up: free space, or write to another disk",
    errno.EROFS: "the file system is read-only: choose a writable folder for the output",
    errno.EACCES: "you may not write (or read) there: fix the folder's permissions or owner, or choose another folder",
    errno.EPERM: "the operation is not permitted there: fix the permissions, or choose another folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path or move the file away",
    errno.EISDIR: "the path is a folder where a file is expected: choose another path",
    errno.ENOENT: "the path does not exist: check the spelling and the nnUNet_* folders (`nnseg paths`)",
    errno.EEXIST: "the path already exists: remove it or choose another one",
    errno.EMFILE: "too many open files: raise the limit (`ulimit -n 4096`) or use fewer processes",
    errno.ENAMETOOLONG: "the file name is too long: choose a shorter output path",
    errno.EIO: "the disk reported an input/output error: check the disk (and its free space)",
}


def describe_os_error(error: OSError) -> str:
    """``PATH: cause [ENAME]; what to do`` for an OSError from the operating system."""
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "(path unknown)"
    cause = error.strerror or str(error)
    name = errno.errorcode.get(error.errno, str(error.errno)) if error.errno is not None else type(error).__name__
    fix = _FIXES.get(error.errno, "check the path and the disk") if error.errno is not None else "check the path"
    return f"{where}: {cause} [{name}]; {fix}. Then rerun: finished work is kept, nothing half-written is"


def is_system_error(error: BaseException) -> bool:
    """True for an OSError raised by the operating system (it has an error number), not a message of nnseg's."""
    return isinstance(error, OSError) and error.errno is not None and error.strerror is not None


def with_path(error: OSError, path: str | os.PathLike[str]) -> OSError:
    """``error`` naming ``path`` when it names no file (e.g. a ``write`` on an open handle); same type and errno."""
    if error.filename is not None or error.errno is None:
        return error
    return OSError(error.errno, error.strerror or str(error), os.fspath(path))
