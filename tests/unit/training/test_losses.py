from __future__ import annotations

import pytest
import torch

from nnseg.training.losses import (
    DeepSupervisionLoss,
    DiceBCELoss,
    DiceCELoss,
    deep_supervision_scales,
    deep_supervision_weights,
    soft_dice,
)


def test_perfect_prediction_has_dice_one() -> None:
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[:, :, 2:5, 2:5] = 1
    logits = torch.zeros(2, 2, 8, 8)
    logits[:, 1] = torch.where(target[:, 0] == 1, 50.0, -50.0)
    loss = DiceCELoss(batch_dice=False)(logits, target)
    assert loss.item() == pytest.approx(-1.0, abs=1e-4)


def test_ce_matches_torch_and_ignore_excluded() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6))
    loss_ce_only = DiceCELoss(batch_dice=True, weight_dice=0.0)(logits, target)
    assert loss_ce_only.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target[:, 0]).item(), rel=1e-6)
    # ignore label 3: changing logits at ignored voxels does not change the loss
    t2 = target.clone()
    t2[:, :, :2] = 3
    lossfn = DiceCELoss(batch_dice=True, ignore_label=3)
    logits_b = logits.clone()
    logits_b[:, :, :2] += 5
    assert lossfn(logits, t2).item() == pytest.approx(lossfn(logits_b, t2).item(), rel=1e-6)


def test_soft_dice_batch_vs_sample() -> None:
    p = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    g = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    assert soft_dice(p, g, batch_dice=True).item() == pytest.approx(1.0)
    # per-sample: the empty sample gives smooth/smooth = 1 too
    assert soft_dice(p, g, batch_dice=False).item() == pytest.approx(1.0)


def test_region_loss_ignore_mask() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 5, 5)
    regions = torch.randint(0, 2, (1, 2, 5, 5))
    ignore = torch.zeros(1, 1, 5, 5, dtype=torch.long)
    ignore[..., :2, :] = 1
    target = torch.cat([regions, ignore], 1)
    fn = DiceBCELoss(batch_dice=False, use_ignore_label=True)
    changed = logits.clone()
    changed[..., :2, :] -= 7
    assert fn(logits, target).item() == pytest.approx(fn(changed, target).item(), rel=1e-6)


def test_deep_supervision_weights_and_scales() -> None:
    w = deep_supervision_weights(4)
    assert w[-1] == 0 and sum(w) == pytest.approx(1) and w[0] == pytest.approx(2 * w[1])
    assert deep_supervision_scales([[1, 1, 1], [2, 2, 2], [2, 2, 1]]) == [[1, 1, 1], [0.5, 0.5, 0.5]]
    fn = DeepSupervisionLoss(DiceCELoss(batch_dice=False), [1.0, 0.0])
    out = [torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2)]
    tgt = [torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.zeros(1, 1, 2, 2, dtype=torch.long)]
    assert fn(out, tgt).item() == pytest.approx(DiceCELoss(batch_dice=False)(out[0], tgt[0]).item())
