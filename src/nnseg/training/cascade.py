"""Cascade training inputs (reference §1.10 row 12, §1.13): the previous stage's segmentation as one-hot channels.

``3d_cascade_fullres`` reads the ``3d_lowres`` predictions that the lowres final validation wrote to
``<results>/DatasetX/<Trainer>__<Plans>__3d_lowres/predicted_next_stage/3d_cascade_fullres/CASE.b2nd`` (a ``(X, Y, Z)``
label map in the fullres preprocessed geometry, as nnU-Net stores it). The patch sampler crops it with the same box as
the image and carries it as a second label channel through the spatial transforms; then, as nnU-Net's
``MoveSegAsOneHotToDataTransform``, it becomes one image channel per foreground label, which two augmentations perturb
so the network learns not to trust the previous stage blindly:

* :class:`RandomBinaryOperator` (p 0.4): per label (p 0.5, labels in random order) a dilation, erosion, opening or
  closing with a ball of radius U(1, 8) voxels; voxels a label gains are removed from the other labels.
* :class:`RemoveRandomComponent` (p 0.2): per label (p 0.5) one random connected component smaller than 15 % of the
  patch is erased.

Both follow the sample-then-apply protocol of :mod:`nnseg.training.augment.base` (parameters drawn from the batch's
generator only; the data-dependent choice of a component uses a drawn uniform number). Morphology runs on the CPU
with exact Euclidean distance transforms (a ball of radius r: distance <= r), so large radii cost no more than small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from nnseg.training.augment.base import Batch

PREDICTED_NEXT_STAGE = "predicted_next_stage"
OPERATIONS = ("dilation", "erosion", "opening", "closing")


def prev_stage_folder(results_dataset_folder: Path, trainer: str, plans_name: str, previous_stage: str,
                      configuration: str) -> Path:
    """``<results>/DatasetX/<Trainer>__<Plans>__<previous_stage>/predicted_next_stage/<configuration>`` (nnU-Net's path)."""
    return (Path(results_dataset_folder) / f"{trainer}__{plans_name}__{previous_stage}" / PREDICTED_NEXT_STAGE
            / configuration)


def prev_stage_file(folder: Path, identifier: str) -> Path:
    return Path(folder) / f"{identifier}.b2nd"


def check_prev_stage_cases(folder: Path, identifiers: Sequence[str], *, previous_stage: str) -> None:
    """Raise when the previous stage's predictions of some training/validation cases are missing.

    Raises:
        FileNotFoundError: naming the missing cases and how to produce them (train every fold of the previous stage).
    """
    missing = [i for i in identifiers if not prev_stage_file(folder, i).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the cascade needs the {previous_stage} predictions of every case, but {len(missing)} are missing in "
            f"{folder} (e.g. {missing[:3]}). Train all 5 folds of {previous_stage} (each fold's final validation writes "
            f"its validation cases there), or its fold 'all', with the same trainer and plans first")


def onehot_labels(labels: torch.Tensor, foreground_labels: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """``(B, *spatial)`` integer labels -> ``(B, len(foreground_labels), *spatial)`` one-hot in ``dtype``."""
    return torch.stack([labels == int(v) for v in foreground_labels], 1).to(dtype)


def onehot_numpy(labels: np.ndarray, foreground_labels: Sequence[int]) -> np.ndarray:
    """``(*spatial)`` labels -> float32 ``(len(foreground_labels), *spatial)`` (prediction/validation input)."""
    return np.stack([labels == int(v) for v in foreground_labels]).astype(np.float32)


def move_prev_stage_to_image(batch: Batch, foreground_labels: Sequence[int]) -> Batch:
    """nnU-Net's ``MoveSegAsOneHotToDataTransform``: seg channel 1 -> one-hot image channels appended at the end.

    Args:
        batch: image ``(B, C, *spatial)``, seg ``(B, 2, *spatial)`` (channel 0 the labels, 1 the previous stage).
        foreground_labels: the dataset's foreground labels (one channel each).

    Returns:
        The batch with image ``(B, C + len(foreground_labels), *spatial)`` and seg ``(B, 1, *spatial)``.
    """
    if batch.seg is None or batch.seg.shape[1] < 2:
        shape = None if batch.seg is None else tuple(batch.seg.shape)
        raise ValueError(f"a cascade batch needs the previous stage as label channel 1, got seg shape {shape}")
    onehot = onehot_labels(batch.seg[:, 1], foreground_labels, batch.image.dtype)
    return batch.with_(image=torch.cat([batch.image, onehot], 1), seg=batch.seg[:, :1])


def ball_dilation(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation with a ball ``{|d| <= radius}`` (exact, via a Euclidean distance transform)."""
    if not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= radius


def ball_erosion(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary erosion with a ball; voxels outside the array count as foreground (skimage's border rule)."""
    if mask.all():
        return mask.copy()
    return ndimage.distance_transform_edt(mask) > radius


def apply_operation(mask: np.ndarray, operation: str, radius: float) -> np.ndarray:
    """One of :data:`OPERATIONS` on a boolean array of any dimension."""
    if operation == "dilation":
        return ball_dilation(mask, radius)
    if operation == "erosion":
        return ball_erosion(mask, radius)
    if operation == "opening":
        return ball_dilation(ball_erosion(mask, radius), radius)
    if operation == "closing":
        return ball_erosion(ball_dilation(mask, radius), radius)
    raise ValueError(f"unknown morphological operation {operation!r}; use one of {OPERATIONS}")


@dataclass(frozen=True)
class LabelEdits:
    """Per sample: whether it is augmented, the label order, and per label (in that order) whether/how/what."""

    apply: np.ndarray  # (B,) bool
    order: np.ndarray  # (B, L) permutation of label channels
    per_label: np.ndarray  # (B, L) bool
    choice: np.ndarray  # (B, L) int: the operation index (binary operator) or unused
    value: np.ndarray  # (B, L) float: ball radius (binary operator) or uniform draw choosing a component


def _sample_edits(rng: np.random.Generator, batch: Batch, num_labels: int, p: float, p_per_label: float,
                  value_range: tuple[float, float]) -> LabelEdits:
    b = batch.batch_size
    apply = rng.random(b) < p
    order = np.stack([rng.permutation(num_labels) for _ in range(b)]) if b else np.zeros((0, num_labels), int)
    per_label = rng.random((b, num_labels)) < p_per_label
    choice = rng.integers(0, len(OPERATIONS), (b, num_labels))
    value = rng.uniform(*value_range, (b, num_labels))
    return LabelEdits(apply, order, per_label, choice, value)


def _label_block(batch: Batch, num_labels: int) -> tuple[np.ndarray, int]:
    """The last ``num_labels`` image channels as a CPU boolean array ``(B, L, *spatial)`` and their first index."""
    start = batch.num_channels - num_labels
    if start < 0:
        raise ValueError(f"batch has {batch.num_channels} channels, fewer than the {num_labels} one-hot label channels")
    return batch.image[:, start:].detach().cpu().numpy() > 0.5, start


def _write_back(batch: Batch, block: np.ndarray, start: int) -> Batch:
    image = batch.image.clone()
    image[:, start:] = torch.as_tensor(block, dtype=image.dtype, device=image.device)
    return batch.with_(image=image)


@dataclass(frozen=True)
class RandomBinaryOperator:
    """nnU-Net's ``ApplyRandomBinaryOperatorTransform`` on the last ``num_labels`` (one-hot) image channels."""

    num_labels: int
    p: float = 0.4
    p_per_label: float = 0.5
    strel_size: tuple[float, float] = (1.0, 8.0)

    def sample(self, rng: np.random.Generator, batch: Batch) -> LabelEdits:
        return _sample_edits(rng, batch, self.num_labels, self.p, self.p_per_label, self.strel_size)

    def apply(self, batch: Batch, params: LabelEdits) -> Batch:
        if self.num_labels == 0 or not (params.apply[:, None] & params.per_label).any():
            return batch
        block, start = _label_block(batch, self.num_labels)
        for b in np.flatnonzero(params.apply):
            for k, c in enumerate(params.order[b]):
                if not params.per_label[b, k]:
                    continue
                before = block[b, c]
                after = apply_operation(before, OPERATIONS[params.choice[b, k]], float(params.value[b, k]))
                gained = after & ~before
                block[b, c] = after
                if gained.any():
                    others = [o for o in range(self.num_labels) if o != c]
                    block[b, others] &= ~gained
        return _write_back(batch, block, start)


def remove_component(mask: np.ndarray, draw: float, *, max_fraction: float) -> np.ndarray:
    """Erase one connected component (full connectivity) smaller than ``max_fraction`` of the array, chosen by ``draw``."""
    labelled, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    if n == 0:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    small = np.flatnonzero(sizes < max_fraction * mask.size) + 1
    if len(small) == 0:
        return mask
    chosen = small[min(int(draw * len(small)), len(small) - 1)]
    return mask & (labelled != chosen)


@dataclass(frozen=True)
class RemoveRandomComponent:
    """nnU-Net's ``RemoveRandomConnectedComponentFromOneHotEncodingTransform`` (no refilling with another class)."""

    num_labels: int
    p: float = 0.2
    p_per_label: float = 0.5
    max_fraction: float = 0.15

    def sample(self, rng: np.random.Generator, batch: Batch) -> LabelEdits:
        return _sample_edits(rng, batch, self.num_labels, self.p, self.p_per_label, (0.0, 1.0))

    def apply(self, batch: Batch, params: LabelEdits) -> Batch:
        if self.num_labels == 0 or not (params.apply[:, None] & params.per_label).any():
            return batch
        block, start = _label_block(batch, self.num_labels)
        for b in np.flatnonzero(params.apply):
            for k, c in enumerate(params.order[b]):
                if params.per_label[b, k]:
                    block[b, c] = remove_component(block[b, c], float(params.value[b, k]), max_fraction=self.max_fraction)
        return _write_back(batch, block, start)


@dataclass(frozen=True)
class CascadeInputs:
    """What a cascade stage adds to the batch pipeline: the one-hot move and, for training, the two augmentations."""

    foreground_labels: tuple[int, ...]

    @property
    def transforms(self) -> list[Any]:
        n = len(self.foreground_labels)
        return [RandomBinaryOperator(n), RemoveRandomComponent(n)]

    def train(self, batch: Batch, rng: np.random.Generator) -> Batch:
        batch = move_prev_stage_to_image(batch, self.foreground_labels)
        for t in self.transforms:
            batch = t.apply(batch, t.sample(rng, batch))
        return batch

    def validation(self, batch: Batch) -> Batch:
        return move_prev_stage_to_image(batch, self.foreground_labels)
