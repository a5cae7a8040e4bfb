"""The README's "Python API" example runs as written (only the model path is the installed golden model's)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from golden_model import install_golden_model
from shared_paths import DATA

from nnseg.raw.image_io import read_seg

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
README_MODEL = '"nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres"'


def _python_api_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Python API"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start: section.index("```", start)]


def test_readme_python_api_example_runs(tmp_path: Path) -> None:
    model = install_golden_model(tmp_path / "results")
    (tmp_path / "imagesTs").mkdir()
    shutil.copy(DATA / "Task04_Hippocampus" / "imagesTs" / "hippocampus_118.nii.gz",
                tmp_path / "imagesTs" / "hippocampus_118_0000.nii.gz")
    code = _python_api_example()
    assert README_MODEL in code, "the README example names another model path; update README_MODEL"
    namespace: dict[str, object] = {}
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            exec(compile(code.replace(README_MODEL, repr(str(model))), "README.md", "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    written = tmp_path / "out" / "hippocampus_118.nii.gz"
    assert str(written) in out.getvalue() or written.name in out.getvalue()
    from_file, _ = read_seg(written, "SimpleITKIO")  # (1, ...) as the reader gives it
    seg = np.asarray(namespace["seg"])
    assert seg.shape == from_file.shape[1:] and np.array_equal(seg, from_file[0])
    assert set(np.unique(seg)) <= {0, 1, 2} and (seg > 0).any()
