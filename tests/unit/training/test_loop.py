from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tinydata import tiny_plans, tiny_spec

from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.config import TrainConfig
from nnseg.training.hooks import Hooks
from nnseg.training.loop import train
from nnseg.training.setup import FoldJob, make_run_spec


def _job(pre: Path, results: Path, **cfg: object) -> FoldJob:
    base = dict(num_epochs=4, iterations_per_epoch=3, val_iterations_per_epoch=2, seed=7, save_every=1, initial_lr=0.05)
    base.update(cfg)
    return FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=tiny_spec(), preprocessed_dataset_folder=pre,
                   results_dataset_folder=results, fold=0, trainer_name="nnUNetTrainer", config=TrainConfig(**base),
                   device=torch.device("cpu"), precision="fp32")


class _Interrupt(Hooks):
    def __init__(self, after_epoch: int) -> None:
        self.after = after_epoch

    def on_epoch_end(self, run: object, state: object) -> None:
        if state.current_epoch == self.after:  # type: ignore[attr-defined]
            raise KeyboardInterrupt


def test_loss_decreases_and_files_written(tiny_preprocessed: Path, tmp_path: Path) -> None:
    run = make_run_spec(_job(tiny_preprocessed, tmp_path / "results", num_epochs=6, iterations_per_epoch=6))
    result = train(run)
    losses = result.state.logging["train_losses"]
    assert len(losses) == 6 and losses[-1] < losses[0]
    fold = run.output_folder
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "checkpoint_best.pth").is_file()
    assert not (fold / "checkpoint_latest.pth").exists()
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["current_epoch"] == 6 and ckpt["trainer_name"] == "nnUNetTrainer"
    assert ckpt["inference_allowed_mirroring_axes"] == (0, 1, 2)
    assert set(ckpt["logging"]) >= {"mean_fg_dice", "ema_fg_dice", "train_losses", "lrs"}


def test_resume_equals_uninterrupted(tiny_preprocessed: Path, tmp_path: Path) -> None:
    full = train(make_run_spec(_job(tiny_preprocessed, tmp_path / "a")))
    run_b = make_run_spec(_job(tiny_preprocessed, tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        train(run_b, hooks=_Interrupt(after_epoch=1))
    assert (run_b.output_folder / "checkpoint_latest.pth").is_file()
    resumed = train(make_run_spec(_job(tiny_preprocessed, tmp_path / "b"), resume=True), resume=True)
    assert resumed.state.current_epoch == 4
    wa = load_checkpoint(full.output_folder / "checkpoint_final.pth")["network_weights"]
    wb = load_checkpoint(resumed.output_folder / "checkpoint_final.pth")["network_weights"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-6, rtol=0)
    assert full.state.logging["train_losses"] == pytest.approx(resumed.state.logging["train_losses"], abs=1e-6)
