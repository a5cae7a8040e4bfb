"""The residual encoder and `ResidualEncoderUNet` (nnU-Net's ResEnc M/L/XL presets).

Layout as in dynamic-network-architectures 0.4.4: `encoder.stem.convs.0...`,
`encoder.stages.<s>.blocks.<b>.{conv1,conv2,skip.1}...`, then the :class:`UNetDecoder` keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnseg.networks.blocks import StackedConvBlocks, as_dims, per_item
from nnseg.networks.init import InitWeightsHe, init_last_norm_before_add_to_zero
from nnseg.networks.ops import conv_dim
from nnseg.networks.plain_unet import UNetDecoder
from nnseg.networks.residual import BasicBlockD, StackedResidualBlocks, resolve_block

__all__ = ["ResidualEncoder", "ResidualEncoderUNet"]


class ResidualEncoder(nn.Module):
    """A stem conv, then `n_stages` stacks of residual blocks (the first block of a stage is strided).

    Input `(B, C_in, *S)`; output the list of stage outputs (`return_skips`) or the last one.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: type[nn.Module],
        kernel_sizes: int | Sequence[int | Sequence[int]],
        strides: int | Sequence[int | Sequence[int]],
        n_blocks_per_stage: int | Sequence[int],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        block: type[nn.Module] | str = BasicBlockD,
        bottleneck_channels: int | Sequence[int] | None = None,
        return_skips: bool = False,
        stem_channels: int | None = None,
    ) -> None:
        super().__init__()
        dim = conv_dim(conv_op)
        block = resolve_block(block)
        features = per_item(features_per_stage, n_stages, "features_per_stage")
        kernels = [as_dims(k, dim) for k in per_item(kernel_sizes, n_stages, "kernel_sizes")]
        strides_ = [as_dims(s, dim) for s in per_item(strides, n_stages, "strides")]
        n_blocks = per_item(n_blocks_per_stage, n_stages, "n_blocks_per_stage")
        bottleneck = per_item(bottleneck_channels, n_stages, "bottleneck_channels")
        norm_drop_act = (norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        stem_channels = features[0] if stem_channels is None else stem_channels
        self.stem = StackedConvBlocks(1, conv_op, input_channels, stem_channels, kernels[0], 1, conv_bias, *norm_drop_act)
        input_channels = stem_channels
        stages = []
        for s in range(n_stages):
            stages.append(StackedResidualBlocks(
                n_blocks[s], conv_op, input_channels, features[s], kernels[s], strides_[s], conv_bias,
                *norm_drop_act, block=block, bottleneck_channels=bottleneck[s],
            ))
            input_channels = features[s]
        self.stages = nn.Sequential(*stages)
        self.output_channels = features
        self.strides = strides_
        self.kernel_sizes = kernels
        self.return_skips = return_skips
        self.conv_op, self.conv_bias = conv_op, conv_bias
        self.norm_op, self.norm_op_kwargs = norm_op, norm_op_kwargs
        self.dropout_op, self.dropout_op_kwargs = dropout_op, dropout_op_kwargs
        self.nonlin, self.nonlin_kwargs = nonlin, nonlin_kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips if self.return_skips else skips[-1]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Output elements of the stem and all stages for a spatial `input_size`."""
        total = self.stem.compute_conv_feature_map_size(input_size)
        for stage, stride in zip(self.stages, self.strides):
            total += stage.compute_conv_feature_map_size(input_size)
            input_size = [i // s for i, s in zip(input_size, stride)]
        return total


class ResidualEncoderUNet(nn.Module):
    """Residual encoder + plain :class:`UNetDecoder` (default decoder norm/nonlin taken from the encoder).

    Input `(B, input_channels, *S)`; output logits `(B, num_classes, *S)` or, with `deep_supervision`,
    a list from full resolution down.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: type[nn.Module],
        kernel_sizes: int | Sequence[int | Sequence[int]],
        strides: int | Sequence[int | Sequence[int]],
        n_blocks_per_stage: int | Sequence[int],
        num_classes: int,
        n_conv_per_stage_decoder: int | Sequence[int],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        deep_supervision: bool = False,
        block: type[nn.Module] | str = BasicBlockD,
        bottleneck_channels: int | Sequence[int] | None = None,
        stem_channels: int | None = None,
    ) -> None:
        super().__init__()
        per_item(n_blocks_per_stage, n_stages, "n_blocks_per_stage")
        per_item(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")
        self.encoder = ResidualEncoder(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_blocks_per_stage,
            conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
            block, bottleneck_channels, return_skips=True, stem_channels=stem_channels,
        )
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """nnU-Net's VRAM proxy: feature-map elements of encoder + decoder for one sample of spatial `input_size`."""
        dim = conv_dim(self.encoder.conv_op)
        if len(input_size) != dim:
            raise ValueError(f"patch size {list(input_size)} has {len(input_size)} axes but the network is {dim}D")
        return self.encoder.compute_conv_feature_map_size(input_size) + self.decoder.compute_conv_feature_map_size(
            input_size
        )

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He init of convs, then zero the last norm of each residual block; use as `net.apply(net.initialize)`."""
        InitWeightsHe(1e-2)(module)
        init_last_norm_before_add_to_zero(module)
