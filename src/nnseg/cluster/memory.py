"""Per-task memory estimates, handed to Dask as the ``MEMORY`` resource so large cases do not pile up on one worker.

A worker started with ``--resources "MEMORY=16e9"`` runs tasks only while the sum of their ``MEMORY`` stays within
16 GB; a 512^3 case (estimated ~10 GB for preprocessing) therefore runs alone, while 100 Hippocampus cases (~40 MB
each) run as many at a time as the worker has threads. The estimates are coarse upper bounds built from the case's
headers as its reader/writer gives them (:func:`case_header`: shape incl. channels and spacing, every reader, the voxels
not read) and the plans:

* preprocessing / fingerprint: ``(voxels in + voxels after resampling) x (channels + 1) x 4 bytes x 4`` (the float32
  image and segmentation, resampling's float copies and per-label segmentation resampling), plus 200 MB; a case whose
  header tells nothing (unreadable, or a layout only reading tells) counts its first file's size in voxels;
* prediction: the estimate of the memory plan the worker runs, from the same header step as the worker's own check
  (the reader's ``read_header``, as :func:`nnseg.predictions.run.bounded.check_case_header`, then
  :func:`nnseg.predictions.inference.memory_plan.plan_from_header`: the one-shot path if it fits the budget, else the
  bounded path), without cropping (an upper bound); one estimate for the cluster and the single-machine command;
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

from nnseg.predictions.inference.memory_plan import (
    CaseDoesNotFit,
    PlanOptions,
    plan_from_header,
    samples_per_call,
    tiles_per_call,
)
from nnseg.predictions.inference.model_folder import TrainedModel
from nnseg.raw.image_io import get_io
from nnseg.raw.io_common import ShapeAndSpacing

MB = 2**20
PREPROCESS_BASE = 200 * MB
TRAIN_BASE = 2048 * MB


@lru_cache(maxsize=1 << 16)
def case_header(images: tuple[Path, ...], *, reader: str) -> ShapeAndSpacing | None:
    """``(C, X, Y, Z)`` and spacing of a case as ``reader`` reads ``images`` (one file per channel), from the headers
    (the reader's ``read_header``, the step the worker's own check takes); None when the headers cannot be read or do
    not tell. Cached, as one run sizes a case for more than one task."""
    try:
        return get_io(reader).read_header(list(images))
    except Exception:  # noqa: BLE001 - an unreadable header falls back to the file size / the whole budget
        return None


def resampling_factor(spacing: Sequence[float] | None, target: Sequence[float] | None) -> float:
    """How many times more voxels the image has after resampling to ``target`` (1 when unknown). A 2D target for a 3D
    spacing (a ``2d`` configuration, or a 2D image's ``(999 x max, sx, sy)``) resamples the two finest axes."""
    if spacing and target and len(spacing) == len(target) + 1:
        spacing = sorted(float(s) for s in spacing)[:-1]
    if not spacing or not target or len(spacing) != len(target):
        return 1.0
    return max(1e-3, math.prod(float(s) / float(t) for s, t in zip(sorted(spacing), sorted(target))))


def preprocess_bytes(images: Sequence[Path], target_spacings: Sequence[Sequence[float]] = (), *,
                     reader: str = "SimpleITKIO") -> int:
    """Estimated peak bytes of preprocessing (or fingerprinting) one case of ``images`` (one file per channel) that
    ``reader`` reads."""
    header = case_header(tuple(Path(p) for p in images), reader=reader)
    if header is None:  # assume 4x compression of float32 voxels: bytes x 4 (compression) / 4 bytes per voxel
        voxels, spacing, channels = max(1, Path(images[0]).stat().st_size), None, len(images)
    else:
        voxels, spacing, channels = math.prod(header[0][1:]), header[1], header[0][0]
    factor = max([resampling_factor(spacing, t) for t in target_spacings] or [1.0])
    return int((voxels + voxels * factor) * (channels + 1) * 4 * 4 + PREPROCESS_BASE)


def predict_bytes(model: TrainedModel, images: Sequence[Path], *, budget: int, folds: int, use_tta: bool,
                  tile_batch_size: int | None = None, save_probabilities: bool = False,
                  reader: str | None = None) -> int:
    """Estimated peak bytes of predicting one case of ``images`` with ``model``: the memory plan's estimate for the path
    a worker with ``budget`` bytes takes (``folds`` networks; TTA mirrors every axis, the most a model allows).
    ``reader``: the reader/writer of the files (default the plans').

    A case that fits no path asks for the whole ``budget`` (its task then fails on the worker with the plan's
    message); an unreadable header too.
    """
    header = case_header(tuple(Path(p) for p in images), reader=reader or model.plans.image_reader_writer)
    if header is None:  # unreadable, or e.g. 4D: only reading the image tells
        return int(budget)
    samples = samples_per_call(model, budget)
    tiles = tiles_per_call(samples, tile_batch_size=tile_batch_size,
                           tta_passes=2 ** len(model.configuration.patch_size) if use_tta else 1)
    options = PlanOptions(int(budget), "", samples, tiles, folds, save_probabilities)
    try:
        return int(plan_from_header(model, "case", *header, options).estimate)
    except CaseDoesNotFit:
        return int(budget)


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
