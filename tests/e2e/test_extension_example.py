"""examples/custom_loss_network end to end through the nnU-Net commands: the extension folder named in
NNSEG_EXTENSIONS registers a loss, a network and the preset MyPreset; nnUNetv2_train -tr MyPreset trains that network
with that loss, nnUNetv2_predict -tr MyPreset builds the same network again and predicts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from nnseg.cli.main import run_command
from nnseg.cli.table import by_script
from nnseg.extensions import loaded_modules
from nnseg.jsonio import load_json
from nnseg.raw.demo_data import make_demo_dataset
from nnseg.training.checkpoint import load_checkpoint
from shared_paths import REPO

pytestmark = pytest.mark.slow
EXAMPLE = REPO / "examples" / "custom_loss_network"
DATASET = "Dataset993_Ext"


def nnunet(script: str, *argv: str, env: dict[str, str]) -> int:
    return run_command(by_script()[script], list(argv), prog=script, env=env)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("extension")
    env = {"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "pre"), "nnUNet_results": str(root / "res"),
           "HOME": str(root), "nnUNet_n_proc_DA": "0", "NNSEG_EXTENSIONS": str(EXAMPLE)}
    make_demo_dataset(Path(env["nnUNet_raw"]) / DATASET, num_cases=6, num_test=1, shape=(16, 20, 20), lesion=False)
    assert nnunet("nnUNetv2_plan_and_preprocess", "-d", "993", "-c", "3d_fullres", "-np", "1", "--no_pbar", env=env) == 0
    return env


def test_example_extension_trains_and_predicts(env: dict[str, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNSEG_EXTENSIONS", str(EXAMPLE))  # also what spawned workers would see
    fast = ["--iterations-per-epoch", "2", "--set", "val_iterations_per_epoch=1", "--set", "num_epochs=2",
            "--set", "batch_size=2", "--seed", "0", "-device", "cpu"]
    assert nnunet("nnUNetv2_train", "993", "3d_fullres", "0", "-tr", "MyPreset", *fast, env=env) == 0
    assert "my_components" in loaded_modules() and "my_components" in sys.modules

    model = Path(env["nnUNet_results"]) / DATASET / "MyPreset__nnUNetPlans__3d_fullres"
    config = load_json(model / "fold_0" / "train_config.json")
    assert config["loss"] == "dice_focal" and config["network"] == "my_components.MyUNet"
    arch = load_json(model / "plans.json")["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "my_components.MyUNet"  # what the predictor builds
    planned = load_json(Path(env["nnUNet_preprocessed"]) / DATASET / "nnUNetPlans.json")
    assert planned["configurations"]["3d_fullres"]["architecture"]["network_class_name"].endswith("PlainConvUNet")
    ckpt = load_checkpoint(model / "fold_0" / "checkpoint_final.pth")
    assert ckpt["trainer_name"] == "nnUNetTrainer" and ckpt["current_epoch"] == 2  # a class nnU-Net ships
    assert any(k.startswith("mix.") for k in ckpt["network_weights"])  # the custom network's own layer
    losses = ckpt["logging"]["train_losses"]
    assert len(losses) == 2 and all(loss > -1 for loss in losses)  # focal - dice lies in (-1, inf)

    out = tmp_path / "pred"
    images = Path(env["nnUNet_raw"]) / DATASET / "imagesTs"
    assert nnunet("nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", "993", "-c", "3d_fullres",
                  "-tr", "MyPreset", "-f", "0", "-device", "cpu", "--disable_tta", env=env) == 0
    written = sorted(out.glob("*.nii.gz"))
    assert len(written) == 1
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(written[0]))).shape == (16, 20, 20)


def test_ddp_ranks_load_the_extension_and_only_rank_0_logs(env: dict[str, str]) -> None:
    """-num_gpus 2 on the CPU: two spawned ranks, which learn NNSEG_EXTENSIONS only from the command's environment."""
    assert "NNSEG_EXTENSIONS" not in os.environ
    fast = ["--iterations-per-epoch", "2", "--set", "val_iterations_per_epoch=1", "--set", "num_epochs=2",
            "--set", "batch_size=2", "--seed", "0", "-device", "cpu"]
    assert nnunet("nnUNetv2_train", "993", "3d_fullres", "1", "-tr", "MyPreset", "-num_gpus", "2", *fast,
                  "--logger", "tensorboard", env=env) == 0
    fold = Path(env["nnUNet_results"]) / DATASET / "MyPreset__nnUNetPlans__3d_fullres" / "fold_1"
    ckpt = load_checkpoint(fold / "checkpoint_final.pth")
    assert ckpt["current_epoch"] == 2 and any(k.startswith("mix.") for k in ckpt["network_weights"])
    assert len(list((fold / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 only


def test_broken_extension_file_is_refused_with_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ext"
    folder.mkdir()
    (folder / "old_trainer_i17.py").write_text("from nnunetv2.training.nnUNetTrainer import nnUNetTrainer\n")
    env = {"nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "res"), "nnUNet_extTrainer": str(folder)}
    # named in NNSEG_EXTENSIONS, a file that cannot import is refused with its name
    assert nnunet("nnUNetv2_train", "1", "3d_fullres", "0", env={**env, "nnUNet_extTrainer": "",
                                                                 "NNSEG_EXTENSIONS": str(folder)}) == 1
    err = capsys.readouterr().err
    assert "old_trainer_i17.py" in err and "failed to import" in err and "subclassing the trainer" in err
    # a folder of nnU-Net trainers that a user keeps in nnUNet_extTrainer for nnU-Net is skipped with a note
    assert nnunet("nnUNetv2_train", "1", "3d_fullres", "0", env=env) == 1
    err = capsys.readouterr().err
    assert "note: skipping" in err and "old_trainer_i17.py" in err and "failed to import" not in err
    assert "Dataset" in err or "dataset" in err  # it fails later, on the missing dataset, not on the extension
    env["nnUNet_extTrainer"] = str(tmp_path / "missing")
    assert nnunet("nnUNetv2_train", "1", "3d_fullres", "0", env=env) == 1
    assert "nnUNet_extTrainer names" in capsys.readouterr().err
