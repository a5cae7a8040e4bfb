"""Convolution building blocks with the module layout of dynamic-network-architectures 0.4.4.

Attribute names and registration order decide the state-dict keys, so they follow the
nnU-Net checkpoints exactly: a :class:`ConvDropoutNormReLU` registers `conv`, `dropout`, `norm`,
`nonlin` and then the same modules again in the `Sequential` `all_modules`, hence every parameter
appears twice in the state dict (`convs.0.conv.weight` and `convs.0.all_modules.0.weight`).

Feature-map sizes (`compute_conv_feature_map_size`) count output elements of one sample, with
spatial sizes divided by the stride using integer division, as nnU-Net's planner expects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nnseg.networks.dims import as_dims, per_item  # re-exported (listed in __all__)
from nnseg.networks.ops import conv_dim, matching_avg_pool

__all__ = [
    "ConvDropoutNormReLU",
    "StackedConvBlocks",
    "as_dims",
    "per_item",
    "prod_size",
]


def prod_size(channels: int, size: Sequence[int]) -> int:
    """Number of elements of a feature map with `channels` channels and spatial `size`."""
    return int(channels) * math.prod(int(s) for s in size)


class ConvDropoutNormReLU(nn.Module):
    """Conv -> [dropout] -> [norm] -> [nonlinearity] (norm and nonlin swapped when `nonlin_first`).

    Input `(B, C_in, *spatial)`, output `(B, C_out, *spatial // stride)` ("same" padding `(k - 1) // 2`).
    """

    def __init__(
        self,
        conv_op: type[nn.Module],
        input_channels: int,
        output_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        nonlin_first: bool = False,
    ) -> None:
        super().__init__()
        dim = conv_dim(conv_op)
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.stride = as_dims(stride, dim)
        kernel = as_dims(kernel_size, dim)
        self.conv = conv_op(
            input_channels, output_channels, kernel, self.stride,
            padding=[(k - 1) // 2 for k in kernel], dilation=1, bias=conv_bias,
        )
        ops: list[nn.Module] = [self.conv]
        if dropout_op is not None:
            self.dropout = dropout_op(**(dropout_op_kwargs or {}))
            ops.append(self.dropout)
        if norm_op is not None:
            self.norm = norm_op(output_channels, **(norm_op_kwargs or {}))
            ops.append(self.norm)
        if nonlin is not None:
            self.nonlin = nonlin(**(nonlin_kwargs or {}))
            ops.append(self.nonlin)
        if nonlin_first and norm_op is not None and nonlin is not None:
            ops[-1], ops[-2] = ops[-2], ops[-1]
        self.all_modules = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_modules(x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Output elements for a spatial `input_size`."""
        return prod_size(self.output_channels, [i // s for i, s in zip(input_size, self.stride)])


class StackedConvBlocks(nn.Module):
    """`num_convs` :class:`ConvDropoutNormReLU` in `self.convs`; only the first one is strided."""

    def __init__(
        self,
        num_convs: int,
        conv_op: type[nn.Module],
        input_channels: int,
        output_channels: int | Sequence[int],
        kernel_size: int | Sequence[int],
        initial_stride: int | Sequence[int],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        nonlin_first: bool = False,
    ) -> None:
        super().__init__()
        channels = per_item(output_channels, num_convs, "output_channels")
        common = (conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first)
        convs = [ConvDropoutNormReLU(conv_op, input_channels, channels[0], kernel_size, initial_stride, *common)]
        for i in range(1, num_convs):
            convs.append(ConvDropoutNormReLU(conv_op, channels[i - 1], channels[i], kernel_size, 1, *common))
        self.convs = nn.Sequential(*convs)
        self.output_channels = channels[-1]
        self.initial_stride = as_dims(initial_stride, conv_dim(conv_op))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Output elements of all convs for a spatial `input_size`."""
        total = self.convs[0].compute_conv_feature_map_size(input_size)
        after_stride = [i // s for i, s in zip(input_size, self.initial_stride)]
        for conv in self.convs[1:]:
            total += conv.compute_conv_feature_map_size(after_stride)
        return total


def make_avg_pool(conv_op: type[nn.Module], stride: Sequence[int]) -> nn.Module:
    """Average pooling with kernel = stride (the residual-branch downsampling of the ResEnc blocks)."""
    return matching_avg_pool(conv_op)(list(stride), list(stride))
