"""``nnseg demo`` runs every step through the real commands (tiny schedule here; the full demo is the README's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnseg.cli.main import main
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
    assert not (Path("/nonexistent")).exists()
