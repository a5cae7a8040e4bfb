"""``nnseg demo`` runs every step through the real commands (tiny schedule here; the full demo is the README's)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from nnseg.cli.main import main
from nnseg.cli.table import by_script
from nnseg.jsonio import load_json

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"HOME": str(tmp_path / "home"), "nnUNet_raw": "/nonexistent/ignored"}
    argv = ["demo", "-o", "demo", "--cases", "6", "--test-cases", "2", "--epochs", "1", "--iterations", "2", "-device", "cpu"]
    assert main(argv, env=env, cwd=tmp_path) == 0
    root = tmp_path / "demo"
    out = capsys.readouterr().out
    for step in range(1, 8):
        assert f"[{step}/7]" in out
    assert "Dice on 2 unseen cases" in out
    results = root / "results" / "Dataset999_Demo"
    assert (results / "inference_information.json").is_file()
    assert (results / "inference_instructions.txt").is_file()
    summary = load_json(root / "predictions" / "summary.json")
    assert len(summary["metric_per_case"]) == 2
    _run_printed_instructions(root, results)


def _run_printed_instructions(root: Path, results: Path) -> None:
    """The commands find-best printed for the trained model run as written (placeholders filled in)."""
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "HOME": str(root)}
    lines = (results / "inference_instructions.txt").read_text().splitlines()
    commands = [shlex.split(line) for line in lines if line.startswith("nnUNetv2_")]
    assert commands and commands[0][0] == "nnUNetv2_predict"
    for words in commands:
        words = [str(root / "unseen" / "imagesTr") if w == "INPUT_FOLDER" else str(root / w)
                 if w.startswith("OUTPUT_FOLDER") else w for w in words]
        assert main([by_script()[words[0]].name, *words[1:], *(["-device", "cpu"] if words[0] == "nnUNetv2_predict" else [])],
                    env=env) == 0, words
    final = root / ("OUTPUT_FOLDER_PP" if len(commands) > 1 else "OUTPUT_FOLDER")
    assert len(list(final.glob("*.nii.gz"))) == 2
