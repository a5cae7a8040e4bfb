"""Issue 23.14: on Windows a rename into place fails while another program holds the file open (WinError 32, a viewer
showing a prediction, an antivirus scan). Every rename into place goes through ``jsonio.replace_path``, which retries
briefly and then fails with one line. Windows' errors are simulated here: a PermissionError carrying ``winerror``."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from nnseg import jsonio
from nnseg.cli.main import error_line
from nnseg.jsonio import FileInUseError, atomic_path, replace_path, save_json

SRC = Path(__file__).resolve().parents[3] / "src" / "nnseg"


def _in_use(winerror: int = 32) -> PermissionError:
    e = PermissionError(13, "The process cannot access the file because it is being used by another process")
    e.winerror = winerror  # type: ignore[attr-defined]  # what Windows' OSError carries
    return e


class _FlakyReplace:
    """``os.replace`` that fails ``failures`` times with ``error``, then renames."""

    def __init__(self, failures: int, error: OSError) -> None:
        self.failures, self.error, self.calls = failures, error, 0
        self.real = os.replace

    def __call__(self, src: object, dst: object) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        self.real(src, dst)  # type: ignore[arg-type]


@pytest.mark.parametrize("winerror", [32, 33, 5])
def test_atomic_write_retries_while_windows_says_the_file_is_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    winerror: int) -> None:
    flaky = _FlakyReplace(3, _in_use(winerror))
    monkeypatch.setattr(jsonio.os, "replace", flaky)
    slept: list[float] = []
    monkeypatch.setattr(jsonio.time, "sleep", slept.append)
    target = tmp_path / "case_001.json"
    target.write_text("old")  # the file a viewer shows
    save_json({"a": 1}, target)
    assert flaky.calls == 4 and slept == list(jsonio.RENAME_RETRY_DELAYS_S[:3])
    assert jsonio.load_json(target) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["case_001.json"]


def test_gives_up_with_one_line_naming_the_file_and_leaves_nothing(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    flaky = _FlakyReplace(100, _in_use())
    monkeypatch.setattr(jsonio.os, "replace", flaky)
    slept: list[float] = []
    monkeypatch.setattr(jsonio.time, "sleep", slept.append)
    target = tmp_path / "case_001.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(FileInUseError) as caught:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new")
    line = error_line(caught.value)  # what the command prints (`nnseg ...: error: LINE`)
    assert "\n" not in line and line.startswith(f"cannot write {target}: another program holds it open")
    assert "antivirus" in line and "close it or wait, then rerun" in line
    assert flaky.calls == len(jsonio.RENAME_RETRY_DELAYS_S) + 1 and 2.5 < sum(slept) < 4
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["case_001.nii.gz"]


def test_other_errors_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Linux/macOS permission error (no winerror) or a full disk is raised at once: waiting cannot help."""
    for error in (PermissionError(13, "Permission denied"), OSError(28, "No space left on device")):
        flaky = _FlakyReplace(1, error)
        monkeypatch.setattr(jsonio.os, "replace", flaky)
        monkeypatch.setattr(jsonio.time, "sleep", lambda s: pytest.fail("slept"))
        with pytest.raises(OSError) as caught:
            replace_path(tmp_path / "a", tmp_path / "b")
        assert caught.value.errno == error.errno and flaky.calls == 1


def test_a_folder_moves_onto_a_free_name(tmp_path: Path) -> None:
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "x.txt").write_text("x")
    replace_path(tmp_path / "partial", tmp_path / "final")
    assert (tmp_path / "final" / "x.txt").read_text() == "x" and not (tmp_path / "partial").exists()


def test_every_rename_in_the_package_goes_through_the_helper() -> None:
    """No os.replace / os.rename / Path.rename / Path.replace / shutil.move outside ``jsonio.replace_path``."""
    offenders = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        allowed = set()
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and fn.name == "replace_path" and path.name == "jsonio.py":
                allowed = {id(n) for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute) or id(node) in allowed:
                continue
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else ""
            if (node.func.attr in ("replace", "rename") and name == "os") or (node.func.attr == "move" and name == "shutil") \
                    or (node.func.attr in ("rename", "replace") and len(node.args) == 1 and not node.keywords):
                # one positional argument: Path.rename / Path.replace (str.replace takes two)
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
