"""Memory budget: refusal before any work, issue 12's 256^3 patch, samples per call, fp32 accuracy at tile borders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_bounded_predict import LABELS, _model

from nnseg.cli.main import main
from nnseg.predictions.inference.memory_plan import CPU_VOXELS_PER_CALL, GIB, activation_bytes_per_sample, samples_per_call
from nnseg.predictions.inference.model_folder import load_trained_model
from nnseg.predictions.inference.sliding_window import sliding_window_predict
from nnseg.predictions.inference.streaming_window import sliding_window_slabs


def _images(folder: Path, shape: tuple[int, ...]) -> Path:
    folder.mkdir()
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 20, size=shape).astype(np.float32))
    sitk.WriteImage(image, str(folder / "case_a_0000.nii.gz"))
    return folder


def _predict(model: Path, images: Path, out: Path, env: dict[str, str], *extra: str) -> int:
    return main(["predict-from-modelfolder", "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0",
                 "-device", "cpu", "--disable_progress_bar", *extra], env=env)


def test_case_over_max_memory_is_refused_before_anything_is_written(tmp_path: Path, expected_dir: Path,
                                                                    roots_env: dict[str, str], capsys) -> None:
    model = _model(tmp_path / "m", expected_dir, labels=LABELS)
    images = _images(tmp_path / "images", (20, 24, 22))
    out = tmp_path / "out"
    assert _predict(model, images, out, roots_env, "--max-memory", "0.3") != 0
    err = capsys.readouterr().err
    assert "case case_a does not fit" in err and "--max-memory 0.3" in err and "Nothing was written" in err
    assert "GB (baseline" in err
    assert not out.exists()
    assert _predict(model, images, out, roots_env, "--max-memory", "2") == 0
    assert (out / "case_a.nii.gz").is_file()


def test_issue12_256_patch_on_a_small_image_is_refused(tmp_path: Path, expected_dir: Path,
                                                       roots_env: dict[str, str], capsys) -> None:
    """Issue 12: a plans patch of 256^3 drove predict past 4 GB on a 35x50x35 image."""
    model = tmp_path / "m" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    golden = expected_dir / "Dataset004_Hippocampus"
    plans = json.loads((golden / "nnUNetPlans.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [256, 256, 256]
    (model / "fold_0").mkdir(parents=True)
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text((golden / "dataset.json").read_text())
    from nnseg.networks import build_network
    from nnseg.predictions.inference.checkpoint import save_checkpoint

    net = build_network(plans["configurations"]["3d_fullres"]["architecture"], input_channels=1, num_classes=3,
                        deep_supervision=False)
    save_checkpoint({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer", "current_epoch": 1,
                     "init_args": {"configuration": "3d_fullres", "fold": 0},
                     "inference_allowed_mirroring_axes": (0, 1, 2)}, model / "fold_0" / "checkpoint_final.pth")
    out = tmp_path / "out"
    assert _predict(model, _images(tmp_path / "images", (35, 50, 35)), out, roots_env, "--max-memory", "4") != 0
    err = capsys.readouterr().err
    assert "case case_a does not fit" in err and "patch_size [256, 256, 256]" in err
    assert not out.exists()


def test_samples_per_call_follow_patch_and_budget(tmp_path: Path, expected_dir: Path) -> None:
    small = load_trained_model(_model(tmp_path / "a", expected_dir, labels=LABELS))
    big = load_trained_model(_model(tmp_path / "b", expected_dir, labels=LABELS, patch=[96, 96, 96]))
    assert activation_bytes_per_sample(big) > 100 * activation_bytes_per_sample(small)
    assert samples_per_call(small, 2 * GIB) == 8  # the measured ceiling
    assert samples_per_call(big, 2 * GIB) < 8
    assert samples_per_call(big, 1) == 1


def test_cpu_samples_per_call_stop_where_calls_are_efficient(tmp_path: Path, expected_dir: Path) -> None:
    """The budget is a ceiling: on the CPU the fewest samples (a power of two) reaching CPU_VOXELS_PER_CALL voxels,
    on a GPU as many as fit."""
    for patch, expected in (([96, 96, 96], 1), ([40, 96, 112], 2), ([40, 56, 40], 8), ([32, 48, 48], 8)):
        model = load_trained_model(_model(tmp_path / "x".join(map(str, patch)), expected_dir, labels=LABELS,
                                          patch=patch))
        assert samples_per_call(model, 1000 * GIB, device=torch.device("cpu")) == expected
        assert samples_per_call(model, 1000 * GIB, device=torch.device("cpu")) * math.prod(patch) >= min(
            CPU_VOXELS_PER_CALL, 8 * math.prod(patch))
        assert samples_per_call(model, 1000 * GIB, device=torch.device("cuda")) == 8
        assert samples_per_call(model, 1, device=torch.device("cpu")) == 1


def test_fp32_ring_accumulator_is_exact_at_the_borders_of_an_anisotropic_patch() -> None:
    """nnU-Net's fp16 accumulator is ~0.5 off where Gaussian weights are tiny; the streamed fp32 one is not."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 4, 3, padding=1)
    with torch.no_grad():
        net.weight.mul_(20)
    image, patch = torch.randn(1, 9, 70, 61), (4, 32, 32)
    exact = sliding_window_predict(lambda t: net(t).double(), image, patch, num_outputs=4, dtype=torch.float64)
    streamed = torch.cat([s for _, s in sliding_window_slabs(net, image, patch, num_outputs=4)], dim=1)
    fp16 = sliding_window_predict(net, image, patch, num_outputs=4, dtype=torch.float16).double()
    border = torch.zeros(image.shape[1:], dtype=torch.bool)
    border[[0, -1]] = True
    border[:, [0, -1]] = True
    border[:, :, [0, -1]] = True
    err32 = (streamed.double() - exact)[:, border].abs().max().item()
    err16 = (fp16 - exact)[:, border].abs().max().item()
    assert err32 < 1e-4, err32
    assert err16 > 100 * err32  # the measurement can see the fp16 error


