"""Explicit maps from the dotted torch class names written in plans files to the torch classes.

nnU-Net stores `conv_op`, `norm_op`, `dropout_op` and `nonlin` as dotted names (listed in
`_kw_requires_import`) and imports them with `pydoc.locate`. nnseg never imports an arbitrary
dotted name: each name is looked up in one of the registries below, which accept the public
path (`torch.nn.Conv3d`), the defining-module path (`torch.nn.modules.conv.Conv3d`) and the bare
class name (`Conv3d`).
"""

from __future__ import annotations

from torch import nn

from nnseg.registry import Registry

__all__ = [
    "CONV_OPS",
    "DROPOUT_OPS",
    "NONLINS",
    "NORM_OPS",
    "OP_REGISTRIES",
    "conv_dim",
    "matching_avg_pool",
    "matching_transposed_conv",
    "resolve_op",
]


def _registry(kind: str, classes: tuple[type[nn.Module], ...]) -> Registry[type[nn.Module]]:
    reg: Registry[type[nn.Module]] = Registry(kind)
    for cls in classes:
        reg.add(f"{cls.__module__}.{cls.__name__}", cls, aliases=(f"torch.nn.{cls.__name__}", cls.__name__))
    return reg


CONV_OPS = _registry("conv_op", (nn.Conv2d, nn.Conv3d))
NORM_OPS = _registry("norm_op", (nn.InstanceNorm2d, nn.InstanceNorm3d, nn.BatchNorm2d, nn.BatchNorm3d))
DROPOUT_OPS = _registry("dropout_op", (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout))
NONLINS = _registry(
    "nonlin",
    (nn.LeakyReLU, nn.ReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh, nn.Sigmoid, nn.Identity),
)

OP_REGISTRIES: dict[str, Registry[type[nn.Module]]] = {
    "conv_op": CONV_OPS,
    "norm_op": NORM_OPS,
    "dropout_op": DROPOUT_OPS,
    "nonlin": NONLINS,
}

_DIMS = {nn.Conv2d: 2, nn.Conv3d: 3}
_TRANSPOSED = {nn.Conv2d: nn.ConvTranspose2d, nn.Conv3d: nn.ConvTranspose3d}
_AVG_POOL = {nn.Conv2d: nn.AvgPool2d, nn.Conv3d: nn.AvgPool3d}


def resolve_op(key: str, value: object) -> type[nn.Module] | None:
    """Resolve one op argument (`conv_op`, `norm_op`, `dropout_op`, `nonlin`) to its torch class.

    Args:
        key: the `arch_kwargs` key, one of :data:`OP_REGISTRIES`.
        value: a dotted name from a plans file, an already resolved class, or None.

    Returns:
        The torch class, or None when `value` is None.

    Raises:
        ValueError: for an unknown key or a class name that is not in the registry.
    """
    if key not in OP_REGISTRIES:
        raise ValueError(f"arch_kwargs[{key!r}] cannot be imported; only {sorted(OP_REGISTRIES)} are resolvable by name")
    if value is None:
        return None
    registry = OP_REGISTRIES[key]
    if isinstance(value, type):
        if value not in {registry[name] for name in registry.names()}:
            raise ValueError(f"arch_kwargs[{key!r}] = {value!r} is not supported; known: {registry.names()}")
        return value
    if not isinstance(value, str) or value not in registry:
        raise ValueError(
            f"arch_kwargs[{key!r}] = {value!r} is not a known {key}; edit the plans file to use one of {registry.names()}"
        )
    return registry[value]


def conv_dim(conv_op: type[nn.Module]) -> int:
    """Number of spatial dimensions of a conv class (2 or 3)."""
    try:
        return _DIMS[conv_op]
    except KeyError:
        raise ValueError(f"conv_op {conv_op!r} is not supported; use torch.nn.Conv2d or torch.nn.Conv3d") from None


def matching_transposed_conv(conv_op: type[nn.Module]) -> type[nn.Module]:
    """The transposed convolution with the same dimensionality as `conv_op`."""
    conv_dim(conv_op)
    return _TRANSPOSED[conv_op]


def matching_avg_pool(conv_op: type[nn.Module]) -> type[nn.Module]:
    """The average pooling with the same dimensionality as `conv_op`."""
    conv_dim(conv_op)
    return _AVG_POOL[conv_op]
