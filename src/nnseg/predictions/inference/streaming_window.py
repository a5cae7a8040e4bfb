"""Sliding window that hands finished slabs of logits downstream instead of holding the whole ``(K, grid)`` array.

Why: a 118-class model on a 273x273x267 network grid needs 118 x 19.9 M x 4 B = 9.4 GB for the fp32 accumulator
alone (nnU-Net halves it with an fp16 accumulator, which puts logits up to 0.5 off at the borders of anisotropic
models, where the Gaussian weights are ~1e-3 and the sums lose their low bits). Here the accumulator stays fp32 but
only covers the rows of the streaming axis that tiles still touch: tiles run in nnU-Net's order (streaming axis
outermost), and after every network call the rows no later tile can reach are divided by their Gaussian weight sum and
yielded. The window is a ring buffer of ``patch + (largest start spread within one call)`` rows, so memory is
``K x window x rest`` (1.1 GB for the case above with a 32-row patch) instead of ``K x grid``.

Accuracy: with the streaming axis 0 every voxel sums the same tiles in the same order with the same batches as
:func:`nnseg.predictions.inference.sliding_window.sliding_window_predict`, so the logits are bitwise equal. Another streaming
axis (used to write probabilities in file order) only changes the order of the <= 8 fp32 terms of each sum (~1e-7).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from nnseg.predictions.inference.sliding_window import (
    _batches,
    _check_inputs,
    gaussian_importance,
    pad_to_patch,
    tile_slicers,
)

Predictor = Callable[[torch.Tensor], torch.Tensor]


def window_rows(starts: Sequence[int], patch_rows: int, batch_size: int) -> int:
    """Rows the ring accumulator needs: the patch plus the largest spread of first-axis starts within one call."""
    spread = max((max(b) - min(b) for b in _batches(list(starts), batch_size)), default=0)
    return int(patch_rows) + int(spread)


def _ring(start: int, stop: int, size: int) -> list[tuple[slice, slice]]:
    """Global rows ``[start, stop)`` as (ring slice, slice into the ``stop - start`` rows) pairs (<= 2)."""
    out, pos = [], start
    while pos < stop:
        r = pos % size
        n = min(stop - pos, size - r)
        out.append((slice(r, r + n), slice(pos - start, pos - start + n)))
        pos += n
    return out


class _RingAccumulator:
    """fp32 sums and weights for a window of rows of the (padded) grid, addressed by global row."""

    def __init__(self, num_outputs: int, rows: int, rest: Sequence[int], device: torch.device) -> None:
        self.rows = rows
        self.logits = torch.zeros((num_outputs, rows, *rest), dtype=torch.float32, device=device)
        self.counts = torch.zeros((rows, *rest), dtype=torch.float32, device=device)

    def add(self, pred: torch.Tensor, weight: torch.Tensor, sl: tuple[slice, ...]) -> None:
        for ring, part in _ring(sl[0].start, sl[0].stop, self.rows):
            self.logits[(slice(None), ring, *sl[1:])].addcmul_(pred[:, part], weight[part])
            self.counts[(ring, *sl[1:])] += weight[part]

    def pop(self, start: int, stop: int) -> torch.Tensor:
        """Mean logits of global rows ``[start, stop)``; the rows are zeroed for reuse."""
        out = torch.empty((self.logits.shape[0], stop - start, *self.logits.shape[2:]), dtype=torch.float32,
                          device=self.logits.device)
        for ring, part in _ring(start, stop, self.rows):  # divided straight into the result: no concatenated copy
            torch.div(self.logits[:, ring], self.counts[ring], out=out[:, part])
            self.logits[:, ring] = 0
            self.counts[ring] = 0
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("non-finite values in the predicted logits (a network that produced inf/NaN)")
        return out


def _tile_predictor(predictor: Predictor, inverse: tuple[int, ...], perm: tuple[int, ...], slicewise: bool) -> Predictor:
    """Tiles with permuted spatial axes (and a length-1 slice axis for 2D) in, network in its own layout."""
    def call(tiles: torch.Tensor) -> torch.Tensor:
        tiles = tiles.permute(0, 1, *[a + 2 for a in inverse])
        out = predictor(tiles[:, :, 0] if slicewise else tiles)
        out = out[0] if isinstance(out, (list, tuple)) else out
        out = out[:, :, None] if slicewise else out
        return out.permute(0, 1, *[a + 2 for a in perm])
    return call


def sliding_window_slabs(predictor: Predictor, image: torch.Tensor, patch_size: Sequence[int], *, num_outputs: int,
                         step_size: float = 0.5, batch_size: int = 1, device: torch.device | str | None = None,
                         accumulate_device: torch.device | str | None = None,
                         axis: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Sliding-window logits of ``image``, yielded as finished slabs along spatial ``axis``, in order.

    Args:
        predictor, image, patch_size, num_outputs, step_size, batch_size, device, accumulate_device: as
            :func:`nnseg.predictions.inference.sliding_window.sliding_window_predict` (Gaussian weighting, fp32 sums).
        axis: the spatial axis to stream along (0 keeps nnU-Net's tile order and gives bitwise-equal logits).

    Yields:
        ``(first_row, logits)`` with logits ``(K, rows, *other axes)`` float32: the streaming axis moved first, the
        other spatial axes in their order, padding removed; the rows of all slabs cover the image exactly once.
    """
    slicewise = _check_inputs(image, patch_size, num_outputs, batch_size)
    device = torch.device(device) if device is not None else image.device
    acc = torch.device(accumulate_device) if accumulate_device is not None else device
    padded, revert = pad_to_patch(image, patch_size)
    nsp = padded.ndim - 1
    if not 0 <= axis < nsp:
        raise ValueError(f"axis {axis} is not a spatial axis of an image of shape {tuple(image.shape)}")
    slicers = tile_slicers(tuple(padded.shape[1:]), patch_size, step_size)
    weight = gaussian_importance(patch_size, device=acc, dtype=torch.float32)
    weight = weight[None] if slicewise else weight
    perm = (axis, *[a for a in range(nsp) if a != axis])
    inverse = tuple(perm.index(a) for a in range(nsp))
    slicers = sorted((tuple(sl[a] for a in perm) for sl in slicers), key=lambda sl: tuple(s.start for s in sl))
    padded, weight = padded.permute(0, *[a + 1 for a in perm]), weight.permute(*perm)
    revert = (revert[0], *[revert[a + 1] for a in perm])
    with torch.no_grad():
        yield from _stream(_tile_predictor(predictor, inverse, perm, slicewise), padded, slicers, weight, revert,
                           num_outputs=num_outputs, batch_size=batch_size, device=device, acc=acc)


