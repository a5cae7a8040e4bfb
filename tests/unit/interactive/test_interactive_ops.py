"""Pure helpers of the interactive session: window filters, point stamp, crops/pastes, refinement cover, capabilities."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from nnseg.interactive.capabilities import capabilities_from_json, read_capabilities
from nnseg.interactive.cover import cover_boxes
from nnseg.interactive.ops import (crop_padded, dilate_nonnegative, nonzero_box, paste, point_stamp,
                                   round_to_nearest_odd, window_filter)
from nnseg.interactive.predict import border_changed
from nnseg.interactive.prompts import box_prompt, normalise_image, queue_entry_for_box


def _brute_window(x: np.ndarray, k: int, op) -> np.ndarray:
    r = (k - 1) // 2
    out = np.empty_like(x)
    for i, j, l in itertools.product(*[range(s) for s in x.shape]):
        out[i, j, l] = op(x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1, max(0, l - r):l + r + 1])
    return out


@pytest.mark.parametrize("k", [3, 5, 7])
def test_window_filter_is_the_max_or_min_over_the_clipped_cube(k):
    x = torch.from_numpy(np.random.default_rng(k).random((7, 9, 6)).astype(np.float32))
    assert torch.equal(window_filter(x, k), torch.from_numpy(_brute_window(x.numpy(), k, np.max)))
    assert torch.equal(window_filter(x, k, minimum=True), torch.from_numpy(_brute_window(x.numpy(), k, np.min)))
    with pytest.raises(ValueError, match="odd width"):
        window_filter(x, 4)


def test_dilation_around_the_non_zero_voxels_equals_the_full_filter():
    x = torch.zeros((1, 30, 31, 32), dtype=torch.float16)
    x[0, 3, 28, 5] = 2.5
    x[0, 20:23, 4, 30] = 1.0
    for k in (3, 5, 9):
        assert torch.equal(dilate_nonnegative(x, k), window_filter(x, k))
    assert torch.equal(dilate_nonnegative(torch.zeros((1, 4, 4, 4)), 5), torch.zeros((1, 4, 4, 4)))


def test_round_to_nearest_odd():
    assert [round_to_nearest_odd(v) for v in (1, 1.5, 2, 2.5, 3.2, 4, 5.5, 7)] == [1, 1, 3, 3, 3, 5, 5, 7]
    with pytest.raises(ValueError):
        round_to_nearest_odd(0)


def test_point_stamp_is_a_distance_transformed_ball():
    stamp = point_stamp((4, 4, 4))
    assert stamp.shape == (9, 9, 9) and stamp.dtype == torch.float64
    assert stamp[4, 4, 4] == 1.0 and stamp[0, 0, 0] == 0.0 and stamp[0, 4, 4] > 0  # the rim voxel is in the ball
    assert torch.equal(stamp, stamp.flip(0)) and torch.equal(stamp, stamp.permute(2, 0, 1))
    assert 0 < stamp[2, 4, 4] < stamp[3, 4, 4] < 1


def test_crop_pads_with_zeros_and_paste_drops_the_outside():
    src = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 4, 5, 6)
    crop = crop_padded(src, [[-2, 3], [1, 7], [4, 8]])
    assert crop.shape == (2, 5, 6, 4)
    assert torch.equal(crop[:, 2:, :4, :2], src[:, 0:3, 1:5, 4:6]) and crop[:, :2].abs().sum() == 0
    target = np.zeros((4, 5, 6), np.uint8)
    paste(target, torch.ones((5, 6, 4)), [[-2, 3], [1, 7], [4, 8]])
    assert target.sum() == 3 * 4 * 2 and target[0:3, 1:5, 4:6].all()
    assert nonzero_box(torch.from_numpy(target)) == [[0, 3], [1, 5], [4, 6]]
    assert nonzero_box(torch.zeros((3, 3, 3))) is None


def test_cover_boxes_cover_every_changed_voxel_inside_their_margins():
    mask = torch.zeros((70, 60, 90), dtype=torch.uint8)
    mask[5:60, 10:50, 3:85] = 1
    mask[66, 2, 88] = 1  # a voxel the candidate grid misses: sampled
    boxes = cover_boxes(mask, [64, 64, 64], rng=np.random.RandomState(0))
    covered = torch.zeros_like(mask)
    for b in boxes:
        assert [hi - lo for lo, hi in b] == [64, 64, 64]
        inner = tuple(slice(max(0, lo + 24), max(0, hi - 24)) for lo, hi in b)
        covered[inner] = 1
    assert bool((covered >= mask).all())
    assert boxes == cover_boxes(mask, [64, 64, 64], rng=np.random.RandomState(0))
    assert cover_boxes(torch.zeros((5, 5, 5), dtype=torch.uint8), [64] * 3, rng=np.random.RandomState(0)) == []
    with pytest.raises(ValueError, match="margin"):
        cover_boxes(mask, [40, 40, 40], rng=np.random.RandomState(0))


def test_border_change_needs_many_or_relatively_many_voxels():
    prev = torch.zeros((40, 40, 40), dtype=torch.float16)
    pred = torch.zeros((40, 40, 40), dtype=torch.int64)
    assert not border_changed(pred, prev)
    pred[0, :10, :10] = 1  # 100 voxels on a face: not more than 100
    assert not border_changed(pred, prev)
    pred[0, :10, 10] = 1  # 110 voxels, from none: relative change above 20 %
    assert border_changed(pred, prev)
    prev[0] = 1
    pred[0] = 1
    pred[0, :11, :11] = 0  # 121 of 1600 changed, relative change 8 %: not enough
    assert not border_changed(pred, prev)


def test_box_prompts_are_rounded_clipped_and_typed():
    assert box_prompt([[-5.2, 10.6], [3, 4], [2, 9]], (20, 20, 20), bbox3d=False, bbox2d=True) == \
        ("bbox2d", [[0, 11], [3, 4], [2, 9]])
    assert box_prompt([[1, 8], [3, 9], [2, 9]], (20, 20, 20), bbox3d=True, bbox2d=True)[0] == "bbox3d"
    for bad, match in (([[1, 8], [3, 9], [2, 9]], "3D"), ([[1, 1], [3, 4], [2, 9]], "zero size"),
                       ([[30, 40], [3, 4], [2, 9]], "outside"), ([[1, 2], [3, 4]], "box must be"),
                       ([[1, "a"], [3, 4], [2, 3]], "finite numbers")):
        with pytest.raises(ValueError, match=match):
            box_prompt(bad, (20, 20, 20), bbox3d=False, bbox2d=True)
    assert queue_entry_for_box([[0, 11], [3, 4], [2, 9]], [64, 64, 64]) == ([6, 4, 6], 1)
    assert queue_entry_for_box([[0, 100], [0, 10], [0, 10]], [64, 64, 64]) == ([50, 5, 5], (100 + 21) / 64)


def test_image_normalisation_uses_channel_0_inside_the_non_zero_box():
    image = np.zeros((2, 6, 7, 8), np.float32)
    image[0, 1:4, 2:6, 3:7] = np.arange(48).reshape(3, 4, 4)
    image[1, 5, 6, 7] = 9.0  # the box includes channel 1's voxel
    out = normalise_image(image, channels=2)
    crop = torch.from_numpy(image[0, 1:6, 2:7, 3:8])
    assert torch.allclose(out[0], (torch.from_numpy(image[0]) - crop.mean()) / crop.std())
    assert image[0, 1, 2, 3] == 0  # the caller's array is untouched
    for bad, match in ((np.zeros((1, 4, 4, 4)), "entirely zero"), (np.ones((4, 4, 4)), "4D"),
                       (np.full((1, 4, 4, 4), np.nan), "NaN"), (np.ones((3, 4, 4, 4)), "channel")):
        with pytest.raises(ValueError, match=match):
            normalise_image(bad, channels=1)


def test_capabilities_defaults_negative_indices_and_refusals(tmp_path):
    caps = capabilities_from_json({}, source=tmp_path)
    assert caps.num_interaction_channels == 7 and caps.prev_seg == 0 and caps.pairs["points"] == (3, 4)
    assert caps.interaction_decay == 0.98 and not caps.is_supported("bbox3d") and caps.is_supported("initial_label")
    caps = capabilities_from_json({"interaction_channels": 8, "channel_mapping": {"prev_seg": -1, "points": [0, 1]},
                                   "preferred_scribble_thickness": 3}, source=tmp_path)
    assert caps.num_interaction_channels == 9 and caps.prev_seg == 8 and caps.scribble_thickness == [3, 3, 3]
    assert caps.channel_mapping_json()["points"] == [0, 1]
    for bad, match in (({"supported_interactions": {"brush": True}}, "unknown prompt kinds"),
                       ({"channel_mapping": {"clicks": [1, 2]}}, "unknown keys"),
                       ({"channel_mapping": {"points": [1]}}, "pair"),
                       ({"interaction_channels": 2, "channel_mapping": {"points": [5, 6]}}, "outside"),
                       ({"inference_class": "Other"}, "session class")):
        with pytest.raises(ValueError, match=match):
            capabilities_from_json(bad, source=tmp_path)
    with pytest.raises(FileNotFoundError, match="inference_info.json"):
        read_capabilities(tmp_path)
    (tmp_path / "inference_session_class.json").write_text(json.dumps("nnInteractiveInferenceSession"))
    assert read_capabilities(tmp_path).interaction_decay == 0.9
    (tmp_path / "inference_info.json").write_text("{broken")
    with pytest.raises(ValueError, match="cannot read"):
        read_capabilities(tmp_path)
