"""Partial labels in training: a partially annotated case's voxels carry a code saying what is not drawn there.

Labels: a case of ``dataset.json``'s ``annotated_labels`` (:mod:`nnseg.raw.partial_labels`) that lacks the classes
``U`` has its background voxels (label 0, not -1 outside the image) replaced by ``base + s`` when its patches are
read, where ``sets[s] == U`` and ``base`` is one above every label value (ignore included); the marginal loss
(:class:`nnseg.training.losses.MarginalDiceCELoss`) reads it.

Regions: an undrawn region is unknown in the whole case (except where a drawn label lies inside it), so every
voxel ``v >= 0`` of such a case becomes ``v + base * (s + 1)``; :func:`regions_with_unknown` decodes it into the
region channels plus one "unknown" mask per region, which the region loss leaves out.

Codes travel through augmentation and deep-supervision downsampling like labels (both are nearest-label
operations). Datasets without the key get no codes, so their batches are exactly nnU-Net's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from nnseg.raw.dataset_json import DatasetSpec


@dataclass(frozen=True)
class PartialCodes:
    """``base``, the class sets ``sets[s]`` of code ``base + s``, and each partially annotated case's code."""

    base: int
    sets: tuple[tuple[int, ...], ...]  # class values (labels) or region indices (regions) not drawn
    case_codes: Mapping[str, int] = field(default_factory=dict)
    regions: bool = False

    def encode(self, seg: np.ndarray, case: str) -> np.ndarray:
        """``seg`` ``(C, *spatial)`` with its label channel coded for ``case`` (unchanged if complete)."""
        code = self.case_codes.get(case)
        if code is None:
            return seg
        seg = seg.copy()
        if self.regions:
            inside = seg[0] >= 0
            seg[0][inside] += self.base * (code - self.base + 1)
        else:
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
    sets = partial.missing_sets()
    base = max(spec.allowed_label_values) + 1
    codes = {case: base + sets.index(partial.missing(case)) for case in partial.annotated if partial.missing(case)}
    if spec.has_regions:
        index = {r: i for i, r in enumerate(partial.foreground)}
        return PartialCodes(base, tuple(tuple(index[r] for r in s) for s in sets), codes, regions=True)
    return PartialCodes(base, tuple(tuple(int(u) for u in s) for s in sets), codes)  # type: ignore[arg-type]


def regions_with_unknown(seg: torch.Tensor, regions: Sequence[Sequence[int]], codes: PartialCodes, *,
                         ignore_label: int | None) -> torch.Tensor:
    """Coded labels ``(B, 1, ...)`` -> ``(B, 2R[+1], ...)``: the R regions, R masks of voxels where a region is
    unknown (undrawn in the case and no drawn label inside it), then the ignore channel when there is an ignore label."""
    value = seg[:, 0]
    set_index = torch.div(value, codes.base, rounding_mode="floor") - 1  # -1: not coded
    labels = torch.where(set_index >= 0, value - codes.base * (set_index + 1), value)
    inside = [torch.isin(labels, torch.as_tensor(list(r), device=seg.device)) for r in regions]
    unknown = []
    for i in range(len(regions)):
        undrawn = [s for s, members in enumerate(codes.sets) if i in members]
        maybe = torch.isin(set_index, torch.as_tensor(undrawn, device=seg.device, dtype=set_index.dtype))
        unknown.append(maybe & ~inside[i])
    channels = inside + unknown + ([labels == ignore_label] if ignore_label is not None else [])
    return torch.stack(channels, 1).to(torch.int8)
