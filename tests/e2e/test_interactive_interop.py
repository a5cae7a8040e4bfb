"""nnseg's interactive session against nnInteractive 2.6.0's own session: the same model folder (written by nnseg),
the same prompt sequence (every prompt kind, positive and negative, undo, an initial mask, reset), with AutoZoom on
and off, give the same target buffer after every step (voxel agreement >= 0.999).

nnInteractive runs in its own interpreter with `.site/nninteractive` on its path (./dev.sh setup installs it there with
--no-deps: installing it normally would replace torch by a CUDA build); nnseg never imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interactive_model import blob_image, write_model_folder
from interactive_steps import run_steps, sequence
from nnseg.interactive import InteractiveSession, load_interactive_model

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / ".site" / "nninteractive"


def _nninteractive_available() -> bool:
    return (SITE / "nnInteractive" / "inference" / "inference_session.py").is_file()


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _nninteractive_available() and os.environ.get("CI") != "true",
                                 reason="nnInteractive is not installed in .site/nninteractive (./dev.sh setup)")]


@pytest.mark.parametrize("autozoom", [True, False], ids=["autozoom", "no-autozoom"])
def test_same_masks_as_nninteractive_for_every_prompt_kind(tmp_path, autozoom):
    folder = write_model_folder(tmp_path / "model")
    image = blob_image()
    steps, arrays = sequence(image.shape[1:])
    np.savez(tmp_path / "case.npz", image=image, **arrays)
    (tmp_path / "steps.json").write_text(json.dumps(steps))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SITE), str(REPO / "tests")]))
    cmd = [sys.executable, str(REPO / "tests" / "interactive_steps.py"), str(folder), str(tmp_path / "case.npz"),
           str(tmp_path / "steps.json"), str(tmp_path / "theirs.npz")] + ([] if autozoom else ["--no-autozoom"])
    with open(tmp_path / "nninteractive.log", "w") as log:
        theirs_proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        session = InteractiveSession(load_interactive_model(folder), precision="fp32", do_autozoom=autozoom)
        zooms = []
        ours = run_steps(_ZoomRecorder(session, zooms), image, steps, arrays)
        rc = theirs_proc.wait(timeout=900)
    assert rc == 0, (tmp_path / "nninteractive.log").read_text()[-3000:]
    theirs = np.load(tmp_path / "theirs.npz")
    for i, (step, mine) in enumerate(zip(steps, ours)):
        other = theirs[f"arr_{i}"]
        agreement = float((mine == other).mean())
        assert agreement >= 0.999, f"step {i} {step}: agreement {agreement}, foreground {mine.sum()} vs {other.sum()}"
    assert max(zooms) > 1 and min(z for z in zooms if z > 0) == 1  # zoomed out (and refined) and not
    if autozoom:
        assert max(zooms) > 1.5  # AutoZoom grew the patch beyond the box prompts' own zoom-out
    assert all(o.sum() > 0 for o, s in zip(ours, steps) if s["op"] != "reset")


class _ZoomRecorder:
    """The session, recording the zoom-out of every prediction."""

    def __init__(self, session: InteractiveSession, zooms: list[float]) -> None:
        self._session, self._zooms = session, zooms

    def __getattr__(self, name):
        attr = getattr(self._session, name)
        if not name.startswith("add_"):
            return attr

        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            self._zooms.append(self._session.last_zoom_out)
            return out

        return call
