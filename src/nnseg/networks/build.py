"""Build a network from a plans `architecture` dict, resolving dotted names through explicit registries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from nnseg.networks.ops import OP_REGISTRIES, resolve_op
from nnseg.networks.plain_unet import PlainConvUNet
from nnseg.networks.resenc_unet import ResidualEncoderUNet
from nnseg.networks.residual import resolve_block
from nnseg.registry import Registry

__all__ = ["NETWORKS", "build_network", "resolve_architecture", "set_deep_supervision"]

NETWORKS: Registry[type[nn.Module]] = Registry("network class")
NETWORKS.add(
    "dynamic_network_architectures.architectures.unet.PlainConvUNet", PlainConvUNet, aliases=("PlainConvUNet",)
)
NETWORKS.add(
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
    ResidualEncoderUNet,
    aliases=("ResidualEncoderUNet", "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"),
)

_COMMON = (
    "n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder", "conv_bias",
    "norm_op", "norm_op_kwargs", "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs",
)
_REQUIRED_COMMON = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage_decoder")
# accepted arch_kwargs (constructor arguments other than input_channels, num_classes and deep_supervision)
_ACCEPTED: dict[type[nn.Module], tuple[str, ...]] = {
    PlainConvUNet: (*_COMMON, "n_conv_per_stage", "nonlin_first"),
    ResidualEncoderUNet: (*_COMMON, "n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"),
}
_REQUIRED: dict[type[nn.Module], tuple[str, ...]] = {
    PlainConvUNet: (*_REQUIRED_COMMON, "n_conv_per_stage"),
    ResidualEncoderUNet: (*_REQUIRED_COMMON, "n_blocks_per_stage"),
}


def _network_class(architecture: Mapping[str, Any]) -> type[nn.Module]:
    if not isinstance(architecture, Mapping) or "network_class_name" not in architecture:
        raise ValueError(
            "architecture must be a plans 'architecture' dict with 'network_class_name' and 'arch_kwargs', "
            f"got {architecture!r}"
        )
    name = architecture["network_class_name"]
    if not isinstance(name, str) or name not in NETWORKS:
        raise ValueError(
            f"unknown network_class_name {name!r} in the plans architecture; known: {NETWORKS.names()}. A network "
            "from an extension needs its folder in NNSEG_EXTENSIONS (or its package installed): docs/EXTENSIONS.md"
        )
    return NETWORKS[name]


def resolve_architecture(architecture: Mapping[str, Any]) -> tuple[type[nn.Module], dict[str, Any]]:
    """Turn a plans `architecture` dict into the network class and its constructor kwargs (ops resolved).

    Args:
        architecture: `{"network_class_name": ..., "arch_kwargs": {...}, "_kw_requires_import": [...]}`.

    Returns:
        `(cls, kwargs)`; `kwargs` lacks `input_channels`, `num_classes` and `deep_supervision`.

    Raises:
        ValueError: unknown class, unknown/missing kwargs, or a dotted name outside the registries.
    """
    cls = _network_class(architecture)
    kwargs = dict(architecture.get("arch_kwargs") or {})
    accepted = _ACCEPTED.get(cls)  # None: a network an extension registered, which receives every arch_kwarg
    unknown = sorted(set(kwargs) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ValueError(f"arch_kwargs {unknown} are not accepted by {cls.__name__}; accepted: {list(accepted or ())}")
    missing = [k for k in _REQUIRED.get(cls, ()) if k not in kwargs]
    if missing:
        raise ValueError(f"arch_kwargs for {cls.__name__} lack {missing}; add them to the plans architecture")
    to_import = list(architecture.get("_kw_requires_import") or [])
    for key in to_import:
        if key not in OP_REGISTRIES and key != "block":
            raise ValueError(
                f"_kw_requires_import names {key!r}; only {sorted(OP_REGISTRIES)} and 'block' can be resolved by name"
            )
    for key in OP_REGISTRIES:
        if key in kwargs:
            kwargs[key] = resolve_op(key, kwargs[key])
    if "block" in kwargs:
        kwargs["block"] = resolve_block(kwargs["block"])
    return cls, kwargs


def build_network(
    architecture: Mapping[str, Any],
    *,
    input_channels: int,
    num_classes: int,
    deep_supervision: bool = True,
    initialize: bool = True,
) -> nn.Module:
    """Instantiate (and He-initialise) the network a plans `architecture` dict describes.

    Args:
        architecture: plans `configurations[<name>]["architecture"]`.
        input_channels: number of image channels.
        num_classes: number of output channels (labels incl. background, or regions).
        deep_supervision: return a list of logits from full resolution down instead of one tensor.
        initialize: apply the class's `initialize` (as nnU-Net does before training), when it has one.

    Returns:
        The network; output `(B, num_classes, *patch)` or a list of such at decreasing resolution.
    """
    cls, kwargs = resolve_architecture(architecture)
    net = cls(input_channels=input_channels, num_classes=num_classes, deep_supervision=deep_supervision, **kwargs)
    if initialize and hasattr(net, "initialize"):
        net.apply(net.initialize)
    return net


def set_deep_supervision(net: nn.Module, enabled: bool) -> None:
    """Switch deep-supervision outputs on or off in place (also through a `torch.compile` wrapper).

    Args:
        net: a network from :func:`build_network`, possibly wrapped by `torch.compile` (`_orig_mod`).
        enabled: True for the list of logits from full resolution down, False for one tensor.
    """
    module = getattr(net, "_orig_mod", net)
    decoder = getattr(module, "decoder", None)
    if decoder is None or not hasattr(decoder, "deep_supervision"):
        raise ValueError(f"{type(module).__name__} has no decoder with deep supervision; build it with build_network")
    decoder.deep_supervision = bool(enabled)
