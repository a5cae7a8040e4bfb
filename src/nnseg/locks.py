"""Lock files for folders that one process writes at a time (a training fold, a prediction output folder).

A lock is a small JSON file (owner pid, host, start time, what it does) created atomically with ``O_CREAT | O_EXCL``,
so of two processes starting at once exactly one gets it. The lock is removed when the owner leaves the ``with`` block,
normally or by an exception. A process killed with SIGKILL cannot remove it: the next process finds the owner gone
(same host, pid no longer running, or running but started later: a reused pid) and takes the lock over with a note.
The owner of a lock written on another host cannot be checked; the message says how to remove it by hand.

Liveness is checked with ``os.kill(pid, 0)`` (and ``/proc`` where it exists) on POSIX, ``OpenProcess`` /
``GetExitCodeProcess`` on Windows: no ``fcntl``, no extra dependency.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

LOCK_NAME = ".nnseg.lock"
_UNREADABLE_GRACE_S = 5.0  # a lock file being written right now may be empty for a moment
_TAKEOVER_GUARD_STALE_S = 30.0


class FolderLockedError(FileExistsError):
    """Another live process holds the folder's lock (the message names the lock file, the owner and what to do)."""


def _proc_start_token(pid: int) -> str | None:
    """Boot id + start time of ``pid`` from ``/proc`` (Linux), telling a reused pid apart; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _windows_pid_running(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, int(pid))  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists, owned by someone else
    code = ctypes.c_ulong()
    try:
        ok = kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
    finally:
        kernel32.CloseHandle(handle)
    return bool(ok) and code.value == 259  # STILL_ACTIVE


def pid_running(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (portable: POSIX and Windows)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        return _windows_pid_running(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def owner_record(purpose: str) -> dict[str, Any]:
    """What this process writes into a lock it takes."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "time": time.time(), "purpose": purpose, "token": _proc_start_token(pid)}


def owner_alive(owner: dict[str, Any]) -> bool | None:
    """True/False for an owner on this host; None when it ran on another host (cannot be checked)."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = int(owner.get("pid", -1))
    if not pid_running(pid):
        return False
    token = owner.get("token")
    return token is None or _proc_start_token(pid) in (None, token)


def read_lock(path: Path) -> dict[str, Any] | None:
    """The owner record of a lock file, or None when it is empty or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "pid" in data else None


def _create(path: Path, record: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def _held_message(path: Path, owner: dict[str, Any], alive: bool | None) -> str:
    who = f"{owner.get('purpose', 'a run')} by pid {owner.get('pid')} on {owner.get('host')} since {owner.get('started')}"
    if alive is None:
        return (f"{path.parent} is locked: {path} records {who}, on another machine (nnseg cannot check whether it still "
                f"runs). Wait for it to finish; if it is not running any more, delete {path}")
    return (f"{path.parent} is in use: {path} records {who}, and that process is still running. Wait for it to finish "
            f"or stop it (then rerun; an interrupted training continues with --c); use another output folder/fold to "
            "run both at once")


@contextmanager
def _takeover_guard(path: Path) -> Iterator[bool]:
    """Only one process at a time replaces a stale lock (yields False when another one is doing it now)."""
    guard = path.with_name(path.name + ".takeover")
    try:
        if guard.exists() and time.time() - guard.stat().st_mtime > _TAKEOVER_GUARD_STALE_S:
            guard.unlink(missing_ok=True)  # left by a process killed during a takeover
    except OSError:
        pass
    got = _create(guard, {"pid": os.getpid()})
    try:
        yield got
    finally:
        if got:
            guard.unlink(missing_ok=True)


def _stale_or_raise(path: Path, owner: dict[str, Any] | None) -> bool:
    """True when the lock may be replaced now; False to retry; raises while its owner lives."""
    if owner is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age > _UNREADABLE_GRACE_S
    alive = owner_alive(owner)
    if alive is not False:
        raise FolderLockedError(_held_message(path, owner, alive))
    return True


def acquire_lock(folder: Path, *, purpose: str, name: str = LOCK_NAME, attempts: int = 50) -> Path:
    """Create ``folder/name`` for this process, taking over a stale one; returns the lock file's path.

    Raises:
        FolderLockedError: a live process (or one on another host) holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, record = folder / name, owner_record(purpose)
    for _ in range(attempts):
        if _create(path, record):
            return path
        owner = read_lock(path)
        if _stale_or_raise(path, owner):
            with _takeover_guard(path) as mine:
                if mine and read_lock(path) == owner:
                    path.unlink(missing_ok=True)
                    what = "unreadable lock" if owner is None else (
                        f"stale lock of pid {owner.get('pid')} on {owner.get('host')} (started {owner.get('started')}; "
                        "that process is gone)")
                    print(f"note: took over the {what}: {path}", file=sys.stderr)
                    continue
        time.sleep(0.1)
    raise FolderLockedError(f"could not take the lock {path} (another process keeps replacing it); retry, or delete it "
                            "if no nnseg process uses the folder")


def release_lock(path: Path) -> None:
    """Remove the lock if this process still owns it (a lock taken over by another process is left alone)."""
    owner = read_lock(path)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        Path(path).unlink(missing_ok=True)


@contextmanager
def folder_lock(folder: Path, *, purpose: str, name: str = LOCK_NAME, enabled: bool = True) -> Iterator[Path | None]:
    """``with folder_lock(fold_folder, purpose="training"):`` ... the lock is released on exit and on exceptions."""
    if not enabled:
        yield None
        return
    path = acquire_lock(folder, purpose=purpose, name=name)
    try:
        yield path
    finally:
        release_lock(path)
