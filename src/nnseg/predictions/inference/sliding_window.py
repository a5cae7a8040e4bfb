"""Sliding-window inference: a pure function of a ``predictor`` callable (nnU-Net's tiling and Gaussian weighting).

A *predictor* maps a batch of tiles ``(B, C, *patch_size)`` to logits ``(B, K, *patch_size)`` (a network, possibly
wrapped by :func:`nnseg.predictions.inference.tta.mirror_tta` or an autocast context). Choosing the autocast precision is the
caller's job; :func:`autocast_context` and :func:`default_precision` help with it.

Conventions (as nnU-Net ``nnUNetPredictor.predict_sliding_window_return_logits``):

* the image is padded with constant 0 (centred: ``diff // 2`` below, the rest above) to at least the patch size, and the
  returned logits are cropped back to the unpadded shape;
* per axis ``n = ceil((size - patch) / (patch * step_size)) + 1`` tiles, starts evenly spaced and rounded
  (:func:`compute_steps`), so the first tile starts at 0 and the last ends at the (padded) image border;
* each tile's logits are multiplied by a Gaussian importance map (sigma = patch / 8, peak 10) and summed, then divided by
  the summed weights;
* a 2D patch on a 3D image ``(C, Z, X, Y)`` is the 2D configuration on a volume: every slice ``z`` is tiled separately.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from nnseg.devices import PRECISIONS, autocast_context, cpu_has_native_bf16, default_precision  # noqa: F401 (re-exported)

Predictor = Callable[[torch.Tensor], torch.Tensor]
GAUSSIAN_SIGMA_SCALE = 1.0 / 8
GAUSSIAN_PEAK = 10.0

log = logging.getLogger(__name__)


def compute_steps(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[list[int]]:
    """Start positions of the tiles along each axis (nnU-Net's ``compute_steps_for_sliding_window``).

    Args:
        image_size: spatial shape, one entry per patch axis; every entry must be ``>= patch_size`` (pad first).
        patch_size: tile shape.
        step_size: tile step as a fraction of the patch, ``0 < step_size <= 1`` (nnU-Net default 0.5).

    Returns:
        One sorted list of start indices per axis; the first is 0 and the last is ``image_size - patch_size``.

    Raises:
        ValueError: lengths differ, the image is smaller than the patch on some axis, or step_size is out of range.

    Example:
        >>> compute_steps((10, 4), (4, 4), 0.5)
        [[0, 2, 4, 6], [0]]
    """
    if len(image_size) != len(patch_size):
        raise ValueError(f"image_size {tuple(image_size)} and patch_size {tuple(patch_size)} have different lengths")
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if any(i < p for i, p in zip(image_size, patch_size)):
        raise ValueError(f"image size {tuple(image_size)} is smaller than the patch size {tuple(patch_size)} on some axis; "
                         "pad the image to at least the patch size first (sliding_window_predict does this)")
    steps = []
    for size, patch in zip(image_size, patch_size):
        n = int(math.ceil((size - patch) / (patch * step_size))) + 1
        if n == 1:
            steps.append([0])
            continue
        actual = (size - patch) / (n - 1)
        steps.append([int(np.round(actual * i)) for i in range(n)])
    return steps


def gaussian_importance(patch_size: Sequence[int], *, sigma_scale: float = GAUSSIAN_SIGMA_SCALE,
                        value_scaling_factor: float = GAUSSIAN_PEAK, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian importance map of one tile (nnU-Net's ``compute_gaussian``).

    A unit impulse at ``patch // 2`` is blurred with sigma ``patch * sigma_scale`` (constant-0 border), scaled so that
    its peak equals ``value_scaling_factor``, cast to ``dtype``, and zeros are replaced by the smallest nonzero value.

    Returns:
        ``dtype`` tensor of shape ``patch_size`` on ``device``.
    """
    impulse = np.zeros(tuple(int(p) for p in patch_size))
    impulse[tuple(int(p) // 2 for p in patch_size)] = 1
    blurred = gaussian_filter(impulse, [p * sigma_scale for p in patch_size], order=0, mode="constant", cval=0)
    weights = torch.from_numpy(blurred)
    weights = weights / (torch.max(weights) / value_scaling_factor)
    weights = weights.to(device=device, dtype=dtype)
    zero = weights == 0
    if bool(zero.any()):
        weights[zero] = torch.min(weights[~zero])
    return weights


def pad_to_patch(image: torch.Tensor, patch_size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the last ``len(patch_size)`` axes with constant 0 to at least ``patch_size`` (centred, as nnU-Net).

    Returns:
        ``(padded, revert)`` where ``padded[revert]`` is the original image (``revert`` covers every axis).
    """
    n = len(patch_size)
    spatial = image.shape[-n:]
    diff = [max(0, int(p) - s) for s, p in zip(spatial, patch_size)]
    if not any(diff):
        return image, tuple(slice(None) for _ in image.shape)
    pad: list[int] = []
    for d in reversed(diff):  # F.pad lists the last axis first
        pad += [d // 2, d - d // 2]
    padded = torch.nn.functional.pad(image, pad, mode="constant", value=0)
    lead = tuple(slice(None) for _ in image.shape[:-n])
    revert = lead + tuple(slice(d // 2, d // 2 + s) for d, s in zip(diff, spatial))
    return padded, revert


def tile_slicers(spatial_shape: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[tuple[slice, ...]]:
    """Spatial slices of every tile, in nnU-Net's order (first axis outermost).

    ``spatial_shape`` may have one more axis than ``patch_size`` (2D patch on a 3D volume): the first axis is then
    walked one slice at a time, giving slices of length 1 there.
    """
    slicewise = len(spatial_shape) == len(patch_size) + 1
    inner_shape = spatial_shape[1:] if slicewise else spatial_shape
    steps = compute_steps(inner_shape, patch_size, step_size)
    if slicewise:
        steps = [list(range(spatial_shape[0])), *steps]
        patch_size = (1, *patch_size)
    grids = np.meshgrid(*[np.asarray(s) for s in steps], indexing="ij")
    starts = np.stack([g.ravel() for g in grids], axis=1)
    return [tuple(slice(int(s), int(s) + int(p)) for s, p in zip(row, patch_size)) for row in starts]


def _batches(items: Sequence[tuple[slice, ...]], size: int) -> Iterator[Sequence[tuple[slice, ...]]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _check_inputs(image: torch.Tensor, patch_size: Sequence[int], num_outputs: int, batch_size: int) -> bool:
    """Validate shapes; return True for the slice-wise (2D patch on a 3D volume) case."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (C, X, Y[, Z]), got {type(image).__name__}; use torch.from_numpy")
    spatial = image.ndim - 1
    if len(patch_size) not in (2, 3) or spatial not in (len(patch_size), len(patch_size) + 1) or spatial > 3:
        raise ValueError(f"image of shape {tuple(image.shape)} (C + spatial axes) does not fit patch_size {tuple(patch_size)}: "
                         "expected (C, X, Y, Z) with a 3D patch, (C, X, Y) or (C, Z, X, Y) with a 2D patch")
    if num_outputs < 1 or batch_size < 1:
        raise ValueError(f"num_outputs ({num_outputs}) and batch_size ({batch_size}) must be >= 1")
    return spatial == len(patch_size) + 1


def _accumulate(predictor: Predictor, image: torch.Tensor, patch_size: Sequence[int], *, num_outputs: int,
                step_size: float, use_gaussian: bool, batch_size: int, device: torch.device,
                acc_device: torch.device, dtype: torch.dtype, slicewise: bool) -> torch.Tensor:
    """Run all tiles and return the weighted mean logits ``(K, *padded_spatial)``."""
    spatial = tuple(image.shape[1:])
    logits = torch.zeros((num_outputs, *spatial), dtype=dtype, device=acc_device)
    counts = torch.zeros(spatial, dtype=dtype, device=acc_device)
    if use_gaussian:
        weight = gaussian_importance(patch_size, device=acc_device, dtype=dtype)
    else:
        weight = torch.ones(tuple(patch_size), device=acc_device, dtype=dtype)
    if slicewise:
        weight = weight[None]
    for group in _batches(tile_slicers(spatial, patch_size, step_size), batch_size):
        tiles = torch.stack([image[(slice(None), *sl)] for sl in group]).to(device)
        if slicewise:
            tiles = tiles[:, :, 0]
        with torch.inference_mode():
            pred = predictor(tiles)
        if isinstance(pred, (list, tuple)):  # deep-supervision outputs: full resolution first
            pred = pred[0]
        pred = pred.to(acc_device)
        if slicewise:
            pred = pred[:, :, None]
        for p, sl in zip(pred, group):
            logits[(slice(None), *sl)].addcmul_(p, weight)  # fused: no temporary for p * weight
            counts[sl] += weight
    logits /= counts
    if not bool(torch.isfinite(logits).all()):
        raise RuntimeError("non-finite values in the predicted logits (fp16 accumulation overflow or a network that "
                           "produced inf/NaN); accumulate in fp32 (dtype=torch.float32)")
    return logits


def sliding_window_predict(predictor: Predictor, image: torch.Tensor, patch_size: Sequence[int], *, num_outputs: int,
                           step_size: float = 0.5, use_gaussian: bool = True, batch_size: int = 1,
                           device: torch.device | str | None = None, accumulate_device: torch.device | str | None = None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Predict a whole image tile by tile and blend the tiles (nnU-Net's sliding window).

    Args:
        predictor: maps ``(B, C, *patch_size)`` to ``(B, num_outputs, *patch_size)`` (a list/tuple output uses item 0).
        image: ``(C, X, Y, Z)`` with a 3D patch, ``(C, X, Y)`` with a 2D patch, or ``(C, Z, X, Y)`` with a 2D patch
            (2D configuration on a volume: each slice ``z`` is tiled on its own). Any float dtype, any device.
        patch_size: tile shape (2 or 3 entries). Images smaller than the patch are zero-padded and cropped back.
        num_outputs: number of output channels ``K`` of the predictor.
        step_size: tile step as a fraction of the patch (0.5 = 50% overlap).
        use_gaussian: weight tiles with :func:`gaussian_importance` (else uniformly).
        batch_size: tiles per predictor call (results equal those of ``batch_size=1`` up to the predictor's own batching).
        device: where tiles are sent (the predictor's device); default ``image.device``.
        accumulate_device: where logits are summed; default ``device``. If it is a CUDA device and runs out of memory,
            the prediction is redone with CPU accumulation (only on ``torch.cuda.OutOfMemoryError``).
        dtype: accumulation dtype, ``torch.float32`` (default) or ``torch.float16`` (nnU-Net's choice).

    Returns:
        Logits ``(num_outputs, *image.shape[1:])`` in ``dtype`` on the accumulation device, a normal (not inference) tensor.
    """
    slicewise = _check_inputs(image, patch_size, num_outputs, batch_size)
    device = torch.device(device) if device is not None else image.device
    acc_device = torch.device(accumulate_device) if accumulate_device is not None else device
    padded, revert = pad_to_patch(image, patch_size)
    kwargs = dict(num_outputs=num_outputs, step_size=step_size, use_gaussian=use_gaussian, batch_size=batch_size,
                  device=device, dtype=dtype, slicewise=slicewise)
    with torch.no_grad():
        try:
            logits = _accumulate(predictor, padded, patch_size, acc_device=acc_device, **kwargs)  # type: ignore[arg-type]
        except torch.cuda.OutOfMemoryError:
            if acc_device.type != "cuda":
                raise
            log.warning("out of GPU memory while accumulating logits on %s; retrying with CPU accumulation", acc_device)
            torch.cuda.empty_cache()
            logits = _accumulate(predictor, padded, patch_size, acc_device=torch.device("cpu"), **kwargs)  # type: ignore[arg-type]
    return logits[(slice(None), *revert[1:])]


def sliding_window_predict_slicewise(predictor: Predictor, volume: torch.Tensor, patch_size: Sequence[int], *,
                                     num_outputs: int, **kwargs: object) -> torch.Tensor:
    """2D configuration on a 3D volume: tile every slice ``volume[:, z]`` with a 2D patch (nnU-Net's 2D inference).

    Args:
        predictor: a 2D predictor, ``(B, C, px, py) -> (B, K, px, py)``.
        volume: ``(C, Z, X, Y)``; 2D images are ``(C, 1, X, Y)``.
        patch_size: the 2D patch ``(px, py)``.
        **kwargs: the options of :func:`sliding_window_predict`.

    Returns:
        Logits ``(K, Z, X, Y)``.
    """
    if len(patch_size) != 2 or volume.ndim != 4:
        raise ValueError(f"slice-wise prediction needs a (C, Z, X, Y) volume and a 2D patch, got shape "
                         f"{tuple(volume.shape)} and patch {tuple(patch_size)}")
    return sliding_window_predict(predictor, volume, patch_size, num_outputs=num_outputs, **kwargs)  # type: ignore[arg-type]
