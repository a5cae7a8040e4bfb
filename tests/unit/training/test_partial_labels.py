"""Partial labels: the marginal loss, codes in batches, scoring only drawn labels, checks of the dataset.json key."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tinydata import tiny_plans, tiny_spec

from nnseg.jsonio import load_json, save_json
from nnseg.metrics.evaluate import evaluate_folder_with_dataset
from nnseg.launch.full_val import full_validator
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.raw.demo_data import make_demo_dataset
from nnseg.raw.image_io import get_io
from nnseg.raw.verify import verify_dataset
from nnseg.training.config import TrainConfig
from nnseg.training.loop import tp_fp_fn, train
from nnseg.training.losses import DiceCELoss, MarginalDiceCELoss, soft_dice
from nnseg.training.partial import partial_codes
from nnseg.training.setup import FoldJob, make_run_spec

LABELS = {"background": 0, "liver": 1, "kidney": 2, "spleen": 3}


def _spec(annotated: dict[str, list[object]], **extra: object) -> DatasetSpec:
    return DatasetSpec.from_json({"channel_names": {"0": "CT"}, "labels": {**LABELS, **extra}, "numTraining": 4,
                                  "file_ending": ".nii.gz", "annotated_labels": annotated})


def _split_logits(base: torch.Tensor, theta: torch.Tensor, merged: list[int]) -> torch.Tensor:
    """Logits whose classes ``merged`` share the mass ``logsumexp(base[merged])`` by the softmax of ``theta``."""
    total = torch.logsumexp(base[:, merged], 1, keepdim=True)
    share = torch.log_softmax(theta, 1)
    out = base.clone()
    out[:, merged] = total + share
    return out


@pytest.mark.parametrize("batch_dice", [False, True])
def test_marginal_loss_gives_zero_gradient_towards_unannotated_classes(batch_dice: bool) -> None:
    torch.manual_seed(0)
    spec = _spec({"c0": ["liver"]})  # kidney (2) and spleen (3) not drawn in c0
    codes = partial_codes(spec)
    assert codes is not None and codes.sets == ((2, 3),) and codes.base == 4
    seg = torch.randint(0, 2, (2, 1, 6, 6, 6))
    target = seg.clone()
    target[0][seg[0] == 0] = codes.base  # sample 0 is the partial case; sample 1 is complete
    base = torch.randn(2, 4, 6, 6, 6)
    theta = torch.randn(2, 3, 6, 6, 6, requires_grad=True)  # how background, kidney, spleen split their mass
    marginal = MarginalDiceCELoss(batch_dice=batch_dice, base=codes.base, sets=codes.sets)
    plain = DiceCELoss(batch_dice=batch_dice)
    coded = (target == codes.base).expand(2, 3, 6, 6, 6)
    grad = torch.autograd.grad(marginal(_split_logits(base, theta, [0, 2, 3]), target), theta)[0]
    assert grad[coded].abs().max() < 1e-7  # moving mass between background and undrawn classes costs nothing
    assert grad[~coded].abs().max() > 1e-4  # where the case is complete (or drawn), it still matters
    wrong = seg.clone()
    wrong[0][seg[0] == 0] = 0  # the same data treated as complete
    plain_grad = torch.autograd.grad(plain(_split_logits(base, theta, [0, 2, 3]), wrong), theta)[0]
    assert plain_grad[coded].abs().max() > 1e-4


def test_marginal_loss_equals_nnunet_loss_without_partial_cases() -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(2, 4, 5, 5, 5), torch.randint(0, 4, (2, 1, 5, 5, 5))
    for ignore in (None, 4):
        t = target.clone()
        if ignore is not None:
            t[:, :, :2] = ignore
        ours = MarginalDiceCELoss(batch_dice=False, base=5, sets=[(2, 3)], ignore_label=ignore)(logits, t)
        torch.testing.assert_close(ours, DiceCELoss(batch_dice=False, ignore_label=ignore)(logits, t))


def _dice(logits: torch.Tensor, target: torch.Tensor, cls: int) -> torch.Tensor:
    """nnU-Net's soft Dice of one class over every sample (the class is drawn in them: all voxels count)."""
    return soft_dice(torch.softmax(logits, 1)[:, cls:cls + 1], target == cls, batch_dice=True)


