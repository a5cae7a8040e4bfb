"""nnUNetv2_train's additions through the real command: --epochs naming, refusals, early stopping, time budget,
pretrained weights, and a run killed with SIGKILL mid-training that --c finishes with the configured epochs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nnseg.cli.main import main
from nnseg.jsonio import load_json
from nnseg.raw.demo_data import make_demo_dataset
from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.state import TrainState

pytestmark = pytest.mark.slow
FAST = ["--iterations-per-epoch", "2", "--set", "val_iterations_per_epoch=1", "--set", "batch_size=2", "--seed", "0",
        "-device", "cpu", "-tr", "nnUNetTrainerNoMirroring"]
MODEL = "Dataset991_Train"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("train_cli")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"), "nnUNet_results": str(root / "res"),
           "HOME": str(root), "nnUNet_n_proc_DA": "0"}
    make_demo_dataset(Path(env["nnUNet_raw"]) / MODEL, num_cases=6, num_test=0, shape=(16, 20, 20), lesion=False)
    assert main(["plan-and-preprocess", "-d", "991", "-c", "3d_fullres", "-np", "1", "--no_pbar"], env=env) == 0
    return env


def _fold(env: dict[str, str], trainer: str, fold: str = "0") -> Path:
    return Path(env["nnUNet_results"]) / MODEL / f"{trainer}__nnUNetPlans__3d_fullres" / f"fold_{fold}"


def test_epochs_flag_names_the_nnunet_trainer_and_validates(env: dict[str, str]) -> None:
    assert main(["train", "991", "3d_fullres", "0", "--epochs", "2", *FAST], env=env) == 0
    fold = _fold(env, "nnUNetTrainer_2epochs_NoMirroring")
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["current_epoch"] == 2 and ckpt["trainer_name"] == "nnUNetTrainerNoMirroring"  # a class nnU-Net ships
    assert ckpt["inference_allowed_mirroring_axes"] is None
    assert (fold / "validation" / "summary.json").is_file() and (fold / "progress.png").is_file()
    assert load_json(fold / "train_config.json")["iterations_per_epoch"] == 2
    assert list(fold.glob("training_log_*.txt")) and (fold / "debug.json").is_file()


def test_continue_with_other_settings_is_refused(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "991", "3d_fullres", "0", "--epochs", "2", *FAST], env=env) == 0
    args = ["train", "991", "3d_fullres", "0", "--epochs", "2", *FAST, "--set", "initial_lr=0.1", "--c"]
    assert main(args, env=env) == 1
    err = capsys.readouterr().err
    assert "initial_lr" in err and "refusing to continue" in err


def test_early_stopping_rule() -> None:
    state = TrainState(seed=0, num_epochs=10)
    for epoch, ema in enumerate([0.5, 0.6, 0.55, 0.58, 0.59]):
        state.current_epoch = epoch
        state.improved(ema)
        state.current_epoch += 1
    assert state.best_epoch == 1 and state.epochs_without_improvement() == 3


def test_early_stopping_and_time_budget(env: dict[str, str]) -> None:
    early = ["train", "991", "3d_fullres", "1", "--epochs", "4", *FAST, "--early-stopping", "2"]
    assert main(early, env=env) == 0
    fold = _fold(env, "nnUNetTrainer_4epochs_NoMirroring", "1")
    assert load_json(fold / "train_config.json")["early_stopping_patience"] == 2
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    state = TrainState(seed=0, num_epochs=4, current_epoch=ckpt["current_epoch"], best_epoch=ckpt["nnseg_best_epoch"])
    assert ckpt["current_epoch"] == 4 or state.epochs_without_improvement() >= 2
    budget = ["train", "991", "3d_fullres", "2", "--epochs", "50", *FAST, "--time-budget", "0.0001"]
    assert main(budget, env=env) == 0
    ckpt = load_checkpoint(_fold(env, "nnUNetTrainer_50epochs_NoMirroring", "2") / "checkpoint_final.pth")
    assert ckpt["current_epoch"] == ckpt["nnseg_num_epochs"] < 50  # the schedule was fitted to the budget


def test_pretrained_weights_load_all_but_heads(env: dict[str, str]) -> None:
    source = _fold(env, "nnUNetTrainer_2epochs_NoMirroring") / "checkpoint_final.pth"
    if not source.is_file():
        assert main(["train", "991", "3d_fullres", "0", "--epochs", "2", *FAST], env=env) == 0
    args = ["train", "991", "3d_fullres", "3", "--epochs", "1", *FAST, "--set", "initial_lr=0",
            "-pretrained_weights", str(source)]
    assert main(args, env=env) == 0
    start = load_checkpoint(source)["network_weights"]
    after = load_checkpoint(_fold(env, "nnUNetTrainer_1epoch_NoMirroring", "3") / "checkpoint_final.pth")["network_weights"]
    key = next(k for k in start if k.endswith("conv.weight") and ".seg_layers." not in k)
    torch.testing.assert_close(start[key], after[key])


def test_sigkill_mid_training_then_continue(env: dict[str, str]) -> None:
    argv = [sys.executable, "-m", "nnseg.cli.main", "train", "991", "3d_fullres", "4", "--epochs", "3", *FAST,
            "--set", "save_every=1", "--set", "iterations_per_epoch=6"]
    full_env = {**os.environ, **env}
    proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = _fold(env, "nnUNetTrainer_3epochs_NoMirroring", "4") / "checkpoint_latest.pth"
    deadline = time.time() + 120
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (latest.parent / "checkpoint_final.pth").exists(), "the run finished before it could be killed"
    leftovers = [p.name for p in latest.parent.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    done = subprocess.run(argv + ["--c"], env=full_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = load_checkpoint(latest.parent / "checkpoint_final.pth")
    assert ckpt["current_epoch"] == 3 and len(ckpt["logging"]["train_losses"]) == 3
    assert all(not p.name.endswith(".pth.tmp") for p in latest.parent.iterdir()), leftovers


def test_noda_trainer_trains_without_augmentation_and_predicts_without_mirroring(env: dict[str, str]) -> None:
    """``-tr nnUNetTrainerNoDA`` (nnU-Net's no-augmentation trainer) is a preset: no DA, no mirroring in TTA."""
    args = [*FAST[:-2], "-tr", "nnUNetTrainerNoDA", "--set", "num_epochs=1"]
    assert main(["train", "991", "3d_fullres", "0", *args], env=env) == 0
    fold = _fold(env, "nnUNetTrainerNoDA")
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "nnUNetTrainerNoDA" and ckpt["inference_allowed_mirroring_axes"] is None
    saved = load_json(fold / "train_config.json")
    assert saved["augmentation"] == "none" and not saved["mirroring"] and saved["num_epochs"] == 1


@pytest.mark.parametrize("setting", ["augmentation=elastic", "loss=focal", "lr_schedule=cosine", "optimizer=adam"])
def test_unknown_component_is_refused_before_anything_is_written(env: dict[str, str], setting: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "991", "3d_fullres", "1", "--epochs", "3", *FAST, "--set", setting]
    assert main(args, env=env) == 1
    field, value = setting.split("=")
    assert f"unknown {field} '{value}'; available: [" in capsys.readouterr().err
    assert not _fold(env, "nnUNetTrainer_3epochs_NoMirroring", "1").exists()


def test_finetune_from_an_exported_zip_with_full_image_validation(env: dict[str, str], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The user's path: export a trained model as a zip, fine-tune another fold from it with whole-image validation
    choosing checkpoint_best; the load report is printed and written."""
    trainer = "nnUNetTrainer_2epochs_NoMirroring"
    if not (_fold(env, trainer) / "checkpoint_final.pth").is_file():
        assert main(["train", "991", "3d_fullres", "0", "--epochs", "2", *FAST], env=env) == 0
    archive = tmp_path / "model.zip"
    assert main(["export-model", "-d", "991", "-o", str(archive), "-c", "3d_fullres", "-tr", trainer, "-f", "0"],
                env=env) == 0
    capsys.readouterr()
    args = ["train", "991", "3d_fullres", "1", "--epochs", "3", *FAST, "-pretrained_weights", str(archive),
            "--set", "full_val_every=1"]
    assert main(args, env=env) == 0
    err = capsys.readouterr().err
    assert f"Pretrained weights from {archive}:" in err and "fold_0/checkpoint_final.pth" in err
    fold = _fold(env, "nnUNetTrainer_3epochs_NoMirroring", "1")
    report = load_json(fold / "pretrained_weights_report.json")
    assert report["counts"]["skipped"] == 0 and report["counts"]["reinitialised"] == 0  # same labels: heads loaded
    final = load_checkpoint(fold / "checkpoint_final.pth")
    full = final["logging"]["full_val_dice"]
    assert len(full) == 3 and load_checkpoint(fold / "checkpoint_best.pth")["current_epoch"] == full.index(max(full)) + 1
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "Full-image validation Dice" in log
