"""Per-task memory estimates, handed to Dask as the ``MEMORY`` resource so large cases do not pile up on one worker.

A worker started with ``--resources "MEMORY=16e9"`` runs tasks only while the sum of their ``MEMORY`` stays within
16 GB; a 512^3 case (estimated ~10 GB for preprocessing) therefore runs alone, while 100 Hippocampus cases (~40 MB
each) run as many at a time as the worker has threads. The estimates are coarse upper bounds built from the image
header (shape, channel count; the voxels are not read) and the plans:

* preprocessing / fingerprint: ``(voxels in + voxels after resampling) x (channels + 1) x 4 bytes x 4`` (the float32
  image and segmentation, resampling's float copies and per-label segmentation resampling), plus 200 MB;
* prediction: the estimate of the memory plan the worker runs (:func:`nnseg.predictions.inference.memory_plan.plan_case`: the
  one-shot path if it fits the budget, else the bounded path), from the header's shape and spacing without cropping
  (an upper bound); one estimate for the cluster and the single-machine command;
* training: nnU-Net's feature-map proxy (:func:`nnseg.networks.memory.estimate_feature_map_size`) x batch size x 12
  bytes (activations, gradients, autocast copies) plus 2 GB (process, data loading).

A task whose estimate exceeds every worker's ``MEMORY`` asks for the largest worker's whole amount (it runs alone
there) instead of never running.
"""

from __future__ import annotations

import math
from functools import lru_cache
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nnseg.predictions.inference.memory_plan import CaseDoesNotFit, case_shapes, plan_case, samples_per_call, tiles_per_call
from nnseg.predictions.inference.model_folder import TrainedModel

MB = 2**20
PREPROCESS_BASE = 200 * MB
TRAIN_BASE = 2048 * MB


@lru_cache(maxsize=1 << 16)
def image_header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """``(shape, spacing)`` in SimpleITK's (x, y, z) order from the file's header, or None if it cannot be read."""
    nifti = _nifti1_header(Path(path)) if str(path).endswith((".nii.gz", ".nii")) else None
    if nifti is not None:
        return nifti
    try:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(int(s) for s in reader.GetSize()), tuple(float(s) for s in reader.GetSpacing())
    except Exception:  # noqa: BLE001 - any unreadable header falls back to the file size
        return None


def _nifti1_header(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """``dim``/``pixdim`` of a NIfTI-1 header (the first 348 bytes; ~25x faster than SimpleITK's header read, which
    matters when a cluster run sizes 10,000s of cases); None for anything else (NIfTI-2, damaged), left to SimpleITK."""
    import gzip
    import struct

    try:
        with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as f:
            raw = f.read(348)
    except (OSError, EOFError):
        return None
    if len(raw) < 348:
        return None
    for order in "<>":
        if struct.unpack(order + "i", raw[:4])[0] == 348:
            dim = struct.unpack(order + "8h", raw[40:56])
            pixdim = struct.unpack(order + "8f", raw[76:108])
            if 1 <= dim[0] <= 7 and all(d > 0 for d in dim[1:1 + dim[0]]):
                n = dim[0]
                while n > 3 and dim[n] == 1:  # a 4D header with one time point is a 3D image
                    n -= 1
                return tuple(int(d) for d in dim[1:1 + n]), tuple(abs(float(p)) for p in pixdim[1:1 + n])
    return None


def _voxels(path: Path) -> tuple[int, tuple[float, ...] | None]:
    header = image_header(path)
    if header is None:  # assume 4x compression of float32 voxels
        return max(1, Path(path).stat().st_size), None  # bytes x 4 (compression) / 4 bytes per voxel
    return math.prod(header[0]), header[1]


def resampling_factor(spacing: Sequence[float] | None, target: Sequence[float] | None) -> float:
    """How many times more voxels the image has after resampling to ``target`` (1 when unknown)."""
    if not spacing or not target or len(spacing) != len(target):
        return 1.0
    return max(1e-3, math.prod(float(s) / float(t) for s, t in zip(sorted(spacing), sorted(target))))


def preprocess_bytes(images: Sequence[Path], target_spacings: Sequence[Sequence[float]] = ()) -> int:
    """Estimated peak bytes of preprocessing (or fingerprinting) one case of ``images`` (one file per channel)."""
    voxels, spacing = _voxels(images[0])
    factor = max([resampling_factor(spacing, t) for t in target_spacings] or [1.0])
    return int((voxels + voxels * factor) * (len(images) + 1) * 4 * 4 + PREPROCESS_BASE)


def predict_bytes(model: TrainedModel, images: Sequence[Path], *, budget: int, folds: int, use_tta: bool,
                  tile_batch_size: int | None = None, save_probabilities: bool = False) -> int:
    """Estimated peak bytes of predicting one case of ``images`` with ``model``: the memory plan's estimate for the path
    a worker with ``budget`` bytes takes (``folds`` networks; TTA mirrors every axis, the most a model allows).

    A case that fits no path asks for the whole ``budget`` (its task then fails on the worker with the plan's
    message); an unreadable header too.
    """
    header = image_header(images[0])
    if header is None:
        return int(budget)
    shape, spacing = header
    if len(shape) == 2:  # a 2D image as the readers return it: one slice, spacing 999 x the largest
        shape, spacing = (*shape, 1), (*spacing, 999.0 * max(spacing))
    shapes = case_shapes(model, (len(images), *shape[::-1]), spacing[::-1])  # arrays are (z, y, x), as every reader's
    samples = samples_per_call(model, budget)
    tiles = tiles_per_call(samples, tile_batch_size=tile_batch_size,
                           tta_passes=2 ** len(model.configuration.patch_size) if use_tta else 1)
    try:
        plan = plan_case(model, "case", shapes, budget=budget, budget_source="", samples=samples, tiles=tiles,
                         folds=folds, save_probabilities=save_probabilities)
    except CaseDoesNotFit:
        return int(budget)
    return int(plan.estimate)


def train_bytes(configuration: Any, *, input_channels: int, num_classes: int, batch_size: int | None = None) -> int:
    """Estimated peak host bytes of training one fold of a plans ``configuration`` (a ``ConfigurationPlans``)."""
    from nnseg.networks.memory import estimate_feature_map_size

    features = estimate_feature_map_size(configuration.architecture, configuration.patch_size,
                                         input_channels=input_channels, num_classes=num_classes)
    return int(features * int(batch_size or configuration.batch_size) * 12 + TRAIN_BASE)


def fit_to_workers(estimate: int, capacities: Mapping[str, float]) -> int | None:
    """The ``MEMORY`` to request: the estimate, at most the largest worker's amount; None when some worker
    advertises no ``MEMORY`` (requesting it would keep tasks off those workers)."""
    if not capacities or any(c is None for c in capacities.values()):
        return None
    return int(min(estimate, max(capacities.values())))
