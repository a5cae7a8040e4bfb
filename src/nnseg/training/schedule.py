"""Learning-rate schedules as pure functions of (epoch, total epochs)."""

from __future__ import annotations

from collections.abc import Callable

from nnseg.registry import Registry

LR_SCHEDULES: Registry[Callable[..., float]] = Registry("lr schedule")

POLY_EXPONENT = 0.9


@LR_SCHEDULES.register("poly")
def poly_lr(epoch: int, num_epochs: int, initial_lr: float, *, exponent: float = POLY_EXPONENT) -> float:
    """nnU-Net's PolyLRScheduler: ``initial_lr * (1 - epoch / num_epochs) ** 0.9``, set at the start of each epoch."""
    if num_epochs <= 0:
        raise ValueError(f"num_epochs must be positive, got {num_epochs}")
    return initial_lr * (1 - epoch / num_epochs) ** exponent


@LR_SCHEDULES.register("constant")
def constant_lr(epoch: int, num_epochs: int, initial_lr: float) -> float:
    return initial_lr
