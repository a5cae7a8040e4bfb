"""Data-parallel ``train`` and rank-sharded ``predict``: the CLI side of :mod:`nnseg.training.distributed`.

* ``nnUNetv2_train ... -num_gpus N`` starts N local processes (spawn, a free port on 127.0.0.1) that train one fold
  together; ``torchrun --nnodes M --nproc-per-node N -m nnseg.train DATASET CONFIG FOLD ...`` does the same across
  nodes (the ranks come from torchrun's environment).
* ``torchrun --nproc-per-node N -m nnseg.predict -i ... -o ... -d ... -c ...`` predicts with every rank taking the
  cases ``sorted[rank::world]`` (combined with ``-num_parts/-part_id``) into one output folder.

Diagnostics (used by the tests): ``NNSEG_DDP_CHECKSUMS=<folder>`` makes every rank record a weight checksum after every
step; ``NNSEG_DDP_CRASH_AT=<epoch>:<iteration>`` makes rank 0 die abruptly there (resume with ``--c``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from nnseg.cli.context import Context
from nnseg.devices import auto_device, resolve_device
from nnseg.extensions import load_extensions
from nnseg.locks import folder_lock
from nnseg.training.distributed import (
    DistInfo,
    DistributedTraining,
    dist_info_from_env,
    process_group,
    rank_batch_sizes,
    rank_device,
    rank_run,
)
from nnseg.training.hooks import Hooks

CHECKSUM_ENV, CRASH_ENV = "NNSEG_DDP_CHECKSUMS", "NNSEG_DDP_CRASH_AT"


def is_distributed(args: argparse.Namespace, env: Mapping[str, str]) -> bool:
    """True for ``-num_gpus N > 1`` or a process started by torchrun with a world size above 1."""
    return args.num_gpus != 1 or dist_info_from_env(env) is not None


def run_train_distributed(args: argparse.Namespace, ctx: Context) -> int:
    """``train`` under DDP: as one rank of a torchrun job, or launching ``-num_gpus`` local ranks."""
    info = dist_info_from_env(ctx.env)
    if info is None:
        return launch_local(args, ctx)
    if args.num_gpus not in (1, info.local_world_size):
        raise ValueError(f"-num_gpus {args.num_gpus} contradicts torchrun's {info.local_world_size} process(es) on this "
                         "node; under torchrun leave -num_gpus out (torchrun's --nproc-per-node sets it)")
    return run_rank(args, ctx, info)


def _device_name(args: argparse.Namespace) -> str:
    return auto_device() if args.device == "auto" else args.device


def _global_batch_size(job) -> int:  # type: ignore[no-untyped-def]
    return int(job.config.batch_size or job.plans.configuration(job.configuration_name).batch_size)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(args: argparse.Namespace, ctx: Context) -> int:
    """Start ``args.num_gpus`` ranks on this machine (spawned processes) and wait for them."""
    from nnseg.cli.train_cmds import _job, trainer_and_config

    n = args.num_gpus
    if n < 1:
        raise ValueError(f"-num_gpus must be at least 1, got {n}")
    kind = _device_name(args).split(":")[0]
    if kind == "mps":
        raise ValueError("-num_gpus > 1 needs CUDA GPUs (or -device cpu for a CPU test run); MPS has no DDP backend")
    if kind == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(f"-num_gpus {n} but torch sees {torch.cuda.device_count()} GPU(s); lower -num_gpus")
    trainer, config = trainer_and_config(args)
    job = _job(args, ctx, trainer, config, torch.device(kind))  # checks --precision for that device too
    rank_batch_sizes(_global_batch_size(job), n)  # the batch-size error before any process starts
    port = ctx.env_int("MASTER_PORT", 0) or _free_port()  # nnU-Net: MASTER_PORT if set, else a free port
    print(f"nnseg: training with {n} processes ({'NCCL, one GPU each' if kind == 'cuda' else 'gloo on the CPU'}); "
          f"rendezvous on 127.0.0.1:{port}", file=sys.stderr)
    try:
        torch.multiprocessing.start_processes(_spawned_rank, args=(args, dict(ctx.env), str(ctx.cwd), port, n),
                                              nprocs=n, join=True, start_method="spawn")
    except (torch.multiprocessing.ProcessExitedException, torch.multiprocessing.ProcessRaisedException) as e:
        raise RuntimeError(f"-num_gpus {n}: rank {e.error_index} failed ({str(e).strip().splitlines()[-1]}); its error "
                           "is printed above. Fix it and rerun, with --c to continue from the last checkpoint") from None
    return 0


def _spawned_rank(local_rank: int, args: argparse.Namespace, env: dict[str, str], cwd: str, port: int,
                  world: int) -> None:
    """Body of one process started by :func:`launch_local` (top level: picklable for spawn)."""
    from nnseg.cli.main import USER_ERRORS, error_line
    from nnseg.parallel import die_with_parent

    die_with_parent()  # a SIGKILL of the launcher must not leave ranks training on

    info = DistInfo(rank=local_rank, world_size=world, local_rank=local_rank, local_world_size=world,
                    init_method=f"tcp://127.0.0.1:{port}")
    try:
        load_extensions(env)  # this spawned process has not imported the user's extensions yet
        code = run_rank(args, Context(env=env, cwd=Path(cwd)), info)
    except (OSError, *USER_ERRORS) as e:
        print(f"nnUNetv2_train (rank {local_rank}): error: {error_line(e)}", file=sys.stderr)
        code = 1
    if code:
        sys.exit(code)


def _rank_device(args: argparse.Namespace, info: DistInfo) -> torch.device:
    device = rank_device(resolve_device(_device_name(args)), info)
    if device.type == "cpu":  # share the cores between the ranks on this node
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
    elif device.type == "mps":
        raise ValueError("DDP needs CUDA GPUs or the CPU (gloo); MPS has no DDP backend. Use -device cuda or cpu")
    return device


def run_rank(args: argparse.Namespace, ctx: Context, info: DistInfo) -> int:
    """Everything one rank does: join the group, train its share, validate its share of the cases."""
    from nnseg.cli.train_cmds import _job, trainer_and_config
    from nnseg.training.setup import make_run_spec

    if args.fold != "all" and not args.fold.isdigit():
        raise ValueError(f"fold must be an integer 0-4 or 'all', got {args.fold!r}")
    trainer, config = trainer_and_config(args)
    device = _rank_device(args, info)
    job = _job(args, ctx, trainer, config, device)
    rank_batch_sizes(_global_batch_size(job), info.world_size)  # before the rendezvous: every rank says why
    with process_group(info, device) as ddp:
        validating = args.val or args.val_best
        pretrained = Path(args.pretrained_weights) if args.pretrained_weights else None
        run = ddp.main_first(lambda: make_run_spec(job, resume=args.c or validating, pretrained_weights=pretrained,
                                                   validate_only=validating))  # rank 0 writes the splits
        run = dataclasses.replace(run, seed=int(ddp.broadcast(run.seed)))
        with folder_lock(run.output_folder, purpose=f"nnUNetv2_train fold {job.fold} (DDP)", enabled=info.is_main):
            if not validating:
                _train_rank(args, ctx, run, job, ddp)
            return sharded_validation(run, job, ddp, best=args.val_best, npz=args.npz)


def _train_rank(args: argparse.Namespace, ctx: Context, run, job, ddp: DistributedTraining) -> None:  # type: ignore[no-untyped-def]
    from nnseg.training.hooks import (
        DebugJson,
        HookList,
        ProgressBar,
        ProgressPlot,
        TextLog,
    )
    from nnseg.training.loggers import logger_hooks
    from nnseg.training.loop import train
    from nnseg.training.setup import save_run_files
    from nnseg.training.summary_hook import NetworkSummary

    info = ddp.info
    hooks: list[Hooks] = []
    if info.is_main:
        save_run_files(run, job)
        log = TextLog(run.output_folder)
        log.write(f"data parallel: {info.world_size} processes ({'NCCL' if run.device.type == 'cuda' else 'gloo'}), "
                  f"global batch {run.batch_size} split {rank_batch_sizes(run.batch_size, info.world_size)}")
        hooks = [log, ProgressBar(), ProgressPlot(run.output_folder), DebugJson(run.output_folder),
                 NetworkSummary(run.output_folder)]
    hooks += logger_hooks(args.logger, env=ctx.env, output_folder=run.output_folder, resume=args.c, rank=info.rank)
    hooks += diagnostic_hooks(ctx.env, info)
    pretrained = Path(args.pretrained_weights) if args.pretrained_weights else None
    train(rank_run(run, info), hooks=HookList(hooks), resume=args.c, pretrained_weights=pretrained, dist=ddp)
    ddp.barrier()  # rank 0 has written checkpoint_final.pth


def diagnostic_hooks(env: Mapping[str, str], info: DistInfo) -> list[Hooks]:
    """The hooks turned on by ``NNSEG_DDP_CHECKSUMS`` (every rank) and ``NNSEG_DDP_CRASH_AT`` (rank 0)."""
    from nnseg.training.ddp_checks import WeightChecksums, parse_crash_at

    hooks: list[Hooks] = []
    if env.get(CHECKSUM_ENV):
        hooks.append(WeightChecksums(Path(env[CHECKSUM_ENV]), info.rank))
    if env.get(CRASH_ENV) and info.is_main:
        hooks.append(parse_crash_at(env[CRASH_ENV]))
    return hooks


def sharded_validation(run, job, ddp: DistributedTraining, *, best: bool, npz: bool) -> int:  # type: ignore[no-untyped-def]
    """Final validation: rank r predicts ``val_ids[r::world]``; after a barrier rank 0 evaluates the whole folder."""
    from nnseg.cli.train_cmds import _next_stage_writer
    from nnseg.metrics.evaluate import evaluate_folder_with_dataset
    from nnseg.predictions.validation import validate_fold

    info = ddp.info
    out = run.output_folder / ("validation_best" if best else "validation")
    shard = run.val_ids[info.rank::info.world_size]
    seconds = validate_fold(run.output_folder.parent, job.fold, run.data_folder, shard, out,
                            checkpoint="checkpoint_best.pth" if best else "checkpoint_final.pth", device=run.device,
                            precision=run.precision, save_probabilities=npz, progress=False,
                            prev_stage_folder=run.prev_stage_folder, on_case=_next_stage_writer(run, job))
    ddp.barrier()
    if not info.is_main:
        return 0
    pre = Path(job.preprocessed_dataset_folder)
    summary = evaluate_folder_with_dataset(pre / "gt_segmentations", out, dataset_json_file=pre / "dataset.json",
                                           plans_file=run.output_folder.parent / "plans.json", chill=True,
                                           num_processes=1)
    per_label = {k: round(v["Dice"], 4) for k, v in summary["mean"].items()}
    print(f"Validation of {run.output_folder} ({len(run.val_ids)} cases on {info.world_size} ranks, {seconds:.1f} s on "
          f"rank 0): mean foreground Dice {summary['foreground_mean']['Dice']:.4f}; per label {per_label}; summary in "
          f"{out / 'summary.json'}")
    return 0


def shard_predict_args(args: argparse.Namespace, info: DistInfo | None) -> argparse.Namespace:
    """This rank's part: ``sorted[part_id::num_parts][rank::world]`` = ``sorted[part_id + rank*num_parts :: num_parts*world]``.

    On CUDA every rank predicts on ``cuda:LOCAL_RANK``.
    """
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        raise ValueError(f"-part_id must be in [0, -num_parts); got -num_parts {args.num_parts} -part_id {args.part_id}")
    if info is None:
        return args
    out = argparse.Namespace(**vars(args))
    out.part_id = args.part_id + info.rank * args.num_parts
    out.num_parts = args.num_parts * info.world_size
    device = auto_device() if args.device in (None, "auto") else args.device
    if device.split(":")[0] == "cuda":
        out.device = f"cuda:{info.local_rank}"
    return out


def _run_with_errors(run, args: argparse.Namespace, ctx: Context, prog: str) -> int:  # type: ignore[no-untyped-def]
    from nnseg.cli.main import USER_ERRORS

    try:
        return int(run(args, ctx) or 0)
    except USER_ERRORS as e:
        if ctx.env.get("NNSEG_DEBUG"):
            raise
        print(f"{prog}: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 1


def main_train(argv: Sequence[str] | None = None) -> int:
    """``python -m nnseg.train`` (under torchrun): the ``train`` command's arguments and runner."""
    from nnseg.cli.main import run_command
    from nnseg.cli.table import by_name

    return run_command(by_name()["train"], list(sys.argv[1:] if argv is None else argv), prog="nnseg.train")


def main_predict(argv: Sequence[str] | None = None) -> int:
    """``python -m nnseg.predict`` (under torchrun): ``predict`` with the cases sharded over the ranks."""
    from nnseg.cli.main import build_parser
    from nnseg.cli.predict_cmds import run_predict
    from nnseg.cli.table import by_name

    prog = "nnseg.predict"
    args = build_parser(by_name()["predict"], prog=prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    ctx = Context(env=dict(os.environ), cwd=Path.cwd())
    try:
        args = shard_predict_args(args, dist_info_from_env(ctx.env))
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return _run_with_errors(run_predict, args, ctx, prog)
