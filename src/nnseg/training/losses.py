"""Segmentation losses of nnU-Net's recipe: soft Dice + cross-entropy (labels) or + BCE (regions), deep supervision.

Targets are integer label maps ``(B, 1, *spatial)`` for labels, or binary region maps ``(B, R, *spatial)`` for
regions (with an ignore label, one extra last channel marks the ignored voxels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from nnseg.registry import Registry

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")

DEFAULT_SMOOTH = 1e-5
DENOMINATOR_FLOOR = 1e-8


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, *, batch_dice: bool, smooth: float = DEFAULT_SMOOTH,
              mask: torch.Tensor | None = None,
              batch_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
              scored: torch.Tensor | None = None) -> torch.Tensor:
    """Mean soft Dice over channels of ``probs``/``onehot`` ``(B, C, *spatial)``; ``mask`` ``(B, 1, *spatial)``.

    ``batch_reduce`` (batch Dice under DDP) maps this process's batch sums ``(C,)`` to the global ones.
    ``scored`` ``(B, C)`` bool (partial labels): the mean leaves out the Dice of a class in a sample (or, with batch
    Dice, of a class no sample scores) where it is False, instead of averaging in its constant ~0.
    """
    axes = tuple(range(2, probs.ndim))
    if mask is not None:
        probs, onehot = probs * mask, onehot * mask
    intersect = (probs * onehot).sum(axes)
    sum_pred = probs.sum(axes)
    sum_gt = onehot.sum(axes)
    if batch_dice:
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
        if batch_reduce is not None:
            intersect, sum_pred, sum_gt = batch_reduce(intersect), batch_reduce(sum_pred), batch_reduce(sum_gt)
    dice = (2 * intersect + smooth) / torch.clip(sum_gt + sum_pred + smooth, DENOMINATOR_FLOOR)
    if scored is None:
        return dice.mean()
    keep = scored
    if batch_dice:
        count = scored.sum(0).float()
        keep = (batch_reduce(count) if batch_reduce is not None else count) > 0
    return (dice * keep).sum() / torch.clip(keep.sum(), min=1)


class DiceCELoss(nn.Module):
    """nnU-Net's ``DC_and_CE_loss``: softmax soft Dice without background + cross-entropy, weights 1 and 1."""

    def __init__(self, *, batch_dice: bool, smooth: float = DEFAULT_SMOOTH, ignore_label: int | None = None,
                 weight_ce: float = 1.0, weight_dice: float = 1.0) -> None:
        super().__init__()
        self.batch_dice, self.smooth, self.ignore_label = batch_dice, smooth, ignore_label
        self.weight_ce, self.weight_dice = weight_ce, weight_dice
        self.batch_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None  # set under DDP
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_label if ignore_label is not None else -100)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != logits.ndim or target.shape[1] != 1:
            raise ValueError(f"target must be (B, 1, *spatial) labels, got shape {tuple(target.shape)}")
        mask = None
        target_dice = target
        if self.ignore_label is not None:
            mask = (target != self.ignore_label)
            target_dice = torch.where(mask, target, torch.zeros_like(target))
        with torch.no_grad():
            onehot = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            onehot.scatter_(1, target_dice.long(), True)
            onehot = onehot[:, 1:]
        probs = torch.softmax(logits, 1)[:, 1:]
        dice = soft_dice(probs, onehot, batch_dice=self.batch_dice, smooth=self.smooth, mask=mask,
                         batch_reduce=self.batch_reduce)
        loss = -dice * self.weight_dice
        if self.weight_ce and (mask is None or bool(mask.any())):
            loss = loss + self.weight_ce * self.ce(logits, target[:, 0].long())
        return loss


class MarginalDiceCELoss(DiceCELoss):
    """Partial labels (Shi et al. 2021, marginal loss): voxels coded ``base + s`` are "background or one of the
    classes ``sets[s]``" (a partially annotated case's unlabelled voxels). Cross-entropy there uses the merged
    probability ``p_0 + sum(p_u for u in sets[s])``, and the Dice of each ``u`` leaves those voxels out, so
    predicting an unannotated class where it was not drawn costs nothing; elsewhere it is nnU-Net's Dice + CE
    (a voxel drawn as class ``k`` still says it is no other class). The mean Dice leaves out each class in the
    samples whose case does not draw it (batch Dice: the classes no sample draws): averaged in, their constant ~0
    would halve the Dice gradient of a class drawn in half the cases."""

    def __init__(self, *, batch_dice: bool, base: int, sets: Sequence[Sequence[int]], smooth: float = DEFAULT_SMOOTH,
                 ignore_label: int | None = None) -> None:
        super().__init__(batch_dice=batch_dice, smooth=smooth, ignore_label=ignore_label)
        self.base, self.sets = int(base), [tuple(int(u) for u in s) for s in sets]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim != logits.ndim or target.shape[1] != 1:
            raise ValueError(f"target must be (B, 1, *spatial) labels, got shape {tuple(target.shape)}")
        keep = torch.ones_like(target, dtype=torch.bool) if self.ignore_label is None else target != self.ignore_label
        coded = target >= self.base
        plain = torch.where(keep & ~coded, target, torch.zeros_like(target)).long()
        with torch.no_grad():
            onehot = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(1, plain, True)
            dice_mask = keep.expand_as(logits).clone()
            scored = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
            for s, classes in enumerate(self.sets):
                here = target == self.base + s
                dice_mask[:, list(classes)] &= ~here
                scored[:, list(classes)] &= ~here.flatten(1).any(1, keepdim=True)  # the sample's case lacks them
        log_p = torch.log_softmax(logits.float(), 1)
        nll = -log_p.gather(1, plain)
        for s, classes in enumerate(self.sets):
            merged = torch.logsumexp(log_p[:, [0, *classes]], 1, keepdim=True)
            nll = torch.where(target == self.base + s, -merged, nll)
        ce = (nll * keep).sum() / torch.clip(keep.sum(), min=1)
        probs = torch.softmax(logits, 1)[:, 1:]
        dice = soft_dice(probs, onehot[:, 1:], batch_dice=self.batch_dice, smooth=self.smooth, mask=dice_mask[:, 1:],
                         batch_reduce=self.batch_reduce, scored=scored[:, 1:])
        return self.weight_ce * ce - self.weight_dice * dice


