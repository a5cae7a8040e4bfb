"""The training loop: nnU-Net's recipe over a :class:`RunSpec`, observed through hooks.

``train_step`` and ``validation_step`` are free functions of (network, batch, loss, optimizer, scaler). Checkpoints use
nnU-Net's keys and are written atomically; ``resume=True`` continues from ``checkpoint_final`` (nothing left to do),
``checkpoint_latest`` or ``checkpoint_best``, restoring weights, optimizer, scaler, logs, EMA and the data seed, so an
interrupted run ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnseg.devices import autocast_context
from nnseg.training.checkpoint import load_checkpoint, save_checkpoint
from nnseg.training.config import nnunet_trainer_class
from nnseg.training.cpu_threads import apply_cpu_threads
from nnseg.training.data import prefetched
from nnseg.training.distributed import DistributedTraining
from nnseg.training.failures import non_finite_loss_error, unreadable_checkpoint_error
from nnseg.training.fold_state import discard_failed_start, write_train_config
from nnseg.training.hooks import Hooks
from nnseg.training.finetune import load_pretrained
from nnseg.training.partial import PartialCodes
from nnseg.training.pretrained import read_pretrained
from nnseg.training.run_spec import Components, RunSpec, build_components, pretrained_target
from nnseg.training.schedule import LR_SCHEDULES
from nnseg.training.state import TrainState, checkpoint_dict, state_from_checkpoint
from nnseg.training.tasks import task_of

CHECKPOINT_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


@dataclass(frozen=True)
class TrainResult:
    output_folder: Path
    state: TrainState
    stopped_early: bool


def _as_list(output: Any) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (list, tuple)) else [output]


def train_step(network: nn.Module, image: torch.Tensor, targets: list[torch.Tensor], loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, *, precision: str,
               grad_clip: float) -> float:
    """One SGD step with gradient clipping (and fp16 loss scaling when ``scaler`` is given); returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(image.device, precision):
        outputs = _as_list(network(image))
        loss = loss_fn(outputs, targets[: len(outputs)])
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        nn.utils.clip_grad_norm_(network.parameters(), grad_clip)
        optimizer.step()
    return float(loss.detach().cpu())


