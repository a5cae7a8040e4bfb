"""Training and validation batches: sample patches, augment on the target device, build the loss targets.

Batch ``k`` of epoch ``e`` is drawn with ``numpy.random.default_rng([seed, e, k, kind])``, so the data a run sees does
not depend on threads, workers or interruptions: a resumed run gets exactly the batches the uninterrupted run got.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nnseg.training.augment.base import Batch
from nnseg.training.augment.pipeline import (
    apply_all,
    downsample_for_deep_supervision,
    labels_to_regions,
    mask_outside,
    remove_negative_labels,
    sample_all,
)
from nnseg.training.cascade import CascadeInputs
from nnseg.training.partial import PartialCodes, regions_with_unknown
from nnseg.training.sampling import PatchSampler

TRAIN, VAL = 0, 1
PREFETCH_DEPTH = 2


@dataclass(frozen=True)
class TargetSpec:
    """How labels become loss targets: regions (sigmoid heads), ignore label, deep-supervision scales."""

    regions: tuple[tuple[int, ...], ...] | None = None
    ignore_label: int | None = None
    ds_scales: tuple[tuple[float, ...], ...] | None = None
    mask_channels: tuple[int, ...] = ()
    partial: PartialCodes | None = None  # partial labels (region datasets decode their codes here)


def batch_rng(seed: int, epoch: int, index: int, kind: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, kind])


def make_targets(seg: torch.Tensor, spec: TargetSpec) -> list[torch.Tensor]:
    """Labels ``(B, 1, ...)`` with -1 outside the mask -> the list of targets the (deep-supervision) loss expects."""
    seg = remove_negative_labels(seg)
    if spec.regions is not None and spec.partial is not None:
        seg = regions_with_unknown(seg, spec.regions, spec.partial, ignore_label=spec.ignore_label)
    elif spec.regions is not None:
        seg = labels_to_regions(seg, spec.regions, ignore_label=spec.ignore_label)
    if spec.ds_scales is None:
        return [seg]
    return downsample_for_deep_supervision(seg, spec.ds_scales)


@dataclass
class BatchMaker:
    """Produces ``(image, targets)`` for training (augmented) and validation (not augmented)."""

    train_sampler: PatchSampler
    val_sampler: PatchSampler
    transforms: Sequence[Any]
    targets: TargetSpec
    device: torch.device
    seed: int
    cascade: CascadeInputs | None = None

    def train_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, _ = self.augmented_batch(epoch, index)
        return batch.image.contiguous(), make_targets(batch.seg, self.targets)

    def augmented_batch(self, epoch: int, index: int) -> tuple[Batch, np.random.Generator]:
        """Batch ``index`` of ``epoch`` sampled and augmented (labels, not yet loss targets), and its generator
        (drawn further, it gives the same numbers in a resumed run)."""
        rng = batch_rng(self.seed, epoch, index, TRAIN)
        image, seg, _ = self.train_sampler.sample(rng)
        batch = Batch(torch.from_numpy(image).to(self.device), torch.from_numpy(seg).to(self.device))
        batch = apply_all(self.transforms, batch, sample_all(self.transforms, rng, batch))
        batch = mask_outside(batch, self.targets.mask_channels)
        if self.cascade is not None:
            batch = self.cascade.train(batch.with_(seg=remove_negative_labels(batch.seg)), rng)
        return batch, rng

    def case_ids(self, epoch: int, index: int, *, train: bool = True) -> list[str]:
        """The cases of batch ``index`` of ``epoch``, re-drawn from the batch's seed (nothing is kept per batch)."""
        sampler, kind = (self.train_sampler, TRAIN) if train else (self.val_sampler, VAL)
        return sampler.choose_cases(batch_rng(self.seed, epoch, index, kind))

    def val_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, _ = self.sampled_val_batch(epoch, index)
        return batch.image, make_targets(batch.seg, self.targets)

    def sampled_val_batch(self, epoch: int, index: int) -> tuple[Batch, np.random.Generator]:
        """Validation batch ``index`` of ``epoch`` (not augmented; labels) and its generator."""
        rng = batch_rng(self.seed, epoch, index, VAL)
        image, seg, _ = self.val_sampler.sample(rng)
        batch = Batch(torch.from_numpy(image).to(self.device), torch.from_numpy(seg).to(self.device))
        batch = mask_outside(batch, self.targets.mask_channels)
        if self.cascade is not None:
            batch = self.cascade.validation(batch.with_(seg=remove_negative_labels(batch.seg)))
        return batch, rng


def prefetched(make: Callable[[int], Any], count: int, *, background: bool) -> Iterator[Any]:
    """Yield ``make(0) .. make(count - 1)`` in order, computed one step ahead in a thread when ``background``."""
    if not background:
        for i in range(count):
            yield make(i)
        return
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=PREFETCH_DEPTH)
    stop = threading.Event()

    def work() -> None:
        for i in range(count):
            if stop.is_set():
                return
            try:
                item = ("ok", make(i))
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer thread
                q.put(("error", e))
                return
            q.put(item)

    thread = threading.Thread(target=work, name="nnseg-batches", daemon=True)
    thread.start()
    try:
        for _ in range(count):
            status, item = q.get()
            if status == "error":
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
