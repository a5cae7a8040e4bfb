"""Observers of a training run: console/progress bar, nnU-Net's text log, ``progress.png``, ``debug.json``."""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from nnseg.jsonio import save_json

if TYPE_CHECKING:  # torch is imported when training starts, not by the parsers that list the loggers (`--help`)
    import torch

T = TypeVar("T")


class Hooks:
    """Base hooks: do nothing. Subclass and override, or combine several with :class:`HookList`."""

    def on_train_start(self, run: Any, state: Any, network: torch.nn.Module) -> None: ...

    def wrap_iterations(self, batches: Iterable[T], *, epoch: int, total: int) -> Iterable[T]:
        return batches

    def on_epoch_end(self, run: Any, state: Any) -> None: ...

    def on_train_end(self, run: Any, state: Any, *, stopped_early: bool) -> None: ...


class HookList(Hooks):
    def __init__(self, hooks: Sequence[Hooks]) -> None:
        self.hooks = list(hooks)

    def on_train_start(self, run: Any, state: Any, network: torch.nn.Module) -> None:
        for h in self.hooks:
            h.on_train_start(run, state, network)

    def wrap_iterations(self, batches: Iterable[T], *, epoch: int, total: int) -> Iterable[T]:
        for h in self.hooks:
            batches = h.wrap_iterations(batches, epoch=epoch, total=total)
        return batches

    def on_epoch_end(self, run: Any, state: Any) -> None:
        for h in self.hooks:
            h.on_epoch_end(run, state)

    def on_train_end(self, run: Any, state: Any, *, stopped_early: bool) -> None:
        for h in self.hooks:
            h.on_train_end(run, state, stopped_early=stopped_early)


def epoch_summary(state: Any) -> list[str]:
    """nnU-Net's per-epoch log lines."""
    log, e = state.logging, state.current_epoch
    dice = [round(float(d), 4) for d in log["dice_per_class_or_region"][-1]]
    return [f"Epoch {e}", f"Current learning rate: {round(log['lrs'][-1], 5)}",
            f"train_loss {round(log['train_losses'][-1], 4)}", f"val_loss {round(log['val_losses'][-1], 4)}",
            f"Pseudo dice {dice}", *full_val_lines(log),
            f"Epoch time: {round(log['epoch_end_timestamps'][-1] - log['epoch_start_timestamps'][-1], 2)} s"]


def full_val_lines(log: dict[str, list[Any]]) -> list[str]:
    """The whole-image validation line of an epoch that ran it (``full_val_every``), else nothing."""
    values = log.get("full_val_dice") or [float("nan")]
    if np.isnan(values[-1]):
        return []
    per_class = [round(float(d), 4) for d in log["full_val_dice_per_class"][-1]]
    return [f"Full-image validation Dice {round(values[-1], 4)} per class {per_class}"]


class TextLog(Hooks):
    """Writes ``training_log_YYYY_M_D_HH_MM_SS.txt`` in the fold folder and echoes to the console."""

    def __init__(self, folder: Path, *, echo: bool = True) -> None:
        now = datetime.datetime.now()
        name = f"training_log_{now.year}_{now.month}_{now.day}_{now.hour:02d}_{now.minute:02d}_{now.second:02d}.txt"
        self.path, self.echo = folder / name, echo

    def write(self, line: str) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"{stamp}: {line}\n")
        if self.echo:
            print(line, flush=True)

    def on_train_start(self, run: Any, state: Any, network: torch.nn.Module) -> None:
        self.write(f"nnseg training {run.trainer_name} fold folder {run.output_folder}; {len(run.train_ids)} training "
                   f"and {len(run.val_ids)} validation cases; epochs {state.num_epochs} x {run.config.iterations_per_epoch} "
                   f"iterations; device {run.device}, precision {run.precision}; starting at epoch {state.current_epoch}")

    def on_epoch_end(self, run: Any, state: Any) -> None:
        for line in epoch_summary(state):
            self.write(line)
        if state.best_epoch == state.current_epoch:
            if state.best_full_val is not None:
                self.write(f"Yayy! New best full-image validation Dice: {round(state.best_full_val, 4)}")
            else:
                self.write(f"Yayy! New best EMA pseudo Dice: {round(state.best_ema, 4)}")

    def on_train_end(self, run: Any, state: Any, *, stopped_early: bool) -> None:
        why = " (early stopping)" if stopped_early else ""
        best = "n/a" if state.best_ema is None else round(state.best_ema, 4)
        if state.best_full_val is not None:
            best = f"n/a; best full-image validation Dice {round(state.best_full_val, 4)}"
        self.write(f"Training done after {state.current_epoch} epochs{why}. Best EMA pseudo Dice {best} "
                   f"(epoch {state.best_epoch}); final pseudo Dice {round(state.logging['mean_fg_dice'][-1], 4) if state.logging['mean_fg_dice'] else 'n/a'}")


