"""The interactive session on a small prompt-driven model: prompts, decay, undo, reset, errors, rollback, loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interactive_model import blob_image, write_model_folder
from nnseg.interactive import InteractiveSession, load_interactive_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_interactive_model(write_model_folder(tmp_path_factory.mktemp("interactive") / "model"))


@pytest.fixture
def session(model):
    s = InteractiveSession(model, precision="fp32")
    image = blob_image(shape=(40, 44, 48))
    s.set_image(image)
    s.target = np.zeros(image.shape[1:], np.uint8)
    s.set_target_buffer(s.target)
    return s


def test_model_folder_loads_with_its_capabilities_and_licence(model):
    assert model.patch_size == [80, 80, 80] and model.num_image_channels == 1
    assert model.capabilities.num_interaction_channels == 7 and model.capabilities.is_supported("bbox3d")
    assert model.license == "CC BY 4.0" and model.trainer_name == "nnInteractiveTrainer_stub"
    out = model.network(torch.zeros((1, 8, 80, 80, 80)))
    assert out.shape == (1, 2, 80, 80, 80)


def test_prompts_write_their_channels_at_the_decayed_intensity_and_predict(session):
    box = session.add_point_interaction((20, 22, 24), include_interaction=True)
    inter = session.interactions
    assert box == [[0, 40], [0, 44], [0, 48]]  # the 80³ patch covers the whole image
    assert inter[3, 20, 22, 24] == torch.tensor(1 / 0.98, dtype=torch.float16) and inter[4].sum() == 0
    assert session.target.sum() > 0 and torch.equal(inter[0], torch.from_numpy(session.target).half())
    first = session.target.copy()
    session.add_bbox_interaction([[10, 30], [10, 30], [24, 25]], include_interaction=False)
    assert inter[2, 10:30, 10:30, 24].unique().tolist() == [float(torch.tensor(1 / 0.98 ** 2).half())]
    assert session.target[10:30, 10:30, 24].sum() < first[10:30, 10:30, 24].sum()  # the negative box removes
    assert session.intensity == pytest.approx(1 / 0.98 ** 2)


def test_undo_restores_the_buffer_and_state_exactly_once(session):
    session.add_point_interaction((20, 22, 24), include_interaction=True)
    before_target, before_inter = session.target.copy(), session.interactions.clone()
    session.add_point_interaction((20, 22, 24), include_interaction=False)
    assert not np.array_equal(session.target, before_target)
    assert session.undo()
    assert np.array_equal(session.target, before_target) and torch.equal(session.interactions, before_inter)
    assert session.intensity == pytest.approx(1 / 0.98) and session.changed_box() is not None
    assert not session.undo()
    session.reset_interactions()
    assert session.target.sum() == 0 and session.interactions.abs().sum() == 0 and not session.undo()


def test_mask_prompts_and_initial_mask(session):
    scribble = np.zeros((6, 20, 1), np.uint8)
    scribble[2:4, 2:18, 0] = 1
    session.add_scribble_interaction(scribble, include_interaction=True, interaction_bbox=[[17, 23], [12, 32], [24, 25]])
    assert session.interactions[5, 19:21, 14:30, 24].min() > 0
    lasso = np.zeros(session.target.shape, bool)
    lasso[5:15, 5:15, 10] = True
    session.add_lasso_interaction(lasso, include_interaction=False)
    assert session.interactions[2, 5:15, 5:15, 10].min() > 0
    initial = np.zeros(session.target.shape, np.uint8)
    initial[10:30, 10:30, 10:30] = 1
    assert session.add_initial_seg_interaction(initial) is None  # no prediction asked: the mask is taken as is
    assert np.array_equal(session.target, initial) and session.intensity == 1.0
    assert session.interactions[1:].abs().sum() == 0 and torch.equal(session.interactions[0], torch.from_numpy(initial).half())
    assert session.add_initial_seg_interaction(initial, run_prediction=True) is not None
    assert session.undo() and np.array_equal(session.target, initial)


@pytest.mark.parametrize("call, match", [
    (lambda s: s.add_point_interaction((50, 1, 1), True), "outside the image"),
    (lambda s: s.add_point_interaction((1, 1), True), "3 finite numbers"),
    (lambda s: s.add_bbox_interaction([[60, 70], [0, 5], [0, 1]], True), "outside the image"),
    (lambda s: s.add_bbox_interaction([[3, 3], [0, 5], [0, 1]], True), "zero size"),
    (lambda s: s.add_scribble_interaction(np.ones((3, 3, 3)), True), "has shape"),
    (lambda s: s.add_scribble_interaction(np.ones((3, 3, 3)), True, interaction_bbox=[[0, 3], [0, 3], [46, 49]]),
     "inside the image"),
    (lambda s: s.add_lasso_interaction(np.ones((40, 44)), True), "3D"),
    (lambda s: s.add_initial_seg_interaction(np.ones((4, 4, 4), np.uint8)), "has shape"),
    (lambda s: s.set_target_buffer(np.zeros((4, 4, 4), np.uint8)), "image is"),
    (lambda s: s.set_target_buffer(np.zeros((40, 44, 48), np.float32)), "bool or integer"),
])
def test_bad_prompts_are_refused_before_anything_changes(session, call, match):
    with pytest.raises(ValueError, match=match):
        call(session)
    assert session.interactions.abs().sum() == 0 and session.target.sum() == 0 and session.intensity == 1.0


def test_a_failing_prediction_rolls_the_prompt_back(session, monkeypatch):
    session.add_point_interaction((20, 22, 24), include_interaction=True)
    target, inter = session.target.copy(), session.interactions.clone()

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("nnseg.interactive.session.predict_at", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        session.add_point_interaction((10, 10, 10), include_interaction=True)
    assert np.array_equal(session.target, target) and torch.equal(session.interactions, inter)
    assert session.intensity == pytest.approx(1 / 0.98) and session.undo()  # the earlier prompt stays undoable


def test_unsupported_prompt_kinds_are_refused_or_forced(tmp_path):
    info = {"supported_interactions": {"points": False, "bbox3d": False}, "interaction_channels": 6}
    model = load_interactive_model(write_model_folder(tmp_path / "m", inference_info=info))
    s = InteractiveSession(model, precision="fp32")
    s.set_image(blob_image(shape=(40, 44, 48)))
    with pytest.raises(ValueError, match="does not support points"):
        s.add_point_interaction((5, 5, 5), True, run_prediction=False)
    with pytest.warns(RuntimeWarning, match="override"):
        s.add_point_interaction((5, 5, 5), True, run_prediction=False, override_capability_checks=True)
    with pytest.raises(ValueError, match="2D boxes only"):
        s.add_bbox_interaction([[0, 5], [0, 5], [0, 5]], True)


def test_model_folder_errors_name_the_file(tmp_path):
    folder = write_model_folder(tmp_path / "m")
    (folder / "fold_1").mkdir()
    with pytest.raises(ValueError, match="2 fold folders"):
        load_interactive_model(folder)
    assert load_interactive_model(folder, fold=0).fold == "fold_0"
    (folder / "plans.json").unlink()
    with pytest.raises(FileNotFoundError, match="plans.json is missing"):
        load_interactive_model(folder, fold=0)
    evil = write_model_folder(tmp_path / "evil")
    ckpt = evil / "fold_0" / "checkpoint_final.pth"
    payload = torch.load(ckpt, weights_only=True)
    payload["init_args"] = {"configuration": json.loads((evil / "plans.json").read_text())["configurations"].popitem()[0],
                            "hook": print}
    torch.save(payload, ckpt)
    with pytest.raises(ValueError, match="refusing to load"):
        load_interactive_model(evil)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_session_gives_the_cpu_masks(tmp_path):
    from interactive_steps import run_steps, sequence

    folder = write_model_folder(tmp_path / "m")
    image = blob_image()
    steps, arrays = sequence(image.shape[1:])
    results = []
    for device in ("cpu", "cuda"):
        session = InteractiveSession(load_interactive_model(folder, device=device), precision="fp32")
        results.append(run_steps(session, image, steps, arrays))
    for i, (cpu, cuda) in enumerate(zip(*results)):
        assert (cpu == cuda).mean() >= 0.999, f"step {i} {steps[i]}"
    auto = InteractiveSession(load_interactive_model(folder, device="cuda"))  # fp16 autocast
    assert run_steps(auto, image, steps[:1], arrays)[0].sum() > 0
