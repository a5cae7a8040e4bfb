"""nnU-Net's U-Nets (PlainConvUNet, ResidualEncoderUNet), checkpoint-compatible with nnU-Net v2.

Public API:
    build_network(architecture, *, input_channels, num_classes, deep_supervision=True) -> nn.Module
    estimate_feature_map_size(architecture, patch_size, *, input_channels, num_classes, deep_supervision=True) -> int
    NETWORKS: registry of network classes by the names plans files use
    count_parameters(net) -> int;  network_summary(net, patch_size) -> str
    set_deep_supervision(net, enabled) (what nnU-Net's trainer does via net.decoder.deep_supervision)
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module; loaded on first use, so that the torch-free VRAM estimate (memory) does not import torch
_HOMES = {"NETWORKS": "build", "build_network": "build", "resolve_architecture": "build",
          "set_deep_supervision": "build", "estimate_feature_map_size": "memory", "PlainConvUNet": "plain_unet",
          "ResidualEncoderUNet": "resenc_unet", "count_parameters": "summary", "network_summary": "summary"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'nnseg.networks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nnseg.networks.{_HOMES[name]}"), name)
    globals()[name] = value
    return value

__all__ = [
    "NETWORKS",
    "PlainConvUNet",
    "ResidualEncoderUNet",
    "build_network",
    "count_parameters",
    "estimate_feature_map_size",
    "network_summary",
    "resolve_architecture",
    "set_deep_supervision",
]
