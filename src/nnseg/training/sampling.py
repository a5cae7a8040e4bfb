"""Patch sampling from the preprocessed store with nnU-Net's foreground oversampling (reference §1.9).

In every batch the last ``bs - round(bs * (1 - oversample))`` samples are forced to contain foreground: a class with
stored locations is drawn, then one of its voxels, and the (enlarged, initial) patch is centred on it. Other samples
are drawn uniformly, allowing the patch to stick out of the image by half the difference between the initial and the
final patch. Data is padded with 0 and labels with -1. 2D configurations store volumes and train on one slice:
their patch is ``(1, X, Y)`` here and the slice axis is dropped from the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnseg.preprocessed.store import load_case, open_b2nd
from nnseg.training.partial import PartialCodes


def oversample_flags(batch_size: int, oversample_foreground: float) -> list[bool]:
    """nnU-Net's rule: sample ``i`` is forced to foreground iff ``i >= round(bs * (1 - p))``."""
    first_forced = round(batch_size * (1 - oversample_foreground))
    return [i >= first_forced for i in range(batch_size)]


def _eligible_classes(class_locations: Mapping[Any, np.ndarray], annotated_key: Any) -> list[Any]:
    keys = [k for k, v in class_locations.items() if len(v) > 0]
    if annotated_key in keys and len(keys) > 1:
        keys.remove(annotated_key)
    return keys


