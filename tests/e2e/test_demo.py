"""``nnseg demo`` runs every step through the real commands (tiny schedule here; the full demo is the README's)."""

from __future__ import annotations

import os
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
    _output_is_pasteable_and_says_what_next(out, root)


def _run_line(line: str, env: dict[str, str]) -> int:
    """Run a printed command line (``nnUNetv2_X ...`` or ``nnseg X ...``) as its console script would."""
    words = shlex.split(line)
    assert words[0] in by_script() or words[0] == "nnseg", line
    return main([by_script()[words[0]].name, *words[1:]] if words[0] != "nnseg" else words[1:], env=env)


def _output_is_pasteable_and_says_what_next(out: str, root: Path) -> None:
    """Issue 23.9: echoed commands carry their program name, the closing lines say where things are and what to run
    next, the one-fold note does not look like a failure, and the hints fit the machine's cores."""
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
           "nnUNet_results": str(root / "results"), "HOME": str(root)}
    echoed = [line.strip()[2:] for line in out.splitlines() if line.startswith("    $ ")]
    assert [shlex.split(line)[0] for line in echoed] == [
        "nnseg", "nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_find_best_configuration",
        "nnUNetv2_predict", "nnUNetv2_evaluate_folder"]
    assert _run_line(echoed[0], env) == 0 and _run_line(echoed[-1], env) == 0  # verify, evaluate: pasted as printed
    assert "WARNING" not in out and "note: postprocessing is chosen on the 2 cases with a cross-validation" in out
    if (os.cpu_count() or 1) < 8:
        assert "-np 8" not in out
    tail = out[out.index("nnseg demo finished in"):]
    model = root / "results" / "Dataset999_Demo" / "nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres"
    assert f"model (fold 0):  {model}" in tail and f"{root / 'predictions' / 'summary.json'}" in tail
    assert f"export nnUNet_raw={root / 'raw'}" in tail
    report = next(line.split("#")[0].strip() for line in tail.splitlines() if "nnseg report" in line)
    serve = next(line.split("#")[0].strip() for line in tail.splitlines() if "nnseg serve" in line)
    assert report == "nnseg report -d 999 -c 3d_fullres -tr nnUNetTrainer_1epoch"
    assert serve == f"nnseg serve --models {model} -f 0 -device cpu"
    assert _run_line(report, env) == 0 and (model / "report.html").is_file()


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
