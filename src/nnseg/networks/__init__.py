"""nnU-Net's U-Nets (PlainConvUNet, ResidualEncoderUNet), checkpoint-compatible with nnU-Net v2.

Public API:
    build_network(architecture, *, input_channels, num_classes, deep_supervision=True) -> nn.Module
    estimate_feature_map_size(architecture, patch_size, *, input_channels, num_classes, deep_supervision=True) -> int
    NETWORKS: registry of network classes by the names plans files use
    count_parameters(net) -> int;  network_summary(net, patch_size) -> str
    set_deep_supervision(net, enabled) (what nnU-Net's trainer does via net.decoder.deep_supervision)
"""

from __future__ import annotations

from nnseg.networks.build import NETWORKS, build_network, resolve_architecture, set_deep_supervision
from nnseg.networks.memory import estimate_feature_map_size
from nnseg.networks.plain_unet import PlainConvUNet
from nnseg.networks.resenc_unet import ResidualEncoderUNet
from nnseg.networks.summary import count_parameters, network_summary

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
