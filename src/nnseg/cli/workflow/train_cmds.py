"""``nnseg train`` = ``nnUNetv2_train DATASET CONFIGURATION FOLD`` (nnU-Net's arguments plus the knobs users asked for)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

from typing import TYPE_CHECKING

from nnseg.cli.context import Context
from nnseg.training.loggers import LOGGERS, check_loggers

if TYPE_CHECKING:  # these import torch: only when the command runs, so that `nnUNetv2_train -h` is instant
    from nnseg.launch.request import TrainRequest
    from nnseg.training.config import TrainConfig


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset_name_or_id", help="dataset id (4), zero-padded id (004) or name (Dataset004_Hippocampus)")
    p.add_argument("configuration", help="configuration from the plans, e.g. 2d, 3d_fullres, 3d_lowres")
    p.add_argument("fold", help="fold 0-4, or 'all' to train on every case")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer name (nnU-Net presets such as nnUNetTrainer_250epochs)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier [nnUNetPlans]")
    p.add_argument("-pretrained_weights", default=None, help="checkpoint (.pth) or model zip to fine-tune from: every tensor whose name and "
                   "shape match is loaded, heads re-initialised when the label set differs, input channels mapped by "
                   "name (--set pretrained_new_channels=mean|zero|random); report in fold_X/pretrained_weights_report.json")
    p.add_argument("-num_gpus", type=int, default=1, help="number of GPUs (>1: data parallel training)")
    p.add_argument("--npz", action="store_true", help="save softmax probabilities of the final validation (ensembling)")
    p.add_argument("--c", action="store_true", help="continue an interrupted run from its latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation (needs checkpoint_final.pth)")
    p.add_argument("--val_best", action="store_true", help="validate with checkpoint_best.pth into validation_best/ (best EMA pseudo Dice, "
                   "or best whole-image Dice with --set full_val_every=N)")
    p.add_argument("--disable_checkpointing", action="store_true", help="do not write checkpoints (testing only)")
    p.add_argument("-device", default="auto", help="cuda, cpu or mps [auto: cuda if available, else mps, else cpu]")
    p.add_argument("--logger", action="append", default=[], choices=list(LOGGERS),
                   help="experiment tracking: wandb, mlflow or tensorboard (repeatable; W&B also with "
                        "nnUNet_wandb_enabled=1 as in nnU-Net)")
    add_recipe_options(p)


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The nnseg additions to the training recipe (shared with ``cross-validate``)."""
    g = p.add_argument_group("nnseg additions")
    g.add_argument("--epochs", type=int, default=None, help="number of epochs (same run and folder as nnUNetTrainer_<N>epochs)")
    g.add_argument("--iterations-per-epoch", dest="iterations_per_epoch", type=int, default=None)
    g.add_argument("--early-stopping", dest="early_stopping", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without improvement of the EMA pseudo Dice, or of the "
                        "whole-image validation Dice with --set full_val_every=N")
    g.add_argument("--time-budget", dest="time_budget", type=float, default=None, metavar="HOURS",
                   help="fit the number of epochs to this many hours (measured after the first epoch)")
    g.add_argument("--seed", type=int, default=None, help="seed for weights and data (reproducible runs)")
    g.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision [auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32]")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig field, e.g. --set initial_lr=0.005 (repeatable)")


def recipe(args: argparse.Namespace, ctx: Context) -> tuple[str, TrainConfig]:
    """Trainer name and TrainConfig from ``-tr`` and the recipe options (``nnUNet_compile`` applied)."""
    from nnseg.launch.request import resolve_trainer

    trainer, config = resolve_trainer(args.tr, epochs=args.epochs, iterations_per_epoch=args.iterations_per_epoch,
                                      early_stopping=args.early_stopping, time_budget_hours=args.time_budget,
                                      seed=args.seed, precision=args.precision, overrides=args.overrides)
    if ctx.env.get("nnUNet_compile"):  # nnU-Net's switch: compile on CUDA unless set to false
        config = config.replace(compile=ctx.env["nnUNet_compile"])
    return trainer, config


def train_request(args: argparse.Namespace, ctx: Context) -> TrainRequest:
    """The :class:`TrainRequest` of a parsed ``train`` command line (environment switches resolved here)."""
    from nnseg.launch.request import TrainRequest, parse_fold

    trainer, config = recipe(args, ctx)
    name = ctx.dataset_name(args.dataset_name_or_id)
    roots = ctx.roots()
    # Batches are made in a background thread on accelerators; on the CPU the network already uses every core, and
    # making them inline measured faster (bench/train_throughput.py: 1.04x vs 1.12x forward+backward).
    # nnUNet_n_proc_DA=0 forces inline batches everywhere.
    return TrainRequest(
        preprocessed_dataset_folder=roots.preprocessed / name, results_dataset_folder=roots.results / name,
        configuration=args.configuration, fold=parse_fold(args.fold), trainer_name=trainer, config=config,
        plans_identifier=args.p, device=args.device, continue_training=args.c, validation_only=args.val,
        validate_best=args.val_best, save_probabilities=args.npz,
        pretrained_weights=Path(args.pretrained_weights) if args.pretrained_weights else None, num_gpus=args.num_gpus,
        disable_checkpointing=args.disable_checkpointing, background_batches=ctx.env_int("nnUNet_n_proc_DA", 1) > 0,
        progress=sys.stderr.isatty(), env=dict(ctx.env))


def run_train(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.launch.hooks import logger_hook_factory
    from nnseg.launch.train import run_training
    from nnseg.training.distributed import dist_info_from_env

    loggers = check_loggers(args.logger, env=ctx.env)  # a missing tracking library: refused before anything is written
    request = train_request(args, ctx)
    if loggers:
        factory = partial(logger_hook_factory, names=tuple(args.logger), env=dict(ctx.env),
                          output_folder=request.fold_folder, resume=args.c)
        request = replace(request, hooks=(*request.hooks, factory))
    run_training(request, torchrun=dist_info_from_env(ctx.env))
    return 0
