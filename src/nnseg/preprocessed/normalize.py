"""Intensity normalisation schemes, keyed by nnU-Net's class names (reference §1.8 step 5).

Each scheme is a pure function ``fn(image, seg, *, use_mask_for_norm, intensity_properties) -> image`` over one
channel. The arithmetic follows nnU-Net exactly: the image is cast to float32 (no copy if it already is float32;
the input is then changed in place) and every step runs in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from nnseg.registry import Registry


class NormalizationFn(Protocol):
    def __call__(
        self,
        image: np.ndarray,
        seg: np.ndarray | None,
        *,
        use_mask_for_norm: bool,
        intensity_properties: Mapping[str, Any] | None,
    ) -> np.ndarray: ...


NORMALIZERS: Registry[NormalizationFn] = Registry("normalization scheme")

# nnU-Net's ``leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true`` (the planner reads it)
LEAVES_OUTSIDE_MASK_AT_ZERO: dict[str, bool] = {"ZScoreNormalization": True}


def _as_f32(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32, copy=False)


@NORMALIZERS.register("ZScoreNormalization")
def zscore_normalization(
    image: np.ndarray,
    seg: np.ndarray | None,
    *,
    use_mask_for_norm: bool = False,
    intensity_properties: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Per-image z-scoring; with ``use_mask_for_norm`` only voxels with ``seg >= 0`` are used and changed.

    Args:
        image: one channel ``(X, Y, Z)``.
        seg: ``(X, Y, Z)`` (or ``(1, X, Y, Z)``) segmentation with -1 outside the non-zero mask; needed only with
            ``use_mask_for_norm``.
    """
    image = _as_f32(image)
    if use_mask_for_norm:
        if seg is None:
            raise ValueError("ZScoreNormalization with use_mask_for_norm=True needs the segmentation (-1 outside the non-zero mask)")
        mask = (seg >= 0).reshape(image.shape)
        values = image[mask]
        mean = values.mean()
        std = values.std()
        image[mask] = (values - mean) / max(std, np.float32(1e-8))
    else:
        mean = image.mean()
        std = image.std()
        image -= mean
        image /= max(std, np.float32(1e-8))
    return image


def _require(props: Mapping[str, Any] | None, scheme: str) -> Mapping[str, Any]:
    if props is None:
        raise ValueError(
            f"{scheme} needs the dataset's foreground intensity properties (plans 'foreground_intensity_properties_per_channel'); "
            "re-run planning so the plans file has them"
        )
    return props


@NORMALIZERS.register("CTNormalization")
def ct_normalization(
    image: np.ndarray,
    seg: np.ndarray | None,
    *,
    use_mask_for_norm: bool = False,
    intensity_properties: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Clip to the dataset's foreground 0.5/99.5 percentiles, then z-score with the dataset foreground mean/std."""
    props = _require(intensity_properties, "CTNormalization")
    image = _as_f32(image)
    np.clip(image, props["percentile_00_5"], props["percentile_99_5"], out=image)
    image -= props["mean"]
    image /= max(props["std"], 1e-8)
    return image


@NORMALIZERS.register("NoNormalization")
def no_normalization(
    image: np.ndarray,
    seg: np.ndarray | None,
    *,
    use_mask_for_norm: bool = False,
    intensity_properties: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Only the cast to float32."""
    return _as_f32(image)


@NORMALIZERS.register("RescaleTo01Normalization")
def rescale_to_01_normalization(
    image: np.ndarray,
    seg: np.ndarray | None,
    *,
    use_mask_for_norm: bool = False,
    intensity_properties: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Min-max rescaling to [0, 1] (the range is floored at 1e-8)."""
    image = _as_f32(image)
    image -= image.min()
    image /= np.clip(image.max(), a_min=1e-8, a_max=None)
    return image


@NORMALIZERS.register("RGBTo01Normalization")
def rgb_to_01_normalization(
    image: np.ndarray,
    seg: np.ndarray | None,
    *,
    use_mask_for_norm: bool = False,
    intensity_properties: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Divide 8-bit colour values by 255; values outside [0, 255] are an error."""
    lo, hi = image.min(), image.max()
    if lo < 0 or hi > 255:
        raise ValueError(
            f"RGBTo01Normalization expects 8-bit values in [0, 255], found [{lo}, {hi}]; "
            "use ZScoreNormalization (channel name other than 'rgb'/'RGB' in dataset.json) for these images"
        )
    image = _as_f32(image)
    image /= 255.0
    return image


def normalize(
    data: np.ndarray,
    seg: np.ndarray | None,
    *,
    schemes: Sequence[str],
    use_mask_for_norm: Sequence[bool],
    intensity_properties: Mapping[str, Mapping[str, Any]] | None = None,
) -> np.ndarray:
    """Normalise every channel of ``data`` with its scheme (in place when ``data`` is float32).

    Args:
        data: ``(C, X, Y, Z)`` image.
        seg: ``(1, X, Y, Z)`` segmentation with -1 outside the non-zero mask (used by ``use_mask_for_norm``).
        schemes: one registered scheme name per channel (plans ``normalization_schemes``).
        use_mask_for_norm: one flag per channel (plans ``use_mask_for_norm``).
        intensity_properties: plans ``foreground_intensity_properties_per_channel`` (keys ``"0"``, ``"1"``, ...).

    Returns:
        float32 ``(C, X, Y, Z)``.
    """
    if len(schemes) != data.shape[0] or len(use_mask_for_norm) != data.shape[0]:
        raise ValueError(
            f"the plans list {len(schemes)} normalization_schemes / {len(use_mask_for_norm)} use_mask_for_norm entries "
            f"but the image has {data.shape[0]} channels; check dataset.json channel_names against the plans"
        )
    data = data.astype(np.float32, copy=False)
    seg0 = None if seg is None else seg[0]
    for c, name in enumerate(schemes):
        fn: Callable[..., np.ndarray] = NORMALIZERS[name]
        props = None if intensity_properties is None else intensity_properties.get(str(c))
        data[c] = fn(data[c], seg0, use_mask_for_norm=bool(use_mask_for_norm[c]), intensity_properties=props)
    return data
