"""Data-parallel training for real: 2 gloo ranks launched with torchrun (issue 8).

* ``torchrun`` over the train command: both ranks step and hold identical weights after every step (per-step
  checksums, a hook added by the test-only entry ``train_entry.py``), rank 0 alone writes the log; rank 0 is killed
  mid-epoch (a crash hook from the same entry) and ``nnUNetv2_train ... -num_gpus 2 --c`` resumes under DDP and ends
  with the configured number of epochs.
* One optimizer step on a fixed global batch split over 2 ranks equals the single-process step on the whole batch
  (per-sample Dice and batch Dice, the latter through the all-gather with gradient).
* ``torchrun -m nnseg.predict`` shards the cases over the ranks into one folder.

This file is also the torchrun worker of the fixed-batch test: ``python -m torch.distributed.run ... <this file> step``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
ENTRY = Path(__file__).resolve().parent / "train_entry.py"  # the train command plus hooks injected by the tests
DATASET = "Dataset990_TinyDDP"
TIMEOUT_S = 120
SHAPE = (20, 20, 20)
PATCH = (16, 16, 16)


def tiny_plans_json(batch_size: int = 2) -> dict:
    """Plans with one 3d_fullres configuration: a 3-stage PlainConvUNet with 4-8-16 features, InstanceNorm."""
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": batch_size, "patch_size": list(PATCH), "median_image_size_in_voxels": list(SHAPE),
              "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
              **resampling, "architecture": arch, "batch_dice": False}
    return {"dataset_name": DATASET, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [1.0] * 3,
            "original_median_shape_after_transp": list(SHAPE), "image_reader_writer": "SimpleITKIO",
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {"max": 3.0, "mean": 1.0, "median": 1.0, "min": -1.0,
                                                                  "percentile_00_5": -1.0, "percentile_99_5": 3.0,
                                                                  "std": 1.0}}}


def make_dataset(root: Path) -> dict[str, str]:
    """Raw demo cases -> tiny plans -> preprocessed store, gt_segmentations; returns the nnU-Net environment."""
    from nnseg.jsonio import save_json
    from nnseg.plans.schema import Plans
    from nnseg.preprocessed.preprocess import preprocess_files
    from nnseg.preprocessed.store import save_case
    from nnseg.raw.dataset_json import load_dataset_json
    from nnseg.raw.demo_data import make_demo_dataset
    from nnseg.raw.discover import training_cases

    env = {k: str(root / k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    raw = make_demo_dataset(root / "nnUNet_raw" / DATASET, num_cases=6, num_test=3, shape=SHAPE, lesion=False)
    pre = root / "nnUNet_preprocessed" / DATASET
    plans_json = tiny_plans_json()
    save_json(plans_json, pre / "nnUNetPlans.json")
    shutil.copy(raw / "dataset.json", pre / "dataset.json")
    shutil.copytree(raw / "labelsTr", pre / "gt_segmentations")
    plans, spec = Plans.from_json(plans_json), load_dataset_json(raw / "dataset.json")
    cfg = plans.configuration("3d_fullres")
    for case in training_cases(raw, spec):
        data, seg, props = preprocess_files(case.images, case.label, io="SimpleITKIO", plans=plans, configuration=cfg,
                                            spec=spec)
        save_case(pre / cfg.data_identifier, case.identifier, data, seg, props, patch_size=PATCH)
    (root / "nnUNet_results").mkdir(exist_ok=True)
    return env


@pytest.fixture(scope="module")
def ddp_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ)
    env.update(make_dataset(root), OMP_NUM_THREADS="1", nnUNet_n_proc_DA="0", NNSEG_DEBUG="",
               PYTHONPATH=str(REPO / "src"))
    return env


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def launch(cmd: list[str], env: dict[str, str], *, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if expect_ok and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


TRAIN_ARGS = [DATASET, "3d_fullres", "0", "-tr", "nnUNetTrainerNoMirroring", "--epochs", "3", "--iterations-per-epoch",
              "2", "--set", "val_iterations_per_epoch=1", "--set", "save_every=1", "--seed", "3", "-device", "cpu",
              "--precision", "fp32"]


def _checksums(folder: Path, rank: int) -> dict[tuple[int, int], str]:
    entries = json.loads((folder / f"checksums_rank{rank}.json").read_text())
    return {(e["epoch"], e["iteration"]): e["sha256"] for e in entries}


MODEL = "nnUNetTrainer_3epochs_NoMirroring"


@pytest.fixture(scope="module")
def ddp_trained(ddp_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """torchrun (train command) with rank 0 killed at epoch 2 iteration 1, then -num_gpus 2 --c.

    Returns the fold folder, the checksum folder and the crashed run's output.
    """
    sums = tmp_path_factory.mktemp("checksums")
    crashed = launch(torchrun(str(ENTRY), "--checksums", str(sums), "--crash-at", "2:1", *TRAIN_ARGS), ddp_env,
                     expect_ok=False)
    assert crashed.returncode != 0, crashed.stdout
    fold = Path(ddp_env["nnUNet_results"]) / DATASET / f"{MODEL}__nnUNetPlans__3d_fullres" / "fold_0"
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert latest["current_epoch"] == 2 and not (fold / "checkpoint_final.pth").exists()
    launch([sys.executable, str(ENTRY), "--checksums", str(sums), *TRAIN_ARGS, "-num_gpus", "2", "--c"], ddp_env)
    return fold, sums, crashed.stdout + crashed.stderr


@pytest.mark.slow
def test_ddp_train_identical_ranks_crash_and_resume(ddp_trained: tuple[Path, Path, str]) -> None:
    fold, sums, crash_output = ddp_trained
    assert "simulated crash at epoch 2, iteration 1" in crash_output
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and len(final["logging"]["train_losses"]) == 3
    assert not any(k.startswith("module.") for k in final["network_weights"])
    assert not (fold / "checkpoint_latest.pth").exists()
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2  # both validation cases, predicted by different ranks

    rank0, rank1 = _checksums(sums, 0), _checksums(sums, 1)
    steps = [(e, i) for e in range(3) for i in range(2)]
    assert sorted(rank0) == sorted(rank1) == steps  # every step of the 3 epochs, on both ranks
    assert all(rank0[s] == rank1[s] for s in steps)  # bitwise identical weights after every step
    assert len(set(rank0.values())) == len(steps)  # and the weights did change at every step

    logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    for epoch in range(3):  # one writer: each finished epoch is logged once (epoch 2 of the crashed run never ended)
        assert logs.count(f"Epoch {epoch}\n") == 1, logs
    assert logs.count("data parallel: 2 processes (gloo), global batch 2 split [1, 1]") == 2


STEP_CASES = [(False, 2), (True, 2), (False, 3), (True, 3)]  # (batch Dice, global batch size)


@pytest.mark.slow
def test_ddp_step_equals_single_process_step(ddp_env: dict[str, str], tmp_path: Path) -> None:
    """Global batch 2 -> 1 + 1 samples, 3 -> 2 + 1 (uneven: each rank's loss weighted by its share)."""
    launch(torchrun(str(Path(__file__)), "step", str(tmp_path)), ddp_env)
    for batch_dice, size in STEP_CASES:
        expected = single_process_step(Path(ddp_env["nnUNet_preprocessed"]), batch_dice=batch_dice, batch_size=size)
        got = torch.load(tmp_path / f"ddp_{batch_dice}_{size}.pt", map_location="cpu")
        initial = torch.load(tmp_path / f"initial_{batch_dice}_{size}.pt", map_location="cpu")
        assert set(got) == set(expected)
        moved = max(float((expected[k] - initial[k]).abs().max()) for k in expected)
        assert moved > 1e-3  # the step did something
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0,
                                       msg=f"{key} (batch_dice={batch_dice}, batch {size})")


