"""Run a :class:`~nnseg.launch.request.TrainRequest`: train one fold, then validate it (``nnUNetv2_train``).

:func:`run_training` is the one entry point. It picks the way to run from the request and the torchrun environment:

* one process (``num_gpus=1``, no torchrun);
* ``num_gpus=N > 1``: N local ranks started here (spawn, rendezvous on a free port of 127.0.0.1; NCCL on GPUs, gloo
  on the CPU), see :mod:`nnseg.launch.ddp`;
* one rank of a torchrun job (``torchrun=DistInfo`` from :func:`~nnseg.training.distributed.dist_info_from_env`).

Example:
    >>> request = TrainRequest(Path("pre/Dataset004_Hippocampus"), Path("res/Dataset004_Hippocampus"), "3d_fullres",
    ...                        0, device="cpu")
    >>> run_training(request)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from pathlib import Path

from nnseg.devices import resolve_device
from nnseg.launch.full_val import full_validator
from nnseg.launch.ddp import launch_local, run_rank
from nnseg.launch.hooks import SINGLE_PROCESS, standard_hooks
from nnseg.launch.request import TrainOutcome, TrainRequest, device_name, fold_job, lock_purpose
from nnseg.launch.validate import final_validation
from nnseg.training.distributed import DistInfo
from nnseg.training.loop import train
from nnseg.locks import folder_lock
from nnseg.training.run_spec import RunSpec
from nnseg.training.setup import FoldJob, make_run_spec, save_run_files

__all__ = ["TrainOutcome", "TrainRequest", "run_training"]


def run_training(request: TrainRequest, *, torchrun: DistInfo | None = None) -> TrainOutcome:
    """Train (unless ``validation_only``/``validate_best``) and validate the requested fold.

    Args:
        request: what to train.
        torchrun: this process's rank when it was started by torchrun (world size > 1), else None.

    Raises:
        ValueError, FileNotFoundError: bad request (unknown fold/device/precision, missing plans or data, a fold
            trained with other settings); nothing is written.
        RuntimeError: a local rank failed (its error is printed above).
    """
    if torchrun is not None:
        if request.num_gpus not in (1, torchrun.local_world_size):
            raise ValueError(f"-num_gpus {request.num_gpus} contradicts torchrun's {torchrun.local_world_size} "
                             "process(es) on this node; under torchrun leave -num_gpus out (--nproc-per-node sets it)")
        return run_rank(request, torchrun)
    if request.num_gpus != 1:
        launch_local(request)
        return TrainOutcome(request.fold_folder, _validation_folder(request), None)
    return _single_process(request)


def _validation_folder(request: TrainRequest) -> Path:
    return request.fold_folder / ("validation_best" if request.validate_best else "validation")


def _single_process(request: TrainRequest) -> TrainOutcome:
    job = fold_job(request, resolve_device(device_name(request)))
    run = make_run_spec(job, resume=request.continue_training or request.validating,
                        pretrained_weights=request.pretrained_weights,
                        validate_only=request.validating)  # checks the whole run; writes nothing before
    with folder_lock(run.output_folder, purpose=lock_purpose(request)):  # one run per fold folder
        return _train_and_validate(request, run, job)


def _train_and_validate(request: TrainRequest, run: RunSpec, job: FoldJob) -> TrainOutcome:
    if not request.validating:
        if run.output_folder.exists() and not request.continue_training and \
                (run.output_folder / "checkpoint_final.pth").exists():
            print(f"note: {run.output_folder} already holds a trained model; training again overwrites it",
                  file=sys.stderr)
        save_run_files(run, job)
        extra = [h for factory in request.hooks for h in factory(SINGLE_PROCESS)]
        train(run, hooks=standard_hooks(run, progress=request.progress, extra=extra),
              resume=request.continue_training, pretrained_weights=request.pretrained_weights,
              full_validator=full_validator(run))
    result = final_validation(run, job, best=request.validate_best, npz=request.save_probabilities,
                              progress=request.progress and sys.stderr.isatty())
    return TrainOutcome(run.output_folder, result.folder, result.foreground_dice)
