from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnseg.preprocessed.store import save_case
from nnseg.training.sampling import PatchSampler, choose_bbox, crop_and_pad, oversample_flags


def test_oversample_flags_match_nnunet() -> None:
    assert oversample_flags(2, 0.33) == [False, True]
    assert oversample_flags(7, 0.33) == [False] * 5 + [True] * 2
    assert oversample_flags(1, 0.33) == [False]
    assert oversample_flags(4, 0.0) == [False] * 4


def test_crop_and_pad_outside_image() -> None:
    a = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    out = crop_and_pad(a, [-1, 2], [3, 6], pad_value=-1)
    assert out.shape == (2, 4, 4)
    assert (out[:, 0] == -1).all() and (out[:, :, 2:] == -1).all()
    np.testing.assert_array_equal(out[:, 1:, :2], a[:, 0:3, 2:4])


def test_forced_foreground_patch_contains_class() -> None:
    rng = np.random.default_rng(0)
    locs = {1: np.array([[0, 30, 30, 30]]), 2: np.zeros((0, 4), dtype=int)}
    for _ in range(20):
        lo, hi = choose_bbox(rng, (40, 40, 40), (10, 10, 10), (4, 4, 4), force_fg=True, class_locations=locs)
        assert all(l <= 30 < h for l, h in zip(lo, hi))
        lo, hi = choose_bbox(rng, (40, 40, 40), (10, 10, 10), (4, 4, 4), force_fg=False, class_locations=locs)
        assert all(-2 <= l and h <= 42 for l, h in zip(lo, hi))


@pytest.mark.parametrize("is_2d", [False, True])
def test_sampler_reads_store(tmp_path: Path, is_2d: bool) -> None:
    data = np.random.default_rng(0).random((1, 6, 20, 20)).astype(np.float32)
    seg = np.zeros((1, 6, 20, 20), dtype=np.int16)
    seg[0, 2:4, 5:8, 5:8] = 1
    locs = {1: np.argwhere(seg == 1)}
    save_case(tmp_path, "c0", data, seg, {"spacing": [1.0, 1.0, 1.0], "class_locations": locs}, patch_size=None)
    patch = (8, 8) if is_2d else (4, 8, 8)
    sampler = PatchSampler(tmp_path, ["c0"], patch, patch, batch_size=2)
    image, s, ids = sampler.sample(np.random.default_rng(1))
    assert image.shape == (2, 1, *patch) and s.shape == (2, 1, *patch) and ids == ["c0", "c0"]
    assert (s[1] == 1).any()  # the second sample is forced to foreground
