"""Intensity transforms of nnU-Net's default augmentation (reference §1.10, rows 2-8), batched.

All of them change ``batch.image`` only; labels are never touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nnseg.training.augment.base import Batch, as_tensor, bg_contrast, per_sample_view

GAMMA_EPS = 1e-7
STD_EPS = 1e-8
BLUR_TRUNCATE = 3.0


@dataclass(frozen=True)
class NoiseParams:
    applied: np.ndarray  # (B,) bool
    sigma: np.ndarray  # (B,)
    seeds: np.ndarray  # (B,) int


@dataclass(frozen=True)
class GaussianNoise:
    """Additive Gaussian noise, standard deviation ~ U(0, 0.1), the same for all channels; p = 0.1."""

    p: float = 0.1
    sigma_range: tuple[float, float] = (0.0, 0.1)

    def sample(self, rng: np.random.Generator, batch: Batch) -> NoiseParams:
        b = batch.batch_size
        return NoiseParams(rng.random(b) < self.p, rng.uniform(*self.sigma_range, b), rng.integers(0, 2**31, b))

    def apply(self, batch: Batch, params: NoiseParams) -> Batch:
        image = batch.image.clone()
        for i in np.flatnonzero(params.applied):
            g = torch.Generator(device="cpu").manual_seed(int(params.seeds[i]))
            noise = torch.randn(image.shape[1:], generator=g, dtype=torch.float32).to(image.device, image.dtype)
            image[i] += noise * float(params.sigma[i])
        return batch.with_(image=image)


@dataclass(frozen=True)
class BlurParams:
    applied: np.ndarray  # (B, C) bool: sample selected and channel selected
    sigma: np.ndarray  # (B, C, D)


def _gaussian_kernels(sigmas: np.ndarray, radius: int) -> np.ndarray:
    """Normalised 1D kernels ``(N, 2r+1)`` for each sigma; sigma 0 gives the identity kernel."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    safe = np.where(sigmas > 0, sigmas, 1.0)[:, None]
    k = np.exp(-0.5 * (x[None] / safe) ** 2)
    k = k / k.sum(1, keepdims=True)
    identity = (x == 0).astype(np.float64)
    return np.where(sigmas[:, None] > 0, k, identity[None])


@dataclass(frozen=True)
class GaussianBlur:
    """Gaussian blur, sigma ~ U(0.5, 1) per channel and axis, each channel with p = 0.5; p = 0.2 per sample."""

    p: float = 0.2
    sigma_range: tuple[float, float] = (0.5, 1.0)
    p_per_channel: float = 0.5

    def sample(self, rng: np.random.Generator, batch: Batch) -> BlurParams:
        b, c, d = batch.batch_size, batch.num_channels, len(batch.spatial_shape)
        applied = (rng.random(b) < self.p)[:, None] & (rng.random((b, c)) < self.p_per_channel)
        return BlurParams(applied, rng.uniform(*self.sigma_range, (b, c, d)))

    def apply(self, batch: Batch, params: BlurParams) -> Batch:
        if not params.applied.any():
            return batch
        image = batch.image
        b, c, spatial = image.shape[0], image.shape[1], image.shape[2:]
        radius = int(math.ceil(BLUR_TRUNCATE * self.sigma_range[1]))
        x = image.reshape(1, b * c, *spatial)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(spatial)]
        for axis in range(len(spatial)):
            sig = np.where(params.applied, params.sigma[..., axis], 0.0).reshape(-1)
            kernel = as_tensor(_gaussian_kernels(sig, radius), x)
            shape = [b * c, 1] + [1] * len(spatial)
            shape[2 + axis] = 2 * radius + 1
            pad = [0, 0] * len(spatial)
            pad[2 * (len(spatial) - 1 - axis)] = pad[2 * (len(spatial) - 1 - axis) + 1] = radius
            x = conv(F.pad(x, pad, mode="replicate"), kernel.reshape(shape), groups=b * c)
        return batch.with_(image=x.reshape(image.shape))


@dataclass(frozen=True)
class FactorParams:
    applied: np.ndarray  # (B,) bool
    factor: np.ndarray  # (B, C)


def _factors(rng: np.random.Generator, batch: Batch, p: float, value_range: tuple[float, float]) -> FactorParams:
    b, c = batch.batch_size, batch.num_channels
    return FactorParams(rng.random(b) < p, bg_contrast(rng, value_range, (b, c)))


def _effective(params: FactorParams, like: torch.Tensor) -> torch.Tensor:
    """Factor where applied, 1 elsewhere, shaped to broadcast over ``like``."""
    f = np.where(params.applied[:, None], params.factor, 1.0)
    return per_sample_view(as_tensor(f, like), like.ndim)


