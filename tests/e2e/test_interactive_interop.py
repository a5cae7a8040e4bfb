"""nnseg's interactive session against nnInteractive 2.6.0's own session: the same model folder (written by nnseg),
the same prompt sequence (every prompt kind, positive and negative, undo, an initial mask, reset), with AutoZoom on
and off, give the same target buffer after every step (voxel agreement >= 0.999). The same holds for a model nnseg
trains itself (``nnUNetv2_train ... -tr nnsegInteractiveTrainer`` on a tiny synthetic dataset), which nnInteractive's
session loads and runs with the same network output.

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

from interactive_model import CONFIGURATION, blob_image, tiny_plans, write_model_folder, write_training_dataset
from interactive_steps import run_steps, sequence
from nnseg.interactive import InteractiveSession, load_interactive_model

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / ".site" / "nninteractive"


def _nninteractive_available() -> bool:
    return (SITE / "nnInteractive" / "inference" / "inference_session.py").is_file()


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _nninteractive_available() and os.environ.get("CI") != "true",
                                 reason="nnInteractive is not installed in .site/nninteractive (./dev.sh setup)")]


def _compare_with_nninteractive(folder: Path, work: Path, *, autozoom: bool,
                                logits_input: np.ndarray | None = None) -> tuple[list[np.ndarray], list[float], dict]:
    """Run :func:`sequence` on :func:`blob_image` in nnInteractive's session (a subprocess) and in nnseg's; assert
    voxel agreement >= 0.999 after every step; returns nnseg's buffers, its zoom-outs and nnInteractive's outputs."""
    image = blob_image()
    steps, arrays = sequence(image.shape[1:])
    np.savez(work / "case.npz", image=image, **arrays)
    (work / "steps.json").write_text(json.dumps(steps))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SITE), str(REPO / "tests")]))
    cmd = [sys.executable, str(REPO / "tests" / "interactive_steps.py"), str(folder), str(work / "case.npz"),
           str(work / "steps.json"), str(work / "theirs.npz")] + ([] if autozoom else ["--no-autozoom"])
    if logits_input is not None:
        np.save(work / "logits_input.npy", logits_input)
        cmd += ["--logits", str(work / "logits_input.npy")]
    with open(work / "nninteractive.log", "w") as log:
        theirs_proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        session = InteractiveSession(load_interactive_model(folder), precision="fp32", do_autozoom=autozoom)
        zooms: list[float] = []
        ours = run_steps(_ZoomRecorder(session, zooms), image, steps, arrays)
        rc = theirs_proc.wait(timeout=900)
    assert rc == 0, (work / "nninteractive.log").read_text()[-3000:]
    theirs = dict(np.load(work / "theirs.npz"))
    for i, (step, mine) in enumerate(zip(steps, ours)):
        other = theirs[f"arr_{i}"]
        agreement = float((mine == other).mean())
        assert agreement >= 0.999, f"step {i} {step}: agreement {agreement}, foreground {mine.sum()} vs {other.sum()}"
    return ours, zooms, theirs


@pytest.mark.parametrize("autozoom", [True, False], ids=["autozoom", "no-autozoom"])
def test_same_masks_as_nninteractive_for_every_prompt_kind(tmp_path, autozoom):
    folder = write_model_folder(tmp_path / "model")
    steps, _ = sequence(blob_image().shape[1:])
    ours, zooms, _ = _compare_with_nninteractive(folder, tmp_path, autozoom=autozoom)
    assert max(zooms) > 1 and min(z for z in zooms if z > 0) == 1  # zoomed out (and refined) and not
    if autozoom:
        assert max(zooms) > 1.5  # AutoZoom grew the patch beyond the box prompts' own zoom-out
    assert all(o.sum() > 0 for o, s in zip(ours, steps) if s["op"] != "reset")


def test_model_trained_by_nnseg_predicts_alike_in_nninteractive(tmp_path):
    """nnseg trains an interactive model with the real command (2 epochs x 2 iterations); nnInteractive's session
    loads the folder and gives the same masks and the same network output as nnseg's. AutoZoom is off: a barely
    trained network marks noise everywhere, which zooms every prompt out to the limit (slow on a CPU); the zoom paths
    are compared with the prompt-driven model above."""
    roots = {name: tmp_path / name for name in ("raw", "preprocessed", "results")}
    for folder in roots.values():
        folder.mkdir()
    pre = write_training_dataset(roots["preprocessed"] / "Dataset991_InteractiveTiny", plans=tiny_plans(),
                                 configuration=CONFIGURATION, n=3, shape=(40, 48, 56))
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_001"], "val": ["case_002"]}]))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), **{f"nnUNet_{k}": str(v) for k, v in roots.items()})
    cmd = [str(Path(sys.executable).parent / "nnUNetv2_train"), "991", CONFIGURATION, "0", "-tr",
           "nnsegInteractiveTrainer", "-device", "cpu", "--seed", "0", "--precision", "fp32"] + [
        a for kv in ("num_epochs=2", "iterations_per_epoch=2", "val_iterations_per_epoch=1", "batch_size=2")
        for a in ("--set", kv)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    model = roots["results"] / "Dataset991_InteractiveTiny" / f"nnsegInteractiveTrainer__nnUNetPlans__{CONFIGURATION}"
    x = np.random.default_rng(0).normal(size=(1, 8, 80, 80, 80)).astype(np.float32)
    ours, _, theirs = _compare_with_nninteractive(model, tmp_path, autozoom=False, logits_input=x)
    import torch

    with torch.no_grad():
        mine = load_interactive_model(model).network(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs["logits"], mine, rtol=1e-4, atol=1e-4 * float(np.abs(mine).max()))
    assert mine.argmax(1).min() != mine.argmax(1).max()  # the network's output is not one class everywhere
    assert any(0 < o.sum() < o.size for o in ours)  # the masks compared are not trivially empty or full


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
