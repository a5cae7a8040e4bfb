"""nnU-Net's VRAM proxy computed analytically (no network is built), cached by arguments.

The result equals `build_network(...).compute_conv_feature_map_size(patch_size)`: the sum of the
output elements of every conv in the encoder (each stage once), and per decoder stage its conv
outputs, the transposed-conv output (skip channels x skip size) and, with deep supervision or at the
last stage, the segmentation output (num_classes x skip size). Spatial sizes shrink by integer division.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from nnseg.networks.dims import as_dims, per_item

# The names nnU-Net's planners write: an architecture made only of these is estimated without importing torch
# (the planner runs beside the preprocessing workers; torch costs ~1.3 s of CPU to import and ~0.4 s to unload).
_PLAIN, _RESENC = ("dynamic_network_architectures.architectures.unet.PlainConvUNet",
                   "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet")
_CONV_DIMS = {"torch.nn.modules.conv.Conv2d": 2, "torch.nn.modules.conv.Conv3d": 3}
_BLOCKS = {None: False, "dynamic_network_architectures.building_blocks.residual.BasicBlockD": False,
           "dynamic_network_architectures.building_blocks.residual.BottleneckD": True}

__all__ = ["estimate_feature_map_size"]


def _n(channels: int, size: Sequence[int]) -> int:
    return int(channels) * math.prod(size)


def _down(size: Sequence[int], stride: Sequence[int]) -> list[int]:
    return [i // s for i, s in zip(size, stride)]


def _plain_encoder(kw: dict[str, Any], strides: list[list[int]], patch: list[int]) -> int:
    n = kw["n_stages"]
    features = per_item(kw["features_per_stage"], n, "features_per_stage")
    n_convs = per_item(kw["n_conv_per_stage"], n, "n_conv_per_stage")
    total, size = 0, patch
    for s in range(n):
        size = _down(size, strides[s])
        total += n_convs[s] * _n(features[s], size)
    return total


def _residual_block(bottleneck: int | None, c_in: int, c_out: int, size: list[int], after: list[int]) -> int:
    skip = _n(c_out, after) if (c_in != c_out or size != after) else 0
    if bottleneck is None:
        return 2 * _n(c_out, after) + skip
    return _n(bottleneck, size) + _n(bottleneck, after) + _n(c_out, after) + skip


def _residual_encoder(kw: dict[str, Any], strides: list[list[int]], patch: list[int]) -> int:
    n = kw["n_stages"]
    features = per_item(kw["features_per_stage"], n, "features_per_stage")
    n_blocks = per_item(kw["n_blocks_per_stage"], n, "n_blocks_per_stage")
    use_bottleneck = kw["_bottleneck"]
    bottleneck = per_item(kw.get("bottleneck_channels"), n, "bottleneck_channels")
    c_in = kw.get("stem_channels") or features[0]
    total, size = _n(c_in, patch), patch
    for s in range(n):
        b = bottleneck[s] if use_bottleneck else None
        after = _down(size, strides[s])
        total += _residual_block(b, c_in, features[s], size, after)
        total += (n_blocks[s] - 1) * _residual_block(b, features[s], features[s], after, after)
        c_in, size = features[s], after
    return total


def _decoder(kw: dict[str, Any], strides: list[list[int]], patch: list[int], num_classes: int, ds: bool) -> int:
    n = kw["n_stages"]
    features = per_item(kw["features_per_stage"], n, "features_per_stage")
    n_convs = per_item(kw["n_conv_per_stage_decoder"], n - 1, "n_conv_per_stage_decoder")
    skip_sizes, size = [], patch
    for stride in strides[:-1]:
        size = _down(size, stride)
        skip_sizes.append(size)
    total = 0
    for s in range(n - 1):
        size, channels = skip_sizes[-(s + 1)], features[-(s + 2)]
        total += (n_convs[s] + 1) * _n(channels, size)
        if ds or s == n - 2:
            total += _n(num_classes, size)
    return total


def _to_plain(obj: object) -> object:
    """JSON fallback for numpy scalars and arrays in an architecture dict."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


