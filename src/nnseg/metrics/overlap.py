"""Overlap metrics per label or region (nnU-Net's ``evaluation/evaluate_predictions.py`` definitions), pure functions.

Conventions (exactly nnU-Net's):

* a *label* ``k`` selects ``seg == k``; a *region* ``(a, b, ...)`` selects ``seg`` in ``{a, b, ...}``;
* voxels where the reference equals the ignore label are left out of TP, FP, FN and TN;
* ``Dice = 2TP / (2TP + FP + FN)`` and ``IoU = TP / (TP + FP + FN)`` are ``nan`` when ``TP + FP + FN == 0``
  (reference and prediction both empty);
* ``n_pred = TP + FP`` and ``n_ref = TP + FN``.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnseg._types import IgnoreLabels, LabelOrRegion

#: the per-case metric names nnU-Net writes, in its order.
OVERLAP_METRICS = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")


def label_or_region_to_key(label_or_region: LabelOrRegion) -> str:
    """The ``summary.json`` key: ``"1"`` for a label, ``"(1, 2, 3)"`` for a region (``str`` of the int or tuple)."""
    if isinstance(label_or_region, (list, tuple)):
        return str(tuple(int(v) for v in label_or_region))
    return str(int(label_or_region))


def key_to_label_or_region(key: str) -> LabelOrRegion:
    """Inverse of :func:`label_or_region_to_key`.

    Raises:
        ValueError: ``key`` is neither an int nor a tuple of ints.
    """
    try:
        value = ast.literal_eval(key)
    except (ValueError, SyntaxError):
        raise ValueError(f"summary.json key {key!r} is neither a label ('1') nor a region ('(1, 2)')") from None
    if isinstance(value, int):
        return value
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return value
    raise ValueError(f"summary.json key {key!r} is neither a label ('1') nor a region ('(1, 2)')")


def region_or_label_to_mask(seg: np.ndarray, label_or_region: LabelOrRegion) -> np.ndarray:
    """Boolean mask of ``seg`` (any shape) for one label or region."""
    if isinstance(label_or_region, (list, tuple, np.ndarray)):
        return np.isin(seg, np.asarray(label_or_region))
    return seg == label_or_region


def compute_tp_fp_fn_tn(ref_mask: np.ndarray, pred_mask: np.ndarray,
                        ignore_mask: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """Confusion counts of two boolean masks of equal shape; ``ignore_mask`` (True = ignore) voxels are left out.

    Example:
        >>> compute_tp_fp_fn_tn(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
        (1, 1, 1, 1)
    """
    ref_mask = np.asarray(ref_mask, dtype=bool)
    pred_mask = np.asarray(pred_mask, dtype=bool)
    if ref_mask.shape != pred_mask.shape:
        raise ValueError(f"reference and prediction shapes differ: {ref_mask.shape} vs {pred_mask.shape}; "
                         "the prediction must be in the reference's geometry")
    use = np.ones_like(ref_mask) if ignore_mask is None else ~np.asarray(ignore_mask, dtype=bool)
    tp = int(np.sum(ref_mask & pred_mask & use))
    fp = int(np.sum(~ref_mask & pred_mask & use))
    fn = int(np.sum(ref_mask & ~pred_mask & use))
    tn = int(np.sum(~ref_mask & ~pred_mask & use))
    return tp, fp, fn, tn


def metrics_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, Any]:
    """nnU-Net's per-case metric dict from confusion counts (Dice/IoU ``nan`` when ``tp + fp + fn == 0``)."""
    if tp + fp + fn == 0:
        dice = iou = float("nan")
    else:
        dice = 2 * tp / (2 * tp + fp + fn)
        iou = tp / (tp + fp + fn)
    return {"Dice": dice, "IoU": iou, "FP": fp, "TP": tp, "FN": fn, "TN": tn, "n_pred": fp + tp, "n_ref": fn + tp}


def ignore_mask_of(ref_seg: np.ndarray, ignore_label: IgnoreLabels) -> np.ndarray | None:
    """True where the reference holds an ignore label (one value, or several: ``dataset.json``'s ignore_labels)."""
    if ignore_label is None:
        return None
    if isinstance(ignore_label, (int, np.integer)):
        return ref_seg == ignore_label
    return np.isin(ref_seg, list(ignore_label))


def overlap_metrics(ref_seg: np.ndarray, pred_seg: np.ndarray, labels_or_regions: Sequence[LabelOrRegion], *,
                    ignore_label: IgnoreLabels = None) -> dict[LabelOrRegion, dict[str, Any]]:
    """Overlap metrics of two label maps for every label or region.

    Args:
        ref_seg: reference label map, any shape (e.g. ``(1, X, Y, Z)`` as read), integer-valued.
        pred_seg: predicted label map, same shape.
        labels_or_regions: ints (labels) or tuples of ints (regions).
        ignore_label: reference voxels with this value (or these values) are left out; None to use all voxels.

    Returns:
        ``{label_or_region: {"Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref"}}`` in the given order.
    """
    if np.shape(ref_seg) != np.shape(pred_seg):
        raise ValueError(f"reference and prediction shapes differ: {np.shape(ref_seg)} vs {np.shape(pred_seg)}; "
                         "the prediction must be in the reference's geometry")
    ignore_mask = ignore_mask_of(ref_seg, ignore_label)
    out: dict[LabelOrRegion, dict[str, Any]] = {}
    for r in labels_or_regions:
        key = tuple(r) if isinstance(r, list) else r
        counts = compute_tp_fp_fn_tn(region_or_label_to_mask(ref_seg, r), region_or_label_to_mask(pred_seg, r),
                                     ignore_mask)
        out[key] = metrics_from_counts(*counts)
    return out
