"""The worst-case pictures of :mod:`nnseg.metrics.report`: image + reference beside image + prediction."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from nnseg.metrics.overlay import overlay, select_slice

__all__ = ["overlay_pair_png"]


def _normalize(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((image.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _square_pixels(rgb: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray:
    """Stretch an RGB slice ``(H, W, 3)`` so that its pixels are square for voxel spacing ``(row, column)``."""
    from PIL import Image

    ratio = float(spacing[0]) / float(spacing[1]) if spacing is not None and float(spacing[1]) > 0 else 1.0
    if not math.isfinite(ratio) or ratio <= 0 or abs(ratio - 1.0) < 0.05:
        return rgb
    ratio = min(max(ratio, 0.1), 10.0)
    h, w = rgb.shape[:2]
    size = (w, round(h * ratio)) if ratio > 1 else (round(w / ratio), h)
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST))


def overlay_pair_png(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, *,
                     intensity: float = 0.5, min_size: int = 256, spacing: Sequence[float] | None = None) -> bytes:
    """Image + reference and image + prediction side by side, on the slice with most reference foreground.

    The slice is :func:`nnseg.metrics.overlay.select_slice` of the reference (every label weighted equally); the
    image is windowed to its 0.5-99.5 percentiles so that outliers do not wash it out.

    Args:
        image: one channel, ``(X, Y, Z)`` (slices are taken along the first axis) or ``(Y, Z)``.
        reference: label map, same shape as ``image``.
        prediction: label map, same shape as ``image``.
        intensity: label colour opacity, 0-1.
        min_size: small slices are enlarged (nearest neighbour, integer factor) to at least this many pixels high.
        spacing: voxel spacing per axis of ``image``; the slice is stretched to square pixels (None: as stored).

    Returns:
        PNG bytes of an RGB picture ``(H, 2 * W + gap)``.
    """
    if image.shape != reference.shape or image.shape != prediction.shape:
        raise ValueError(f"image {image.shape}, reference {reference.shape} and prediction {prediction.shape} differ in "
                         "shape; the prediction must be in the original image geometry")
    if image.ndim == 3:
        s = select_slice(reference.astype(np.int64))
        image, reference, prediction = image[s], reference[s], prediction[s]
        spacing = None if spacing is None else spacing[1:]
    gray = _normalize(image)
    left = _square_pixels(overlay(gray, reference.astype(np.int64), intensity=intensity), spacing)
    right = _square_pixels(overlay(gray, prediction.astype(np.int64), intensity=intensity), spacing)
    gap = np.full((left.shape[0], max(2, left.shape[1] // 40), 3), 255, dtype=np.uint8)
    pair = np.concatenate([left, gap, right], axis=1)
    factor = max(1, math.ceil(min_size / max(pair.shape[0], 1)))
    pair = pair.repeat(factor, axis=0).repeat(factor, axis=1)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pair).save(buffer, format="PNG")
    return buffer.getvalue()
