"""The plain convolutional encoder, the U-Net decoder and `PlainConvUNet` (nnU-Net's default network).

Layout (state-dict keys) as in dynamic-network-architectures 0.4.4: `encoder.stages.<s>.0.convs.<i>...`,
then `decoder.encoder...` (the decoder holds the encoder), `decoder.stages.<s>.convs.<i>...`,
`decoder.transpconvs.<s>`, `decoder.seg_layers.<s>`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnseg.networks.blocks import StackedConvBlocks, as_dims, per_item, prod_size
from nnseg.networks.init import InitWeightsHe
from nnseg.networks.ops import conv_dim, matching_transposed_conv

__all__ = ["PlainConvEncoder", "PlainConvUNet", "UNetDecoder"]


class PlainConvEncoder(nn.Module):
    """`n_stages` stacks of convs, each downsampling by its stride with its first conv.

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
        n_conv_per_stage: int | Sequence[int],
        conv_bias: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        return_skips: bool = False,
        nonlin_first: bool = False,
    ) -> None:
        super().__init__()
        dim = conv_dim(conv_op)
        features = per_item(features_per_stage, n_stages, "features_per_stage")
        kernels = [as_dims(k, dim) for k in per_item(kernel_sizes, n_stages, "kernel_sizes")]
        strides_ = [as_dims(s, dim) for s in per_item(strides, n_stages, "strides")]
        n_convs = per_item(n_conv_per_stage, n_stages, "n_conv_per_stage")
        stages = []
        for s in range(n_stages):
            stages.append(nn.Sequential(StackedConvBlocks(
                n_convs[s], conv_op, input_channels, features[s], kernels[s], strides_[s], conv_bias,
                norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first,
            )))
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
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips if self.return_skips else skips[-1]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Output elements of all stages for a spatial `input_size`."""
        total = 0
        for stage, stride in zip(self.stages, self.strides):
            total += stage[-1].compute_conv_feature_map_size(input_size)
            input_size = [i // s for i, s in zip(input_size, stride)]
        return total


def _default(value: object, fallback: object) -> object:
    return fallback if value is None else value


class UNetDecoder(nn.Module):
    """Transposed conv up, concatenate the skip, conv stack, 1x1 segmentation head per stage.

    `forward(skips)` returns the full-resolution logits `(B, num_classes, *S)`, or with
    `deep_supervision` the list of logits from full resolution down (one per decoder stage).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        n_conv_per_stage: int | Sequence[int],
        deep_supervision: bool,
        nonlin_first: bool = False,
        norm_op: type[nn.Module] | None = None,
        norm_op_kwargs: dict | None = None,
        dropout_op: type[nn.Module] | None = None,
        dropout_op_kwargs: dict | None = None,
        nonlin: type[nn.Module] | None = None,
        nonlin_kwargs: dict | None = None,
        conv_bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encoder = encoder
        self.num_classes = num_classes
        n_enc = len(encoder.output_channels)
        n_convs = per_item(n_conv_per_stage, n_enc - 1, "n_conv_per_stage_decoder")
        conv_bias = encoder.conv_bias if conv_bias is None else conv_bias
        norm = (_default(norm_op, encoder.norm_op), _default(norm_op_kwargs, encoder.norm_op_kwargs))
        drop = (_default(dropout_op, encoder.dropout_op), _default(dropout_op_kwargs, encoder.dropout_op_kwargs))
        act = (_default(nonlin, encoder.nonlin), _default(nonlin_kwargs, encoder.nonlin_kwargs))
        transp_op = matching_transposed_conv(encoder.conv_op)
        stages, transpconvs, seg_layers = [], [], []
        for s in range(1, n_enc):
            below, skip = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            stride = encoder.strides[-s]
            transpconvs.append(transp_op(below, skip, stride, stride, bias=conv_bias))
            stages.append(StackedConvBlocks(
                n_convs[s - 1], encoder.conv_op, 2 * skip, skip, encoder.kernel_sizes[-(s + 1)], 1, conv_bias,
                *norm, *drop, *act, nonlin_first,
            ))
            seg_layers.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, (up, stage) in enumerate(zip(self.transpconvs, self.stages)):
            x = stage(torch.cat((up(x), skips[-(s + 2)]), 1))
            if self.deep_supervision:
                outputs.append(self.seg_layers[s](x))
            elif s == last:
                outputs.append(self.seg_layers[-1](x))
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Decoder conv outputs, transposed-conv outputs and segmentation outputs for a spatial `input_size`."""
        skip_sizes = []
        for stride in self.encoder.strides[:-1]:
            input_size = [i // s for i, s in zip(input_size, stride)]
            skip_sizes.append(input_size)
        total = 0
        last = len(self.stages) - 1
        for s, stage in enumerate(self.stages):
            size = skip_sizes[-(s + 1)]
            total += stage.compute_conv_feature_map_size(size)
            total += prod_size(self.encoder.output_channels[-(s + 2)], size)
            if self.deep_supervision or s == last:
                total += prod_size(self.num_classes, size)
        return total


class PlainConvUNet(nn.Module):
    """nnU-Net's default U-Net: `encoder` (:class:`PlainConvEncoder`) + `decoder` (:class:`UNetDecoder`).

    Input `(B, input_channels, *S)` with `S` divisible by the product of the strides; output logits
    `(B, num_classes, *S)` or, with `deep_supervision`, a list from full resolution down.
    """

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: type[nn.Module],
        kernel_sizes: int | Sequence[int | Sequence[int]],
        strides: int | Sequence[int | Sequence[int]],
        n_conv_per_stage: int | Sequence[int],
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
        nonlin_first: bool = False,
    ) -> None:
        super().__init__()
        per_item(n_conv_per_stage, n_stages, "n_conv_per_stage")
        per_item(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder")
        self.encoder = PlainConvEncoder(
            input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage,
            conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
            return_skips=True, nonlin_first=nonlin_first,
        )
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision, nonlin_first)

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
        """He initialisation (negative slope 1e-2) of convs; use as `net.apply(net.initialize)`."""
        InitWeightsHe(1e-2)(module)