class ProgressBar(Hooks):
    """A tqdm progress bar per epoch (off when not attached to a terminal unless forced)."""

    def __init__(self, *, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def wrap_iterations(self, batches: Iterable[T], *, epoch: int, total: int) -> Iterable[T]:
        if not self.enabled:
            return batches
        from tqdm import tqdm

        return tqdm(batches, total=total, desc=f"epoch {epoch}", leave=False)


class ProgressPlot(Hooks):
    """``progress.png``: losses, pseudo Dice and its EMA, learning rate, epoch time, updated every epoch."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "progress.png"

    def on_epoch_end(self, run: Any, state: Any) -> None:
        plot_progress(state.logging, self.path)


def plot_progress(log: dict[str, list[Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = np.arange(len(log["train_losses"]))
    fig, axes = plt.subplots(3, 1, figsize=(10, 13))
    ax = axes[0]
    ax.plot(epochs, log["train_losses"], color="b", label="loss_tr")
    ax.plot(epochs, log["val_losses"], color="r", label="loss_val")
    ax2 = ax.twinx()
    ax2.plot(epochs, log["mean_fg_dice"], color="g", ls="dotted", label="pseudo dice")
    ax2.plot(epochs, log["ema_fg_dice"], color="g", label="pseudo dice (mov. avg.)")
    if "full_val_dice" in log:
        full = np.asarray(log["full_val_dice"], dtype=float)
        done = ~np.isnan(full)
        ax2.plot(epochs[done], full[done], color="m", marker="o", label="full-image val dice")
    ax.set(xlabel="epoch", ylabel="loss")
    ax2.set_ylabel("pseudo dice")
    ax.legend(loc=(0, 1)), ax2.legend(loc=(0.2, 1))
    durations = np.subtract(log["epoch_end_timestamps"], log["epoch_start_timestamps"])
    axes[1].plot(epochs, durations, color="b", label="epoch duration")
    axes[1].set(xlabel="epoch", ylabel="time [s]")
    axes[2].plot(epochs, log["lrs"], color="b", label="learning rate")
    axes[2].set(xlabel="epoch", ylabel="learning rate")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


class DebugJson(Hooks):
    """``debug.json``: the run's settings as strings, host and library versions (as nnU-Net writes)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "debug.json"

    def on_train_start(self, run: Any, state: Any, network: torch.nn.Module) -> None:
        import torch

        info = {k: str(v) for k, v in run.config.to_json().items()}
        info.update({"trainer_name": run.trainer_name, "device": str(run.device), "precision": run.precision,
                     "seed": str(state.seed), "patch_size": str(list(run.patch_size)), "batch_size": str(run.batch_size),
                     "hostname": platform.node(), "torch_version": torch.__version__, "python": sys.version.split()[0],
                     "gpu_name": torch.cuda.get_device_name() if run.device.type == "cuda" else "None"})
        save_json(info, self.path, sort_keys=True)

