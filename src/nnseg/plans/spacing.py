"""Target spacing, axis transposition, resampled shapes and the normalisation choice (nnU-Net's planner rules)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "ANISO_THRESHOLD",
    "compute_new_shape",
    "fullres_target_spacing",
    "normalization_schemes",
    "transpose_axes",
]

ANISO_THRESHOLD = 3.0
"""Spacing ratio above which an axis counts as low-resolution (nnU-Net's ``ANISO_THRESHOLD``)."""

# channel name (casefolded) -> normalisation scheme; anything else is Z-score.
_CHANNEL_NAME_TO_SCHEME = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}
# Only Z-score leaves voxels outside the non-zero mask at 0 when the mask is used.
_MASKABLE_SCHEMES = {"ZScoreNormalization"}


def fullres_target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]], *,
                           overwrite: Sequence[float] | None = None) -> np.ndarray:
    """The 3d_fullres target spacing (untransposed): the median spacing, with nnU-Net's anisotropy rule.

    If the coarsest axis' median spacing is more than 3x the coarsest other axis' *and* it has fewer than a third of
    the voxels of the smallest other axis, its target becomes the 10th percentile of that axis' spacings (but more
    than the other axes' spacing).

    Args:
        spacings: per case, spacing per axis (fingerprint ``spacings``).
        shapes: per case, shape after cropping (fingerprint ``shapes_after_crop``).
        overwrite: a user-given target spacing that replaces the rule.

    Returns:
        float64 array, one spacing per axis.
    """
    if overwrite is not None:
        return np.array(overwrite, dtype=np.float64)
    sp = np.vstack([np.asarray(s, dtype=np.float64) for s in spacings])
    target = np.percentile(sp, 50, axis=0)
    target_size = np.percentile(np.vstack([np.asarray(s, dtype=np.float64) for s in shapes]), 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacing = max(target[i] for i in others)
    other_size = min(target_size[i] for i in others)
    if target[worst] > ANISO_THRESHOLD * other_spacing and target_size[worst] * ANISO_THRESHOLD < other_size:
        value = float(np.percentile(sp[:, worst], 10))
        if value < other_spacing:
            value = max(other_spacing, value) + 1e-5
        target[worst] = value
    return target


def transpose_axes(target_spacing: Sequence[float], *, suppress: bool = False) -> tuple[list[int], list[int]]:
    """``(transpose_forward, transpose_backward)``: the coarsest axis first, the others in order.

    Args:
        target_spacing: fullres target spacing (untransposed), 3 values.
        suppress: keep the identity (nnU-Net's ``suppress_transpose``).
    """
    n = len(target_spacing)
    if suppress:
        return list(range(n)), list(range(n))
    first = int(np.argmax(target_spacing))
    forward = [first] + [i for i in range(n) if i != first]
    backward = [forward.index(i) for i in range(n)]
    return forward, backward


def compute_new_shape(old_shape: Sequence[int], old_spacing: Sequence[float],
                      new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape after resampling from ``old_spacing`` to ``new_spacing``: ``round(old_spacing / new_spacing * shape)``.

    Rounding is Python's (half to even), as in nnU-Net.
    """
    if not len(old_shape) == len(old_spacing) == len(new_spacing):
        raise ValueError(f"shape {tuple(old_shape)}, spacing {tuple(old_spacing)} and new spacing "
                         f"{tuple(new_spacing)} must have the same length")
    return tuple(int(round(float(o) / float(n) * float(s))) for o, n, s in zip(old_spacing, new_spacing, old_shape))


def normalization_schemes(channel_names: Mapping[str, str], median_relative_size_after_cropping: float
                          ) -> tuple[list[str], list[bool]]:
    """Per channel: the normalisation scheme chosen from its name, and whether it uses the non-zero mask.

    ``CT`` -> ``CTNormalization``, ``noNorm`` -> ``NoNormalization``, ``zscore``, ``rescale_to_0_1``,
    ``rgb_to_0_1``; any other name -> ``ZScoreNormalization`` (channels in ``dataset.json`` order). The mask is
    used only for Z-score channels, and only when cropping to the non-zero region removed more than a quarter of
    the image (median relative size < 0.75).
    """
    schemes = [_CHANNEL_NAME_TO_SCHEME.get(str(name).casefold(), "ZScoreNormalization")
               for name in channel_names.values()]
    use_mask = [s in _MASKABLE_SCHEMES and median_relative_size_after_cropping < 0.75 for s in schemes]
    return schemes, use_mask
