"""Prediction on a Dask cluster: one task per case, the model loaded once per worker process.

The client lists the cases (``-num_parts/-part_id`` apply as in ``nnUNetv2_predict``), checks and locks the output
folder as the single-machine command does (:func:`~nnseg.predictions.pipeline.locked_output`), connects, writes the
run files (``dataset.json``, ``plans.json``, ``predict_from_raw_data_args.json``) and submits ``predict_case_task``
per case; each worker builds the :class:`~nnseg.predictions.predict.Predictor` on first use and keeps it.
Segmentations (and ``--save_probabilities`` files) are written under temporary names and renamed, so a case lost with
its worker is predicted again elsewhere without a truncated or duplicated file, and ``--continue_prediction`` skips
finished cases on a rerun. Tasks ask for ``GPU: 1`` on CUDA and for their estimated ``MEMORY``. A case that fails
does so alone (:mod:`nnseg.cluster.tasks`): every other case is written, then the failed ones are named in one error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg._types import PathLike
from nnseg.cluster.connect import open_client
from nnseg.cluster.memory import predict_bytes
from nnseg.cluster.tasks import DEFAULT_RETRIES, memory_capacities, run_tasks, task_resources
from nnseg.jsonio import remove_temporary_files
from nnseg.predictions.model_folder import DEFAULT_FOLDS, Fold, checkpoint_paths, load_trained_model, parse_folds
from nnseg.predictions.pipeline import is_done, locked_output, predict_case, select_cases, write_run_info
from nnseg.predictions.predict import PredictionReport, Predictor
from nnseg.raw.discover import CaseFiles


@dataclass(frozen=True)
class PredictSettings:
    """Everything a worker needs to build the predictor and write a case (hashable: the worker's cache key)."""

    model_folder: Path
    folds: tuple[Fold, ...] | None
    checkpoint: str
    step_size: float
    use_tta: bool
    device: str | None
    precision: str | None
    tile_batch_size: int | None
    accumulate_on_device: bool
    save_probabilities: bool
    prev_stage_predictions: Path | None


_PREDICTORS: dict[PredictSettings, Predictor] = {}


def _predictor(settings: PredictSettings) -> Predictor:
    if settings not in _PREDICTORS:
        _PREDICTORS.clear()  # one model per worker process at a time
        _PREDICTORS[settings] = Predictor.from_model_folder(
            settings.model_folder, folds=settings.folds, checkpoint=settings.checkpoint, device=settings.device,
            precision=settings.precision, step_size=settings.step_size, use_tta=settings.use_tta,
            tile_batch_size=settings.tile_batch_size, accumulate_on_device=settings.accumulate_on_device)
    return _PREDICTORS[settings]


def predict_case_task(job: tuple[PredictSettings, CaseFiles, Path]) -> float:
    """Worker side: predict one case into the output folder; returns the seconds it took."""
    settings, case, output = job
    start = time.perf_counter()
    predict_case(_predictor(settings), case, output, save_probabilities=settings.save_probabilities,
                 prev_stage_folder=settings.prev_stage_predictions)
    return time.perf_counter() - start


def _run_args(settings: PredictSettings, inputs: Any, output: Path, *, continue_prediction: bool, num_parts: int,
              part_id: int) -> dict[str, Any]:
    """``predict_from_raw_data_args.json`` as the single-machine command writes it (device/precision as asked)."""
    folds = [int(p.parent.name[5:]) if p.parent.name[5:].isdigit() else p.parent.name[5:]
             for p in checkpoint_paths(settings.model_folder, parse_folds(settings.folds),
                                       checkpoint_name=settings.checkpoint)]
    source = str(inputs) if isinstance(inputs, (str, Path)) else [[str(f) for f in c] for c in inputs]
    prev = settings.prev_stage_predictions
    return {"list_of_lists_or_source_folder": source, "output_folder_or_list_of_truncated_output_files": str(output),
            "save_probabilities": settings.save_probabilities, "overwrite": not continue_prediction,
            "num_processes_preprocessing": 0, "num_processes_segmentation_export": 0,
            "folder_with_segs_from_prev_stage": None if prev is None else str(prev), "num_parts": num_parts,
            "part_id": part_id, "folds": folds, "device": settings.device or "auto",
            "precision": settings.precision or "auto", "use_mirroring": settings.use_tta,
            "tile_step_size": settings.step_size}


def predict_on_cluster(cluster: str, model_folder: PathLike, inputs: PathLike | Sequence[Sequence[PathLike]],
                       output: PathLike, *, folds: Sequence[Fold] | None = DEFAULT_FOLDS,
                       checkpoint: str = "checkpoint_final.pth", step_size: float = 0.5, use_tta: bool = True,
                       save_probabilities: bool = False, device: str | None = None, precision: str | None = None,
                       tile_batch_size: int | None = None, continue_prediction: bool = False, num_parts: int = 1,
                       part_id: int = 0, prev_stage_predictions: PathLike | None = None,
                       accumulate_on_device: bool = True, progress: bool = True,
                       retries: int = DEFAULT_RETRIES) -> PredictionReport:
    """:func:`nnseg.predictions.predict.predict` with one Dask task per case on ``--cluster cluster``.

    Raises:
        FileNotFoundError / ValueError: as :func:`~nnseg.predictions.predict.predict` (an output folder holding the
            input images, a locked one), before anything is written or any task is submitted.
        TasksFailed: after every other case was written, naming each case that failed (a bad input at once, others
            after ``retries``).
    """
    start, out = time.perf_counter(), Path(output)
    model = load_trained_model(model_folder)
    settings = PredictSettings(Path(model_folder), None if folds is None else tuple(folds), checkpoint, step_size,
                               use_tta, device, precision, tile_batch_size, accumulate_on_device, save_probabilities,
                               None if prev_stage_predictions is None else Path(prev_stage_predictions))
    cases = select_cases(model, inputs, num_parts=num_parts, part_id=part_id)
    args = _run_args(settings, inputs, out, continue_prediction=continue_prediction, num_parts=num_parts,
                     part_id=part_id)
    ending = model.spec.file_ending
    todo = [c for c in cases if not (continue_prediction and is_done(c, out, ending, save_probabilities))]
    report = PredictionReport(skipped=[c.identifier for c in cases if c not in todo])
    with locked_output(cases, out, num_parts=num_parts, part_id=part_id), open_client(cluster) as client:
        write_run_info(model, out, args)
        try:
            for i in _run_cases(client, settings, model, todo, out, progress=progress, retries=retries):
                report.written.append(out / f"{todo[i].identifier}{ending}")
        finally:  # every task is over: what remains of a worker killed while writing is litter
            remove_temporary_files(out, targets=[f"{c.identifier}{e}" for c in todo for e in (ending, ".npz", ".pkl")])
    report.wall_s = time.perf_counter() - start
    return report


def _run_cases(client: Any, settings: PredictSettings, model: Any, todo: Sequence[CaseFiles], out: Path, *,
               progress: bool, retries: int) -> Iterator[int]:
    """The index in ``todo`` of each case written, as its task finishes (see :func:`run_tasks`)."""
    capacities = memory_capacities(client)
    gpu = (settings.device or "").startswith("cuda")
    resources = [task_resources(client, memory=predict_bytes(list(c.images), num_classes=model.num_outputs,
                                                             target_spacing=model.configuration.spacing),
                                gpu=gpu, capacities=capacities) for c in todo]
    jobs = [(settings, c, out) for c in todo]
    hint = (" The other cases are written; fix or remove the failed inputs, then rerun with --continue_prediction "
            "(written cases are skipped)")
    for i, _seconds in run_tasks(client, predict_case_task, jobs, names=[c.identifier for c in todo],
                                 resources=resources, retries=retries, desc="predict", what="case", hint=hint,
                                 progress=progress):
        yield i
