"""Issue 12 mechanisms one by one: TrainConfig field rules, plans plausibility, non-finite loss diagnosis, checkpoint
write errors, when train_config.json binds, dataset completeness, and the batch's cases re-derived from its seed."""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from tinydata import tiny_plans, tiny_spec

from nnseg.jsonio import save_json
from nnseg.training import checkpoint as checkpoint_module
from nnseg.training.checkpoint import save_checkpoint
from nnseg.training.config import FIELD_RULES, TrainConfig
from nnseg.training.data import TRAIN, VAL, batch_rng
from nnseg.training.failures import non_finite_loss_error
from nnseg.training.fold_state import TRAIN_CONFIG_FILE, check_saved_config, discard_failed_start
from nnseg.training.preflight import available_memory_bytes, check_dataset_complete, check_plans_plausible
from nnseg.training.run_spec import build_components
from nnseg.training.setup import FoldJob, make_run_spec

BAD_VALUES = {
    "num_epochs": [0, 2.5], "iterations_per_epoch": [0, -1], "val_iterations_per_epoch": [-1],
    "initial_lr": [-5.0, math.nan, math.inf], "weight_decay": [-1e-5, math.nan], "momentum": [-1.0, 0.0, 1.0, math.nan],
    "optimizer": [""], "lr_schedule": [""], "grad_clip": [0.0, -1.0, math.nan], "loss": [""],
    "dice_smooth": [-1.0], "oversample_foreground": [1.5, -0.1], "deep_supervision": ["yes"], "mirroring": [1],
    "augmentation": [3], "batch_size": [0, -2, True], "seed": [-1], "precision": ["fp8"], "compile": ["maybe"],
    "early_stopping_patience": [0], "time_budget_hours": [0.0, -1.0, math.inf], "save_every": [0], "ema_alpha": [1.5],
    "network": ["", 3], "cpu_threads": [-1, 1.5], "pretrained_new_channels": ["median"], "full_val_every": [-1, 1.5],
    "task": ["", 2], "interactive_corrections": [-1, 1.5], "interactive_correction_prob": [1.5, -0.5, math.nan],
}


def test_every_field_has_a_rule_and_the_defaults_pass() -> None:
    assert set(FIELD_RULES) == {f.name for f in dataclasses.fields(TrainConfig)} == set(BAD_VALUES)
    TrainConfig()
    TrainConfig(initial_lr=0, grad_clip=math.inf, batch_size=1, seed=0, compile="false", val_iterations_per_epoch=0)


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, vs in BAD_VALUES.items() for v in vs])
def test_a_bad_value_is_refused_naming_the_field_and_the_fix(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"TrainConfig {field}=.* is invalid: it must be .*--set {field}=VALUE"):
        TrainConfig().replace(**{field: value})
    with pytest.raises(ValueError, match=f"TrainConfig {field}="):
        TrainConfig.from_json({**TrainConfig().to_json(), field: value})  # a hand-edited train_config.json too


def test_patch_far_larger_than_the_images_or_the_memory_is_refused() -> None:
    cfg = tiny_plans().configuration("3d_fullres")
    common = dict(architecture=dict(cfg.architecture), batch_size=2, input_channels=1, num_heads=2,
                  deep_supervision=True, where="plans P.json, configuration 3d_fullres")
    check_plans_plausible(patch_size=(16, 16, 16), image_shapes={"a": (20, 20, 20)}, available=2**30, **common)
    with pytest.raises(ValueError, match=r"P.json.*patch_size \[48, 16, 16\] is far larger than the largest .*\[20, 20"):
        check_plans_plausible(patch_size=(48, 16, 16), image_shapes={"a": (20, 20, 20)}, available=None, **common)
    with pytest.raises(ValueError, match=r"patch_size \[256, 256, 256\] with batch_size 2 needs at least .* GiB .*has "
                                         r"1.0 GiB.*--set batch_size"):
        check_plans_plausible(patch_size=(256, 256, 256), image_shapes={}, available=2**30, **common)


def test_cpu_memory_is_known_and_bounded_by_the_cgroup() -> None:
    total = available_memory_bytes(torch.device("cpu"))
    assert total is not None and 2**28 < total < 2**50
    limit = Path("/sys/fs/cgroup/memory.max")
    if limit.is_file() and limit.read_text().strip().isdigit():
        assert total <= int(limit.read_text())


