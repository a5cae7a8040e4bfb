"""Parameter counts and a short text table of a U-Net (stage, channels, feature-map size, parameters)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["count_parameters", "network_summary"]


def count_parameters(net: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of distinct parameter elements (shared modules, e.g. the decoder's encoder, counted once).

    Args:
        net: any module.
        trainable_only: count only parameters with `requires_grad`.
    """
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def _row(name: str, channels: int, size: Sequence[int], params: int) -> str:
    return f"{name:<12} {channels:>8} {'x'.join(str(s) for s in size):>16} {params:>12,}"


def _encoder_rows(encoder: nn.Module, size: list[int]) -> tuple[list[str], list[list[int]]]:
    rows, sizes = [], []
    stem = getattr(encoder, "stem", None)
    if stem is not None:
        rows.append(_row("stem", stem.output_channels, size, count_parameters(stem)))
    for s, (stage, stride) in enumerate(zip(encoder.stages, encoder.strides)):
        size = [i // j for i, j in zip(size, stride)]
        sizes.append(size)
        rows.append(_row(f"encoder {s}", encoder.output_channels[s], size, count_parameters(stage)))
    return rows, sizes


def network_summary(net: nn.Module, patch_size: Sequence[int]) -> str:
    """A text table of a PlainConvUNet / ResidualEncoderUNet for one input patch.

    Args:
        net: a network with `encoder` and `decoder` as built by `build_network`.
        patch_size: spatial input size, one int per axis.

    Returns:
        Lines `stage  channels  feature-map size  params`, then the totals and nnU-Net's
        feature-map (VRAM proxy) estimate.
    """
    encoder, decoder = getattr(net, "encoder", None), getattr(net, "decoder", None)
    if encoder is None or decoder is None:
        raise ValueError(f"network_summary needs a U-Net with .encoder and .decoder, got {type(net).__name__}")
    header = f"{'stage':<12} {'channels':>8} {'feature map':>16} {'params':>12}"
    rows, sizes = _encoder_rows(encoder, [int(p) for p in patch_size])
    for s, stage in enumerate(decoder.stages):
        params = sum(count_parameters(m) for m in (decoder.transpconvs[s], stage, decoder.seg_layers[s]))
        rows.append(_row(f"decoder {s}", encoder.output_channels[-(s + 2)], sizes[-(s + 2)], params))
    total = count_parameters(net)
    fmap = net.compute_conv_feature_map_size([int(p) for p in patch_size])
    footer = [f"{type(net).__name__}: {total:,} parameters", f"feature-map elements (VRAM proxy): {fmap:,}"]
    return "\n".join([header, "-" * len(header), *rows, "-" * len(header), *footer])