def test_marginal_dice_leaves_out_classes_a_sample_does_not_draw() -> None:
    """Half the cases draw only liver, half only kidney (and none spleen): the Dice term is the mean over the drawn
    (sample, class) pairs, so a class drawn in half the samples keeps nnU-Net's Dice gradient instead of half of it."""
    torch.manual_seed(2)
    codes = partial_codes(_spec({"c0": ["liver"], "c1": ["kidney"]}))
    assert codes is not None and codes.sets == ((2, 3), (1, 3))
    seg = torch.randint(0, 3, (2, 1, 6, 6, 6))
    seg[0][seg[0] == 2] = 0
    seg[1][seg[1] == 1] = 0
    target = seg.clone()
    target[0][seg[0] == 0], target[1][seg[1] == 0] = codes.base, codes.base + 1
    logits = torch.randn(2, 4, 6, 6, 6)
    loss = MarginalDiceCELoss(batch_dice=False, base=codes.base, sets=codes.sets)
    loss.weight_ce = 0.0
    expected = (_dice(logits[:1], seg[:1], 1) + _dice(logits[1:], seg[1:], 2)) / 2
    torch.testing.assert_close(loss(logits, target), -expected)  # not /6 over every (sample, class) pair
    both_liver = torch.stack([target[0], target[0]])
    batch = MarginalDiceCELoss(batch_dice=True, base=codes.base, sets=codes.sets)
    batch.weight_ce = 0.0
    liver_only = _dice(torch.cat([logits[:1]] * 2), torch.stack([seg[0]] * 2), 1)
    torch.testing.assert_close(batch(torch.cat([logits[:1]] * 2), both_liver), -liver_only)  # kidney, spleen: no sample


def test_pseudo_dice_does_not_score_undrawn_classes() -> None:
    codes = partial_codes(_spec({"c0": ["liver"]}))
    target = torch.full((1, 1, 4, 4, 4), codes.base)  # all unlabelled in a liver-only case
    target[..., 0] = 1
    output = torch.zeros(1, 4, 4, 4, 4)
    output[:, 2, ..., 1:] = 5.0  # predicts kidney where nothing is drawn
    output[:, 1, ..., 0] = 5.0
    counts = tp_fp_fn(output, target, regions=False, ignore_label=None, partial=codes)
    assert counts[:, 0].tolist() == [16, 0, 0] and counts[:, 1].tolist() == [0, 0, 0]  # kidney: no FP counted


def test_partially_annotated_case_never_scored_on_undrawn_labels(tmp_path: Path) -> None:
    io = get_io("SimpleITKIO")
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    seg = np.zeros((1, 4, 4, 4), np.uint8)
    seg[0, :2] = 1
    props = {"spacing": (1.0, 1.0, 1.0)}
    for case in ("liveronly", "full"):
        io.write_seg(seg[0], str(ref / f"{case}.nii.gz"), props)
        wrong = seg[0].copy()
        wrong[2:] = 2  # kidney predicted where the reference has none
        io.write_seg(wrong, str(pred / f"{case}.nii.gz"), props)
    save_json(_spec({"liveronly": ["liver"]}).to_json(), tmp_path / "dataset.json")
    summary = evaluate_folder_with_dataset(ref, pred, dataset_json_file=tmp_path / "dataset.json", num_processes=1)
    by_case = {Path(c["reference_file"]).name: c["metrics"] for c in summary["metric_per_case"]}
    assert math.isnan(by_case["liveronly.nii.gz"][2]["Dice"]) and math.isnan(by_case["liveronly.nii.gz"][2]["FP"])
    assert by_case["full.nii.gz"][2]["Dice"] == 0.0 and summary["mean"][2]["Dice"] == 0.0  # only the full case
    assert by_case["liveronly.nii.gz"][1]["Dice"] == 1.0


def test_dataset_json_key_is_checked_and_verify_finds_undrawn_voxels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"annotated_labels\['c0'\] names \['lung'\]"):
        _spec({"c0": ["lung"]})
    with pytest.raises(ValueError, match=r"annotated_labels\['c1'\] is \[\]"):
        _spec({"c1": []})
    assert _spec({"c0": ["liver", 3]}).partial_labels.missing("c0") == (2,)
    raw = make_demo_dataset(tmp_path / "Dataset003_Part", num_cases=3, shape=(8, 8, 8), num_test=0)
    d = load_json(raw / "dataset.json")
    fg = [name for name, v in d["labels"].items() if v == 1][0]
    other = [name for name, v in d["labels"].items() if v == 2][0]
    save_json({**d, "annotated_labels": {"case_000": [fg], "nope": [fg]}}, raw / "dataset.json")
    problems = [str(p) for p in verify_dataset(raw, num_processes=1)]
    assert any("names 1 case(s) that are not training cases: ['nope']" in p for p in problems)
    assert any("case 'case_000' holds label(s) [2]" in p for p in problems), problems  # its lesion is drawn
    save_json({**d, "annotated_labels": {"case_000": [fg, other]}}, raw / "dataset.json")
    assert not [p for p in verify_dataset(raw, num_processes=1) if p.severity == "error"]


