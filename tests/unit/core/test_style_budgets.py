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


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "nnseg"
    for name, text in files.items():
        path = pkg / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return pkg


def test_import_circle_at_any_depth_fails_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = runpy.run_path(str(TOOL))
    pkg = _fake_package(tmp_path, {
        "__init__.py": "",
        "raw/__init__.py": "",
        "raw/a.py": "from nnseg.raw.b import thing\n",
        # the circle closes inside a function, through a relative import of a package's name
        "raw/b.py": "thing = 1\n\ndef later():\n    from . import c\n    return c\n",
        "raw/c.py": "def f():\n    import nnseg.raw.a\n",
        "raw/d.py": "from nnseg.raw import b\n",  # d -> b, no circle through d
    })
    assert tool["main"](pkg) == 1
    out = capsys.readouterr().out
    assert "import circle between nnseg.raw.a , nnseg.raw.b , nnseg.raw.c" in out
    assert "nnseg.raw.d" not in out and "1 problem(s)" in out


def test_no_circle_passes_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = runpy.run_path(str(TOOL))
    pkg = _fake_package(tmp_path, {"__init__.py": "", "raw/__init__.py": "", "raw/a.py": "from nnseg.raw import b\n",
                                   "raw/b.py": "from nnseg import jsonio\n", "jsonio.py": "import json\n"})
    assert tool["main"](pkg) == 0, capsys.readouterr().out
    graph = tool["import_graph"](pkg)
    # `from P import m` loads the package P and its module m
    assert graph["nnseg.raw.a"] == {"nnseg.raw", "nnseg.raw.b"} and graph["nnseg.raw.b"] == {"nnseg", "nnseg.jsonio"}


def test_a_prediction_sub_package_importing_a_later_one_fails_the_check(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    tool = runpy.run_path(str(TOOL))
    pkg = _fake_package(tmp_path, {
        "__init__.py": "", "predictions/__init__.py": "", "predictions/request.py": "",
        "predictions/inference/__init__.py": "", "predictions/run/__init__.py": "",
        "predictions/run/pipeline.py": "from nnseg.predictions.inference.predictor import Predictor\n",
        "predictions/inference/predictor.py": "def f():\n    from nnseg.predictions.request import run_prediction\n",
    })
    assert tool["main"](pkg) == 1
    out = capsys.readouterr().out
    assert "predictions/inference/predictor.py: predictions/inference imports later sub-package(s) ['request']" in out
    assert "run/pipeline" not in out and "1 problem(s)" in out


def test_a_cli_workflow_command_importing_a_service_fails_the_check(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    tool = runpy.run_path(str(TOOL))
    pkg = _fake_package(tmp_path, {
        "__init__.py": "", "cli/__init__.py": "", "cli/context.py": "", "cli/workflow/__init__.py": "",
        "cli/services/__init__.py": "",
        "cli/services/cluster_cmds.py": "from nnseg.cli.workflow.train_cmds import recipe\n",
        "cli/workflow/train_cmds.py": "from nnseg.cli.context import Context\n\ndef recipe():\n"
                                      "    from nnseg.cli.services.serve_cmds import x\n",
    })
    assert tool["main"](pkg) == 1
    out = capsys.readouterr().out
    assert "cli/workflow/train_cmds.py: cli/workflow imports later sub-package(s) ['services']" in out
    assert "cluster_cmds" not in out and "1 problem(s)" in out
