"""Weight initialisation used by nnU-Net's networks."""

from __future__ import annotations

from torch import nn

from nnseg.networks.residual import BasicBlockD, BottleneckD

__all__ = ["InitWeightsHe", "init_last_norm_before_add_to_zero"]

_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class InitWeightsHe:
    """Kaiming-normal (fan-in, leaky-ReLU gain with `neg_slope`) conv weights and zero biases.

    Use as `net.apply(InitWeightsHe(1e-2))`; modules other than (transposed) convs are untouched.
    """

    def __init__(self, neg_slope: float = 1e-2) -> None:
        self.neg_slope = neg_slope

    def __call__(self, module: nn.Module) -> None:
        if isinstance(module, _CONVS):
            nn.init.kaiming_normal_(module.weight, a=self.neg_slope)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)


def init_last_norm_before_add_to_zero(module: nn.Module) -> None:
    """Zero the affine parameters of the last norm of each residual block (the block starts as identity).

    Use as `net.apply(init_last_norm_before_add_to_zero)`.
    """
    last = None
    if isinstance(module, BasicBlockD):
        last = module.conv2
    elif isinstance(module, BottleneckD):
        last = module.conv3
    norm = getattr(last, "norm", None) if last is not None else None
    if norm is not None and getattr(norm, "weight", None) is not None:
        nn.init.constant_(norm.weight, 0)
        nn.init.constant_(norm.bias, 0)
