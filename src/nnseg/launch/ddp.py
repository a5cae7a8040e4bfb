"""Data-parallel training runs: ``-num_gpus N`` local ranks, or one rank of a torchrun job.

Every rank builds the same :class:`~nnseg.training.setup.FoldJob`, joins the process group
(:func:`~nnseg.training.distributed.process_group`), trains its share of each global batch and predicts its share of
the validation cases; rank 0 alone writes the run files, logs and checkpoints. Extra per-rank hooks come from
:attr:`TrainRequest.hooks` (tests add weight checksums or a simulated crash this way).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys

import torch

from nnseg.devices import resolve_device
from nnseg.launch.full_val import full_validator
from nnseg.launch.hooks import standard_hooks
from nnseg.fs_errors import describe_os_error, is_system_error
from nnseg.launch.request import TrainOutcome, TrainRequest, device_name, fold_job, lock_purpose
from nnseg.locks import folder_lock
from nnseg.parallel import die_with_parent
from nnseg.launch.validate import final_validation
from nnseg.extensions import load_extensions
from nnseg.training.distributed import (
    DistInfo,
    DistributedTraining,
    process_group,
    rank_batch_sizes,
    rank_device,
    rank_run,
)
from nnseg.training.loop import train
from nnseg.training.run_spec import RunSpec
from nnseg.training.setup import FoldJob, make_run_spec, save_run_files

RANK_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError, PermissionError,
               RuntimeError)


def _global_batch_size(job: FoldJob) -> int:
    return int(job.config.batch_size or job.plans.configuration(job.configuration_name).batch_size)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_local(request: TrainRequest) -> None:
    """Start ``request.num_gpus`` ranks on this machine (spawned processes) and wait for them.

    Raises:
        ValueError: fewer GPUs than ranks, MPS, or a global batch smaller than the number of ranks (before any
            process starts).
        RuntimeError: a rank failed; its error is printed above.
    """
    n = request.num_gpus
    if n < 1:
        raise ValueError(f"-num_gpus must be at least 1, got {n}")
    kind = device_name(request).split(":")[0]
    if kind == "mps":
        raise ValueError("-num_gpus > 1 needs CUDA GPUs (or -device cpu for a CPU test run); MPS has no DDP backend")
    if kind == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(f"-num_gpus {n} but torch sees {torch.cuda.device_count()} GPU(s); lower -num_gpus")
    job = fold_job(request, torch.device(kind))  # checks the precision for that device too
    rank_batch_sizes(_global_batch_size(job), n)  # the batch-size error before any process starts
    env = os.environ if request.env is None else request.env
    port = int(env.get("MASTER_PORT") or 0) or _free_port()  # nnU-Net: MASTER_PORT if set, else a free port
    print(f"nnseg: training with {n} processes ({'NCCL, one GPU each' if kind == 'cuda' else 'gloo on the CPU'}); "
          f"rendezvous on 127.0.0.1:{port}", file=sys.stderr)
    try:
        torch.multiprocessing.start_processes(_spawned_rank, args=(request, port, n), nprocs=n, join=True,
                                              start_method="spawn")
    except (torch.multiprocessing.ProcessExitedException, torch.multiprocessing.ProcessRaisedException) as e:
        raise RuntimeError(f"-num_gpus {n}: rank {e.error_index} failed ({str(e).strip().splitlines()[-1]}); its error "
                           "is printed above. Fix it and rerun, with --c to continue from the last checkpoint") from None


def _spawned_rank(local_rank: int, request: TrainRequest, port: int, world: int) -> None:
    """Body of one process started by :func:`launch_local` (top level: picklable for spawn)."""
    die_with_parent()  # a SIGKILL of the launcher must not leave ranks training on
    info = DistInfo(rank=local_rank, world_size=world, local_rank=local_rank, local_world_size=world,
                    init_method=f"tcp://127.0.0.1:{port}")
    try:
        load_extensions(request.env)  # this spawned process has not imported the user's extensions yet
        run_rank(request, info)
    except (OSError, *RANK_ERRORS) as e:
        print(f"nnUNetv2_train (rank {local_rank}): error: {error_line(e)}", file=sys.stderr)
        sys.exit(1)


def error_line(e: BaseException) -> str:
    """The one line a failing rank prints: an OSError of the system as path, cause and fix, else the message."""
    if is_system_error(e):
        return describe_os_error(e)  # type: ignore[arg-type]
    return str(e.args[0] if isinstance(e, KeyError) and e.args else e)


def _rank_device(request: TrainRequest, info: DistInfo) -> torch.device:
    device = rank_device(resolve_device(device_name(request)), info)
    if device.type == "cpu":  # share the cores between the ranks on this node
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
    elif device.type == "mps":
        raise ValueError("DDP needs CUDA GPUs or the CPU (gloo); MPS has no DDP backend. Use -device cuda or cpu")
    return device


def run_rank(request: TrainRequest, info: DistInfo) -> TrainOutcome:
    """Everything one rank does: join the group, train its share, validate its share of the cases."""
    device = _rank_device(request, info)
    job = fold_job(request, device)
    rank_batch_sizes(_global_batch_size(job), info.world_size)  # before the rendezvous: every rank says why
    with process_group(info, device) as ddp:
        resume = request.continue_training or request.validating
        run = ddp.main_first(lambda: make_run_spec(job, resume=resume, pretrained_weights=request.pretrained_weights,
                                                   validate_only=request.validating))  # rank 0 writes the splits
        run = dataclasses.replace(run, seed=int(ddp.broadcast(run.seed)))
        with folder_lock(run.output_folder, purpose=lock_purpose(request, ddp=True), enabled=info.is_main):
            if not request.validating:
                _train_rank(request, run, job, ddp)
            result = final_validation(run, job, best=request.validate_best, npz=request.save_probabilities,
                                      progress=False, ddp=ddp)
    return TrainOutcome(run.output_folder, result.folder, result.foreground_dice)


def _train_rank(request: TrainRequest, run: RunSpec, job: FoldJob, ddp: DistributedTraining) -> None:
    info = ddp.info
    if info.is_main:
        save_run_files(run, job)
    layout = (f"data parallel: {info.world_size} processes ({'NCCL' if run.device.type == 'cuda' else 'gloo'}), "
              f"global batch {run.batch_size} split {rank_batch_sizes(run.batch_size, info.world_size)}")
    extra = [h for factory in request.hooks for h in factory(info)]
    hooks = standard_hooks(run, info=info, progress=request.progress, extra=extra, first_log_line=layout)
    train(rank_run(run, info), hooks=hooks, resume=request.continue_training,
          pretrained_weights=request.pretrained_weights, dist=ddp, full_validator=full_validator(run))
    ddp.barrier()  # rank 0 has written checkpoint_final.pth
