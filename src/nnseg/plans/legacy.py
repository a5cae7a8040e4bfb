"""Migration of configurations written by nnU-Net v2 before the ``architecture`` entry existed (< 2.3).

Old plans describe the network with flat keys (``UNet_class_name``, ``UNet_base_num_features``,
``n_conv_per_stage_encoder``, ``n_conv_per_stage_decoder``, ``num_pool_per_axis``, ``pool_op_kernel_sizes``,
``conv_kernel_sizes``, ``unet_max_num_features``). nnU-Net rebuilds the ``architecture`` dict from them when it loads
such a configuration; :func:`migrate_v1_architecture` does the same as a named, pure step.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from nnseg.plans.architecture import architecture_entry

__all__ = ["LEGACY_ARCHITECTURE_KEYS", "migrate_v1_architecture", "needs_migration"]

LEGACY_ARCHITECTURE_KEYS = (
    "UNet_class_name", "UNet_base_num_features", "n_conv_per_stage_encoder", "n_conv_per_stage_decoder",
    "num_pool_per_axis", "pool_op_kernel_sizes", "conv_kernel_sizes", "unet_max_num_features",
)
_CLASSES = {
    "PlainConvUNet": ("dynamic_network_architectures.architectures.unet.PlainConvUNet", "n_conv_per_stage"),
    "ResidualEncoderUNet": ("dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet",
                            "n_blocks_per_stage"),
}


def needs_migration(configuration: Mapping[str, Any]) -> bool:
    """True for a resolved configuration in the old flat format (no ``architecture``, has ``UNet_class_name``)."""
    return "architecture" not in configuration and "UNet_class_name" in configuration


def migrate_v1_architecture(configuration: Mapping[str, Any], *, name: str = "") -> dict[str, Any]:
    """A copy of an old-format configuration with the flat network keys replaced by ``architecture``.

    Raises:
        ValueError: unknown ``UNet_class_name`` or a missing key (the message names the configuration).
    """
    cfg = copy.deepcopy(dict(configuration))
    missing = [k for k in LEGACY_ARCHITECTURE_KEYS if k not in cfg and k != "num_pool_per_axis"]
    if missing:
        raise ValueError(f"old-format configuration {name!r} lacks {missing}; re-run planning to get current plans")
    if cfg["UNet_class_name"] not in _CLASSES:
        raise ValueError(f"configuration {name!r} uses UNet_class_name {cfg['UNet_class_name']!r}; only "
                         f"{sorted(_CLASSES)} can be converted. Re-run planning to get current plans")
    class_name, blocks_key = _CLASSES[cfg["UNet_class_name"]]
    n_stages = len(cfg["n_conv_per_stage_encoder"])
    dim = len(cfg["patch_size"])
    base, cap = cfg["UNet_base_num_features"], cfg["unet_max_num_features"]
    arch = architecture_entry(
        class_name, ndim=dim, features_per_stage=[min(base * 2 ** i, cap) for i in range(n_stages)],
        kernel_sizes=cfg["conv_kernel_sizes"], strides=cfg["pool_op_kernel_sizes"], encoder_key=blocks_key,
        encoder_blocks=cfg["n_conv_per_stage_encoder"], decoder_convs=cfg["n_conv_per_stage_decoder"])
    for key in LEGACY_ARCHITECTURE_KEYS:
        cfg.pop(key, None)
    cfg["architecture"] = arch
    return cfg
