"""What a training run carries from epoch to epoch, and its nnU-Net-compatible checkpoint form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOG_KEYS = ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs",
            "epoch_start_timestamps", "epoch_end_timestamps")
FULL_VAL_KEYS = ("full_val_dice", "full_val_dice_per_class")  # only in runs with full_val_every > 0 (NaN between)


@dataclass
class TrainState:
    """Epoch counter, nnU-Net's log lists, the best EMA pseudo Dice, and nnseg's seed / epoch count."""

    seed: int
    num_epochs: int
    current_epoch: int = 0
    best_ema: float | None = None
    best_epoch: int | None = None
    best_full_val: float | None = None
    logging: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in LOG_KEYS})

    def log_epoch(self, *, lr: float, train_loss: float, val_loss: float, dice_per_class: list[float],
                  ema_alpha: float, start: float, end: float) -> float:
        """Append one epoch to the log; returns the new EMA pseudo Dice (nnU-Net: ``0.9 * ema + 0.1 * mean``)."""
        mean = float(np.nanmean(dice_per_class)) if dice_per_class and not np.all(np.isnan(dice_per_class)) else float("nan")
        emas = self.logging["ema_fg_dice"]
        ema = mean if not emas else emas[-1] * ema_alpha + (1 - ema_alpha) * mean
        for key, value in (("mean_fg_dice", mean), ("ema_fg_dice", float(ema)), ("dice_per_class_or_region",
                           [float(d) for d in dice_per_class]), ("train_losses", float(train_loss)),
                           ("val_losses", float(val_loss)), ("lrs", float(lr)), ("epoch_start_timestamps", float(start)),
                           ("epoch_end_timestamps", float(end))):
            self.logging[key].append(value)
        return float(ema)

    def improved(self, ema: float) -> bool:
        if np.isnan(ema):
            return False
        if self.best_ema is None or ema > self.best_ema:
            self.best_ema, self.best_epoch = ema, self.current_epoch
            return True
        return False

    def log_full_val(self, dice_per_class: list[float] | None) -> float | None:
        """Append this epoch's whole-image Dice (None: not validated this epoch, logged as NaN); returns the mean."""
        values = [float("nan")] if dice_per_class is None else [float(d) for d in dice_per_class]
        mean = float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")
        self.logging.setdefault("full_val_dice", []).append(mean)
        self.logging.setdefault("full_val_dice_per_class", []).append(values)
        return None if dice_per_class is None else mean

    def improved_full_val(self, dice: float) -> bool:
        """A new best whole-image Dice (it then chooses checkpoint_best and resets early stopping)."""
        if np.isnan(dice) or (self.best_full_val is not None and dice <= self.best_full_val):
            return False
        self.best_full_val, self.best_epoch = dice, self.current_epoch
        return True

    def epochs_without_improvement(self) -> int:
        """Finished epochs since the one with the best EMA (0 right after an improvement)."""
        last_best = -1 if self.best_epoch is None else self.best_epoch
        return self.current_epoch - 1 - last_best

    def mean_epoch_seconds(self) -> float:
        starts, ends = self.logging["epoch_start_timestamps"], self.logging["epoch_end_timestamps"]
        return float(np.mean(np.subtract(ends, starts))) if ends else float("nan")


def checkpoint_dict(state: TrainState, *, network_weights: dict[str, Any], optimizer_state: Any, grad_scaler_state: Any,
                    init_args: dict[str, Any], trainer_name: str, mirror_axes: tuple[int, ...] | None,
                    next_epoch: int, train_config: dict[str, Any]) -> dict[str, Any]:
    """nnU-Net's checkpoint keys, plus nnseg's (``nnseg_*``) which nnU-Net ignores."""
    return {
        "network_weights": network_weights,
        "optimizer_state": optimizer_state,
        "grad_scaler_state": grad_scaler_state,
        "logging": {k: list(v) for k, v in state.logging.items()},
        "_best_ema": state.best_ema,
        "current_epoch": next_epoch,
        "init_args": init_args,
        "trainer_name": trainer_name,
        "inference_allowed_mirroring_axes": mirror_axes,
        "nnseg_seed": state.seed,
        "nnseg_num_epochs": state.num_epochs,
        "nnseg_best_epoch": state.best_epoch,
        **({"nnseg_best_full_val": state.best_full_val} if "full_val_dice" in state.logging else {}),
        "nnseg_train_config": train_config,
    }


def state_from_checkpoint(ckpt: dict[str, Any], *, default_num_epochs: int) -> TrainState:
    """Restore a TrainState; nnU-Net checkpoints (no ``nnseg_*`` keys) get a fresh seed and the configured epochs."""
    saved = ckpt.get("logging", {})
    logging = {k: list(saved.get(k, [])) for k in LOG_KEYS + FULL_VAL_KEYS if k in LOG_KEYS or k in saved}
    seed = ckpt.get("nnseg_seed")
    return TrainState(
        seed=int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**31)),
        num_epochs=int(ckpt.get("nnseg_num_epochs", default_num_epochs)),
        current_epoch=int(ckpt["current_epoch"]),
        best_ema=None if ckpt.get("_best_ema") is None else float(ckpt["_best_ema"]),
        best_epoch=ckpt.get("nnseg_best_epoch"),
        best_full_val=ckpt.get("nnseg_best_full_val"),
        logging=logging,
    )
