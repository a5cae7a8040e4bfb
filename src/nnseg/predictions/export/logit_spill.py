"""Network-resolution logits parked on disk between a network pass along one axis and an export along another.

``--save_probabilities`` writes ``CASE.npz`` slab by slab along the input file's last axis (Fortran order, see
:mod:`nnseg.predictions.export.streaming_export`). Streaming the sliding window along that axis would need a ring
accumulator of ``K x patch x plane`` there: 5 GB for 118 classes and a 96-voxel patch axis. Instead the network streams
along the plans' first axis as usual and each finished slab is written into an unnamed temporary file laid out
``(S, K, X, O)`` (``S``: the export axis, ``X``: the first axis, ``O``: the remaining one), from which contiguous slabs
along ``S`` are read back for the export. Disk: ``K x grid x 4`` bytes (9.4 GB for 118 classes on a 273x273x267
grid), freed when the file is closed; the logits are bitwise the ones a one-pass export would have used.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


class LogitSpill:
    """Write ``(K, rows, Y, Z)`` slabs along axis 0, read ``(K, rows, X, O)`` slabs along ``axis`` (1 or 2)."""

    def __init__(self, folder: Path, shape: Sequence[int], axis: int) -> None:
        if axis not in (1, 2) or len(shape) != 4:
            raise ValueError(f"spill axis must be 1 or 2 of a (K, X, Y, Z) grid, got axis {axis} and shape {tuple(shape)}")
        self.k, self.x = int(shape[0]), int(shape[1])
        self.axis, self.s = axis, int(shape[1 + axis])
        self.o = int(shape[1 + (3 - axis)])
        folder.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".nnseg-logits-")
        self._fd = self._file.fileno()
        os.ftruncate(self._fd, 4 * self.s * self.k * self.x * self.o)

    def write(self, first_row: int, rows: torch.Tensor) -> None:
        """Network rows ``[first_row, first_row + n)`` along axis 0, logits ``(K, n, Y, Z)``."""
        n = rows.shape[1]  # noqa: F841 (documented shape)
        moved = rows.float().cpu().permute(1 + self.axis, 0, 1, 4 - self.axis).contiguous().numpy()  # (S, K, n, O)
        row_bytes = 4 * self.o
        for s in range(self.s):
            for k in range(self.k):
                offset = ((s * self.k + k) * self.x + first_row) * row_bytes
                os.pwrite(self._fd, memoryview(moved[s, k]).cast("B"), offset)
        del moved, n

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` along the export axis as ``(K, n, X, O)`` float32."""
        n = stop - start
        out = np.empty((n, self.k, self.x, self.o), dtype=np.float32)
        view = memoryview(out).cast("B")
        offset, done = 4 * start * self.k * self.x * self.o, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"short read from the temporary logits file at byte {offset + done}")
            done += got
        return torch.from_numpy(out).permute(1, 0, 2, 3)

    def close(self) -> None:
        self._file.close()
