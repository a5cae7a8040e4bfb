"""The style guide's size budgets and the stage import rule hold for the whole package."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[3] / "tools" / "check_style.py"


def test_size_budgets_and_stage_imports(capsys: pytest.CaptureFixture[str]) -> None:
    module = runpy.run_path(str(TOOL))
    assert module["main"]() == 0, capsys.readouterr().out


def test_importing_nnseg_does_no_work() -> None:
    import subprocess
    import sys

    code = ("import sys, nnseg, nnseg.cli.main; "
            "heavy = [m for m in ('torch', 'SimpleITK', 'nibabel', 'matplotlib', 'blosc2') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "", f"importing nnseg pulled in {out.strip()}"
