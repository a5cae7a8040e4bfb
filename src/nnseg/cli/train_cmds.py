"""``nnseg train`` = ``nnUNetv2_train DATASET CONFIGURATION FOLD`` (nnU-Net's arguments plus the knobs users asked for)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from nnseg.cli.context import Context
from nnseg.devices import auto_device, resolve_device, resolve_precision
from nnseg.locks import folder_lock
from nnseg.plans.schema import load_plans
from nnseg.raw.dataset_json import load_dataset_json
from nnseg.training.config import TrainConfig, apply_overrides, preset_for_trainer, trainer_name_for_epochs
from nnseg.training.hooks import DebugJson, HookList, ProgressBar, ProgressPlot, TextLog
from nnseg.training.loggers import LOGGERS, check_loggers, logger_hooks
from nnseg.training.loop import train
from nnseg.training.setup import FoldJob, make_run_spec, save_run_files
from nnseg.training.summary_hook import NetworkSummary


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset_name_or_id", help="dataset id (4), zero-padded id (004) or name (Dataset004_Hippocampus)")
    p.add_argument("configuration", help="configuration from the plans, e.g. 2d, 3d_fullres, 3d_lowres")
    p.add_argument("fold", help="fold 0-4, or 'all' to train on every case")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer name (nnU-Net presets such as nnUNetTrainer_250epochs)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier [nnUNetPlans]")
    p.add_argument("-pretrained_weights", default=None, help="checkpoint to initialise from (all weights but the heads)")
    p.add_argument("-num_gpus", type=int, default=1, help="number of GPUs (>1: data parallel training)")
    p.add_argument("--npz", action="store_true", help="save softmax probabilities of the final validation (ensembling)")
    p.add_argument("--c", action="store_true", help="continue an interrupted run from its latest checkpoint")
    p.add_argument("--val", action="store_true", help="only run the final validation (needs checkpoint_final.pth)")
    p.add_argument("--val_best", action="store_true", help="validate with checkpoint_best.pth into validation_best/")
    p.add_argument("--disable_checkpointing", action="store_true", help="do not write checkpoints (testing only)")
    p.add_argument("-device", default="auto", help="cuda, cpu or mps [auto: cuda if available, else mps, else cpu]")
    g = p.add_argument_group("nnseg additions")
    g.add_argument("--epochs", type=int, default=None, help="number of epochs (same run and folder as nnUNetTrainer_<N>epochs)")
    g.add_argument("--iterations-per-epoch", dest="iterations_per_epoch", type=int, default=None)
    g.add_argument("--early-stopping", dest="early_stopping", type=int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without EMA pseudo-Dice improvement")
    g.add_argument("--time-budget", dest="time_budget", type=float, default=None, metavar="HOURS",
                   help="fit the number of epochs to this many hours (measured after the first epoch)")
    g.add_argument("--seed", type=int, default=None, help="seed for weights and data (reproducible runs)")
    g.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision [auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32]")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig field, e.g. --set initial_lr=0.005 (repeatable)")
    g.add_argument("--logger", action="append", default=[], choices=list(LOGGERS),
                   help="experiment tracking: wandb, mlflow (MLFLOW_TRACKING_URI) or tensorboard (repeatable; "
                        "nnUNet_wandb_enabled=1 also turns wandb on, as in nnU-Net)")


def trainer_and_config(args: argparse.Namespace) -> tuple[str, TrainConfig]:
    """The trainer name (results folder) and TrainConfig from ``-tr``, ``--epochs`` and the other flags."""
    config = preset_for_trainer(args.tr)
    trainer = args.tr
    if args.epochs is not None:
        if args.tr not in ("nnUNetTrainer", "nnUNetTrainerNoMirroring") and config.num_epochs != args.epochs:
            raise ValueError(f"-tr {args.tr} already sets {config.num_epochs} epochs; drop --epochs or -tr")
        trainer = trainer_name_for_epochs(args.epochs, mirroring=config.mirroring)
        config = config.replace(num_epochs=args.epochs)
    if args.early_stopping is not None and args.early_stopping < 1:
        raise ValueError(f"--early-stopping needs a patience of at least 1 epoch, got {args.early_stopping}")
    changes = {"iterations_per_epoch": args.iterations_per_epoch, "early_stopping_patience": args.early_stopping,
               "time_budget_hours": args.time_budget, "seed": args.seed}
    config = config.replace(**{k: v for k, v in changes.items() if v is not None})
    if args.precision not in (None, "auto"):
        config = config.replace(precision=args.precision)
    return trainer, apply_overrides(config, args.overrides)


def _job(args: argparse.Namespace, ctx: Context, trainer: str, config: TrainConfig, device: torch.device) -> FoldJob:
    roots = ctx.roots()
    name = ctx.dataset_name(args.dataset_name_or_id)
    pre = roots.preprocessed / name
    plans_file = pre / f"{args.p}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} does not exist; run `nnUNetv2_plan_and_preprocess -d {args.dataset_name_or_id}` first")
    fold: int | str = args.fold if args.fold == "all" else int(args.fold)
    if ctx.env.get("nnUNet_compile"):  # nnU-Net's switch: compile on CUDA unless set to false
        config = config.replace(compile=ctx.env["nnUNet_compile"])
    precision = resolve_precision(config.precision, device)
    # Batches are made in a background thread on accelerators; on the CPU the network already uses every core, and
    # making them inline measured faster (bench/train_throughput.py: 1.04x vs 1.12x forward+backward).
    # nnUNet_n_proc_DA=0 forces inline batches everywhere.
    background = device.type != "cpu" and ctx.env_int("nnUNet_n_proc_DA", 1) > 0
    return FoldJob(plans=load_plans(plans_file), configuration_name=args.configuration,
                   spec=load_dataset_json(pre / "dataset.json"), preprocessed_dataset_folder=pre,
                   results_dataset_folder=roots.results / name, fold=fold, trainer_name=trainer, config=config,
                   device=device, precision=precision, background=background,
                   disable_checkpointing=args.disable_checkpointing)


def run_train(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.cli.ddp_cmds import is_distributed, run_train_distributed

    check_loggers(args.logger, env=ctx.env)  # a missing tracking library is refused before anything is written
    if is_distributed(args, ctx.env):  # -num_gpus N > 1, or one rank of a torchrun job
        return run_train_distributed(args, ctx)
    if args.fold != "all" and not args.fold.isdigit():
        raise ValueError(f"fold must be an integer 0-4 or 'all', got {args.fold!r}")
    trainer, config = trainer_and_config(args)
    device = resolve_device(auto_device() if args.device == "auto" else args.device)
    job = _job(args, ctx, trainer, config, device)
    pretrained = Path(args.pretrained_weights) if args.pretrained_weights else None
    run = make_run_spec(job, resume=args.c or args.val or args.val_best, pretrained_weights=pretrained,
                        validate_only=args.val or args.val_best)  # checks the whole run; writes nothing before
    with folder_lock(run.output_folder, purpose=f"nnUNetv2_train fold {job.fold}"):  # one run per fold folder
        return _train_and_validate(args, ctx, run, job, pretrained)


def _train_and_validate(args: argparse.Namespace, ctx: Context, run, job: FoldJob,  # type: ignore[no-untyped-def]
                        pretrained: Path | None) -> int:
    if not (args.val or args.val_best):
        if run.output_folder.exists() and not args.c and (run.output_folder / "checkpoint_final.pth").exists():
            print(f"note: {run.output_folder} already holds a trained model; training again overwrites it", file=sys.stderr)
        loggers = logger_hooks(args.logger, env=ctx.env, output_folder=run.output_folder, resume=args.c)
        save_run_files(run, job)
        hooks = HookList([TextLog(run.output_folder), ProgressBar(), ProgressPlot(run.output_folder),
                          DebugJson(run.output_folder), NetworkSummary(run.output_folder), *loggers])
        train(run, hooks=hooks, resume=args.c, pretrained_weights=pretrained)
    return final_validation(run, job, ctx, best=args.val_best, npz=args.npz)


def final_validation(run, job: FoldJob, ctx: Context, *, best: bool, npz: bool) -> int:  # type: ignore[no-untyped-def]
    from nnseg.metrics.evaluate import evaluate_folder_with_dataset
    from nnseg.predictions.validation import validate_fold

    checkpoint = "checkpoint_best.pth" if best else "checkpoint_final.pth"
    out = run.output_folder / ("validation_best" if best else "validation")
    writer = _next_stage_writer(run, job)
    seconds = validate_fold(run.output_folder.parent, job.fold, run.data_folder, run.val_ids, out, checkpoint=checkpoint,
                            device=run.device, precision=run.precision, save_probabilities=npz, progress=sys.stderr.isatty(),
                            prev_stage_folder=run.prev_stage_folder, on_case=writer)
    gt = Path(job.preprocessed_dataset_folder) / "gt_segmentations"
    summary = evaluate_folder_with_dataset(gt, out, dataset_json_file=Path(job.preprocessed_dataset_folder) / "dataset.json",
                                           plans_file=run.output_folder.parent / "plans.json", chill=True,
                                           num_processes=1)
    dice = summary["foreground_mean"]["Dice"]
    per_label = {k: round(v["Dice"], 4) for k, v in summary["mean"].items()}
    print(f"Validation of {run.output_folder} ({len(run.val_ids)} cases, {seconds:.1f} s): mean foreground Dice "
          f"{dice:.4f}; per label {per_label}; summary in {out / 'summary.json'}")
    if writer is not None and writer.written:
        print(f"Wrote {len(writer.written)} segmentation(s) for the next stage to {writer.written[0].parent.parent}")
    return 0


def _next_stage_writer(run, job: FoldJob):  # type: ignore[no-untyped-def]
    """nnU-Net's lowres rule: the final validation also writes predicted_next_stage/<next>/CASE.b2nd."""
    from nnseg.predictions.next_stage import NextStageWriter, next_stages

    cfg = job.plans.configuration(job.configuration_name)
    stages = next_stages(job.plans, cfg, preprocessed_dataset_folder=Path(job.preprocessed_dataset_folder),
                         model_folder=run.output_folder.parent)
    return NextStageWriter(stages, configuration=cfg, spec=job.spec) if stages else None
