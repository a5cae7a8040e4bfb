"""The memory estimate of an interactive session (what the server reserves from its budget per image) and of the
prediction working memory shared by all sessions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from interactive_model import blob_image, write_model_folder
from nnseg.interactive import InteractiveSession, load_interactive_model, prediction_memory_bytes, session_memory_bytes

PATCH = [80, 80, 80]


def _estimate(shape, channels: int = 7, **kw) -> int:
    return session_memory_bytes(shape, num_interaction_channels=channels, patch_size=PATCH, **kw)


def test_estimate_grows_with_voxels_channels_and_target_itemsize():
    sizes = [[1, 8, 8, 8], [1, 16, 8, 8], [1, 16, 16, 8], [1, 64, 64, 32], [1, 256, 256, 128]]
    values = [_estimate(s) for s in sizes]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert _estimate([2, 32, 32, 32]) > _estimate([1, 32, 32, 32])  # image channels
    assert _estimate([1, 32, 32, 32], channels=9) > _estimate([1, 32, 32, 32], channels=7)  # interaction channels
    assert _estimate([1, 32, 32, 32], target_itemsize=4) > _estimate([1, 32, 32, 32])


def test_undo_is_counted_at_a_whole_prompt_and_target_copy():
    shape, n, voxels = [1, 40, 44, 48], 7, 40 * 44 * 48
    with_undo, without = _estimate(shape, enable_undo=True), _estimate(shape, enable_undo=False)
    assert with_undo - without == (2 * n + 2) * voxels  # every float16 channel + the target twice (uint8)
    assert _estimate(shape, enable_undo=True, target_itemsize=2) - _estimate(shape, enable_undo=False,
                                                                             target_itemsize=2) == (2 * n + 4) * voxels


def test_estimate_formula_and_bad_shapes():
    shape, n = [1, 10, 20, 30], 7
    v, crop = 10 * 20 * 30, 90 * 100 * 110
    expected = (4 + 2 * n + 1) * v + (2 * n + 2) * v + (4 + 2 * n) * crop + 32 * v
    assert _estimate(shape) == expected
    for bad in ([10, 20, 30], [1, 0, 20, 30]):
        with pytest.raises(ValueError, match=r"\[c, x, y, z\]"):
            _estimate(bad)


def test_estimate_covers_what_a_real_session_holds(tmp_path):
    model = load_interactive_model(write_model_folder(tmp_path / "m"))
    shape = (48, 72, 104)
    session = InteractiveSession(model, precision="fp32")
    session.set_image(blob_image(shape=shape))
    target = np.zeros(shape, np.uint8)
    session.set_target_buffer(target)
    seg = np.zeros(shape, np.uint8)
    seg[10:30, 20:50, 30:80] = 1
    session.add_initial_seg_interaction(seg, run_prediction=True)  # the largest undo record: every channel
    held = session.image.nbytes + session.interactions.nbytes + target.nbytes
    held += sum(r[3].nbytes for r in session._log.records)
    n = model.capabilities.num_interaction_channels
    estimate = session_memory_bytes([1, *shape], num_interaction_channels=n, patch_size=model.patch_size)
    assert held <= estimate
    shared = prediction_memory_bytes(model.configuration.architecture, model.patch_size, image_channels=1,
                                     interaction_channels=n)
    patch_input = 4 * (1 + n) * math.prod(model.patch_size)
    assert shared > patch_input and shared == prediction_memory_bytes(
        model.configuration.architecture, model.patch_size, image_channels=1, interaction_channels=n)
    assert prediction_memory_bytes(model.configuration.architecture, model.patch_size, image_channels=2,
                                   interaction_channels=n) > shared


def test_check_session_fits_adds_session_prediction_and_caller_and_refuses_above_the_budget(tmp_path):
    from nnseg.interactive import check_session_fits
    from nnseg.predictions.inference.memory_plan import CaseDoesNotFit

    model = load_interactive_model(write_model_folder(tmp_path / "m"))
    n, shape = model.capabilities.num_interaction_channels, [1, 40, 44, 48]
    need = (session_memory_bytes(shape, num_interaction_channels=n, patch_size=model.patch_size, enable_undo=False)
            + prediction_memory_bytes(model.configuration.architecture, model.patch_size, image_channels=1,
                                      interaction_channels=n) + 123)
    fits = dict(budget_source="--max-memory test", enable_undo=False, caller_bytes=123, caller_holds="the maps")
    assert check_session_fits(model, shape, budget_bytes=need, **fits) == need
    with pytest.raises(CaseDoesNotFit) as refused:
        check_session_fits(model, shape, budget_bytes=need - 1, **fits)
    message = str(refused.value)
    for part in ("shape [1, 40, 44, 48]", f"{need / 2**30:.2f} GB", "the maps", "(--max-memory test)",
                 "Raise --max-memory", "more memory", "crop the image"):
        assert part in message, (part, message)


def test_set_image_refuses_an_image_above_the_budget_before_allocating(tmp_path, monkeypatch):
    from nnseg.predictions.inference import memory_plan

    model = load_interactive_model(write_model_folder(tmp_path / "m"))
    image = blob_image(shape=(40, 44, 48))
    tiny = InteractiveSession(model, precision="fp32", max_memory_gb=0.001)
    with pytest.raises(memory_plan.CaseDoesNotFit, match=r"shape \[1, 40, 44, 48\].*--max-memory 0.001"):
        tiny.set_image(image)
    assert tiny.image is None and tiny.interactions is None
    big = InteractiveSession(model, precision="fp32", max_memory_gb=64)
    big.set_image(image)
    assert big.image is not None and tuple(big.interactions.shape[1:]) == (40, 44, 48)
    with pytest.raises(ValueError, match="positive number of GB, got 0"):
        InteractiveSession(model, max_memory_gb=0)
    # no max_memory_gb: 85 % of the memory free now on the model's device (here: almost none)
    monkeypatch.setattr(memory_plan, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(memory_plan.CaseDoesNotFit, match="85 % of the 0.0 GB RAM free now"):
        InteractiveSession(model, precision="fp32").set_image(image)
    unchecked = InteractiveSession(model, precision="fp32", check_memory=False)  # the caller budgets it (serve)
    unchecked.set_image(image)
    assert unchecked.image is not None