def test_training_with_partial_labels_codes_batches_and_scores_drawn_labels(tiny_preprocessed: Path,
                                                                             tmp_path: Path) -> None:
    spec = DatasetSpec.from_json({**tiny_spec().to_json(), "labels": {"background": 0, "organ": 1, "other": 2},
                                  "annotated_labels": {"case_000": ["organ"], "case_003": ["organ"]}})
    config = TrainConfig(num_epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1, seed=0, full_val_every=1,
                         batch_size=2)
    job = FoldJob(plans=tiny_plans(), configuration_name="3d_fullres", spec=spec, preprocessed_dataset_folder=tiny_preprocessed,
                  results_dataset_folder=tmp_path / "res", fold=0, trainer_name="nnUNetTrainer", config=config,
                  device=torch.device("cpu"), precision="fp32")
    run = make_run_spec(job)
    assert run.partial is not None and run.partial.case_codes == {"case_000": 3, "case_003": 3}
    parts_seg = [run_seg for run_seg in _batches_of(run)]
    assert any((s == 3).any() for s in parts_seg)  # coded voxels reach the targets
    validator = full_validator(run)
    assert validator.annotated is not None and validator.annotated("case_000") == (0,)
    per_case = validator.per_case(torch.nn.Sequential(_Constant(3)))  # predicts "other" everywhere
    assert all(math.isnan(d[1]) for c, d in per_case.items() if c in ("case_000", "case_003"))
    result = train(run, full_validator=validator)
    assert len(result.state.logging["full_val_dice"]) == 2


class _Constant(torch.nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.classes, *x.shape[2:])
        out[:, -1] = 1.0
        return out


def _batches_of(run):  # type: ignore[no-untyped-def]
    from nnseg.training.run_spec import build_components

    batches = build_components(run).batches
    return [batches.train_batch(0, i)[1][0] for i in range(6)]


def test_regions_mask_an_undrawn_region_in_its_case() -> None:
    from nnseg.training.data import TargetSpec, make_targets
    from nnseg.training.losses import DiceBCELoss

    spec = DatasetSpec.from_json({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "whole": [1, 2], "core": 2},
                                  "regions_class_order": [1, 2], "numTraining": 2, "file_ending": ".nii.gz",
                                  "annotated_labels": {"c0": ["whole"]}})
    codes = partial_codes(spec)
    assert codes is not None and codes.regions and codes.sets == ((1,),)
    torch.manual_seed(0)
    seg = torch.randint(0, 3, (2, 1, 6, 6, 6)).to(torch.int16)
    seg[0] = torch.where(seg[0] == 2, 1, seg[0])  # c0 draws the whole tumour only
    coded = torch.stack([torch.from_numpy(codes.encode(seg[0].numpy(), "c0")), seg[1]])
    target = make_targets(coded, TargetSpec(regions=((1, 2), (2,)), partial=codes))[0]
    assert target.shape[1] == 4 and torch.equal(target[0, 0], (seg[0, 0] > 0).to(torch.int8))
    assert bool(target[0, 3].all()) and not bool(target[1, 2:].any())  # core unknown everywhere in c0 only
    logits = torch.randn(2, 2, 6, 6, 6, requires_grad=True)
    grad = torch.autograd.grad(DiceBCELoss(batch_dice=False, partial=True)(logits, target), logits)[0]
    assert grad[0, 1].abs().max() == 0 and grad[0, 0].abs().max() > 0 and grad[1, 1].abs().max() > 0
    counts = tp_fp_fn(logits.detach(), target, regions=True, ignore_label=None, partial=codes)
    assert counts.shape == (3, 2)
    full = tp_fp_fn(logits.detach()[1:], target[1:, :2], regions=True, ignore_label=None)
    np.testing.assert_array_equal(counts[:, 1], full[:, 1])  # core scored on the complete case only


def test_region_dice_leaves_out_a_region_unknown_in_the_whole_sample() -> None:
    from nnseg.training.losses import DiceBCELoss

    torch.manual_seed(3)
    regions = torch.randint(0, 2, (2, 2, 6, 6, 6))
    unknown = torch.zeros_like(regions)
    unknown[0, 1] = 1  # sample 0's case does not draw region 1 (and nothing drawn lies inside it)
    logits = torch.randn(2, 2, 6, 6, 6)
    loss = DiceBCELoss(batch_dice=False, partial=True)
    loss.weight_ce = 0.0
    probs = torch.sigmoid(logits)
    pairs = [(0, 0), (1, 0), (1, 1)]
    expected = sum(soft_dice(probs[b:b + 1, r:r + 1], regions[b:b + 1, r:r + 1], batch_dice=True) for b, r in pairs) / 3
    torch.testing.assert_close(loss(logits, torch.cat([regions, unknown], 1)), -expected)  # not /4 with a constant 1