def test_non_finite_loss_names_the_cases_with_bad_inputs_or_says_divergence() -> None:
    image = torch.zeros(3, 1, 4, 4, 4)
    image[1, 0, 2, 2, 2] = math.nan
    err = non_finite_loss_error(math.nan, image, ["c0", "c1", "c2"], phase="training", epoch=3, iteration=7,
                                precision="fp32", config=TrainConfig(), data_folder=Path("/data"))
    text = str(err)
    assert "training loss is nan at epoch 3, iteration 7 (batch cases: c0, c1, c2)" in text
    assert "input patches of c1 hold NaN/inf" in text and "c0," not in text.split("input patches")[1]
    err = non_finite_loss_error(math.inf, torch.zeros(2, 1, 4, 4, 4), ["c0", "c1"], phase="validation", epoch=0,
                                iteration=0, precision="fp16", config=TrainConfig(), data_folder=Path("/data"))
    assert "finite inputs: the optimisation diverged" in str(err) and "initial_lr=..., now 0.01" in str(err)
    assert "--precision bf16 or fp32" in str(err)


def test_checkpoint_write_errors_are_one_line_with_path_and_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = {"network_weights": {"w": torch.zeros(64, 64)}}
    target = tmp_path / "fold_0" / "checkpoint_latest.pth"

    @contextmanager
    def disk_full(path):  # type: ignore[no-untyped-def]
        yield Path("/dev/full")

    monkeypatch.setattr(checkpoint_module, "atomic_path", disk_full)
    with pytest.raises(OSError) as err:
        save_checkpoint(ckpt, target)
    assert err.value.errno == 28 and f"cannot write checkpoint {target}: No space left on device" in str(err.value)
    monkeypatch.undo()

    def torch_fails(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torch_fails)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*inline_container.*MiB free on that disk"):
        save_checkpoint(ckpt, target)
    assert [p.name for p in target.parent.iterdir()] == []  # no temporary file left
    monkeypatch.undo()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match=rf"cannot write checkpoint {blocker}/checkpoint_best.pth: "):
        save_checkpoint(ckpt, blocker / "checkpoint_best.pth")


def test_train_config_binds_only_with_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_json({**TrainConfig().to_json(), "initial_lr": -5}, tmp_path / TRAIN_CONFIG_FILE)  # from an old failed start
    check_saved_config(tmp_path, TrainConfig(), resume=False)
    assert "wrote no checkpoint; its settings are replaced" in capsys.readouterr().err
    save_json(TrainConfig(initial_lr=0.1).to_json(), tmp_path / TRAIN_CONFIG_FILE)
    (tmp_path / "checkpoint_best.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="trained with other settings; refusing to continue"):
        check_saved_config(tmp_path, TrainConfig(), resume=True)
    discard_failed_start(tmp_path)
    assert (tmp_path / TRAIN_CONFIG_FILE).exists()
    (tmp_path / "checkpoint_best.pth").unlink()
    discard_failed_start(tmp_path)
    assert not (tmp_path / TRAIN_CONFIG_FILE).exists()


def test_incomplete_data_folder_is_refused_by_listing_or_count(tmp_path: Path) -> None:
    spec = tiny_spec()  # numTraining 6
    with pytest.raises(ValueError, match=r"holds 4 preprocessed cases but dataset.json's numTraining is 6.*FIX"):
        check_dataset_complete(["a", "b", "c", "d"], preprocessed_dataset_folder=tmp_path, data_folder=tmp_path / "d",
                               spec=spec, fix="FIX")
    gt = tmp_path / "gt_segmentations"
    gt.mkdir()
    for name in "abcdefg":
        (gt / f"{name}.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"lacks 3 of the 7 cases .*: e, f, g\. FIX; nnseg does not train on a subset"):
        check_dataset_complete(list("abcd"), preprocessed_dataset_folder=tmp_path, data_folder=tmp_path / "d",
                               spec=spec, fix="FIX")
    check_dataset_complete(list("abcdefg"), preprocessed_dataset_folder=tmp_path, data_folder=tmp_path / "d",
                           spec=spec, fix="FIX")


def test_case_ids_of_a_batch_are_those_the_sampler_drew(tiny_preprocessed: Path, tmp_path: Path) -> None:
    job = FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=tiny_spec(),
                  preprocessed_dataset_folder=tiny_preprocessed, results_dataset_folder=tmp_path, fold=0,
                  trainer_name="nnUNetTrainer", config=TrainConfig(seed=3), device=torch.device("cpu"), precision="fp32")
    batches = build_components(make_run_spec(job)).batches
    for epoch, index, kind in ((0, 0, TRAIN), (2, 5, TRAIN), (1, 1, VAL)):
        sampler = batches.train_sampler if kind == TRAIN else batches.val_sampler
        _, _, chosen = sampler.sample(batch_rng(batches.seed, epoch, index, kind))
        assert batches.case_ids(epoch, index, train=kind == TRAIN) == chosen
