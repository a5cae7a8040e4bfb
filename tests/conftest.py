"""Shared fixtures: the read-only shared data, golden files, and isolated nnU-Net folders."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from shared_paths import DATA, EXPECTED, REPO, SHARED  # noqa: F401 (re-exported for tests)


@pytest.fixture
def shared_data() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared datasets not found at {DATA} (set NNSEG_SHARED)")
    return DATA


@pytest.fixture
def expected_dir() -> Path:
    if not EXPECTED.is_dir():
        pytest.skip(f"golden files not found at {EXPECTED} (set NNSEG_SHARED)")
    return EXPECTED


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def roots_env(tmp_path: Path) -> dict[str, str]:
    """An environment with the three nnU-Net folders in a temporary folder (for in-process CLI calls)."""
    env = {
        "nnUNet_raw": str(tmp_path / "raw"),
        "nnUNet_preprocessed": str(tmp_path / "preprocessed"),
        "nnUNet_results": str(tmp_path / "results"),
        "HOME": str(tmp_path / "home"),
    }
    for key in ("raw", "preprocessed", "results"):
        (tmp_path / key).mkdir()
    return env


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary folder of the run (``tempfile``'s default), so a test can check it is left empty."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
