"""tools/rewrite_imports.py: the old flat ``nnseg.predictions`` modules -> their new homes (issue 26's layout)."""

from __future__ import annotations

import runpy
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
TOOL = runpy.run_path(str(REPO / "tools" / "rewrite_imports.py"))
OLD = "nnseg." + "predictions"  # spelled in two parts so that the tool leaves this file alone
FOLDER = "predictions" + "/"

BEFORE = f"""from {OLD}.export import convert_logits
from {OLD}.run import PredictRequest, run_prediction
import {OLD}.predict as predict_module
from {OLD} import sliding_window, run as request_module, install
monkeypatch.setattr("{OLD}.pipeline.get_io", fake)
:func:`{OLD}.export._resample_axis0`, see src/{OLD.replace('.', '/')}/memory_plan.py and {FOLDER}npz_stream.py
python -m {OLD}.full_val; {OLD}.predictor but {OLD}.predict_io
"""
AFTER = f"""from {OLD}.export.from_logits import convert_logits
from {OLD}.request import PredictRequest, run_prediction
import {OLD}.run.predict as predict_module
from {OLD}.inference import sliding_window
from {OLD} import request as request_module
from nnseg.sharing import install
monkeypatch.setattr("{OLD}.run.pipeline.get_io", fake)
:func:`{OLD}.export.from_logits._resample_axis0`, see src/{OLD.replace('.', '/')}/inference/memory_plan.py and predictions/export/npz_stream.py
python -m nnseg.launch.full_val; {OLD}.inference.predictor but {OLD}.export.predict_io
"""


def test_every_old_module_moved_to_an_existing_module() -> None:
    src = REPO / "src" / "nnseg"
    for old, new in TOOL["MOVES"].items():
        assert not (src / "predictions" / f"{old}.py").exists(), f"{old}.py is still in predictions/"
        assert (src / f"{new.replace('.', '/')}.py").is_file(), f"{old} -> {new}: no such module"


def test_rewrite_covers_imports_patch_targets_docs_and_paths_and_is_idempotent() -> None:
    after = TOOL["rewrite"](BEFORE)
    assert after == AFTER
    assert TOOL["rewrite"](after) == after
    # a new-layout name that starts like an old module stays
    assert TOOL["rewrite"](f"from {OLD}.run import pipeline, predict\n") == f"from {OLD}.run import pipeline, predict\n"


def test_relative_imports_in_prediction_files_become_absolute() -> None:
    text = "from .bounded import MemoryPolicy\nfrom . import export, options\n"
    assert TOOL["rewrite"](text, relative=True) == (f"from {OLD}.run.bounded import MemoryPolicy\n"
                                                    f"from {OLD}.export import from_logits as export\n"
                                                    f"from {OLD}.inference import options\n")
    assert TOOL["rewrite"](text) == text  # outside predictions/ a relative import names something else


def test_no_tracked_file_refers_to_an_old_module() -> None:
    files = subprocess.run(["git", "ls-files", "src", "tests", "bench", "docs", "tools", "README.md", "pyproject.toml"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    stale = [f for f in files if f.endswith((".py", ".md", ".toml")) and not f.endswith("rewrite_imports.py")
             and (REPO / f).is_file() and TOOL["rewrite"]((REPO / f).read_text(encoding="utf-8")) !=
             (REPO / f).read_text(encoding="utf-8")]
    assert not stale, f"old prediction module names in {stale}: run python tools/rewrite_imports.py on them"