def test_heap_keeps_one_network_calls_blocks_only(tmp_path: Path, expected_dir: Path, monkeypatch) -> None:
    """The allocator's heap holds blocks up to one call's largest tensor; larger ones (accumulators, export arrays)
    are returned to the OS, and a later model may raise the threshold, never lower it."""
    import sys

    import nnseg.devices as devices
    from nnseg.predictions.inference.memory_plan import largest_call_block

    model = load_trained_model(_model(tmp_path / "m", expected_dir, labels=LABELS, patch=[40, 96, 112]))
    features = model.configuration.architecture["arch_kwargs"]["features_per_stage"][0]
    assert largest_call_block(model, 2) == 4 * 2 * max(features, model.num_outputs) * 40 * 96 * 112
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    monkeypatch.setattr(devices, "_MMAP_THRESHOLD", 0)
    assert devices.keep_freed_memory_for_reuse(400 << 20)
    assert devices._MMAP_THRESHOLD == 500 << 20
    devices.keep_freed_memory_for_reuse(1 << 20)  # smaller: kept
    assert devices._MMAP_THRESHOLD == 500 << 20
    devices.keep_freed_memory_for_reuse(None)  # training: every block below 1 GB
    assert devices._MMAP_THRESHOLD == 1 << 30


@pytest.mark.parametrize("rows, step, per_row, tiles", [(1, 8, 1, 1), (5, 8, 3, 2), (12, 8, 7, 8), (4, 20, 2, 8),
                                                        (30, 8, 14, 6), (3, 8, 1, 8), (9, 4, 5, 5)])
def test_ring_rows_equal_window_rows_over_every_tile(rows: int, step: int, per_row: int, tiles: int) -> None:
    """The memory plan's ring size without listing the tiles equals the streaming window's over the listed tiles."""
    from nnseg.predictions.inference.memory_plan import ring_rows
    from nnseg.predictions.inference.streaming_window import window_rows

    starts = list(range(0, rows * step, step))
    listed = [s for s in starts for _ in range(per_row)]
    assert ring_rows(starts, per_row, 16, tiles) == window_rows(listed, 16, tiles)
