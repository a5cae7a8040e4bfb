"""Residual blocks ("ResNet-D": average-pool then 1x1 conv on the skip path) of the ResEnc U-Net."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnseg.networks.blocks import ConvDropoutNormReLU, as_dims, make_avg_pool, per_item, prod_size
from nnseg.networks.ops import conv_dim

__all__ = ["BLOCKS", "BasicBlockD", "BottleneckD", "StackedResidualBlocks", "resolve_block"]


def _skip_path(
    conv_op: type[nn.Module],
    input_channels: int,
    output_channels: int,
    stride: list[int],
    norm_op: type[nn.Module] | None,
    norm_op_kwargs: dict | None,
) -> nn.Module:
    """Identity, or Sequential(avg pool if strided, 1x1 conv + norm without bias if the channels change)."""
    has_stride = any(s != 1 for s in stride)
    needs_projection = input_channels != output_channels
    if not (has_stride or needs_projection):
        return nn.Identity()
    ops: list[nn.Module] = []
    if has_stride:
        ops.append(make_avg_pool(conv_op, stride))
    if needs_projection:
        ops.append(ConvDropoutNormReLU(conv_op, input_channels, output_channels, 1, 1, False, norm_op, norm_op_kwargs))
    return nn.Sequential(*ops)


def _skip_size(in_channels: int, out_channels: int, input_size: Sequence[int], after: Sequence[int]) -> int:
    if in_channels != out_channels or any(i != j for i, j in zip(input_size, after)):
        return prod_size(out_channels, after)
    return 0


class BasicBlockD(nn.Module):
    """conv1 (strided, with nonlin) -> conv2 (no nonlin) + skip -> nonlin2.

    Input `(B, C_in, *S)`, output `(B, C_out, *S // stride)`.
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
    ) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.stride = as_dims(stride, conv_dim(conv_op))
        self.conv1 = ConvDropoutNormReLU(
            conv_op, input_channels, output_channels, kernel_size, self.stride, conv_bias,
            norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
        )
        self.conv2 = ConvDropoutNormReLU(
            conv_op, output_channels, output_channels, kernel_size, 1, conv_bias, norm_op, norm_op_kwargs
        )
        self.nonlin2 = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()
        self.skip = _skip_path(conv_op, input_channels, output_channels, self.stride, norm_op, norm_op_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.skip(x)
        out = self.conv2(self.conv1(x))
        out += residual
        return self.nonlin2(out)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Output elements of conv1, conv2 and the projection (if any) for a spatial `input_size`."""
        after = [i // s for i, s in zip(input_size, self.stride)]
        skip = _skip_size(self.input_channels, self.output_channels, input_size, after)
        return 2 * prod_size(self.output_channels, after) + skip


class BottleneckD(nn.Module):
    """1x1 conv (bottleneck) -> strided k conv -> 1x1 conv (no nonlin) + skip -> nonlin3."""

    def __init__(
        self,
        conv_op: type[nn.Module],
        input_channels: int,
        bottleneck_channels: int,
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
    ) -> None:
        super().__init__()
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.bottleneck_channels = bottleneck_channels
        self.stride = as_dims(stride, conv_dim(conv_op))
        norm = (norm_op, norm_op_kwargs)
        drop_act = (dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        self.conv1 = ConvDropoutNormReLU(conv_op, input_channels, bottleneck_channels, 1, 1, conv_bias, *norm, *drop_act)
        self.conv2 = ConvDropoutNormReLU(
            conv_op, bottleneck_channels, bottleneck_channels, kernel_size, self.stride, conv_bias, *norm, *drop_act
        )
        self.conv3 = ConvDropoutNormReLU(conv_op, bottleneck_channels, output_channels, 1, 1, conv_bias, *norm)
        self.nonlin3 = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()
        self.skip = _skip_path(conv_op, input_channels, output_channels, self.stride, norm_op, norm_op_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.skip(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        out += residual
        return self.nonlin3(out)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Output elements of the three convs and the projection (if any) for a spatial `input_size`."""
        after = [i // s for i, s in zip(input_size, self.stride)]
        total = prod_size(self.bottleneck_channels, input_size) + prod_size(self.bottleneck_channels, after)
        total += prod_size(self.output_channels, after)
        return total + _skip_size(self.input_channels, self.output_channels, input_size, after)


BLOCKS: dict[str, type[nn.Module]] = {}
for _cls in (BasicBlockD, BottleneckD):
    BLOCKS[_cls.__name__] = _cls
    BLOCKS[f"dynamic_network_architectures.building_blocks.residual.{_cls.__name__}"] = _cls


def resolve_block(block: object) -> type[nn.Module]:
    """Resolve the `block` argument of the ResEnc U-Net (a name from a plans file or the class)."""
    if block in (BasicBlockD, BottleneckD):
        return block  # type: ignore[return-value]
    if isinstance(block, str) and block in BLOCKS:
        return BLOCKS[block]
    raise ValueError(f"arch_kwargs['block'] = {block!r} is not a known residual block; use one of {sorted(BLOCKS)}")


class StackedResidualBlocks(nn.Module):
    """`n_blocks` residual blocks in `self.blocks`; only the first one is strided / changes channels."""

    def __init__(
        self,
        n_blocks: int,
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
        block: type[nn.Module] = BasicBlockD,
        bottleneck_channels: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        channels = per_item(output_channels, n_blocks, "output_channels")
        bottleneck = per_item(bottleneck_channels, n_blocks, "bottleneck_channels")
        common = (conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        blocks: list[nn.Module] = []
        for i in range(n_blocks):
            c_in = input_channels if i == 0 else channels[i - 1]
            stride = initial_stride if i == 0 else 1
            if block is BottleneckD:
                if bottleneck[i] is None:
                    raise ValueError("block BottleneckD needs bottleneck_channels in the plans arch_kwargs")
                blocks.append(BottleneckD(conv_op, c_in, bottleneck[i], channels[i], kernel_size, stride, *common))
            else:
                blocks.append(BasicBlockD(conv_op, c_in, channels[i], kernel_size, stride, *common))
        self.blocks = nn.Sequential(*blocks)
        self.output_channels = channels[-1]
        self.initial_stride = as_dims(initial_stride, conv_dim(conv_op))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Output elements of all blocks for a spatial `input_size`."""
        total = self.blocks[0].compute_conv_feature_map_size(input_size)
        after = [i // s for i, s in zip(input_size, self.initial_stride)]
        for blk in self.blocks[1:]:
            total += blk.compute_conv_feature_map_size(after)
        return total
