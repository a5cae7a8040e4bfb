"""Per-case fingerprint statistics (pure functions) and their weighted aggregation.

nnU-Net samples ``int(10e7 // num_cases)`` foreground voxels per case and channel *with replacement* (seed 1234,
one ``RandomState`` shared by the channels of a case), pools the samples of all cases and takes mean, median, std,
min, max and the 0.5/99.5 percentiles. A pooled sample of 1e8 float32 values is 400 MB per channel; nnseg keeps each
case's sample as (distinct value, how often drawn) pairs instead, which is at most as large as the case's foreground,
and computes the same statistics from the weighted values exactly (numpy's linear-interpolation percentiles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnseg.raw.crop import crop_to_nonzero

FOREGROUND_SAMPLES_TOTAL = 10e7  # nnU-Net's num_foreground_voxels_for_intensitystats (1e8)
SAMPLING_SEED = 1234
INTENSITY_KEYS = ("max", "mean", "median", "min", "percentile_00_5", "percentile_99_5", "std")


def samples_per_case(num_cases: int) -> int:
    """nnU-Net's ``int(10e7 // num_cases)``."""
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}; the dataset has no training cases")
    return int(FOREGROUND_SAMPLES_TOTAL // num_cases)


@dataclass
class WeightedSample:
    """A sample stored as distinct values (sorted, float64) with how often each was drawn (int64)."""

    values: np.ndarray
    counts: np.ndarray

    @classmethod
    def empty(cls) -> "WeightedSample":
        return cls(np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64))

    @classmethod
    def from_weighted(cls, values: np.ndarray, counts: np.ndarray) -> "WeightedSample":
        """Merge equal values (drops zero counts)."""
        keep = counts > 0
        uniq, inverse = np.unique(np.asarray(values, dtype=np.float64)[keep], return_inverse=True)
        merged = np.bincount(inverse.reshape(-1), weights=counts[keep], minlength=uniq.size)
        return cls(uniq, np.rint(merged).astype(np.int64))

    @classmethod
    def pool(cls, samples: Sequence["WeightedSample"]) -> "WeightedSample":
        if not samples:
            return cls.empty()
        return cls.from_weighted(np.concatenate([s.values for s in samples]), np.concatenate([s.counts for s in samples]))

    @property
    def size(self) -> int:
        return int(self.counts.sum())


def sample_foreground(image: np.ndarray, mask: np.ndarray, num_samples: int, rs: np.random.RandomState) -> WeightedSample:
    """Draw ``num_samples`` foreground intensities uniformly with replacement, as (value, count) pairs.

    The counts are drawn at once from the multinomial distribution, which is exactly the distribution of the counts
    of nnU-Net's ``rs.choice(fg, num_samples, replace=True)`` (but ~15x faster for large samples; the individual
    draws, and so the statistics up to sampling noise, differ from nnU-Net's stream).

    Args:
        image: one channel ``(X, Y, Z)``.
        mask: boolean foreground ``(X, Y, Z)``.
        num_samples: how many draws.
        rs: the random state (shared by the channels of a case).
    """
    foreground = image[mask]
    if foreground.size == 0 or num_samples <= 0:
        return WeightedSample.empty()
    counts = rs.multinomial(num_samples, np.full(foreground.size, 1.0 / foreground.size))
    return WeightedSample.from_weighted(foreground, counts)


@dataclass
class CaseStats:
    """What the fingerprint needs from one training case."""

    spacing: list[float]
    shape_after_crop: list[int]
    relative_size_after_cropping: float
    foreground: list[WeightedSample]  # one per channel


def case_stats(images: np.ndarray, seg: np.ndarray, spacing: Sequence[float], *, num_samples: int,
               seed: int = SAMPLING_SEED) -> CaseStats:
    """Fingerprint one case: crop to the non-zero region, record shapes and sample foreground intensities.

    Args:
        images: ``(C, X, Y, Z)`` as read.
        seg: ``(1, X, Y, Z)`` label map (modified in place by the crop; pass a copy to keep it).
        spacing: the case's spacing per array axis.
        num_samples: foreground draws per channel (:func:`samples_per_case`).
        seed: seed of the ``RandomState`` shared by the channels.
    """
    shape_before = images.shape[1:]
    cropped, seg_cropped, _ = crop_to_nonzero(images, seg)
    mask = seg_cropped[0] > 0
    rs = np.random.RandomState(seed)
    foreground = [sample_foreground(cropped[c], mask, num_samples, rs) for c in range(cropped.shape[0])]
    shape_after = [int(s) for s in cropped.shape[1:]]
    return CaseStats(
        spacing=[float(s) for s in spacing],
        shape_after_crop=shape_after,
        relative_size_after_cropping=float(math.prod(shape_after) / math.prod(int(s) for s in shape_before)),
        foreground=foreground,
    )


def weighted_percentile(sample: WeightedSample, q: float) -> float:
    """``np.percentile(expanded, q)`` (linear interpolation) of the expanded sample, without expanding it."""
    n = sample.size
    position = (n - 1) * q / 100.0
    lo = int(math.floor(position))
    hi = min(lo + 1, n - 1)
    cum = np.cumsum(sample.counts)
    v_lo, v_hi = sample.values[np.searchsorted(cum, [lo, hi], side="right")]
    return float(v_lo + (position - lo) * (v_hi - v_lo))


def intensity_statistics(sample: WeightedSample) -> dict[str, float]:
    """nnU-Net's per-channel ``foreground_intensity_properties`` of a pooled sample (keys sorted).

    Raises:
        ValueError: the sample is empty (no foreground voxel in any training case).
    """
    if sample.size == 0:
        raise ValueError("no foreground voxels (label > 0) in any training case; check labelsTr: the fingerprint "
                         "needs at least one labelled voxel")
    weights = sample.counts.astype(np.float64)
    mean = float(np.average(sample.values, weights=weights))
    std = float(math.sqrt(max(0.0, float(np.average((sample.values - mean) ** 2, weights=weights)))))
    stats = {
        "max": float(sample.values[-1]),
        "mean": mean,
        "median": weighted_percentile(sample, 50.0),
        "min": float(sample.values[0]),
        "percentile_00_5": weighted_percentile(sample, 0.5),
        "percentile_99_5": weighted_percentile(sample, 99.5),
        "std": std,
    }
    return {k: stats[k] for k in INTENSITY_KEYS}
