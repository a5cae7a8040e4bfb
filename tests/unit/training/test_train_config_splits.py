from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tinydata import tiny_plans, tiny_spec

from nnseg.training.augment.spatial import Mirror
from nnseg.training.config import (
    TrainConfig,
    apply_overrides,
    config_differences,
    known_trainer_names,
    nnunet_trainer_class,
    preset_for_trainer,
    trainer_name_for_epochs,
)
from nnseg.training.run_spec import build_components
from nnseg.training.schedule import poly_lr
from nnseg.training.setup import FoldJob, make_run_spec
from nnseg.training.splits import fold_cases, kfold_splits, load_or_create_splits


def test_split_equals_nnunet_on_hippocampus(expected_dir: Path) -> None:
    golden = json.loads((expected_dir / "Dataset004_Hippocampus" / "splits_final.json").read_text())
    identifiers = sorted({c for fold in golden for c in fold["train"] + fold["val"]})
    assert len(identifiers) == 200
    assert kfold_splits(list(reversed(identifiers))) == golden


def test_kfold_uneven_sizes_and_coverage() -> None:
    ids = [f"c{i:02d}" for i in range(12)]
    splits = kfold_splits(ids)
    assert [len(s["val"]) for s in splits] == [3, 3, 2, 2, 2]
    assert sorted(c for s in splits for c in s["val"]) == ids
    for s in splits:
        assert set(s["train"]).isdisjoint(s["val"]) and len(s["train"]) + len(s["val"]) == 12
    with pytest.raises(ValueError, match="cannot be split"):
        kfold_splits(ids[:3])


def test_splits_file_reused_and_fold_all(tmp_path: Path) -> None:
    ids = [f"c{i}" for i in range(10)]
    f = tmp_path / "splits_final.json"
    custom = [{"train": ids[:8], "val": ids[8:]}]
    f.write_text(json.dumps(custom))
    assert load_or_create_splits(f, ids) == custom
    assert fold_cases(custom, "all", ids) == {"train": ids, "val": ids}
    with pytest.raises(ValueError, match=r"fold 3 is not in splits_final.json, which has folds 0-0.*add the fold"):
        fold_cases(custom, 3, ids)  # nnU-Net trains a random 80:20 split here; nnseg refuses
    f.unlink()
    assert load_or_create_splits(f, ids) == kfold_splits(ids) and f.is_file()


def test_trainer_presets() -> None:
    assert preset_for_trainer("nnUNetTrainer") == TrainConfig()
    assert preset_for_trainer("nnUNetTrainer_1epoch").num_epochs == 1
    c = preset_for_trainer("nnUNetTrainer_250epochs_NoMirroring")
    assert c.num_epochs == 250 and not c.mirroring
    assert not preset_for_trainer("nnUNetTrainerNoMirroring").mirroring
    no_da = preset_for_trainer("nnUNetTrainerNoDA")
    assert no_da.augmentation == "none" and not no_da.mirroring
    assert nnunet_trainer_class("nnUNetTrainerNoDA") == "nnUNetTrainerNoDA"
    for name in known_trainer_names():
        preset_for_trainer(name)
    for bad in ("nnUNetTrainer_1epochs", "nnUNetTrainer_5epoch", "nnUNetTrainerDA5"):
        with pytest.raises(ValueError, match="unknown trainer"):
            preset_for_trainer(bad)
    assert trainer_name_for_epochs(1) == "nnUNetTrainer_1epoch"
    assert trainer_name_for_epochs(50) == "nnUNetTrainer_50epochs"
    assert nnunet_trainer_class("nnUNetTrainer_50epochs") == "nnUNetTrainer_50epochs"
    assert nnunet_trainer_class("nnUNetTrainer_40epochs") == "nnUNetTrainer"
    assert nnunet_trainer_class("nnUNetTrainer_40epochs_NoMirroring") == "nnUNetTrainerNoMirroring"


def test_overrides_typed_and_differences() -> None:
    c = apply_overrides(TrainConfig(), ["num_epochs=3", "initial_lr=0.1", "mirroring=false", "seed=none"])
    assert (c.num_epochs, c.initial_lr, c.mirroring, c.seed) == (3, 0.1, False, None)
    with pytest.raises(ValueError, match="unknown field"):
        apply_overrides(TrainConfig(), ["epochs=3"])
    with pytest.raises(ValueError, match="not a valid"):
        apply_overrides(TrainConfig(), ["num_epochs=three"])
    diff = config_differences(TrainConfig(), c)
    assert any(d.startswith("num_epochs") for d in diff) and len(diff) == 3
    assert TrainConfig.from_json(c.to_json()) == c


def test_poly_lr() -> None:
    assert poly_lr(0, 1000, 0.01) == 0.01
    assert poly_lr(500, 1000, 0.01) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(1000, 1000, 0.01) == 0.0


def test_augmentation_setting_reaches_the_batches(tiny_preprocessed: Path, tmp_path: Path) -> None:
    """``--set augmentation=none``: training patches are drawn at the final size and only mirrored."""
    def parts(config: TrainConfig):  # type: ignore[no-untyped-def]
        job = FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=tiny_spec(),
                      preprocessed_dataset_folder=tiny_preprocessed, results_dataset_folder=tmp_path, fold=0,
                      trainer_name="nnUNetTrainer", config=config, device=torch.device("cpu"), precision="fp32")
        return build_components(make_run_spec(job)).batches

    default = parts(TrainConfig(seed=0))
    assert len(default.transforms) == 9 and list(default.train_sampler.patch_size) != [16, 16, 16]
    plain = parts(TrainConfig(seed=0, augmentation="none"))
    assert plain.transforms == [Mirror((0, 1, 2))] and list(plain.train_sampler.patch_size) == [16, 16, 16]
    image, targets = plain.train_batch(0, 0)
    assert image.shape == (2, 1, 16, 16, 16) and targets[0].shape == (2, 1, 16, 16, 16)