def _unscored(output: torch.Tensor, target: torch.Tensor, *, regions: bool, partial: PartialCodes | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Partial labels: the target without its codes, and where each class (region) is not scored."""
    if partial is None:
        return target, None
    if regions:  # (B, 2R[+1]): regions, unknown masks, ignore
        r = output.shape[1]
        return torch.cat([target[:, :r], target[:, 2 * r:]], 1), target[:, r:2 * r].bool()
    unscored = torch.zeros(output.shape, dtype=torch.bool, device=output.device)
    for s, classes in enumerate(partial.sets):
        unscored[:, list(classes)] |= target == partial.base + s
    return partial.uncoded(target), unscored


def tp_fp_fn(output: torch.Tensor, target: torch.Tensor, *, regions: bool, ignore_label: int | None,
             partial: PartialCodes | None = None) -> np.ndarray:
    """Global TP/FP/FN per foreground class (or region) of a hard prediction, as nnU-Net's online validation.

    ``partial``: coded voxels count as background, and a class they may be is not scored there."""
    axes = [0, *range(2, output.ndim)]
    target, unscored = _unscored(output, target, regions=regions, partial=partial)
    if regions:
        pred = (torch.sigmoid(output.float()) > 0.5)
        mask = None
        if ignore_label is not None:
            mask, target = (target[:, -1:] == 0), target[:, :-1]
        gt = target.bool()
    else:
        pred = torch.zeros_like(output, dtype=torch.bool).scatter_(1, output.argmax(1, keepdim=True), True)
        mask = None if ignore_label is None else (target != ignore_label)
        t = target.long() if mask is None else torch.where(mask, target, torch.zeros_like(target)).long()
        gt = torch.zeros_like(pred).scatter_(1, t, True)
    if mask is not None:
        pred, gt = pred & mask, gt & mask
    if unscored is not None:
        pred, gt = pred & ~unscored, gt & ~unscored
    tp = (pred & gt).sum(axes)
    fp = (pred & ~gt).sum(axes)
    fn = (~pred & gt).sum(axes)
    out = torch.stack([tp, fp, fn]).cpu().numpy().astype(np.float64)
    return out if regions else out[:, 1:]


def validation_step(network: nn.Module, image: torch.Tensor, targets: list[torch.Tensor], loss_fn: nn.Module, *,
                    precision: str, regions: bool, ignore_label: int | None,
                    partial: PartialCodes | None = None) -> tuple[float, np.ndarray]:
    with torch.no_grad(), autocast_context(image.device, precision):
        outputs = _as_list(network(image))
        loss = loss_fn(outputs, targets[: len(outputs)])
    return float(loss.cpu()), tp_fp_fn(outputs[0], targets[0], regions=regions, ignore_label=ignore_label,
                                       partial=partial)


def pseudo_dice(counts: np.ndarray) -> list[float]:
    tp, fp, fn = counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return [float(v) for v in 2 * tp / (2 * tp + fp + fn)]


def _save(run: RunSpec, parts: Components, state: TrainState, name: str, next_epoch: int) -> None:
    ckpt = checkpoint_dict(
        state, network_weights=parts.module.state_dict(), optimizer_state=parts.optimizer.state_dict(),
        grad_scaler_state=None if parts.scaler is None else parts.scaler.state_dict(), init_args=run.init_args,
        trainer_name=checkpoint_trainer_name(run), mirror_axes=run.mirror_axes, next_epoch=next_epoch,
        train_config=run.config.to_json())
    save_checkpoint(ckpt, run.output_folder / name)


def checkpoint_trainer_name(run: RunSpec) -> str:
    """The trainer class a checkpoint records: the task's (an interactive model: nnInteractive's), else nnU-Net's."""
    task = task_of(run.config.task)
    if task is not None and task.checkpoint_trainer_name:
        return task.checkpoint_trainer_name
    return nnunet_trainer_class(run.trainer_name)


def _prepared(parts: Components, batches: Any, epoch: int, *, train: bool) -> Any:
    """The task's rework of each batch (``Components.prepare``), in this thread: it may run the network."""
    for i, (image, targets) in enumerate(batches):
        yield (image, targets) if parts.prepare is None else parts.prepare(parts.network, image, targets, epoch, i,
                                                                           train)


def _restore(run: RunSpec, parts: Components) -> TrainState | None:
    for i, name in enumerate(CHECKPOINT_ORDER):
        path = run.output_folder / name
        if path.is_file():
            try:
                ckpt = load_checkpoint(path, map_location=run.device)
            except ValueError as e:
                others = [run.output_folder / n for n in CHECKPOINT_ORDER[i + 1:] if (run.output_folder / n).is_file()]
                raise unreadable_checkpoint_error(path, e, others) from None
            parts.module.load_state_dict(ckpt["network_weights"])
            if ckpt.get("optimizer_state") is not None:
                parts.optimizer.load_state_dict(ckpt["optimizer_state"])
            if parts.scaler is not None and ckpt.get("grad_scaler_state") is not None:
                parts.scaler.load_state_dict(ckpt["grad_scaler_state"])
            return state_from_checkpoint(ckpt, default_num_epochs=run.config.num_epochs)
    return None


FullValidator = Callable[[nn.Module], list[float]]
"""Whole-image validation (``full_val_every``): network -> Dice per foreground label or region (see
:mod:`nnseg.launch.full_val`, which builds it for the launchers)."""


