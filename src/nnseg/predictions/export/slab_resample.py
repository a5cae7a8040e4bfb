"""The plans' probability resampling, applied to a few output rows at a time (the halo read from the needed input rows).

:func:`nnseg.predictions.export.from_logits.resample_probabilities` resizes the whole ``(K, X, Y, Z)`` logits at once; for a
118-class CT that is 118 x 105 M x 4 B = 50 GB. Linear and nearest interpolation are separable: every output row
along the streaming axis (axis 0 here) reads at most two input rows, so the rows ``[a, b)`` of the result are
computed from input rows ``[lo, hi]`` only. The index and weight rules are those of the one-shot path, per axis:

* ``linear`` / ``nearest_exact``: ``torch.nn.functional.interpolate`` (align_corners=False; source index
  ``max(scale * (i + 0.5) - 0.5, 0)`` in float32, ``scale = n_in / n_out``), used by both plans functions;
* ``mapc_nearest`` / ``mapc_linear``: the separate-z rule along the low-resolution axis (``map_coordinates`` grid
  ``(i + 0.5) * n_in / n_out - 0.5``, clamped), as :func:`nnseg.predictions.export.from_logits._resample_axis0`.

The two non-streaming axes go through the same ``F.interpolate`` call as the one-shot path where that path uses one
(bilinear in-plane), then the streaming axis is combined last, as the trilinear kernel combines its outermost axis,
so the result equals the one-shot path to float rounding (<= 1e-6 on probabilities; labels equal except exact ties).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nnseg.preprocessed.resample_rules import ANISO_THRESHOLD, determine_do_sep_z_and_axis, z_coordinates, z_nearest

LINEAR, NEAREST, MAPC_LINEAR, MAPC_NEAREST, SAME = "linear", "nearest_exact", "mapc_linear", "mapc_nearest", "same"


@dataclass(frozen=True)
class AxisRule:
    """How one axis goes from ``n_in`` to ``n_out`` samples: source rows and the weight of the second one."""

    kind: str
    n_in: int
    n_out: int

    def indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(first, second, weight_of_second)`` per output index (weight None: take ``first``)."""
        out = np.arange(self.n_out)
        if self.kind == SAME or self.n_in == self.n_out:
            return out, out, None
        if self.kind in (LINEAR, NEAREST):
            scale = np.float32(self.n_in) / np.float32(self.n_out)
            if self.kind == NEAREST:
                idx = np.minimum(np.floor((out + 0.5) * np.float64(scale)).astype(np.int64), self.n_in - 1)
                return idx, idx, None
            src = np.maximum(scale * (out.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
            lo = src.astype(np.int64)
            lam = np.clip(src - lo.astype(np.float32), 0, 1).astype(np.float32)
            return lo, np.where(lo < self.n_in - 1, lo + 1, lo), lam
        coords = z_coordinates(self.n_in, self.n_out)
        if self.kind == MAPC_NEAREST:
            idx = z_nearest(coords, self.n_in).astype(np.int64)
            return idx, idx, None
        coords = np.clip(coords, 0, self.n_in - 1)
        lo = np.floor(coords).astype(np.int64)
        return lo, np.minimum(lo + 1, self.n_in - 1), (coords - lo).astype(np.float32)


def _apply(x: torch.Tensor, dim: int, rule: AxisRule) -> torch.Tensor:
    """Resample ``x`` along ``dim`` by ``rule`` (two temporaries of the result's size)."""
    first, second, weight = rule.indices()
    a = x.index_select(dim, torch.from_numpy(first).to(x.device))
    if weight is None:
        return a
    shape = [1] * x.ndim
    shape[dim] = -1
    w = torch.from_numpy(weight).to(device=x.device, dtype=x.dtype).view(shape)
    a.mul_(1 - w)  # a * (1 - w) + b * w: the order of export._resample_axis0 and of torch's linear kernels
    return a.add_(x.index_select(dim, torch.from_numpy(second).to(x.device)).mul_(w))


def combine_rows(rule: AxisRule, row: Callable[[int], torch.Tensor], start: int, stop: int) -> torch.Tensor:
    """Output rows ``[start, stop)`` along the streaming axis; ``row(i)`` gives input row ``i`` ``(K, n1, n2)``."""
    first, second, weight = rule.indices()
    sample = row(int(first[start]))
    out = torch.empty((sample.shape[0], stop - start, *sample.shape[1:]), dtype=sample.dtype, device=sample.device)
    for i, r in enumerate(range(start, stop)):
        if weight is None:
            out[:, i] = row(int(first[r]))
            continue
        w = torch.tensor(float(weight[r]), dtype=sample.dtype)
        torch.mul(row(int(first[r])), 1 - w, out=out[:, i])
        out[:, i].add_(row(int(second[r])) * w)
    return out


@dataclass(frozen=True)
class SlabResampler:
    """Resampling of ``(K, rows, n1, n2)`` slabs: ``rules[0]`` along the rows, ``rules[1:]`` in-plane, ``z`` last."""

    rules: tuple[AxisRule, AxisRule, AxisRule]
    z_axis: int | None  # index into rules of the separate-z axis (applied after the in-plane axes), if any

    @property
    def out_rows(self) -> int:
        return self.rules[0].n_out

    def source_rows(self, start: int, stop: int) -> tuple[int, int]:
        """Input rows ``[lo, hi)`` that output rows ``[start, stop)`` read."""
        first, second, _ = self.rules[0].indices()
        return int(first[start:stop].min()), int(second[start:stop].max()) + 1

    def plane(self, x: torch.Tensor) -> torch.Tensor:
        """Resample the two in-plane axes of ``x (K, rows, n1, n2)``."""
        r1, r2 = self.rules[1], self.rules[2]
        size = (r1.n_out, r2.n_out)
        if tuple(x.shape[2:]) == size:
            return x
        kinds = {r.kind for r in (r1, r2) if r.n_in != r.n_out}
        if kinds <= {LINEAR}:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if kinds <= {NEAREST}:
            return F.interpolate(x, size=size, mode="nearest-exact")
        order = [2, 1] if self.z_axis == 1 else [1, 2]
        for i in order:
            x = _apply(x, i + 1, self.rules[i])
        return x

    def rows(self, source: torch.Tensor, offset: int, start: int, stop: int) -> torch.Tensor:
        """Output rows ``[start, stop)`` from input rows ``source`` (``(K, n, n1, n2)`` starting at row ``offset``)."""
        planed = self.plane(source)
        return combine_rows(self.rules[0], lambda i: planed[:, i - offset], start, stop)


def _kinds(name: str, kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """(in-plane kind, low-res axis kind) of the plans function, or a clear error for unsupported settings."""
    if name == "resample_data_or_seg_to_shape":
        order, order_z = int(kwargs.get("order", 1)), int(kwargs.get("order_z", 0))
        if order <= 1 and order_z <= 1:
            return (LINEAR if order == 1 else NEAREST), (MAPC_LINEAR if order_z == 1 else MAPC_NEAREST)
    elif name == "resample_torch_fornnunet":
        mode, z_mode = kwargs.get("mode", "linear"), kwargs.get("aniso_axis_mode", "nearest-exact")
        known = {"linear": LINEAR, "nearest-exact": NEAREST}
        if mode in known and z_mode in known:
            return known[mode], known[z_mode]
    raise ValueError(f"resampling_fn_probabilities {name} with kwargs {dict(kwargs)} cannot be applied slab by slab "
                     "(only orders 0/1 of resample_data_or_seg_to_shape and linear/nearest-exact of "
                     "resample_torch_fornnunet); give the case more memory (--max-memory) so it is exported in one go, "
                     "or set order 1 in the plans' resampling_fn_probabilities_kwargs")


def slab_resampler(name: str, kwargs: Mapping[str, Any], in_shape: Sequence[int], out_shape: Sequence[int],
                   current_spacing: Sequence[float], target_spacing: Sequence[float], *, axis: int = 0) -> SlabResampler:
    """The :class:`SlabResampler` equal to the plans' function on this case, streaming along ``axis``.

    Raises:
        ValueError: a function or order that is not separable (spline orders > 1, unknown functions).
    """
    plane_kind, z_kind = _kinds(name, kwargs)
    z = None
    if tuple(in_shape) != tuple(out_shape):
        threshold = float(kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD))
        do_sep, z = determine_do_sep_z_and_axis(kwargs.get("force_separate_z"), current_spacing, target_spacing, threshold)
        z = z if do_sep else None
    order = (axis, *[a for a in range(3) if a != axis])
    rules = tuple(AxisRule(z_kind if a == z else plane_kind, int(in_shape[a]), int(out_shape[a])) for a in order)
    moved_z = order.index(z) if z is not None else None
    return SlabResampler(rules=rules, z_axis=moved_z)  # type: ignore[arg-type]