class DiceBCELoss(nn.Module):
    """nnU-Net's ``DC_and_BCE_loss`` for regions: sigmoid soft Dice (background included) + BCE, masked for ignore.

    ``partial``: targets carry unknown masks (:func:`nnseg.training.partial.regions_with_unknown`); a region unknown in
    the whole sample is left out of the mean Dice (as the marginal loss leaves out undrawn classes)."""

    def __init__(self, *, batch_dice: bool, smooth: float = DEFAULT_SMOOTH, use_ignore_label: bool = False,
                 weight_ce: float = 1.0, weight_dice: float = 1.0, partial: bool = False) -> None:
        super().__init__()
        self.batch_dice, self.smooth, self.use_ignore_label = batch_dice, smooth, use_ignore_label
        self.weight_ce, self.weight_dice, self.partial = weight_ce, weight_dice, partial
        self.batch_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None  # set under DDP

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mask = None
        regions = target
        if self.use_ignore_label:
            mask = (1 - target[:, -1:].float())
            regions = target[:, :-1]
        if self.partial:  # partial labels: R region channels, then R masks of unknown voxels (training.partial)
            r = logits.shape[1]
            known = 1 - regions[:, r:2 * r].float()
            mask, regions = known if mask is None else known * mask, regions[:, :r]
            bce = nn.functional.binary_cross_entropy_with_logits(logits, regions.float(), reduction="none")
            dice = soft_dice(torch.sigmoid(logits), regions.float(), batch_dice=self.batch_dice, smooth=self.smooth,
                             mask=mask, batch_reduce=self.batch_reduce, scored=(mask > 0).flatten(2).any(2))
            bce_value = (bce * mask).sum() / torch.clip(mask.sum() / r, min=DENOMINATOR_FLOOR)
            return self.weight_ce * bce_value - self.weight_dice * dice
        regions = regions.float()
        dice = soft_dice(torch.sigmoid(logits), regions, batch_dice=self.batch_dice, smooth=self.smooth, mask=mask,
                         batch_reduce=self.batch_reduce)
        bce = nn.functional.binary_cross_entropy_with_logits(logits, regions, reduction="none")
        if mask is not None:
            bce_value = (bce * mask).sum() / torch.clip(mask.sum(), min=DENOMINATOR_FLOOR)  # as nnU-Net: not divided by R
        else:
            bce_value = bce.mean()
        return self.weight_ce * bce_value - self.weight_dice * dice


def deep_supervision_weights(num_outputs: int, *, last_weight: float = 0.0) -> list[float]:
    """Weights ``1/2^i`` from full resolution down, the lowest set to ``last_weight`` (0 in nnU-Net), summing to 1."""
    weights = np.array([1 / (2**i) for i in range(num_outputs)])
    if num_outputs > 1:
        weights[-1] = last_weight
    return (weights / weights.sum()).tolist()


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Scale of each deep-supervision output relative to the patch: ``1 / cumprod(strides)`` without the last."""
    cum = np.cumprod(np.vstack([np.asarray(s, dtype=float) for s in strides]), axis=0)
    return [list(1 / row) for row in cum][:-1]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss(output_i, target_i)``; outputs with weight 0 are skipped."""

    def __init__(self, loss: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.loss, self.weights = loss, list(weights)

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(outputs) != len(targets) or len(outputs) > len(self.weights):
            raise ValueError(f"{len(outputs)} outputs, {len(targets)} targets, {len(self.weights)} weights must agree")
        total = outputs[0].new_zeros(())
        for w, out, tgt in zip(self.weights, outputs, targets):
            if w != 0:
                total = total + w * self.loss(out, tgt)
        return total


@LOSSES.register("dice_ce")
def make_dice_ce(*, batch_dice: bool, smooth: float = DEFAULT_SMOOTH, ignore_label: int | None = None,
                 has_regions: bool = False, partial: tuple[int, Sequence[Sequence[int]]] | None = None) -> nn.Module:
    """nnU-Net's loss; ``partial`` = ``(base, sets)`` of a partially annotated dataset gives the marginal loss."""
    if partial is not None and not has_regions:
        return MarginalDiceCELoss(batch_dice=batch_dice, smooth=smooth, ignore_label=ignore_label, base=partial[0],
                                  sets=partial[1])
    if has_regions:
        return DiceBCELoss(batch_dice=batch_dice, smooth=smooth, use_ignore_label=ignore_label is not None,
                           partial=partial is not None)
    return DiceCELoss(batch_dice=batch_dice, smooth=smooth, ignore_label=ignore_label)