def _patch_validation(run: RunSpec, parts: Components, epoch: int) -> tuple[list[float], np.ndarray]:
    """nnU-Net's online validation: ``val_iterations_per_epoch`` patch batches, losses and TP/FP/FN counts."""
    n_fg = run.num_heads if run.regions is not None else run.num_heads - 1  # pseudo Dice: foreground only
    val_losses, counts = [], np.zeros((3, n_fg))
    batches = prefetched(lambda i: parts.batches.val_batch(epoch, i), run.config.val_iterations_per_epoch,
                         background=run.background)
    for i, (image, targets) in enumerate(_prepared(parts, batches, epoch, train=False)):
        loss, c = validation_step(parts.network, image, targets, parts.loss, precision=run.precision,
                                  regions=run.regions is not None, ignore_label=run.ignore_label, partial=run.partial)
        _check_finite(run, parts, loss, image, epoch, i, train=False)
        val_losses.append(loss)
        counts += c
    return val_losses, counts


def _full_validation(run: RunSpec, parts: Components, state: TrainState, validate: FullValidator | None) -> bool:
    """Whole-image validation on every ``full_val_every``-th epoch (and the last); True on a new best Dice."""
    every = run.config.full_val_every
    if every == 0:
        return False
    if validate is None:
        raise ValueError("full_val_every needs a full-image validator; train through nnseg.launch (nnUNetv2_train), "
                         "or pass full_validator=nnseg.launch.full_val.full_validator(run)")
    epoch = state.current_epoch
    due = (epoch + 1) % every == 0 or epoch + 1 == state.num_epochs
    mean = state.log_full_val(validate(parts.network) if due else None)
    return mean is not None and state.improved_full_val(mean)


def run_epoch(run: RunSpec, parts: Components, state: TrainState, hooks: Hooks, *,
              dist: DistributedTraining | None = None, full_validator: FullValidator | None = None) -> None:
    """Train ``iterations_per_epoch`` steps, validate ``val_iterations_per_epoch`` batches (and whole images every
    ``full_val_every`` epochs), log, checkpoint.

    Under DDP (``dist``) the losses and validation counts are reduced over ranks before they are logged.
    """
    cfg, epoch, start = run.config, state.current_epoch, time.time()
    if run.device.type == "cpu" and dist is None:
        apply_cpu_threads(cfg.cpu_threads)
    lr = LR_SCHEDULES[cfg.lr_schedule](epoch, state.num_epochs, cfg.initial_lr)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    parts.network.train()
    losses = []
    batches = _prepared(parts, prefetched(lambda i: parts.batches.train_batch(epoch, i), cfg.iterations_per_epoch,
                                          background=run.background), epoch, train=True)
    for i, (image, targets) in enumerate(hooks.wrap_iterations(batches, epoch=epoch, total=cfg.iterations_per_epoch)):
        losses.append(train_step(parts.network, image, targets, parts.loss, parts.optimizer, parts.scaler,
                                 precision=run.precision, grad_clip=cfg.grad_clip))
        _check_finite(run, parts, losses[-1], image, epoch, i, train=True)
    parts.network.eval()
    val_losses, counts = _patch_validation(run, parts, epoch)
    new_best_full = _full_validation(run, parts, state, full_validator)
    train_loss, val_loss = float(np.mean(losses)), float(np.mean(val_losses or [np.nan]))
    if dist is not None:
        train_loss, val_loss, counts = dist.reduce_epoch(train_loss, val_loss, counts)
    ema = state.log_epoch(lr=lr, train_loss=train_loss, val_loss=val_loss,
                          dice_per_class=pseudo_dice(counts), ema_alpha=cfg.ema_alpha, start=start, end=time.time())
    best = new_best_full if cfg.full_val_every else state.improved(ema)
    if best and not run.disable_checkpointing:
        _save(run, parts, state, "checkpoint_best.pth", epoch + 1)
    if (epoch + 1) % cfg.save_every == 0 and epoch != state.num_epochs - 1 and not run.disable_checkpointing:
        _save(run, parts, state, "checkpoint_latest.pth", epoch + 1)
    hooks.on_epoch_end(run, state)
    state.current_epoch += 1