def test_batch_size_smaller_than_world_is_refused(ddp_env: dict[str, str], tmp_path: Path) -> None:
    from nnseg.cli.main import main

    env = {k: ddp_env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with pytest.raises(ValueError, match="batch size 2 is smaller than the number of processes 3"):
        main(["train", *TRAIN_ARGS, "-num_gpus", "3"], env={**env, "NNSEG_DEBUG": "1"})
    proc = launch([sys.executable, "-m", "nnseg.train", *TRAIN_ARGS, "-num_gpus", "3"], ddp_env, expect_ok=False)
    assert proc.returncode == 1 and "smaller than the number of processes 3" in proc.stderr  # the torchrun entry


@pytest.mark.slow
def test_torchrun_predict_shards_cases(ddp_env: dict[str, str], ddp_trained: tuple[Path, Path, str],
                                       tmp_path: Path) -> None:
    images = Path(ddp_env["nnUNet_raw"]) / DATASET / "imagesTs"
    out = tmp_path / "pred"
    proc = launch(torchrun("-m", "nnseg.predict", "-i", str(images), "-o", str(out), "-d", DATASET, "-c", "3d_fullres",
                           "-tr", MODEL, "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "0", "-nps", "0",
                           "--disable_progress_bar"), ddp_env)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_006.nii.gz", "case_007.nii.gz", "case_008.nii.gz"]
    assert proc.stderr.count("predicted 2 case(s)") == 1 and proc.stderr.count("predicted 1 case(s)") == 1


# ---- fixed-batch step: the same step in one process and split over two ranks ---------------------------------------

def _components(preprocessed: Path, *, batch_dice: bool, batch_size: int):  # type: ignore[no-untyped-def]
    from nnseg.plans.schema import load_plans
    from nnseg.raw.dataset_json import load_dataset_json
    from nnseg.training.config import TrainConfig
    from nnseg.training.run_spec import build_components
    from nnseg.training.setup import FoldJob, make_run_spec

    pre = preprocessed / DATASET
    job = FoldJob(plans=load_plans(pre / "nnUNetPlans.json"), configuration_name="3d_fullres",
                  spec=load_dataset_json(pre / "dataset.json"), preprocessed_dataset_folder=pre,
                  results_dataset_folder=preprocessed.parent / "step_results", fold=0, trainer_name="step",
                  config=TrainConfig(seed=11, initial_lr=0.05), device=torch.device("cpu"), precision="fp32")
    run = dataclasses.replace(make_run_spec(job), batch_dice=batch_dice, batch_size=batch_size)
    return run, build_components(run)


def _fixed_batch(parts, size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:  # type: ignore[no-untyped-def]
    from nnseg.training.data import make_targets

    g = torch.Generator().manual_seed(5)
    fg_fraction = torch.tensor([0.5, 0.02, 0.2][:size]).view(size, 1, 1, 1, 1)  # very unlike samples: batch Dice
    labels = (torch.rand((size, 1, *PATCH), generator=g) < fg_fraction).to(torch.int16)  # differs from per-sample
    image = labels.float() * 2 + torch.randn((size, 1, *PATCH), generator=g)
    return image, make_targets(labels, parts.batches.targets)


def _step(parts, image: torch.Tensor, targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    from nnseg.training.loop import train_step

    train_step(parts.network, image, targets, parts.loss, parts.optimizer, None, precision="fp32", grad_clip=12.0)
    return {k: v.detach().clone() for k, v in parts.module.state_dict().items()}


def single_process_step(preprocessed: Path, *, batch_dice: bool, batch_size: int) -> dict[str, torch.Tensor]:
    """The whole batch in one process, with the loss DDP uses (lowest deep-supervision weight 1e-6)."""
    from nnseg.training.distributed import ddp_loss

    _, parts = _components(preprocessed, batch_dice=batch_dice, batch_size=batch_size)
    parts.loss = ddp_loss(parts.loss, batch_dice=False)  # one process: batch Dice needs no reduction
    image, targets = _fixed_batch(parts, batch_size)
    return _step(parts, image, targets)


def _rank_main(out: Path) -> None:
    from nnseg.training.distributed import (
        dist_info_from_env,
        process_group,
        rank_batch_sizes,
    )

    info = dist_info_from_env(os.environ)
    torch.set_num_threads(1)
    with process_group(info, torch.device("cpu")) as ddp:
        for batch_dice, size in STEP_CASES:
            run, parts = _components(Path(os.environ["nnUNet_preprocessed"]), batch_dice=batch_dice, batch_size=size)
            initial = {k: v.detach().clone() for k, v in parts.module.state_dict().items()}
            ddp.prepare(run, parts)
            image, targets = _fixed_batch(parts, size)
            low = sum(rank_batch_sizes(size, info.world_size)[:info.rank])
            mine = slice(low, low + parts.batches.train_sampler.batch_size)  # this rank's samples of the global batch
            weights = _step(parts, image[mine], [t[mine] for t in targets])
            if info.is_main:
                torch.save(weights, out / f"ddp_{batch_dice}_{size}.pt")
                torch.save(initial, out / f"initial_{batch_dice}_{size}.pt")


if __name__ == "__main__" and sys.argv[1:2] == ["step"]:
    _rank_main(Path(sys.argv[2]))
