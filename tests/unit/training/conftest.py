"""Fixtures of the training tests (helpers live in tinydata.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tinydata import write_cases


@pytest.fixture
def tiny_preprocessed(tmp_path: Path) -> Path:
    """``tmp/preprocessed/Dataset990_Tiny`` with 6 cases in ``nnUNetPlans_3d_fullres``."""
    folder = tmp_path / "preprocessed" / "Dataset990_Tiny"
    write_cases(folder / "nnUNetPlans_3d_fullres")
    return folder
