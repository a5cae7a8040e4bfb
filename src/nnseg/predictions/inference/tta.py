"""Mirroring test-time augmentation as a predictor wrapper (nnU-Net's ``_internal_maybe_mirror_and_predict``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

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


def mirror_tta(predictor: Predictor, axes: Sequence[int] | None, *, batched: bool = True) -> Predictor:
    """Wrap ``predictor`` so that it averages over the input mirrored along every subset of ``axes``.

    The result is ``(p(x) + sum_S flip_S(p(flip_S(x)))) / (1 + #S)`` over all non-empty subsets ``S`` of ``axes``
    (8 passes for 3 axes, 4 for 2), summed in nnU-Net's order.

    Args:
        predictor: maps ``(B, C, *spatial)`` to ``(B, K, *spatial)``.
        axes: spatial axes to mirror, 0-based (0 = first spatial axis, i.e. tensor dim 2), as nnU-Net's
            ``inference_allowed_mirroring_axes``; None or empty returns ``predictor`` unchanged.
        batched: run all mirrored copies in one predictor call (batch ``B * passes``); equal to the unbatched result
            up to float rounding, faster, and ``passes`` times the activation memory.

    Returns:
        A predictor with the same signature.

    Raises:
        ValueError: (when called) an axis does not exist in the input; (now) duplicated or negative axes.
    """
    if not axes:
        return predictor
    axes = tuple(int(a) for a in axes)
    if len(set(axes)) != len(axes) or min(axes) < 0:
        raise ValueError(f"mirror axes must be distinct spatial axes >= 0, got {axes}")
    combos = mirror_combinations(axes)

    def predict(x: torch.Tensor) -> torch.Tensor:
        if max(axes) > x.ndim - 3:
            raise ValueError(f"mirror axes {axes} do not exist in an input of shape {tuple(x.shape)} "
                             f"(spatial axes 0..{x.ndim - 3}); check inference_allowed_mirroring_axes")
        dims = [tuple(a + 2 for a in c) for c in combos]
        if batched:
            inputs = torch.cat([x, *[torch.flip(x, d) for d in dims]], dim=0)
            outputs = _first(predictor(inputs)).split(x.shape[0], dim=0)
            prediction = outputs[0].clone()
            for out, d in zip(outputs[1:], dims):
                prediction += torch.flip(out, d)
        else:
            prediction = _first(predictor(x)).clone()
            for d in dims:
                prediction += torch.flip(_first(predictor(torch.flip(x, d))), d)
        prediction /= len(combos) + 1
        return prediction

    return predict
