"""Mirroring test-time augmentation as a predictor wrapper (nnU-Net's ``_internal_maybe_mirror_and_predict``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import cast

import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All non-empty subsets of ``axes`` in nnU-Net's order (by size, then lexicographic).

    Example:
        >>> mirror_combinations((0, 1))
        [(0,), (1,), (0, 1)]
    """
    axes = tuple(int(a) for a in axes)
    return [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]


def _first(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def mirror_tta(predictor: Predictor, axes: Sequence[int] | None, *, batched: bool = True,
               per_call: int | None = None) -> Predictor:
    """Wrap ``predictor`` so that it averages over the input mirrored along every subset of ``axes``.

    The result is ``(p(x) + sum_S flip_S(p(flip_S(x)))) / (1 + #S)`` over all non-empty subsets ``S`` of ``axes``
    (8 passes for 3 axes, 4 for 2), summed in nnU-Net's order.

    Args:
        predictor: maps ``(B, C, *spatial)`` to ``(B, K, *spatial)``.
        axes: spatial axes to mirror, 0-based (0 = first spatial axis, i.e. tensor dim 2), as nnU-Net's
            ``inference_allowed_mirroring_axes``; None or empty returns ``predictor`` unchanged.
        batched: run all mirrored copies in one predictor call (batch ``B * passes``); equal to the unbatched result
            up to float rounding, faster, and ``passes`` times the activation memory.
        per_call: mirrored copies per predictor call (batch ``B * per_call``, the last call takes the rest), instead
            of ``batched``'s all (True) or one (False); the sum keeps nnU-Net's order.

    Returns:
        A predictor with the same signature.

    Raises:
        ValueError: (when called) an axis does not exist in the input; (now) duplicated or negative axes, or
        ``per_call`` < 1.
    """
    if not axes:
        return predictor
    axes = tuple(int(a) for a in axes)
    if len(set(axes)) != len(axes) or min(axes) < 0:
        raise ValueError(f"mirror axes must be distinct spatial axes >= 0, got {axes}")
    if per_call is not None and per_call < 1:
        raise ValueError(f"per_call must be >= 1 mirrored copies per call, got {per_call}")
    dims: list[tuple[int, ...]] = [(), *[tuple(a + 2 for a in c) for c in mirror_combinations(axes)]]
    group = len(dims) if per_call is None and batched else min(len(dims), per_call or 1)

    def flip(x: torch.Tensor, d: tuple[int, ...]) -> torch.Tensor:
        return torch.flip(x, d) if d else x

    def predict(x: torch.Tensor) -> torch.Tensor:
        if max(axes) > x.ndim - 3:
            raise ValueError(f"mirror axes {axes} do not exist in an input of shape {tuple(x.shape)} "
                             f"(spatial axes 0..{x.ndim - 3}); check inference_allowed_mirroring_axes")
        prediction: torch.Tensor | None = None
        for start in range(0, len(dims), group):
            part = dims[start:start + group]
            inputs = torch.cat([flip(x, d) for d in part], dim=0) if len(part) > 1 else flip(x, part[0])
            outputs = _first(predictor(inputs)).split(x.shape[0], dim=0)
            for out, d in zip(outputs, part):
                if prediction is None:
                    prediction = out.clone()
                else:
                    prediction += flip(out, d)
        result = cast(torch.Tensor, prediction)  # dims always holds the unmirrored pass
        result /= len(dims)
        return result

    return predict
