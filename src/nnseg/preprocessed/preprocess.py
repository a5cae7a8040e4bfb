"""One case through nnU-Net's ``DefaultPreprocessor`` (reference §1.8): transpose, crop, normalise, resample,
sample foreground locations, cast the segmentation.

:func:`preprocess_case` is the pure core (arrays in, arrays out), used for training data and for prediction input
alike; :func:`preprocess_files` reads the files of one case first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nnseg._types import ImageIO, PathLike
from nnseg.plans.schema import ConfigurationPlans, Plans
from nnseg.preprocessed.class_locations import classes_to_collect, sample_class_locations
from nnseg.preprocessed.normalize import normalize
from nnseg.preprocessed.resample import compute_new_shape, get_resampler
from nnseg.raw.crop import bbox_to_slices, nonzero_mask_in_bbox
from nnseg.raw.dataset_json import DatasetSpec

__all__ = ["preprocess_case", "preprocess_files", "target_spacing_for", "seg_to_storage_dtype"]


def target_spacing_for(configuration: ConfigurationPlans, case_spacing: Sequence[float]) -> list[float]:
    """The configuration's spacing; a 2D configuration keeps the case's own spacing along (transposed) axis 0."""
    target = [float(s) for s in configuration.spacing]
    if len(target) < len(case_spacing):
        target = [float(case_spacing[0]), *target]
    return target


def seg_to_storage_dtype(seg: np.ndarray) -> np.ndarray:
    """int8 if the largest label is at most 127, else int16 (nnU-Net's ``run_case_npy``)."""
    return seg.astype(np.int8 if seg.size == 0 or seg.max() <= 127 else np.int16, copy=False)


def _seg_as_int16(seg: np.ndarray) -> np.ndarray:
    if seg.size and (seg.max() > np.iinfo(np.int16).max or seg.min() < np.iinfo(np.int16).min):
        raise ValueError(f"segmentation values span [{seg.min()}, {seg.max()}], beyond int16; labels must be small consecutive integers")
    return seg.astype(np.int16)


def _transpose_and_crop(
    data: np.ndarray, seg: np.ndarray | None, transpose_forward: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, list[list[int]], tuple[int, ...]]:
    """Transpose, crop to the non-zero box; returns a float32 copy of the crop, an int16 seg (-1 outside the mask)."""
    axes = (0, *[int(i) + 1 for i in transpose_forward])
    data = data.transpose(axes)
    shape_before = tuple(int(s) for s in data.shape[1:])
    mask, bbox = nonzero_mask_in_bbox(data)
    slicer = bbox_to_slices(bbox)
    mask = mask[None]
    cropped = np.array(data[(slice(None), *slicer)], dtype=np.float32, order="C")
    if seg is None:
        seg_c = np.where(mask, np.int16(0), np.int16(-1))
    else:
        seg_c = _seg_as_int16(np.ascontiguousarray(seg.transpose(axes)[(slice(None), *slicer)]))
        seg_c[(seg_c == 0) & ~mask] = -1
    return cropped, seg_c, bbox, shape_before


def merge_ignore_labels(seg: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Every ignore label of ``spec`` written as the lowest one (``spec.ignore_label``), so preprocessed data has
    nnU-Net's single ignore label (:mod:`nnseg.raw.ignore_labels`); ``seg`` itself is returned with one or none."""
    if len(spec.ignore_values) < 2:
        return seg
    return np.where(np.isin(seg, spec.ignore_values[1:]), np.asarray(spec.ignore_label, seg.dtype), seg)


def _collect_classes(spec: DatasetSpec) -> list[Any]:
    return classes_to_collect(
        spec.foreground_labels,
        regions=spec.foreground_regions if spec.has_regions else None,
        ignore_label=spec.ignore_label,
        all_labels=spec.all_labels,
    )


def preprocess_case(
    data: np.ndarray,
    seg: np.ndarray | None,
    properties: Mapping[str, Any],
    *,
    plans: Plans,
    configuration: ConfigurationPlans,
    spec: DatasetSpec | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Preprocess one case exactly as nnU-Net's ``DefaultPreprocessor.run_case_npy``.

    Args:
        data: image ``(C, X, Y, Z)`` as read (any dtype; not modified).
        seg: label map ``(1, X, Y, Z)`` or None (prediction input; not modified).
        properties: the reader's properties (``spacing`` per array axis, reader geometry).
        plans: the plans (``transpose_forward``, intensity statistics).
        configuration: the configuration (target spacing, normalisation, resampling functions).
        spec: the dataset's labels (needed when ``seg`` is given, for the class locations).

    Returns:
        ``(data, seg, properties)``: float32 ``(C, X', Y', Z')``; int8 (int16 if a label exceeds 127)
        ``(1, X', Y', Z')`` with -1 outside the non-zero mask, or None without input seg; a new properties dict
        with ``shape_before_cropping``, ``bbox_used_for_cropping``, ``shape_after_cropping_and_before_resampling``
        and (with seg) ``class_locations`` added.

    Raises:
        ValueError: image and seg shapes differ, or the plans do not fit the image (channel count).
    """
    if seg is not None and tuple(seg.shape[1:]) != tuple(data.shape[1:]):
        raise ValueError(f"image shape {tuple(data.shape[1:])} and segmentation shape {tuple(seg.shape[1:])} differ; "
                         "the label file must have the same size as the case's image files")
    if seg is not None and spec is None:
        raise ValueError("preprocess_case needs spec= (the dataset.json labels) when a segmentation is given")
    props = dict(properties)
    spacing = [float(properties["spacing"][i]) for i in plans.transpose_forward]
    cropped, seg_c, bbox, shape_before = _transpose_and_crop(data, seg, plans.transpose_forward)
    props["shape_before_cropping"] = list(shape_before)
    props["bbox_used_for_cropping"] = bbox
    props["shape_after_cropping_and_before_resampling"] = [int(s) for s in cropped.shape[1:]]
    target = target_spacing_for(configuration, spacing)
    new_shape = compute_new_shape(cropped.shape[1:], spacing, target)
    cropped = normalize(cropped, seg_c, schemes=configuration.normalization_schemes,
                        use_mask_for_norm=configuration.use_mask_for_norm,
                        intensity_properties=plans.foreground_intensity_properties_per_channel)
    resample_data = get_resampler(configuration.resampling_fn_data, configuration.resampling_fn_data_kwargs)
    out_data = np.asarray(resample_data(cropped, new_shape, spacing, target), dtype=np.float32)
    if seg is None or spec is None:
        return out_data, None, props
    resample_seg = get_resampler(configuration.resampling_fn_seg, configuration.resampling_fn_seg_kwargs)
    out_seg = np.asarray(resample_seg(merge_ignore_labels(seg_c, spec), new_shape, spacing, target))
    props["class_locations"] = sample_class_locations(out_seg, _collect_classes(spec))
    return out_data, seg_to_storage_dtype(out_seg), props


def preprocess_files(
    image_files: Sequence[PathLike],
    seg_file: PathLike | None,
    *,
    io: str | ImageIO,
    plans: Plans,
    configuration: ConfigurationPlans,
    spec: DatasetSpec | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read one case (channel files in order, optional label file) with ``io`` and :func:`preprocess_case` it."""
    from nnseg.raw.image_io import read_images, read_seg

    data, geometry = read_images(image_files, io)
    seg = read_seg(seg_file, io)[0] if seg_file is not None else None
    return preprocess_case(data, seg, geometry.to_properties(), plans=plans, configuration=configuration, spec=spec)
