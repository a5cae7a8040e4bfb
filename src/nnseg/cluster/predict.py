"""Prediction on a Dask cluster: one task per case, the model loaded once per worker process.

The client lists the cases (``-num_parts/-part_id`` apply as in ``nnUNetv2_predict``), checks and locks the output
folder as the single-machine command does (:func:`~nnseg.predictions.run.pipeline.locked_output`), connects, writes the
run files (``dataset.json``, ``plans.json``, ``predict_from_raw_data_args.json``) and submits ``predict_case_task``
per case; each worker builds the :class:`~nnseg.predictions.run.predict.Predictor` on first use and keeps it.
Segmentations (and ``--save_probabilities`` files) are written under temporary names and renamed, so a case lost with
its worker is predicted again elsewhere without a truncated or duplicated file, and ``--continue_prediction`` skips
finished cases on a rerun. Tasks ask for ``GPU: 1`` on CUDA and for their estimated ``MEMORY``. A case that fails
does so alone (:mod:`nnseg.cluster.tasks`): every other case is written, then the failed ones are named in one error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nnseg.cluster.connect import open_client
from nnseg.cluster.memory import predict_bytes
from nnseg.cluster.tasks import DEFAULT_RETRIES, memory_capacities, run_tasks, task_resources
from nnseg.jsonio import remove_temporary_files
from nnseg.predictions.run.bounded import MemoryPolicy
from nnseg.predictions.inference.memory_plan import memory_budget
from nnseg.predictions.inference.model_folder import checkpoint_paths, fold_of, load_trained_model, parse_folds
from nnseg.predictions.inference.onnx_backend import load_predictor
from nnseg.predictions.inference.options import PredictOptions
from nnseg.predictions.run.pipeline import is_done, locked_output, predict_case, run_args, select_cases, write_run_info
from nnseg.predictions.inference.predictor import PredictionReport, Predictor
from nnseg.predictions.request import PredictRequest
from nnseg.raw.discover import CaseFiles


@dataclass(frozen=True)
class PredictSettings:
    """Everything a worker needs to build the predictor and write a case (hashable: the worker's cache key)."""

    model_folder: Path
    options: PredictOptions
    save_probabilities: bool
    prev_stage_predictions: Path | None


_PREDICTORS: dict[PredictSettings, Predictor] = {}


def _predictor(settings: PredictSettings) -> Predictor:
    if settings not in _PREDICTORS:
        _PREDICTORS.clear()  # one model per worker process at a time
        _PREDICTORS[settings] = load_predictor(settings.model_folder, settings.options)
    return _PREDICTORS[settings]


def predict_case_task(job: tuple[PredictSettings, CaseFiles, Path]) -> float:
    """Worker side: predict one case into the output folder; returns the seconds it took."""
    settings, case, output = job
    start = time.perf_counter()
    predictor = _predictor(settings)
    memory = MemoryPolicy.create(predictor, max_memory_gb=settings.options.max_memory_gb,
                                 save_probabilities=settings.save_probabilities)
    predict_case(predictor, case, output, save_probabilities=settings.save_probabilities,
                 prev_stage_folder=settings.prev_stage_predictions, memory=memory)
    return time.perf_counter() - start


def _run_args(request: PredictRequest, inputs: Any) -> dict[str, Any]:
    """``predict_from_raw_data_args.json`` as the single-machine command writes it (device/precision as asked)."""
    opts = request.options
    folds = [fold_of(p) for p in checkpoint_paths(Path(str(request.model)), parse_folds(opts.folds),
                                                  checkpoint_name=opts.checkpoint)]
    return run_args(inputs, Path(str(request.output)), save_probabilities=request.save_probabilities,
                    continue_prediction=request.continue_prediction, num_readers=0, num_writers=0,
                    prev_stage_predictions=request.prev_stage_predictions, num_parts=request.num_parts,
                    part_id=request.part_id, folds=folds, device=opts.device or "auto",
                    precision=opts.precision or "auto", use_tta=opts.use_tta, step_size=opts.step_size)


def check_cluster_request(request: PredictRequest) -> None:
    """:meth:`PredictRequest.check` plus the cluster's rules: files or a folder of them, a model folder, torch.

    Raises:
        ValueError / FileNotFoundError: naming the field or flag and the fix.
    """
    request.check()
    if request.options.backend != "torch":
        raise ValueError(f"--cluster predicts with the torch backend; drop --backend {request.options.backend} or "
                         "--cluster")
    if request.kind not in ("folder", "files") or isinstance(request.model, Predictor):
        raise ValueError(f"--cluster predicts folders or lists of image files with a model folder, not {request.kind} "
                         "input; drop --cluster (DICOM and in-memory images are predicted on this machine)")


def predict_on_cluster(cluster: str, request: PredictRequest, *, retries: int = DEFAULT_RETRIES) -> PredictionReport:
    """:func:`nnseg.predictions.request.run_prediction` with one Dask task per case on ``--cluster cluster``.

    Raises:
        FileNotFoundError / ValueError: as :func:`~nnseg.predictions.request.run_prediction` (an output folder holding the
            input images, a locked one) or :func:`check_cluster_request`, before anything is written or any task is
            submitted.
        TasksFailed: after every other case was written, naming each case that failed (a bad input at once, others
            after ``retries``).
    """
    check_cluster_request(request)
    start, out = time.perf_counter(), Path(str(request.output))
    model_folder = Path(str(request.model))
    model = load_trained_model(model_folder)
    prev = request.prev_stage_predictions
    settings = PredictSettings(model_folder, request.options, request.save_probabilities,
                               None if prev is None else Path(prev))
    inputs = request.files if request.kind == "files" else request.input_folder
    cases = select_cases(model, inputs, num_parts=request.num_parts, part_id=request.part_id)  # type: ignore[arg-type]
    args = _run_args(request, inputs)
    ending = model.spec.file_ending
    todo = [c for c in cases if not (request.continue_prediction and is_done(c, out, ending, request.save_probabilities))]
    report = PredictionReport(skipped=[c.identifier for c in cases if c not in todo])
    with (locked_output(cases, out, num_parts=request.num_parts, part_id=request.part_id),
          open_client(cluster) as client):
        write_run_info(model, out, args)
        try:
            for i in _run_cases(client, settings, model, todo, out, progress=request.progress, retries=retries):
                report.written.append(out / f"{todo[i].identifier}{ending}")
        finally:  # every task is over: what remains of a worker killed while writing is litter
            remove_temporary_files(out, targets=[f"{c.identifier}{e}" for c in todo for e in (ending, ".npz", ".pkl")])
    report.wall_s = time.perf_counter() - start
    return report


def worker_budget(options: PredictOptions, capacities: Mapping[str, float | None]) -> int:
    """The budget a worker plans a case against: ``--max-memory``, else the largest worker's ``MEMORY``, else 85 % of
    the memory free on this machine (a local cluster's workers share it)."""
    known = [c for c in capacities.values() if c]
    if options.max_memory_gb is None and known:
        return int(max(known))
    return memory_budget(options.max_memory_gb, torch.device("cpu"))[0]


def _run_cases(client: Any, settings: PredictSettings, model: Any, todo: Sequence[CaseFiles], out: Path, *,
               progress: bool, retries: int) -> Iterator[int]:
    """The index in ``todo`` of each case written, as its task finishes (see :func:`run_tasks`)."""
    capacities = memory_capacities(client)
    opts = settings.options
    gpu = (opts.device or "").startswith("cuda")
    budget, folds = worker_budget(opts, capacities), len(checkpoint_paths(settings.model_folder, parse_folds(opts.folds),
                                                                          checkpoint_name=opts.checkpoint))
    resources = [task_resources(client, memory=predict_bytes(model, list(c.images), budget=budget, folds=folds,
                                                             use_tta=opts.use_tta, tile_batch_size=opts.tile_batch_size,
                                                             save_probabilities=settings.save_probabilities),
                                gpu=gpu, capacities=capacities) for c in todo]
    jobs = [(settings, c, out) for c in todo]
    hint = (" The other cases are written; fix or remove the failed inputs, then rerun with --continue_prediction "
            "(written cases are skipped)")
    for i, _seconds in run_tasks(client, predict_case_task, jobs, names=[c.identifier for c in todo],
                                 resources=resources, retries=retries, desc="predict", what="case", hint=hint,
                                 progress=progress):
        yield i