def _stream(predictor: Predictor, padded: torch.Tensor, slicers: list[tuple[slice, ...]], weight: torch.Tensor,
            revert: tuple[slice, ...], *, num_outputs: int, batch_size: int, device: torch.device,
            acc: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    spatial = tuple(padded.shape[1:])
    starts = [sl[0].start for sl in slicers]
    ring = _RingAccumulator(num_outputs, window_rows(starts, weight.shape[0], batch_size), spatial[1:], acc)
    keep = slice(revert[1].start or 0, spatial[0] if revert[1].stop is None else revert[1].stop)
    rest = (slice(None), slice(None), *revert[2:])
    done, position = 0, 0
    rows = sorted(set(starts))
    chunk = max([b - a for a, b in zip(rows, rows[1:])] or [weight.shape[0]])
    for group in _batches(slicers, batch_size):
        tiles = torch.stack([padded[(slice(None), *sl)] for sl in group]).to(device)
        pred = predictor(tiles).to(acc)
        for p, sl in zip(pred.float(), group):
            ring.add(p, weight, sl)
        del tiles, pred, p  # the tile outputs must not stay alive while the consumer exports
        position += len(group)
        ready = starts[position] if position < len(starts) else spatial[0]
        while ready > done:  # the last call frees a whole window: hand it on in step-sized slabs
            stop = min(ready, done + chunk)
            slab = ring.pop(done, stop)
            lo, hi = max(done, keep.start), min(stop, keep.stop)
            if hi > lo:
                yield lo - keep.start, slab[:, lo - done:hi - done][rest]
            del slab
            done = stop
