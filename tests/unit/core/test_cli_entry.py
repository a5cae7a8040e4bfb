"""The command-line entry: help without importing torch (issue 23.10), and a typo's closest command (issue 23.11)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnseg.cli.main import main
from nnseg.cli.table import COMMANDS

SRC = Path(__file__).resolve().parents[3] / "src"

# Builds every parser and prints its help in one fresh interpreter; names the first command whose help imports torch.
_EVERY_HELP = """
import contextlib, io, sys
from nnseg.cli.main import build_parser
from nnseg.cli.table import COMMANDS
for cmd in COMMANDS:
    with contextlib.redirect_stdout(io.StringIO()):
        build_parser(cmd, prog=cmd.script or cmd.name).print_help()
    if "torch" in sys.modules:
        sys.exit(f"torch imported by the help of {cmd.name}")
print(len(COMMANDS))
"""

# What the console script nnUNetv2_X runs (pyproject: nnUNetv2_X = "nnseg.cli.scripts:nnUNetv2_X"), with -h.
_SCRIPT_HELP = """
import contextlib, io, sys
sys.argv = ["{script}", "-h"]
from nnseg.cli import scripts
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        getattr(scripts, "{script}")()
    except SystemExit as e:
        assert e.code == 0, e.code
assert "usage: {script}" in out.getvalue(), out.getvalue()
print([name for name in ("torch", "numpy") if name in sys.modules])
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_no_command_imports_torch_to_print_its_help() -> None:
    done = _python(_EVERY_HELP)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(COMMANDS))


@pytest.mark.parametrize("script", ["nnUNetv2_train", "nnUNetv2_predict"])
def test_train_and_predict_help_are_quick(script: str) -> None:
    """Was 2.6-6.6 s (train) and ~2 s (predict), nearly all of it importing torch; now ~0.2 s on a 2-core CPU.

    The check that cannot flake is that neither torch nor numpy is imported; the time bound is generous (importing
    torch alone takes over 1.5 s here), for a loaded CI machine."""
    start = time.perf_counter()
    done = _python(_SCRIPT_HELP.format(script=script))
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{script} -h imported {done.stdout.strip()}"
    assert seconds < 5.0, f"{script} -h took {seconds:.2f} s"


@pytest.mark.parametrize("typed, meant", [("trian", "train"), ("preditc", "predict"), ("plan_and_preprocess",
                                                                                          "plan-and-preprocess"),
                                          ("nnUNetv2_train", "train"), ("reprot", "report")])
def test_unknown_command_suggests_the_closest(typed: str, meant: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([typed, "1"]) == 2
    err = capsys.readouterr().err
    assert f"unknown command {typed!r} (did you mean {meant}?" in err and "commands: train, demo" in err, err


def test_unknown_command_far_from_any_lists_them_without_a_guess(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["xyzzy"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'xyzzy'; commands: train" in err and "did you mean" not in err
