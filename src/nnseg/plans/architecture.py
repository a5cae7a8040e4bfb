"""The ``architecture`` entry of a plans configuration, as nnU-Net writes it (torch-free: names, not classes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KW_REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")


def architecture_entry(network_class_name: str, *, ndim: int, features_per_stage: Sequence[int],
                       kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]], encoder_key: str,
                       encoder_blocks: Sequence[int], decoder_convs: Sequence[int]) -> dict[str, Any]:
    """``{network_class_name, arch_kwargs, _kw_requires_import}`` with nnU-Net's key order and fixed settings
    (conv bias, InstanceNorm eps 1e-5 affine, no dropout, LeakyReLU in place)."""
    return {
        "network_class_name": network_class_name,
        "arch_kwargs": {
            "n_stages": len(features_per_stage),
            "features_per_stage": list(features_per_stage),
            "conv_op": f"torch.nn.modules.conv.Conv{ndim}d",
            "kernel_sizes": kernel_sizes,
            "strides": strides,
            encoder_key: encoder_blocks,
            "n_conv_per_stage_decoder": decoder_convs,
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{ndim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": list(KW_REQUIRES_IMPORT),
    }
