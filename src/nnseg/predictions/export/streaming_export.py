"""Export of streamed logits: resample slab by slab, arg-max, paste into the label map; probabilities streamed to .npz.

:class:`SlabExporter` takes finished rows of network-resolution logits in order (from
:func:`nnseg.predictions.inference.streaming_window.sliding_window_slabs`), keeps only the input rows that later output rows
still read (the resampling halo), and hands ``slab_rows`` output rows at a time to a :class:`CaseSink`, which
arg-maxes them (regions: sigmoid > 0.5 painted in ``regions_class_order``) into the uncropped label map (one byte per
voxel) and, with ``save_probabilities``, passes softmax/sigmoid probabilities to :class:`nnseg.predictions.export.npz_stream.NpzStreamWriter`.

The ``.npz`` is nnU-Net's format (one ``probabilities.npy`` member, float32 ``(K, X, Y, Z)`` in the input file's
axis order): ``np.load`` and nnU-Net's ensembling read it. To write it without holding it, the member is stored in
Fortran order, which lays out the last axis slowest, and the slabs stream along that axis (``streaming axis =
transpose_backward[2]``) into :class:`nnseg.predictions.export.npz_stream.NpzStreamWriter` (ISA-L deflate on every core).
It still costs ``K x voxels x 4`` bytes of deflate input (50 GB for 118 classes on 512x512x400; softmax values do
not compress well, so about as much on disk).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nnseg.predictions.export.from_logits import apply_inference_nonlin, probabilities_to_segmentation, segmentation_dtype
from nnseg.predictions.export.npz_stream import NpzStreamWriter
from nnseg.predictions.export.slab_resample import SlabResampler, combine_rows
from nnseg.raw.dataset_json import DatasetSpec


def moved_order(axis: int, ndim: int = 3) -> tuple[int, ...]:
    """Axis order of streamed slabs: the streaming axis first, the others ascending."""
    return (axis, *[a for a in range(ndim) if a != axis])


class CaseSink:
    """Label map (and optional probability file) of one case, filled by output slabs along the streaming axis.

    Args:
        spec: the dataset (labels or regions).
        properties: ``shape_before_cropping`` and ``bbox_used_for_cropping`` (transposed axis order).
        axis: streaming axis (transposed order); slabs arrive as ``(K, rows, *others)`` of the cropped grid.
        transpose_backward: the plans' axis order back to the input file's.
        probabilities: an :class:`NpzStreamWriter` of the ``(K, *file shape)`` array in Fortran order (then ``axis``
            must be ``transpose_backward[2]``).
    """

    def __init__(self, spec: DatasetSpec, properties: Mapping[str, Any], *, axis: int, num_outputs: int,
                 transpose_backward: Sequence[int], probabilities: NpzStreamWriter | None = None) -> None:
        self.spec, self.axis, self.tb = spec, axis, tuple(int(a) for a in transpose_backward)
        self.num_outputs = int(num_outputs)
        self.order = moved_order(axis)
        full = tuple(int(s) for s in properties["shape_before_cropping"])
        self.seg = torch.zeros(full, dtype=segmentation_dtype(spec))
        bbox = [slice(int(lo), int(hi)) for lo, hi in properties["bbox_used_for_cropping"]]
        self.bbox = [bbox[a] for a in self.order]
        self.full = [full[a] for a in self.order]
        self.probs = probabilities
        if probabilities is not None and axis != self.tb[2]:
            raise ValueError(f"probabilities stream along the file's last axis: axis must be {self.tb[2]}, got {axis}")
        # probability chunks are built as (K, rows, file axis 1, file axis 0): then (rows, ..., K) is one fast permute
        self._swap = self.order[1:] != (self.tb[1], self.tb[0])
        self._prob_bbox = self.bbox[1:][::-1] if self._swap else self.bbox[1:]
        self._prob_plane = self.full[1:][::-1] if self._swap else self.full[1:]
        self._prob_rows = 0

    def write(self, start: int, logits: torch.Tensor) -> None:
        """Output rows ``[start, start + n)`` of the cropped grid, logits ``(K, n, *others)``."""
        if self.probs is not None or self.spec.has_regions:
            probs = apply_inference_nonlin(logits, self.spec)
            seg = probabilities_to_segmentation(probs, self.spec)
        else:
            probs, seg = None, torch.argmax(logits, dim=0).to(segmentation_dtype(self.spec))
        lo = self.bbox[0].start + start
        self.seg.movedim(self.axis, 0)[lo:lo + seg.shape[0], self.bbox[1], self.bbox[2]] = seg.cpu()
        if probs is not None and self.probs is not None:
            self._background_rows_until(lo)
            self._write_probs(probs.cpu())

    def _background(self, rows: int) -> torch.Tensor:
        chunk = torch.zeros((self.num_outputs, rows, *self._prob_plane), dtype=torch.float32)
        if not self.spec.has_regions:
            chunk[0] = 1
        return chunk

    def _write_probs(self, probs: torch.Tensor) -> None:
        chunk = self._background(probs.shape[1])
        chunk[:, :, self._prob_bbox[0], self._prob_bbox[1]] = probs.transpose(2, 3) if self._swap else probs
        del probs
        self._emit(chunk)

    def _emit(self, chunk: torch.Tensor) -> None:
        if self.probs is not None:
            self.probs.write(chunk.permute(1, 2, 3, 0).contiguous().numpy())
        self._prob_rows += chunk.shape[1]

    def _background_rows_until(self, row: int, step: int = 8) -> None:
        while self._prob_rows < row:
            self._emit(self._background(min(step, row - self._prob_rows)))

    def result(self) -> np.ndarray:
        """The label map in the input file's axis order (finishes the probability rows after the bbox)."""
        if self.probs is not None:
            self._background_rows_until(self.full[0])
        return np.ascontiguousarray(self.seg.permute(*self.tb).numpy())