def _check_finite(run: RunSpec, parts: Components, loss: float, image: torch.Tensor, epoch: int, index: int, *,
                  train: bool) -> None:
    """Stop at the first non-finite loss (the value is on the host already: no extra device synchronisation)."""
    if not math.isfinite(loss):
        raise non_finite_loss_error(loss, image, parts.batches.case_ids(epoch, index, train=train),
                                    phase="training" if train else "validation", epoch=epoch, iteration=index,
                                    precision=run.precision, config=run.config, data_folder=run.data_folder)


def _apply_time_budget(run: RunSpec, state: TrainState) -> None:
    """After the first epoch, fit the epoch count to ``time_budget_hours`` (the LR schedule then ends at 0 in time)."""
    hours = run.config.time_budget_hours
    if hours is None or state.current_epoch != 1:
        return
    per_epoch = state.mean_epoch_seconds()
    state.num_epochs = max(1, int(math.floor(hours * 3600 / per_epoch)))


def train(run: RunSpec, *, hooks: Hooks | None = None, resume: bool = False,
          pretrained_weights: Path | None = None, dist: DistributedTraining | None = None,
          full_validator: FullValidator | None = None) -> TrainResult:
    """Train one fold; returns when ``num_epochs`` are done or early stopping triggers.

    ``dist``: this rank's view of a DDP process group (see :mod:`nnseg.training.distributed`); pass the run from
    :func:`~nnseg.training.distributed.rank_run` so that only rank 0 writes checkpoints. ``full_validator``: the
    whole-image validation ``full_val_every`` needs (:func:`nnseg.launch.full_val.full_validator`).
    """
    hooks = hooks or Hooks()
    run.output_folder.mkdir(parents=True, exist_ok=True)
    try:
        return _train(run, hooks, resume=resume, pretrained_weights=pretrained_weights, dist=dist,
                      full_validator=full_validator)
    except BaseException:
        if not run.disable_checkpointing:  # a start that failed before its first checkpoint leaves no settings behind
            discard_failed_start(run.output_folder)
        raise


def _train(run: RunSpec, hooks: Hooks, *, resume: bool, pretrained_weights: Path | None,
           dist: DistributedTraining | None, full_validator: FullValidator | None) -> TrainResult:
    parts = build_components(run)
    if dist is not None:
        dist.prepare(run, parts)
    state = _restore(run, parts) if resume else None
    if state is None:
        if resume and (dist is None or dist.info.is_main):
            print(f"note: --c but {run.output_folder} holds no checkpoint to continue from; starting from scratch",
                  file=sys.stderr)
        if pretrained_weights is not None:
            load_pretrained_weights(run, parts.module, pretrained_weights, report=dist is None or dist.info.is_main)
        state = TrainState(seed=run.seed, num_epochs=run.config.num_epochs)
    if not run.disable_checkpointing:
        write_train_config(run.output_folder, run.config)
    hooks.on_train_start(run, state, parts.module)
    stopped_early = False
    while state.current_epoch < state.num_epochs:
        run_epoch(run, parts, state, hooks, dist=dist, full_validator=full_validator)
        _apply_time_budget(run, state)
        if dist is not None:
            dist.sync_state(state)
        patience = run.config.early_stopping_patience
        if patience is not None and state.epochs_without_improvement() >= patience:
            stopped_early = True
            break
    if not run.disable_checkpointing:
        _save(run, parts, state, "checkpoint_final.pth", state.current_epoch)
        (run.output_folder / "checkpoint_latest.pth").unlink(missing_ok=True)
    hooks.on_train_end(run, state, stopped_early=stopped_early)
    return TrainResult(run.output_folder, state, stopped_early)


def load_pretrained_weights(run: RunSpec, network: nn.Module, path: Path, *, report: bool = True) -> None:
    """Fine-tuning's load (:mod:`nnseg.training.finetune`); the report goes to the console and the fold folder."""
    target = pretrained_target(run, run.init_args.get("dataset_json") or {})
    load_pretrained(network, read_pretrained(Path(path)), target, path=Path(path),
                    report_folder=run.output_folder if report and not run.disable_checkpointing else None)
