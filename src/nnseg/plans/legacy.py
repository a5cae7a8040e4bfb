"""Migration of configurations written by nnU-Net v2 before the ``architecture`` entry existed (< 2.3).

Old plans describe the network with flat keys (``UNet_class_name``, ``UNet_base_num_features``,
``n_conv_per_stage_encoder``, ``n_conv_per_stage_decoder``, ``num_pool_per_axis``, ``pool_op_kernel_sizes``,
``conv_kernel_sizes``, ``unet_max_num_features``). nnU-Net rebuilds the ``architecture`` dict from them when it loads
such a configuration; :func:`migrate_v1_architecture` does the same as a named, pure step.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

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
    arch = {
        "network_class_name": class_name,
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [min(base * 2 ** i, cap) for i in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": cfg["conv_kernel_sizes"],
            "strides": cfg["pool_op_kernel_sizes"],
            blocks_key: cfg["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": cfg["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    for key in LEGACY_ARCHITECTURE_KEYS:
        cfg.pop(key, None)
    cfg["architecture"] = arch
    return cfg