class SlabExporter:
    """Network-resolution rows in, ``slab_rows`` output rows at a time out to ``sink`` (see the module docstring)."""

    def __init__(self, resampler: SlabResampler, sink: Callable[[int, torch.Tensor], None], *, slab_rows: int,
                 on_slab: Callable[[int], None] | None = None) -> None:
        if slab_rows < 1:
            raise ValueError(f"slab_rows must be >= 1, got {slab_rows}")
        self.resampler, self.sink, self.slab_rows, self.on_slab = resampler, sink, int(slab_rows), on_slab
        self.pieces: list[tuple[int, torch.Tensor]] = []  # (first input row, rows)
        self.planed: dict[int, torch.Tensor] = {}  # input rows already resampled in-plane (the halo of the last slab)
        self.held_until = 0
        self.next_out = 0

    def feed(self, first_row: int, rows: torch.Tensor) -> None:
        if first_row != self.held_until:
            raise ValueError(f"slabs must arrive in order: expected row {self.held_until}, got {first_row}")
        self.pieces.append((first_row, rows))
        self.held_until += rows.shape[1]
        self._drain()

    def close(self) -> None:
        self._drain()
        if self.next_out != self.resampler.out_rows:
            raise RuntimeError(f"export stopped at output row {self.next_out} of {self.resampler.out_rows}: "
                               f"the network rows ended at {self.held_until}")

    def _gather(self, lo: int, hi: int) -> torch.Tensor:
        parts = [rows[:, max(lo - s, 0):hi - s] for s, rows in self.pieces if s < hi and s + rows.shape[1] > lo]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _drop_before(self, row: int) -> None:
        kept = []
        for s, rows in self.pieces:
            if s + rows.shape[1] <= row:
                continue
            kept.append((row, rows[:, row - s:].clone()) if s < row else (s, rows))
        self.pieces = kept

    def _drain(self) -> None:
        total = self.resampler.out_rows
        while self.next_out < total:
            stop = min(self.next_out + self.slab_rows, total)
            lo, hi = self.resampler.source_rows(self.next_out, stop)
            if hi > self.held_until:
                return
            with torch.no_grad():
                missing = [r for r in range(lo, hi) if r not in self.planed]
                if missing:
                    planed = self.resampler.plane(self._gather(missing[0], missing[-1] + 1))
                    self.planed.update({r: planed[:, r - missing[0]] for r in missing})
                    del planed
                out = combine_rows(self.resampler.rules[0], self.planed.__getitem__, self.next_out, stop)
                self.sink(self.next_out, out)
            del out
            if self.on_slab is not None:
                self.on_slab(stop - self.next_out)
            self.next_out = stop
            keep = self.resampler.source_rows(stop, stop + 1)[0] if stop < total else self.held_until
            self._drop_before(keep)
            self.planed = {r: t for r, t in self.planed.items() if r >= keep}
