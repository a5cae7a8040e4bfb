"""Model zips install into the results folder; entries that would land outside it are refused."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from nnseg.sharing.install import install_model_zip

MODEL = "Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"


def _zip(path: Path, entries: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def test_install_extracts_and_replaces(tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / MODEL / "fold_0").mkdir(parents=True)
    (results / MODEL / "fold_0" / "checkpoint_final.pth").write_bytes(b"old")
    (results / MODEL / "keep.txt").write_text("kept")
    z = _zip(tmp_path / "m.zip", {f"{MODEL}/plans.json": b"{}", f"{MODEL}/fold_0/checkpoint_final.pth": b"new"})
    installed = install_model_zip(z, results)
    assert installed == [results / MODEL]
    assert (results / MODEL / "fold_0" / "checkpoint_final.pth").read_bytes() == b"new"
    assert (results / MODEL / "plans.json").read_bytes() == b"{}"
    assert (results / MODEL / "keep.txt").read_text() == "kept"
    assert sorted(p.name for p in results.iterdir()) == ["Dataset004_Hippocampus"]  # temp folder removed


def test_parent_and_absolute_entries_are_refused(tmp_path: Path) -> None:
    results = tmp_path / "results"
    z = _zip(tmp_path / "evil.zip", {f"{MODEL}/plans.json": b"{}", "../escape.txt": b"x", "/tmp/abs_escape.txt": b"y",
                                     f"{MODEL}/../../../up.txt": b"z"})
    with pytest.raises(ValueError) as err:
        install_model_zip(z, results)
    msg = str(err.value)
    for name in ("'../escape.txt'", "'/tmp/abs_escape.txt'", f"'{MODEL}/../../../up.txt'"):
        assert name in msg
    assert "3 unsafe entries" in msg
    assert not (tmp_path / "escape.txt").exists()
    assert not (results / MODEL / "plans.json").exists()  # nothing installed


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    z = _zip(tmp_path / "link.zip", {f"{MODEL}/plans.json": b"{}"}, symlinks={f"{MODEL}/fold_0": "/etc"})
    with pytest.raises(ValueError, match="symbolic link"):
        install_model_zip(z, tmp_path / "results")


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        install_model_zip(tmp_path / "missing.zip", tmp_path)
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("hello")
    with pytest.raises(ValueError, match="not a zip file"):
        install_model_zip(not_zip, tmp_path)
