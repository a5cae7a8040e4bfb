"""Resampling of images and segmentations to a new shape (nnU-Net's ``default_resampling``, reference §1.8 step 6).

Images are resized with spline interpolation the way scikit-image's ``resize(order, mode='edge',
anti_aliasing=False, clip=True)`` does it, which is ``scipy.ndimage.zoom(order=order, mode='nearest',
grid_mode=True)`` followed by clipping to the input's value range. Segmentations are resized per label: each
label's one-hot mask is interpolated (order 1 by default) and voxels where it reaches 0.5 take the label (labels
in increasing order, later ones win), as batchgenerators' ``resize_segmentation`` does.

Anisotropic data (``max(spacing) / min(spacing) > 3``, on the current spacing, else on the target spacing) is
resampled "separate z": each slice across the unique low-resolution axis in-plane with ``order``, then along
that axis with ``order_z`` (0 = nearest neighbour).

The registry :data:`RESAMPLERS` is keyed by nnU-Net's function names so that plans files resolve in both tools.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from nnseg.preprocessed.resample_rules import (  # noqa: F401 - re-exported: callers import them from here
    ANISO_THRESHOLD,
    compute_new_shape,
    determine_do_sep_z_and_axis,
    get_do_separate_z,
    get_lowres_axis,
    z_coordinates,
    z_nearest,
)
from nnseg.preprocessed.spline import spline_zoom
from nnseg.registry import Registry

RESAMPLERS: Registry[Callable[..., Any]] = Registry("resampling function")


# -- single-volume kernels --------------------------------------------------------------------------------------------


def resize_image(
    image: np.ndarray, new_shape: Sequence[int], order: int, out: np.ndarray | None = None, *, slice_axis: int | None = None
) -> np.ndarray:
    """skimage ``resize(image, new_shape, order, mode='edge', anti_aliasing=False, clip=True)`` without skimage.

    Args:
        image: ``(X, Y[, Z])`` array (computed in double precision; the result has ``out``'s dtype or float32).
        new_shape: output shape.
        order: spline order 0-5.
        out: optional output array of shape ``new_shape``.
        slice_axis: an axis whose length stays the same and whose slices are resized independently (as
            separate 2D resizes: each slice is clipped to its own value range).
    """
    new_shape = tuple(int(s) for s in new_shape)
    if out is None:
        out = np.empty(new_shape, dtype=np.float32 if image.dtype != np.float64 else np.float64)
    if tuple(image.shape) == new_shape:
        out[...] = image
        return out
    spline_zoom(image, new_shape, order, out=out)
    if order > 0:
        axes = tuple(a for a in range(image.ndim) if a != slice_axis)
        keep = slice_axis is not None
        np.clip(out, image.min(axis=axes, keepdims=keep), image.max(axis=axes, keepdims=keep), out=out)
    return out


def resize_segmentation(seg: np.ndarray, new_shape: Sequence[int], order: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """batchgenerators' ``resize_segmentation``: per-label one-hot interpolation thresholded at 0.5.

    Args:
        seg: integer-valued label map ``(X, Y[, Z])`` (any dtype).
        new_shape: output shape (axes that keep their length behave as independent slices).
        order: interpolation order of the one-hot masks (0 = nearest neighbour on the label values).
        out: optional output array (zeros are assumed where no label reaches 0.5).

    Returns:
        label map of shape ``new_shape`` with ``seg``'s dtype (or ``out``).
    """
    new_shape = tuple(int(s) for s in new_shape)
    if out is None:
        out = np.zeros(new_shape, dtype=seg.dtype)
    if tuple(seg.shape) == new_shape:
        out[...] = seg
        return out
    if order == 0:
        spline_zoom(seg, new_shape, 0, out=out)
        return out
    labels = np.unique(seg)
    skip_zero = labels[0] >= 0  # 0 would only overwrite zeros
    buf = np.empty(new_shape, dtype=np.float32)
    for label in labels:
        if label == 0 and skip_zero:
            continue
        spline_zoom((seg == label).astype(np.float32), new_shape, order, out=buf)
        out[buf >= 0.5] = label
    return out


def _resample_along_axis0(vol: np.ndarray, n_out: int, *, order_z: int, is_seg: bool, out: np.ndarray) -> None:
    """Resample ``vol`` (low-res axis first) along axis 0 to ``n_out`` slices into ``out``."""
    coords = z_coordinates(vol.shape[0], n_out)
    if order_z == 0:
        out[...] = vol[z_nearest(coords, vol.shape[0])]
        return
    grid = np.meshgrid(coords, *[np.arange(s, dtype=np.float64) for s in vol.shape[1:]], indexing="ij")
    coord_map = np.stack(grid)
    if not is_seg:
        out[...] = ndimage.map_coordinates(vol.astype(np.float64, copy=False), coord_map, order=order_z, mode="nearest")
        return
    out[...] = 0
    for label in np.unique(vol):
        interp = ndimage.map_coordinates((vol == label).astype(np.float64), coord_map, order=order_z, mode="nearest")
        out[np.round(interp) > 0.5] = label


def _resample_separate_z(
    vol: np.ndarray, new_shape: tuple[int, ...], axis: int, *, is_seg: bool, order: int, order_z: int, out: np.ndarray
) -> None:
    """In-plane resize of every slice across ``axis`` (with ``order``), then ``order_z`` resampling along ``axis``."""
    inplane_shape = tuple(vol.shape[axis] if i == axis else s for i, s in enumerate(new_shape))
    same_z = vol.shape[axis] == new_shape[axis]
    inter = out if same_z else np.zeros(inplane_shape, dtype=out.dtype)
    if is_seg:
        # slice by slice (2D zooms; background-only slices cost nothing)
        plane = tuple(s for i, s in enumerate(new_shape) if i != axis)
        vol_f, inter_f = np.moveaxis(vol, axis, 0), np.moveaxis(inter, axis, 0)
        for i in range(vol_f.shape[0]):
            resize_segmentation(vol_f[i], plane, order, out=inter_f[i])
    else:
        resize_image(vol, inplane_shape, order, out=inter, slice_axis=axis)
    if not same_z:
        _resample_along_axis0(np.moveaxis(inter, axis, 0), new_shape[axis], order_z=order_z, is_seg=is_seg,
                              out=np.moveaxis(out, axis, 0))


@RESAMPLERS.register("resample_data_or_seg_to_shape")
def resample_data_or_seg_to_shape(
    data: np.ndarray,
    new_shape: Sequence[int],
    current_spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    is_seg: bool = False,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
    separate_z_anisotropy_threshold: float = ANISO_THRESHOLD,
) -> np.ndarray:
    """Resample every channel of ``data`` to ``new_shape`` (nnU-Net's function of the same name).

    Args:
        data: ``(C, X, Y, Z)`` image (any float dtype; the result keeps it) or segmentation (``is_seg``; integer
            labels in any dtype, kept). A torch tensor is converted to numpy.
        new_shape: target spatial shape ``(X', Y', Z')``.
        current_spacing, new_spacing: spacings used only for the separate-z decision.
        is_seg: resample as a label map (per-label one-hot interpolation).
        order: interpolation order (in-plane order when separate z).
        order_z: order along the low-res axis when separate z (0 = nearest).
        force_separate_z: None applies nnU-Net's rule; True/False forces it.
        separate_z_anisotropy_threshold: spacing ratio above which separate z kicks in.

    Returns:
        ``(C, X', Y', Z')`` array; ``data`` itself if the shape does not change.
    """
    if not isinstance(data, np.ndarray):
        data = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    if data.ndim != 4:
        raise ValueError(f"resampling expects data of shape (C, X, Y, Z), got {data.shape}; 2D images are (C, 1, X, Y)")
    new_shape = tuple(int(s) for s in new_shape)
    if len(new_shape) != 3:
        raise ValueError(f"new_shape must have 3 entries (X, Y, Z), got {new_shape}")
    if tuple(data.shape[1:]) == new_shape:
        return data
    do_sep, axis = determine_do_sep_z_and_axis(force_separate_z, current_spacing, new_spacing, separate_z_anisotropy_threshold)
    out = np.zeros((data.shape[0], *new_shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        if do_sep and axis is not None:
            _resample_separate_z(data[c], new_shape, axis, is_seg=is_seg, order=order, order_z=order_z, out=out[c])
        elif is_seg:
            resize_segmentation(data[c], new_shape, order, out=out[c])
        else:
            resize_image(data[c], new_shape, order, out=out[c])
    return out


@RESAMPLERS.register("resample_torch_fornnunet")
def _resample_torch_fornnunet_lazy(*args: Any, **kwargs: Any) -> Any:
    """Lazy entry for :func:`nnseg.preprocessed.resample_torch.resample_torch_fornnunet` (torch is imported on use)."""
    from nnseg.preprocessed.resample_torch import resample_torch_fornnunet

    return resample_torch_fornnunet(*args, **kwargs)


def get_resampler(name: str, kwargs: dict[str, Any] | None = None) -> Callable[..., Any]:
    """The function a plans file names (``resampling_fn_data`` etc.) with its ``*_kwargs`` bound.

    The result is called as ``fn(data, new_shape, current_spacing, new_spacing)``.
    """
    fn = RESAMPLERS[name]
    bound = dict(kwargs or {})

    def call(data: Any, new_shape: Sequence[int], current_spacing: Sequence[float], new_spacing: Sequence[float]) -> Any:
        return fn(data, new_shape, current_spacing, new_spacing, **bound)

    call.__name__ = name
    return call
