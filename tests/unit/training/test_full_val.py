"""Full-image validation (``full_val_every``): logged, chooses checkpoint_best, exactly resumable."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tinydata import tiny_plans, tiny_spec

from nnseg.networks import build_network
from nnseg.launch.full_val import case_dice, full_validator, mean_per_label
from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.config import TrainConfig
from nnseg.training.hooks import HookList, Hooks, ProgressPlot, TextLog
from nnseg.training.loop import train
from nnseg.training.setup import FoldJob, make_run_spec
from nnseg.training.state import TrainState


def _job(pre: Path, results: Path, **cfg: object) -> FoldJob:
    base = dict(num_epochs=5, iterations_per_epoch=2, val_iterations_per_epoch=1, seed=3, save_every=1, initial_lr=0.05,
                full_val_every=1)
    base.update(cfg)
    return FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=tiny_spec(), preprocessed_dataset_folder=pre,
                   results_dataset_folder=results, fold=0, trainer_name="nnUNetTrainer", config=TrainConfig(**base),
                   device=torch.device("cpu"), precision="fp32")


def _train(job: FoldJob, **kwargs: object):  # type: ignore[no-untyped-def]
    run = make_run_spec(job, resume=bool(kwargs.get("resume")))
    hooks = HookList([TextLog(run.output_folder, echo=False), ProgressPlot(run.output_folder),
                      *([kwargs.pop("hooks")] if "hooks" in kwargs else [])])  # type: ignore[list-item]
    return run, train(run, full_validator=full_validator(run), hooks=hooks, **kwargs)  # type: ignore[arg-type]


class _Interrupt(Hooks):
    def __init__(self, after_epoch: int) -> None:
        self.after = after_epoch

    def on_epoch_end(self, run: object, state: object) -> None:
        if state.current_epoch == self.after:  # type: ignore[attr-defined]
            raise KeyboardInterrupt


def test_case_dice_leaves_out_ignore_and_undefined_labels() -> None:
    ref = np.array([[0, 1, 1, 2], [3, 3, 0, 0]])
    pred = np.array([[0, 1, 0, 2], [1, 1, 0, 0]])
    dice = case_dice(pred, ref, labels=[1, 2, 4], regions=False, ignore_label=3)
    assert dice[0] == pytest.approx(2 / 3) and dice[1] == 1.0 and math.isnan(dice[2])  # voxels of 3 not counted
    assert mean_per_label({"a": dice, "b": [0.0, float("nan"), float("nan")]}, 3)[:2] == [pytest.approx(1 / 3), 1.0]


def test_best_checkpoint_is_the_epoch_with_the_best_whole_image_dice(tiny_preprocessed: Path, tmp_path: Path) -> None:
    run, result = _train(_job(tiny_preprocessed, tmp_path / "r"))
    full = result.state.logging["full_val_dice"]
    assert len(full) == 5 and not any(math.isnan(v) for v in full)
    best_epoch = int(np.argmax(full))  # the first of equal maxima (a later tie is no improvement)
    best = load_checkpoint(run.output_folder / "checkpoint_best.pth")
    assert best["current_epoch"] == best_epoch + 1 and best["nnseg_best_full_val"] == pytest.approx(full[best_epoch])
    network = build_network(run.architecture, input_channels=1, num_classes=2, deep_supervision=True)
    network.load_state_dict(best["network_weights"])
    assert full_validator(run)(network)[0] == pytest.approx(full[best_epoch], abs=1e-9)  # the logged Dice is real
    ema_epoch = int(np.argmax(result.state.logging["ema_fg_dice"]))
    assert result.state.best_epoch == best_epoch, (best_epoch, ema_epoch)
    log = next(run.output_folder.glob("training_log_*.txt")).read_text()
    assert "Full-image validation Dice" in log and "New best full-image validation Dice" in log
    assert (run.output_folder / "progress.png").is_file()


def test_off_by_default_and_every_n_epochs(tiny_preprocessed: Path, tmp_path: Path) -> None:
    run = make_run_spec(_job(tiny_preprocessed, tmp_path / "off", full_val_every=0, num_epochs=2))
    assert full_validator(run) is None and "full_val_dice" not in train(run).state.logging
    _, result = _train(_job(tiny_preprocessed, tmp_path / "n", full_val_every=2))
    assert [math.isnan(v) for v in result.state.logging["full_val_dice"]] == [True, False, True, False, False]
    with pytest.raises(ValueError, match="full_val_every needs a full-image validator"):
        train(make_run_spec(_job(tiny_preprocessed, tmp_path / "x")))


def test_killed_and_resumed_run_ends_identical(tiny_preprocessed: Path, tmp_path: Path) -> None:
    _, full = _train(_job(tiny_preprocessed, tmp_path / "a", full_val_every=2))
    job_b = _job(tiny_preprocessed, tmp_path / "b", full_val_every=2)
    with pytest.raises(KeyboardInterrupt):
        _train(job_b, hooks=_Interrupt(after_epoch=2))
    run_b, resumed = _train(job_b, resume=True)
    assert resumed.state.current_epoch == 5
    np.testing.assert_array_equal(full.state.logging["full_val_dice"], resumed.state.logging["full_val_dice"])
    assert full.state.best_epoch == resumed.state.best_epoch and full.state.best_full_val == resumed.state.best_full_val
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        wa = load_checkpoint(full.output_folder / name)["network_weights"]
        wb = load_checkpoint(run_b.output_folder / name)["network_weights"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_early_stopping_counts_from_the_best_whole_image_dice() -> None:
    with pytest.raises(ValueError, match="--early-stopping 2 is shorter than full_val_every=5"):
        TrainConfig(full_val_every=5, early_stopping_patience=2)
    state = TrainState(seed=0, num_epochs=10)
    for epoch, dice in enumerate([0.5, None, 0.7, None, 0.6, None]):
        state.current_epoch = epoch
        mean = state.log_full_val(None if dice is None else [dice])
        if mean is not None:
            state.improved_full_val(mean)
        state.current_epoch += 1
    assert state.best_epoch == 2 and state.best_full_val == 0.7 and state.epochs_without_improvement() == 3