def choose_bbox(rng: np.random.Generator, data_shape: Sequence[int], patch_size: Sequence[int],
                need_to_pad: Sequence[int], *, force_fg: bool, class_locations: Mapping[Any, np.ndarray] | None,
                annotated_key: Any = None) -> tuple[list[int], list[int]]:
    """Lower and upper corner of a patch in voxel coordinates of the (unpadded) case, as nnU-Net's ``get_bbox``."""
    dim = len(data_shape)
    pad = [max(int(need_to_pad[d]), int(patch_size[d]) - int(data_shape[d])) for d in range(dim)]
    lbs = [-(pad[d] // 2) for d in range(dim)]
    ubs = [int(data_shape[d]) + pad[d] // 2 + pad[d] % 2 - int(patch_size[d]) for d in range(dim)]
    selected = None
    if class_locations is not None and (force_fg or annotated_key is not None):
        if force_fg:
            eligible = _eligible_classes(class_locations, annotated_key)
            selected = eligible[rng.integers(len(eligible))] if eligible else None
        elif len(class_locations.get(annotated_key, ())) > 0:
            selected = annotated_key
    if selected is not None:
        voxels = class_locations[selected]
        voxel = voxels[rng.integers(len(voxels))]
        lower = [max(lbs[d], int(voxel[d + 1]) - int(patch_size[d]) // 2) for d in range(dim)]
    else:
        lower = [int(rng.integers(lbs[d], ubs[d] + 1)) for d in range(dim)]
    return lower, [lower[d] + int(patch_size[d]) for d in range(dim)]


def crop_and_pad(array: Any, lower: Sequence[int], upper: Sequence[int], *, pad_value: float) -> np.ndarray:
    """``array[:, lower:upper]`` of a ``(C, *spatial)`` array (lazy blosc2 or numpy), padded outside the image."""
    shape = array.shape[1:]
    valid = tuple(slice(max(0, lo), min(s, hi)) for lo, hi, s in zip(lower, upper, shape))
    part = np.asarray(array[(slice(None), *valid)])
    pads = [(0, 0)] + [(max(0, -lo), max(0, hi - s)) for lo, hi, s in zip(lower, upper, shape)]
    if any(p != (0, 0) for p in pads):
        part = np.pad(part, pads, mode="constant", constant_values=pad_value)
    return part


class _StackedSeg:
    """Labels ``(1, *spatial)`` and a previous-stage map ``(*spatial)`` read lazily as one ``(2, *spatial)`` array."""

    def __init__(self, seg: Any, prev: Any) -> None:
        self.seg, self.prev = seg, prev
        self.shape = (2, *seg.shape[1:])

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        spatial = index[1:]
        return np.stack([np.asarray(self.seg[(slice(0, 1), *spatial)])[0].astype(np.int16),
                         np.asarray(self.prev[spatial]).astype(np.int16)])


def _with_prev_stage(seg: Any, folder: Path, identifier: str) -> _StackedSeg:
    path = folder / f"{identifier}.b2nd"
    if not path.is_file():
        raise FileNotFoundError(f"previous-stage segmentation {path} is missing; train every fold of the previous "
                                "stage (its final validation writes predicted_next_stage/) before the cascade")
    prev = open_b2nd(path)
    if tuple(prev.shape) != tuple(seg.shape[1:]):
        raise ValueError(f"{path} has shape {tuple(prev.shape)} but case {identifier} is {tuple(seg.shape[1:])}; "
                         "it was written for other preprocessed data: rerun the previous stage's validation (--val)")
    return _StackedSeg(seg, prev)


@dataclass
class PatchSampler:
    """Draws training batches ``(image (B, C, *patch), seg (B, 1, *patch))`` from preprocessed cases.

    Args:
        folder: the configuration's preprocessed data folder.
        identifiers: the cases to sample from.
        patch_size: patch to read (the enlarged initial patch for training, the final patch for validation).
        final_patch_size: the network's patch (sets how far patches may stick out of the image).
        batch_size: samples per batch.
        oversample_foreground: nnU-Net's 0.33.
        annotated_key: with an ignore label, the class-locations key of annotated voxels (patches are drawn there).
        partial: codes for partially annotated cases' unlabelled voxels (:mod:`nnseg.training.partial`).
        prev_stage_folder: cascade only: folder of the previous stage's ``CASE.b2nd`` label maps ``(X, Y, Z)``;
            each is cropped like the image and returned as label channel 1 (seg ``(B, 2, *patch)``).
    """

    folder: Path
    identifiers: Sequence[str]
    patch_size: Sequence[int]
    final_patch_size: Sequence[int]
    batch_size: int
    oversample_foreground: float = 0.33
    annotated_key: Any = None
    prev_stage_folder: Path | None = None
    partial: PartialCodes | None = None
    _cache: dict[str, tuple[Any, Any, dict[str, Any]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.identifiers:
            raise ValueError(f"no training cases to sample from in {self.folder}; check splits_final.json and preprocessing")
        self.is_2d = len(self.patch_size) == 2
        self._patch = [1, *self.patch_size] if self.is_2d else list(self.patch_size)
        final = [1, *self.final_patch_size] if self.is_2d else list(self.final_patch_size)
        self._need_to_pad = [p - f for p, f in zip(self._patch, final)]

    def _open(self, identifier: str) -> tuple[Any, Any, dict[str, Any]]:
        if identifier not in self._cache:
            data, seg, props = load_case(Path(self.folder), identifier)
            if self.prev_stage_folder is not None:
                seg = _with_prev_stage(seg, Path(self.prev_stage_folder), identifier)
            self._cache[identifier] = (data, seg, props)
        return self._cache[identifier]

    def choose_cases(self, rng: np.random.Generator) -> list[str]:
        """The cases of a batch: the first draw from the batch's generator (see :meth:`sample`)."""
        return [self.identifiers[i] for i in rng.integers(len(self.identifiers), size=self.batch_size)]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """One batch: float32 image, int16 seg (-1 = outside the image or the non-zero mask), case identifiers."""
        chosen = self.choose_cases(rng)
        images, segs = [], []
        for identifier, force in zip(chosen, oversample_flags(self.batch_size, self.oversample_foreground)):
            data, seg, props = self._open(identifier)
            lower, upper = choose_bbox(rng, data.shape[1:], self._patch, self._need_to_pad, force_fg=force,
                                       class_locations=props.get("class_locations"), annotated_key=self.annotated_key)
            images.append(crop_and_pad(data, lower, upper, pad_value=0))
            part = crop_and_pad(seg, lower, upper, pad_value=-1)
            segs.append(part if self.partial is None else self.partial.encode(part, identifier))
        image = np.stack(images).astype(np.float32, copy=False)
        segs_arr = np.stack(segs).astype(np.int16, copy=False)
        if self.is_2d:
            image, segs_arr = image[:, :, 0], segs_arr[:, :, 0]
        return image, segs_arr, chosen
