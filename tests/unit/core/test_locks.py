"""nnseg.locks: atomic lock files with owner pid/host, refusal while the owner lives, stale takeover, release."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnseg.locks import LOCK_NAME, FolderLockedError, acquire_lock, folder_lock, owner_record, pid_running, read_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def _write(folder: Path, **changes: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({**owner_record("nnUNetv2_train fold 0"), **changes}))
    return path


def test_lock_records_the_owner_and_is_released_on_exceptions(tmp_path: Path) -> None:
    with pytest.raises(KeyError), folder_lock(tmp_path / "fold_0", purpose="training") as path:
        assert path is not None
        owner = read_lock(path)
        assert owner is not None and owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert owner["purpose"] == "training" and owner["started"]
        raise KeyError("boom")
    assert not (tmp_path / "fold_0" / LOCK_NAME).exists()


def test_a_live_owner_is_refused_with_the_lock_file_pid_host_and_fix(tmp_path: Path) -> None:
    with folder_lock(tmp_path, purpose="nnUNetv2_train fold 0") as path:
        with pytest.raises(FolderLockedError) as err:
            acquire_lock(tmp_path, purpose="nnUNetv2_train fold 0")
        text = str(err.value)
        assert f"{path} records nnUNetv2_train fold 0 by pid {os.getpid()} on {socket.gethostname()}" in text
        assert "still running" in text and "Wait for it to finish" in text
        assert path.exists()
    assert not path.exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = _dead_pid()
    assert not pid_running(dead) and pid_running(os.getpid())
    _write(tmp_path, pid=dead, token=None)
    with folder_lock(tmp_path, purpose="training") as path:
        assert read_lock(path)["pid"] == os.getpid()  # type: ignore[index]
    assert f"note: took over the stale lock of pid {dead} on {socket.gethostname()}" in capsys.readouterr().err
    assert not path.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="pid reuse is detected through /proc (Linux)")
def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path: Path) -> None:
    _write(tmp_path, pid=os.getpid(), token="another-boot:123")  # our pid, but another process start
    with folder_lock(tmp_path, purpose="training"):
        pass


def test_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path: Path) -> None:
    path = _write(tmp_path, host="gpu-node-17")
    with pytest.raises(FolderLockedError, match=r"on gpu-node-17 .*another machine.*delete .*\.nnseg\.lock"):
        acquire_lock(tmp_path, purpose="training")
    assert path.exists()


def test_unreadable_lock_waits_for_its_writer_then_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / LOCK_NAME
    path.write_text("")
    old = time.time() - 60
    os.utime(path, (old, old))  # empty for a minute: its writer died between create and write
    with folder_lock(tmp_path, purpose="training"):
        assert read_lock(path)["pid"] == os.getpid()  # type: ignore[index]


def test_release_leaves_a_lock_taken_over_by_another_process(tmp_path: Path) -> None:
    with folder_lock(tmp_path, purpose="training") as path:
        _write(tmp_path, pid=os.getpid() + 1)
    assert path is not None and path.exists()


def test_disabled_lock_writes_nothing(tmp_path: Path) -> None:
    with folder_lock(tmp_path / "x", purpose="training", enabled=False) as path:
        assert path is None
    assert not (tmp_path / "x").exists()


def test_of_processes_starting_at_once_exactly_one_gets_the_lock(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from nnseg.locks import acquire_lock, FolderLockedError\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "try:\n    acquire_lock(Path(sys.argv[1]), purpose='race'); time.sleep(2); print('got')\n"
            "except FolderLockedError:\n    print('refused')\n")
    start = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), start], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) for _ in range(4)]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["got", "refused", "refused", "refused"]
