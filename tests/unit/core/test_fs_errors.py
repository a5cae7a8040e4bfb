"""Any OSError of the system becomes one line naming path, cause and fix (nnseg.fs_errors + run_command)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from nnseg.cli.main import main
from nnseg.fs_errors import describe_os_error, is_system_error, with_path
from nnseg.jsonio import atomic_path, save_json


@pytest.mark.parametrize("code, fix", [
    (errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"), (errno.EACCES, "permissions"),
    (errno.ENOTDIR, "a part of the path is a file"), (errno.EDQUOT, "quota"),
])
def test_describe_names_path_cause_and_fix(code: int, fix: str) -> None:
    line = describe_os_error(OSError(code, os.strerror(code), "/data/out/case.nii.gz"))
    assert line.startswith("/data/out/case.nii.gz: " + os.strerror(code))
    assert f"[{errno.errorcode[code]}]" in line and fix in line and "\n" not in line


def test_messages_of_nnseg_are_not_system_errors() -> None:
    assert not is_system_error(FileNotFoundError("model folder x does not exist (-m)"))
    assert is_system_error(OSError(errno.ENOSPC, "No space left on device"))


def test_with_path_keeps_type_and_errno() -> None:
    named = with_path(OSError(errno.EACCES, "Permission denied"), Path("/x/y"))
    assert isinstance(named, PermissionError) and named.errno == errno.EACCES and named.filename == "/x/y"
    already = OSError(errno.EACCES, "Permission denied", "/a")
    assert with_path(already, "/b") is already


def test_atomic_write_failure_names_the_target_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "plans.json"
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC, errno.EIO])
def test_every_command_prints_one_line_for_an_oserror(code: int, tmp_path: Path, roots_env: dict[str, str],
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import nnseg.raw.verify

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(code, os.strerror(code), str(tmp_path / "somewhere"))

    monkeypatch.setattr(nnseg.raw.verify, "verify_dataset", fail)
    assert main(["verify", "-d", str(tmp_path)], env=roots_env, cwd=tmp_path) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert str(tmp_path / "somewhere") in err and os.strerror(code) in err and errno.errorcode[code] in err


def test_debug_still_raises(tmp_path: Path, roots_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import nnseg.raw.verify

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.EROFS, "Read-only file system", "/ro")

    monkeypatch.setattr(nnseg.raw.verify, "verify_dataset", fail)
    with pytest.raises(OSError):
        main(["verify", "-d", str(tmp_path)], env=dict(roots_env, NNSEG_DEBUG="1"), cwd=tmp_path)


def test_save_json_into_a_file_path_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        save_json({"a": 1}, blocker / "sub" / "x.json")
    assert "[ENOTDIR]" in describe_os_error(info.value) and str(blocker) in describe_os_error(info.value)


def test_stale_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path: Path) -> None:
    """What ``atomic_path`` leaves when its process is SIGKILLed (a cluster worker) goes; other files stay."""
    import os
    import signal
    import subprocess
    import sys

    from nnseg.jsonio import remove_temporary_files

    code = ("import sys, time; from nnseg.jsonio import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half'); print('ready', flush=True); time.sleep(60)\n")
    target = tmp_path / "case[1].nii.gz"
    writer = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    (tmp_path / "case[1]0.nii.gz").write_bytes(b"other case")
    (tmp_path / ".case[1]0.nii.gz.abc.tmp.nii.gz").write_bytes(b"another case's temporary")
    nested = tmp_path / "..case[1].nii.gz.ab.tmp.nii.gz.cd.tmp.nii.gz"  # a writer writing through atomic_path itself
    nested.write_bytes(b"half")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 4 and not target.exists()
    removed = remove_temporary_files(tmp_path, targets=[target.name])
    assert len(removed) == 2 and all(p.name.lstrip(".").startswith("case[1].nii.gz.") for p in removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".case[1]0.nii.gz.abc.tmp.nii.gz", "case[1]0.nii.gz"]