@lru_cache(maxsize=8192)
def _estimate_cached(arch_json: str, patch: tuple[int, ...], num_classes: int, ds: bool) -> int:
    return _estimate(json.loads(arch_json), patch, num_classes, ds)


def _by_name(architecture: Mapping[str, Any]) -> tuple[bool, int, dict[str, Any]] | None:
    """``(plain, dim, kwargs)`` of an architecture made only of the planners' names, else None."""
    kw = dict(architecture.get("arch_kwargs") or {})
    name, conv, block = architecture.get("network_class_name"), kw.get("conv_op"), kw.get("block")
    if name not in (_PLAIN, _RESENC) or not isinstance(conv, str) or conv not in _CONV_DIMS:
        return None
    if not (block is None or isinstance(block, str)) or block not in _BLOCKS or "n_stages" not in kw:
        return None
    return name == _PLAIN, _CONV_DIMS[conv], {**kw, "_bottleneck": _BLOCKS[block]}


def _resolved(architecture: Mapping[str, Any]) -> tuple[bool, int, dict[str, Any]]:
    """``(plain, dim, kwargs)`` through the network registries (imports torch; validates every name)."""
    from nnseg.networks.build import resolve_architecture
    from nnseg.networks.ops import conv_dim
    from nnseg.networks.plain_unet import PlainConvUNet
    from nnseg.networks.resenc_unet import ResidualEncoderUNet
    from nnseg.networks.residual import BottleneckD

    cls, kw = resolve_architecture(architecture)
    # a network from an extension gets the planned arch_kwargs: estimate the U-Net they describe
    plain = cls is PlainConvUNet or (cls is not ResidualEncoderUNet and "n_blocks_per_stage" not in kw)
    return plain, conv_dim(kw["conv_op"]), {**kw, "_bottleneck": kw.get("block") is BottleneckD}


def _estimate(architecture: Mapping[str, Any], patch: tuple[int, ...], num_classes: int, ds: bool) -> int:
    plain, dim, kw = _by_name(architecture) or _resolved(architecture)
    if len(patch) != dim:
        raise ValueError(f"patch size {list(patch)} has {len(patch)} axes but the architecture is {dim}D")
    strides = [as_dims(s, dim) for s in per_item(kw["strides"], kw["n_stages"], "strides")]
    encoder = _plain_encoder if plain else _residual_encoder
    return encoder(kw, strides, list(patch)) + _decoder(kw, strides, list(patch), num_classes, ds)


def estimate_feature_map_size(
    architecture: Mapping[str, Any],
    patch_size: Sequence[int],
    *,
    input_channels: int,
    num_classes: int,
    deep_supervision: bool = True,
) -> int:
    """nnU-Net's `compute_conv_feature_map_size(patch_size)` for the network of a plans `architecture` dict.

    Args:
        architecture: plans `architecture` dict (`network_class_name`, `arch_kwargs`, `_kw_requires_import`).
        patch_size: spatial patch size, one int per axis (2 or 3).
        input_channels: image channels (validated; the estimate does not depend on it).
        num_classes: number of segmentation outputs.
        deep_supervision: count the segmentation outputs of every decoder stage.

    Returns:
        Number of feature-map elements for one sample (the planner's VRAM proxy).
    """
    if int(input_channels) < 1 or int(num_classes) < 1:
        raise ValueError(f"input_channels and num_classes must be >= 1, got {input_channels}, {num_classes}")
    patch = tuple(int(p) for p in patch_size)
    try:
        key = json.dumps(architecture, sort_keys=True, default=_to_plain)
    except TypeError:  # resolved classes instead of names: compute without the cache
        return _estimate(architecture, patch, int(num_classes), bool(deep_supervision))
    return _estimate_cached(key, patch, int(num_classes), bool(deep_supervision))
