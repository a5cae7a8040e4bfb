"""Partial labels in training: each partially annotated case's unlabelled voxels get a code naming what they may be.

A case of ``dataset.json``'s ``annotated_labels`` (:mod:`nnseg.raw.partial_labels`) that lacks the classes ``U``
has its background voxels (label 0, not -1 outside the image) replaced by ``base + s`` when its patches are read,
where ``sets[s] == U`` and ``base`` is one above every label value (ignore included). The code travels through
augmentation and deep-supervision downsampling like a label (both are nearest-label operations) and the marginal
loss (:class:`nnseg.training.losses.MarginalDiceCELoss`) reads it. Datasets without the key get no codes, so their
batches are exactly nnU-Net's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from nnseg.raw.dataset_json import DatasetSpec


@dataclass(frozen=True)
class PartialCodes:
    """``base``, the class sets ``sets[s]`` of code ``base + s``, and each partially annotated case's code."""

    base: int
    sets: tuple[tuple[int, ...], ...]
    case_codes: Mapping[str, int] = field(default_factory=dict)

    def encode(self, seg: np.ndarray, case: str) -> np.ndarray:
        """``seg`` ``(C, *spatial)`` with its label channel's background coded for ``case`` (unchanged if complete)."""
        code = self.case_codes.get(case)
        if code is None:
            return seg
        seg = seg.copy()
        seg[0][seg[0] == 0] = code
        return seg

    def uncoded(self, target: torch.Tensor) -> torch.Tensor:
        """Codes back to background (for metrics that only need the drawn labels)."""
        return torch.where(target >= self.base, torch.zeros_like(target), target)


def partial_codes(spec: DatasetSpec) -> PartialCodes | None:
    """The codes of a label dataset with ``annotated_labels``; None without it.

    Raises:
        ValueError: a region dataset declares partial labels (not supported: the message says what to do).
    """
    partial = spec.partial_labels
    if partial is None:
        return None
    if spec.has_regions:
        raise ValueError("dataset.json declares annotated_labels for a region dataset; partial labels are supported "
                         "for label datasets only. Remove annotated_labels (or train on the label form)")
    sets = partial.missing_sets()
    base = max(spec.allowed_label_values) + 1
    codes = {case: base + sets.index(partial.missing(case)) for case in partial.annotated if partial.missing(case)}
    return PartialCodes(base, tuple(tuple(int(u) for u in s) for s in sets), codes)  # type: ignore[arg-type]
