"""Cascade inputs: morphology against brute force, the two augmentations, prev-stage sampling, next-stage files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tinydata import SHAPE, tiny_plans, tiny_spec
from scipy import ndimage

from nnseg.plans.schema import Plans
from nnseg.launch.next_stage import (
    NextStageWriter,
    load_next_stage_seg,
    next_stages,
)
from nnseg.preprocessed.store import load_case
from nnseg.training.augment.base import Batch
from nnseg.training.cascade import (
    CascadeInputs,
    RandomBinaryOperator,
    RemoveRandomComponent,
    apply_operation,
    move_prev_stage_to_image,
    prev_stage_folder,
)
from nnseg.training.config import TrainConfig
from nnseg.training.loop import train
from nnseg.training.sampling import PatchSampler
from nnseg.training.setup import FoldJob, make_run_spec


def _ball(radius: float, dims: int) -> np.ndarray:
    r = int(np.floor(radius))
    grid = np.indices([2 * r + 1] * dims) - r
    return (grid**2).sum(0) <= radius**2


@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_ball_morphology_equals_scipy_with_ball(radius: float, rng: np.random.Generator) -> None:
    mask = ndimage.binary_opening(rng.random((14, 15, 13)) > 0.6)
    ball = _ball(radius, 3)
    np.testing.assert_array_equal(apply_operation(mask, "dilation", radius), ndimage.binary_dilation(mask, ball))
    np.testing.assert_array_equal(apply_operation(mask, "erosion", radius),
                                  ndimage.binary_erosion(mask, ball, border_value=1))
    opened = ndimage.binary_dilation(ndimage.binary_erosion(mask, ball, border_value=1), ball)
    np.testing.assert_array_equal(apply_operation(mask, "opening", radius), opened)
    with pytest.raises(ValueError, match="unknown morphological"):
        apply_operation(mask, "thinning", 1)


def _onehot_batch(rng: np.random.Generator, b: int = 3) -> Batch:
    labels = np.zeros((b, 16, 16, 16), np.int64)
    labels[:, 3:12, 3:12, 3:12] = 1
    labels[:, 6:9, 6:9, 6:9] = 2
    labels[:, 13:15, 1:3, 1:3] = 2  # a small separate component of label 2
    image = torch.randn(b, 1, 16, 16, 16)
    onehot = torch.stack([torch.from_numpy(labels == v) for v in (1, 2)], 1).float()
    return Batch(torch.cat([image, onehot], 1), torch.zeros(b, 1, 16, 16, 16, dtype=torch.int16))


def test_binary_operator_keeps_one_hot_and_is_reproducible(rng: np.random.Generator) -> None:
    batch = _onehot_batch(rng)
    op = RandomBinaryOperator(2, p=1.0, p_per_label=1.0)
    params = op.sample(np.random.default_rng(3), batch)
    out = op.apply(batch, params)
    again = op.apply(batch, op.sample(np.random.default_rng(3), batch))
    torch.testing.assert_close(out.image, again.image)
    assert out.image.shape == batch.image.shape
    torch.testing.assert_close(out.image[:, :1], batch.image[:, :1])  # image channels untouched
    assert float(out.image[:, 1:].sum(1).max()) <= 1.0  # never two labels on one voxel
    assert not torch.equal(out.image[:, 1:], batch.image[:, 1:])
    none = RandomBinaryOperator(2, p=0.0)
    assert none.apply(batch, none.sample(rng, batch)) is batch


def test_remove_component_only_removes_small_components(rng: np.random.Generator) -> None:
    batch = _onehot_batch(rng, b=1)
    op = RemoveRandomComponent(2, p=1.0, p_per_label=1.0)
    out = op.apply(batch, op.sample(rng, batch))
    label1, label2 = out.image[0, 1].numpy(), out.image[0, 2].numpy()
    np.testing.assert_array_equal(label1, batch.image[0, 1].numpy())  # one component covering 17 % of the patch: kept
    assert label2.sum() == batch.image[0, 2].sum() - 8 or label2.sum() == batch.image[0, 2].sum() - 27  # one removed


def test_move_prev_stage_to_image() -> None:
    seg = torch.zeros(2, 2, 4, 4, 4, dtype=torch.int16)
    seg[:, 1, :2] = 2
    batch = move_prev_stage_to_image(Batch(torch.zeros(2, 1, 4, 4, 4), seg), (1, 2))
    assert batch.image.shape == (2, 3, 4, 4, 4) and batch.seg.shape == (2, 1, 4, 4, 4)
    assert float(batch.image[:, 2, :2].min()) == 1.0 and float(batch.image[:, 1].max()) == 0.0
    with pytest.raises(ValueError, match="previous stage"):
        move_prev_stage_to_image(Batch(torch.zeros(2, 1, 4, 4, 4), seg[:, :1]), (1, 2))


def cascade_plans() -> Plans:
    d = tiny_plans().to_json()
    d["configurations"]["3d_lowres"] = {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                                        "next_stage": "3d_cascade_fullres"}
    d["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    return Plans.from_json(d)


def _write_prev_stage(pre: Path, results: Path) -> Path:
    folder = prev_stage_folder(results, "nnUNetTrainer", "nnUNetPlans", "3d_lowres", "3d_cascade_fullres")
    writer = NextStageWriter(next_stages(cascade_plans(), cascade_plans().configuration("3d_lowres"),
                                         preprocessed_dataset_folder=pre, model_folder=folder.parent.parent),
                             configuration=cascade_plans().configuration("3d_lowres"), spec=tiny_spec())
    for case in [f"case_{i:03d}" for i in range(6)]:
        _, seg, _ = load_case(pre / "nnUNetPlans_3d_fullres", case)
        logits = torch.from_numpy(np.stack([seg[0] == 0, seg[0] == 1]).astype(np.float32))[:, ::2, ::2, ::2]
        writer(case, logits * 10, {})
    assert len(writer.written) == 6
    return folder


def test_next_stage_files_and_cascade_sampler(tiny_preprocessed: Path, tmp_path: Path) -> None:
    folder = _write_prev_stage(tiny_preprocessed, tmp_path / "results")
    prev = load_next_stage_seg(folder, "case_000")
    _, seg, _ = load_case(tiny_preprocessed / "nnUNetPlans_3d_fullres", "case_000")
    assert prev.shape == SHAPE and prev.dtype == np.uint8
    assert (prev == seg[0]).mean() > 0.9  # the downsampled-then-upsampled truth
    sampler = PatchSampler(folder=tiny_preprocessed / "nnUNetPlans_3d_fullres", identifiers=["case_000"],
                           patch_size=(16, 16, 16), final_patch_size=(16, 16, 16), batch_size=2, prev_stage_folder=folder)
    image, segs, _ = sampler.sample(np.random.default_rng(0))
    assert image.shape == (2, 1, 16, 16, 16) and segs.shape == (2, 2, 16, 16, 16)
    assert ((segs[:, 0] == segs[:, 1]) | (segs[:, 0] < 0)).mean() > 0.9


def _cascade_job(pre: Path, results: Path) -> FoldJob:
    cfg = TrainConfig(num_epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, seed=1)
    return FoldJob(plans=cascade_plans(), configuration_name="3d_cascade_fullres", spec=tiny_spec(),
                   preprocessed_dataset_folder=pre, results_dataset_folder=results, fold=0, trainer_name="nnUNetTrainer",
                   config=cfg, device=torch.device("cpu"), precision="fp32")


@pytest.mark.slow
def test_cascade_training_has_extra_input_channels(tiny_preprocessed: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    with pytest.raises(FileNotFoundError, match="Train all 5 folds of 3d_lowres"):
        make_run_spec(_cascade_job(tiny_preprocessed, results))
    folder = _write_prev_stage(tiny_preprocessed, results)
    run = make_run_spec(_cascade_job(tiny_preprocessed, results))
    assert run.num_input_channels == 2 and run.prev_stage_folder == folder and run.cascade_labels == (1,)
    from nnseg.training.run_spec import build_components

    parts = build_components(run)
    image, targets = parts.batches.train_batch(0, 0)
    assert image.shape[1] == 2 and set(torch.unique(image[:, 1]).tolist()) <= {0.0, 1.0}
    assert targets[0].shape[1] == 1
    val_image, _ = parts.batches.val_batch(0, 0)
    assert val_image.shape[1] == 2
    result = train(run)
    weights = torch.load(result.output_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    first = next(v for k, v in weights["network_weights"].items() if k.endswith("weight") and v.ndim == 5)
    assert first.shape[1] == 2


def test_cascade_inputs_validation_only_moves() -> None:
    seg = torch.zeros(1, 2, 4, 4, 4, dtype=torch.int16)
    seg[0, 1, 0] = 1
    out = CascadeInputs((1,)).validation(Batch(torch.zeros(1, 1, 4, 4, 4), seg))
    assert out.image.shape[1] == 2 and float(out.image[0, 1, 0].min()) == 1.0


def test_next_stage_segmentation_of_regions_is_painted() -> None:
    from nnseg.launch.next_stage import logits_to_next_stage
    from nnseg.raw.dataset_json import DatasetSpec

    spec = DatasetSpec.from_json({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "organ": [1, 2], "lesion": 2},
                                  "regions_class_order": [1, 2], "numTraining": 1, "file_ending": ".nii.gz"})
    logits = torch.full((2, 4, 4, 4), -5.0)
    logits[0, :2] = 5  # organ region on the first half
    logits[1, :1] = 5  # lesion region on the first quarter
    seg = logits_to_next_stage(logits, (8, 8, 8), configuration=cascade_plans().configuration("3d_lowres"), spec=spec)
    assert seg.shape == (8, 8, 8) and seg.dtype == np.uint8
    assert (seg[:2] == 2).all() and (seg[2:4] == 1).all() and (seg[4:] == 0).all()
