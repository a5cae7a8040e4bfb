"""Single-level undo of an interactive session: the pre-image of every region the last prompt overwrote.

Each write (a prompt channel region, the previous-mask channel, the target buffer) first saves a copy of what it is
about to overwrite; undo restores those copies in reverse order, so the cost follows the size of the change, not of
the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nnseg.interactive.ops import Box, clip_box, slicer, union_box


@dataclass
class UndoLog:
    """The state before one prompt: scalars, the prediction queue, and region pre-images in write order."""

    intensity: float
    queue: list[tuple[list[int], float]]
    records: list[tuple[str, int | None, Box, Any]] = field(default_factory=list)

    def save_interactions(self, interactions: torch.Tensor, channel: int, box: Box) -> None:
        valid = clip_box(box, interactions.shape[1:])
        if valid is not None:
            self.records.append(("interactions", channel, valid, interactions[(channel, *slicer(valid))].clone()))

    def save_target(self, target: np.ndarray | torch.Tensor | None, box: Box) -> None:
        if target is None:
            return
        valid = clip_box(box, target.shape)
        if valid is not None:
            region = target[slicer(valid)]
            self.records.append(("target", None, valid, region.clone() if isinstance(region, torch.Tensor)
                                 else region.copy()))

    def restore(self, interactions: torch.Tensor, target: np.ndarray | torch.Tensor | None) -> Box | None:
        """Write every pre-image back (last first); returns the box of target voxels that changed, or None."""
        hull = union_box(*[r[2] for r in self.records if r[0] == "target"]) if target is not None else None
        before = None
        if hull is not None:
            region = target[slicer(hull)]
            before = region.clone() if isinstance(region, torch.Tensor) else region.copy()
        for kind, channel, box, data in reversed(self.records):
            if kind == "interactions":
                interactions[(channel, *slicer(box))] = data
            elif target is not None:
                target[slicer(box)] = data
        if hull is None:
            return None
        return _diff_box(before, target[slicer(hull)], hull)


def _diff_box(before: Any, after: Any, frame: Box) -> Box | None:
    a = before.cpu().numpy() if isinstance(before, torch.Tensor) else np.asarray(before)
    b = after.cpu().numpy() if isinstance(after, torch.Tensor) else np.asarray(after)
    diff = a != b
    box = []
    for axis in range(diff.ndim):
        nz = np.flatnonzero(np.any(diff, axis=tuple(i for i in range(diff.ndim) if i != axis)))
        if nz.size == 0:
            return None
        box.append([int(nz[0]) + frame[axis][0], int(nz[-1]) + 1 + frame[axis][0]])
    return box
