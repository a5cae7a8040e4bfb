"""The training and prediction paths on every device present: the CPU always, CUDA where there is one.

Each test takes ``device``; the CUDA cases carry the ``gpu`` mark and skip cleanly without CUDA, so the same tests run
in CI on the CPU and on the GPU machine through ``bench/gpu_tests.sh`` (``pytest -m gpu``). On CUDA they check what
differs there: batches made and augmented on the device, fp16 autocast with loss scaling, accumulation of the sliding
window on the device, checkpoints that load on a machine without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tinydata import tiny_plans, tiny_spec

from nnseg.devices import default_precision
from nnseg.predictions.run.predict import Predictor
from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.config import TrainConfig
from nnseg.training.data import BatchMaker
from nnseg.training.loop import train
from nnseg.training.run_spec import build_components
from nnseg.training.setup import FoldJob, make_run_spec, save_run_files

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


def _job(pre: Path, results: Path, device: str, *, precision: str | None = None, **cfg: object) -> FoldJob:
    base = dict(num_epochs=3, iterations_per_epoch=4, val_iterations_per_epoch=2, seed=3, initial_lr=0.05)
    base.update(cfg)
    dev = torch.device(device)
    return FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=tiny_spec(),
                   preprocessed_dataset_folder=pre, results_dataset_folder=results, fold=0,
                   trainer_name="nnUNetTrainer", config=TrainConfig(**base), device=dev,
                   precision=precision or default_precision(dev))


def _batch_maker(run: object) -> BatchMaker:
    return build_components(run).batches  # type: ignore[arg-type]  # the loop's own batch maker


@pytest.mark.parametrize("device", DEVICES)
def test_batches_are_made_on_the_device_and_equal_the_cpu_ones(tiny_preprocessed: Path, tmp_path: Path,
                                                               device: str) -> None:
    run = make_run_spec(_job(tiny_preprocessed, tmp_path / "r", device))
    cpu_run = make_run_spec(_job(tiny_preprocessed, tmp_path / "c", "cpu"))
    maker, reference = _batch_maker(run), _batch_maker(cpu_run)
    for epoch, index in ((0, 0), (1, 3)):
        image, targets = maker.train_batch(epoch, index)
        again, _ = maker.train_batch(epoch, index)
        assert image.device.type == device and all(t.device.type == device for t in targets)
        assert image.dtype == torch.float32 and image.is_contiguous()
        torch.testing.assert_close(image, again)  # a batch is a pure function of (seed, epoch, index)
        ref_image, ref_targets = reference.train_batch(epoch, index)
        torch.testing.assert_close(image.cpu(), ref_image, atol=1e-4, rtol=1e-4)
        for t, r in zip(targets, ref_targets):
            assert (t.cpu() != r).float().mean() < 1e-3  # labels: equal up to rare interpolation ties


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_the_device_learns_and_writes_portable_checkpoints(tiny_preprocessed: Path, tmp_path: Path,
                                                                       device: str) -> None:
    job = _job(tiny_preprocessed, tmp_path / "results", device, num_epochs=4, iterations_per_epoch=5)
    run = make_run_spec(job)
    save_run_files(run, job)
    result = train(run)
    losses = result.state.logging["train_losses"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    ckpt = load_checkpoint(run.output_folder / "checkpoint_final.pth")
    assert all(v.device.type == "cpu" for v in ckpt["network_weights"].values())


@pytest.mark.parametrize("device", DEVICES)
def test_prediction_on_the_device_equals_the_cpu_in_fp32(tiny_preprocessed: Path, tmp_path: Path,
                                                         device: str) -> None:
    job = _job(tiny_preprocessed, tmp_path / "results", "cpu", num_epochs=1, iterations_per_epoch=2)
    run = make_run_spec(job)
    save_run_files(run, job)
    train(run)
    model_folder = run.output_folder.parent
    image = np.random.default_rng(0).normal(size=(1, 23, 21, 26)).astype(np.float32)
    reference = Predictor.from_model_folder(model_folder, folds=[0], device="cpu", precision="fp32")
    on_device = Predictor.from_model_folder(model_folder, folds=[0], device=device, precision="fp32")
    expected = reference.predict_logits(image)
    got = on_device.predict_logits(image)
    assert got.device.type == device
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    on_device.accumulate_on_device = False  # --not_on_device: the window's sum on the CPU, the network on the device
    torch.testing.assert_close(on_device.predict_logits(image), expected, atol=1e-4, rtol=1e-4)