@dataclass(frozen=True)
class MultiplicativeBrightness:
    """Multiply each channel by BGContrast((0.75, 1.25)); p = 0.15."""

    p: float = 0.15
    value_range: tuple[float, float] = (0.75, 1.25)

    def sample(self, rng: np.random.Generator, batch: Batch) -> FactorParams:
        return _factors(rng, batch, self.p, self.value_range)

    def apply(self, batch: Batch, params: FactorParams) -> Batch:
        if not params.applied.any():
            return batch
        return batch.with_(image=batch.image * _effective(params, batch.image))


@dataclass(frozen=True)
class Contrast:
    """Scale each channel around its mean by BGContrast((0.75, 1.25)), clipped to the old range; p = 0.15."""

    p: float = 0.15
    value_range: tuple[float, float] = (0.75, 1.25)
    preserve_range: bool = True

    def sample(self, rng: np.random.Generator, batch: Batch) -> FactorParams:
        return _factors(rng, batch, self.p, self.value_range)

    def apply(self, batch: Batch, params: FactorParams) -> Batch:
        if not params.applied.any():
            return batch
        x = batch.image
        axes = tuple(range(2, x.ndim))
        mean = x.mean(axes, keepdim=True)
        out = (x - mean) * _effective(params, x) + mean
        if self.preserve_range:
            out = torch.maximum(torch.minimum(out, x.amax(axes, keepdim=True)), x.amin(axes, keepdim=True))
        return batch.with_(image=out)


@dataclass(frozen=True)
class LowResParams:
    applied: np.ndarray  # (B, C) bool
    scale: np.ndarray  # (B, C)


@dataclass(frozen=True)
class SimulateLowResolution:
    """Downsample (nearest) by U(0.5, 1) and upsample back (linear), per channel p = 0.5; p = 0.25 per sample."""

    p: float = 0.25
    scale_range: tuple[float, float] = (0.5, 1.0)
    p_per_channel: float = 0.5
    ignore_axes: tuple[int, ...] = ()

    def sample(self, rng: np.random.Generator, batch: Batch) -> LowResParams:
        b, c = batch.batch_size, batch.num_channels
        applied = (rng.random(b) < self.p)[:, None] & (rng.random((b, c)) < self.p_per_channel)
        return LowResParams(applied, rng.uniform(*self.scale_range, (b, c)))

    def apply(self, batch: Batch, params: LowResParams) -> Batch:
        if not params.applied.any():
            return batch
        image = batch.image.clone()
        spatial = image.shape[2:]
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        for i, ch in zip(*np.nonzero(params.applied)):
            small = [s if ax in self.ignore_axes else max(1, round(s * float(params.scale[i, ch])))
                     for ax, s in enumerate(spatial)]
            x = image[i, ch][None, None]
            down = F.interpolate(x, size=small, mode="nearest-exact")
            image[i, ch] = F.interpolate(down, size=tuple(spatial), mode=mode, align_corners=False)[0, 0]
        return batch.with_(image=image)


@dataclass(frozen=True)
class GammaParams:
    applied: np.ndarray  # (B,) bool
    gamma: np.ndarray  # (B, C)


@dataclass(frozen=True)
class Gamma:
    """Gamma ~ BGContrast((0.7, 1.5)) on the min-max normalised channel, mean and std kept; optionally inverted."""

    p: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    invert_image: bool = False
    retain_stats: bool = True

    def sample(self, rng: np.random.Generator, batch: Batch) -> GammaParams:
        b, c = batch.batch_size, batch.num_channels
        return GammaParams(rng.random(b) < self.p, bg_contrast(rng, self.gamma_range, (b, c)))

    def apply(self, batch: Batch, params: GammaParams) -> Batch:
        if not params.applied.any():
            return batch
        x = -batch.image if self.invert_image else batch.image
        axes = tuple(range(2, x.ndim))
        mean, std = x.mean(axes, keepdim=True), x.std(axes, keepdim=True)
        lo = x.amin(axes, keepdim=True)
        rng_ = x.amax(axes, keepdim=True) - lo
        gamma = per_sample_view(as_tensor(params.gamma, x), x.ndim)
        y = ((x - lo) / torch.clamp(rng_, min=GAMMA_EPS)) ** gamma * rng_ + lo
        if self.retain_stats:
            y_mean, y_std = y.mean(axes, keepdim=True), y.std(axes, keepdim=True)
            y = (y - y_mean) / (y_std + STD_EPS) * std + mean
        if self.invert_image:
            y = -y
        applied = per_sample_view(torch.as_tensor(params.applied, device=x.device), x.ndim)
        return batch.with_(image=torch.where(applied, y, batch.image))
