"""The folder-to-folder prediction loop: reading the next cases and writing the previous ones overlap with the network.

Readers (read + :func:`preprocess_case`) and writers (logits -> files) run in background threads; at most
``num_readers + 1`` cases are read ahead and at most ``2 * num_writers`` exports wait, so memory stays bounded
(nnU-Net's back-pressure rule). With 0 readers / writers everything runs in order in the calling thread.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseg._types import PathLike
from nnseg.jsonio import save_json
from nnseg.locks import LOCK_NAME, folder_lock
from nnseg.predictions.run.bounded import (
    MemoryPolicy,
    check_case_header,
    predict_case_bounded,
    shapes_of_preprocessed,
)
from nnseg.predictions.export.from_logits import convert_logits, export_prediction, write_segmentation
from nnseg.predictions.run.input_checks import check_output_folder, check_prediction_case
from nnseg.predictions.inference.memory_plan import CasePlan, plan_for_case, streaming_axis
from nnseg.predictions.inference.model_folder import TrainedModel
from nnseg.predictions.inference.predictor import CaseTiming, PredictionReport, Predictor
from nnseg.raw.discover import CaseFiles, image_cases
from nnseg.raw.image_io import get_io


def _case_from_files(files: Sequence[PathLike], file_ending: str) -> CaseFiles:
    first = Path(files[0]).name
    if not first.endswith(file_ending):
        raise ValueError(f"input file {files[0]} does not end with the dataset's file ending {file_ending!r}")
    stem = first[: -len(file_ending)]
    identifier = stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem
    return CaseFiles(identifier=identifier, images=tuple(Path(f) for f in files), label=None)


def select_cases(model: TrainedModel, inputs: PathLike | Sequence[Sequence[PathLike]], *, num_parts: int = 1,
                 part_id: int = 0) -> list[CaseFiles]:
    """The input cases sorted by identifier, then ``[part_id::num_parts]`` (nnU-Net's sharding).

    Raises:
        ValueError: bad ``num_parts``/``part_id``, misnamed files, or a case with the wrong number of channels.
    """
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in [0, num_parts); got num_parts={num_parts}, part_id={part_id}")
    spec = model.spec
    if isinstance(inputs, (str, Path)):
        cases = image_cases(Path(inputs), spec.file_ending, spec.num_channels)
    else:
        cases = [_case_from_files(files, spec.file_ending) for files in inputs]
        bad = [c.identifier for c in cases if len(c.images) != spec.num_channels]
        if bad:
            raise ValueError(f"cases {bad} do not have {spec.num_channels} channel file(s) as the model expects")
    return sorted(cases, key=lambda c: c.identifier)[part_id::num_parts]


def run_args(inputs: PathLike | Sequence[Sequence[PathLike]], output: PathLike, *, save_probabilities: bool,
             continue_prediction: bool, num_readers: int, num_writers: int, prev_stage_predictions: PathLike | None,
             num_parts: int, part_id: int, folds: Sequence[Any], device: str, precision: str, use_tta: bool,
             step_size: float) -> dict[str, Any]:
    """``predict_from_raw_data_args.json`` (nnU-Net's keys, plus nnseg's device and precision), for every entry point
    that writes an output folder (one machine or a cluster)."""
    source = str(inputs) if isinstance(inputs, (str, Path)) else [[str(f) for f in c] for c in inputs]
    prev = None if prev_stage_predictions is None else str(prev_stage_predictions)
    return {"list_of_lists_or_source_folder": source, "output_folder_or_list_of_truncated_output_files": str(output),
            "save_probabilities": save_probabilities, "overwrite": not continue_prediction,
            "num_processes_preprocessing": num_readers, "num_processes_segmentation_export": num_writers,
            "folder_with_segs_from_prev_stage": prev, "num_parts": num_parts, "part_id": part_id, "folds": list(folds),
            "device": device, "precision": precision, "use_mirroring": use_tta, "tile_step_size": step_size}


def write_run_info(model: TrainedModel, output: Path, args: dict[str, Any]) -> None:
    """``predict_from_raw_data_args.json``, ``dataset.json`` and ``plans.json`` in the output folder (as nnU-Net)."""
    output.mkdir(parents=True, exist_ok=True)
    save_json(args, output / "predict_from_raw_data_args.json")
    save_json(model.dataset_json_dict, output / "dataset.json")
    save_json(model.plans_json, output / "plans.json")


@contextmanager
def locked_output(cases: Sequence[CaseFiles], output: PathLike, *, num_parts: int = 1,
                  part_id: int = 0) -> Iterator[Path]:
    """The output folder of a prediction run, for every entry point (one machine or a cluster): refused if it holds
    input images of ``cases`` (``-o`` equal to ``-i``), before anything is created, then locked for this run (one
    lock per part: ``-num_parts`` runs may share it). The caller writes the run files (:func:`write_run_info`) once
    it is ready to predict.

    Raises:
        ValueError: the folder holds input images. FolderLockedError: another live run writes into it.
    """
    out = Path(output)
    check_output_folder(cases, out)
    lock = LOCK_NAME if num_parts == 1 else f".nnseg.part{part_id}of{num_parts}.lock"
    with folder_lock(out, purpose=f"nnUNetv2_predict -o {output}", name=lock):
        yield out


def is_done(case: CaseFiles, output: Path, file_ending: str, save_probabilities: bool) -> bool:
    """Whether ``case``'s outputs exist (``--continue_prediction`` skips it): its segmentation, and its ``.npz``."""
    done = (output / f"{case.identifier}{file_ending}").is_file()
    return done and (not save_probabilities or (output / f"{case.identifier}.npz").is_file())


def _read_case(predictor: Predictor, case: CaseFiles, prev_stage_folder: Path | None,
               io_name: str | None = None) -> tuple[Any, ...]:
    start = time.perf_counter()
    io = get_io(io_name or predictor.model.plans.image_reader_writer)
    data, geometry = io.read_images(case.images)
    check_prediction_case(case.images, data, geometry.spacing, plans=predictor.model.plans,
                          configuration=predictor.model.configuration, configuration_name=predictor.model.configuration_name)
    prev = None
    if prev_stage_folder is not None:
        prev_file = prev_stage_folder / f"{case.identifier}{predictor.model.spec.file_ending}"
        if not prev_file.is_file():
            raise FileNotFoundError(f"previous-stage prediction {prev_file} is missing; predict case "
                                    f"{case.identifier} with the previous stage first")
        prev = io.read_seg(prev_file)[0]
    pre, props = predictor.preprocess(np.asarray(data, dtype=np.float32), geometry, prev)
    return pre, props, geometry, time.perf_counter() - start


def _export_case(predictor: Predictor, logits: torch.Tensor, props: dict[str, Any], geometry: Any, target: Path,
                 save_probabilities: bool, segmentation_file: Path | None = None, io_name: str | None = None) -> float:
    start = time.perf_counter()
    model = predictor.model
    if segmentation_file is None:
        export_prediction(logits, props, target, plans=model.plans, configuration=model.configuration, spec=model.spec,
                          save_probabilities=save_probabilities, geometry=geometry)
    else:
        seg, _ = convert_logits(logits, props, plans=model.plans, configuration=model.configuration, spec=model.spec)
        write_segmentation(seg, segmentation_file, geometry, reader=io_name or model.plans.image_reader_writer)
    return time.perf_counter() - start


def predict_case(predictor: Predictor, case: CaseFiles, output: Path, *, save_probabilities: bool = False,
                 prev_stage_folder: PathLike | None = None, memory: MemoryPolicy | None = None,
                 io_name: str | None = None, segmentation_file: Path | None = None) -> CaseTiming:
    """Read, check, preprocess, predict and write one case (``output/CASE<ending>``, written atomically) in this thread.

    The unit of work of distributed prediction (:mod:`nnseg.cluster.predict`) and of ``nnseg serve``;
    :func:`run_pipeline` overlaps the same steps over many cases.

    Args:
        memory: plan the case (:func:`nnseg.predictions.inference.memory_plan.plan_for_case`): the bounded path when the one-shot
            estimate exceeds the budget, :class:`~nnseg.predictions.inference.memory_plan.CaseDoesNotFit` when not even that
            fits (nothing written). None: always one-shot.
        io_name: the reader/writer of this case's files (default the plans').
        segmentation_file: write the label map there (with ``io_name``; no probabilities) instead of
            ``output/CASE<file_ending>``.

    Raises:
        ValueError: the input checks (with ``memory`` first from the headers,
        :func:`nnseg.predictions.run.bounded.check_case_header`, then
        :func:`nnseg.predictions.run.input_checks.check_prediction_case`), or ``segmentation_file`` with
        ``save_probabilities``.
    """
    if segmentation_file is not None and save_probabilities:
        raise ValueError("segmentation_file writes the label map only; leave save_probabilities off")
    if memory is not None:  # the header checks and the memory plan before the voxels are read and resampled
        check_case_header(predictor, case, memory, reader=io_name)
    prev = Path(prev_stage_folder) if prev_stage_folder is not None else None
    data, props, geometry, read_s = _read_case(predictor, case, prev, io_name)
    plan = _bounded_plan(predictor, case.identifier, data, props, memory)
    target = CaseTarget(Path(output) / case.identifier, segmentation_file, io_name)
    if plan is not None:
        return _run_bounded(predictor, case.identifier, data, props, geometry, target, plan, save_probabilities, read_s,
                            None)
    start = time.perf_counter()
    logits = predictor.predict_logits(data)
    del data
    network_s = time.perf_counter() - start
    export_s = _export_case(predictor, logits, props, geometry, target.truncated, save_probabilities,
                            segmentation_file, io_name)
    return CaseTiming(case.identifier, read=read_s, network=network_s, export=export_s)


@dataclass(frozen=True)
class CaseTarget:
    """Where one case's outputs go: ``truncated`` + endings, or the label map at ``segmentation_file`` (``io_name``)."""

    truncated: Path
    segmentation_file: Path | None = None
    io_name: str | None = None


class _Inline:
    """A stand-in executor that runs work immediately (0 background workers)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        return None


def _executor(workers: int, name: str) -> ThreadPoolExecutor | _Inline:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) if workers > 0 else _Inline()


def run_pipeline(predictor: Predictor, cases: Sequence[CaseFiles], output: Path, *, save_probabilities: bool = False,
                 continue_prediction: bool = False, prev_stage_folder: PathLike | None = None, num_readers: int = 1,
                 num_writers: int = 1, verbose: bool = False, progress: bool = True,
                 memory: MemoryPolicy | None = None) -> PredictionReport:
    """Predict ``cases`` into ``output`` (see the module docstring); returns what was written and the timings.

    ``output`` is a folder :func:`locked_output` checked and locked, with the run files written. With ``memory``, each
    case is planned after preprocessing (:func:`nnseg.predictions.inference.memory_plan.plan_for_case`): a case whose one-shot
    estimate exceeds the budget is predicted in the calling thread by the bounded path.
    """
    from tqdm import tqdm

    ending = predictor.model.spec.file_ending
    report = PredictionReport()
    todo = []
    for case in cases:
        if continue_prediction and is_done(case, output, ending, save_probabilities):
            report.skipped.append(case.identifier)
        else:
            todo.append(case)
    prev = Path(prev_stage_folder) if prev_stage_folder is not None else None
    readers, writers = _executor(num_readers, "nnseg-read"), _executor(num_writers, "nnseg-write")
    try:
        with tqdm(total=len(todo), disable=not progress, unit="case", desc="predict", file=sys.stderr) as bar:
            _loop(predictor, todo, output, prev, readers, writers, max(1, num_readers) + 1, 2 * max(1, num_writers),
                  save_probabilities, report, bar, verbose, memory)
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)
    return report


def _loop(predictor: Predictor, todo: Sequence[CaseFiles], output: Path, prev: Path | None, readers: Any, writers: Any,
          read_ahead: int, max_pending: int, save_probabilities: bool, report: PredictionReport, bar: Any,
          verbose: bool, memory: MemoryPolicy | None = None) -> None:
    reads: deque[tuple[CaseFiles, Future[Any]]] = deque()
    exports: deque[tuple[CaseTiming, Future[float]]] = deque()
    upcoming = iter(todo)

    def top_up() -> None:
        while len(reads) < read_ahead:
            case = next(upcoming, None)
            if case is None:
                return
            reads.append((case, readers.submit(_read_case, predictor, case, prev)))

    def finish_one() -> None:
        timing, future = exports.popleft()
        report.timings.append(timing)
        report.written.append(output / f"{timing.identifier}{predictor.model.spec.file_ending}")
        timing.export = timing.export or float(future.result())
        bar.update(1)
        if verbose:
            bar.write(_timing_line(timing))

    top_up()
    while reads:
        case, future = reads.popleft()
        data, props, geometry, read_s = future.result()
        top_up()
        plan = _bounded_plan(predictor, case.identifier, data, props, memory)
        if plan is not None:
            while exports:
                finish_one()
            target = CaseTarget(output / case.identifier)
            exports.append((_run_bounded(predictor, case.identifier, data, props, geometry, target, plan,
                                         save_probabilities, read_s, bar), _done(0.0)))
            finish_one()
            continue
        logits, network_s = _network(predictor, data)
        timing = CaseTiming(case.identifier, read=read_s, network=network_s)
        while exports and (len(exports) >= max_pending or exports[0][1].done()):
            finish_one()
        exports.append((timing, writers.submit(_export_case, predictor, logits, props, geometry,
                                               output / case.identifier, save_probabilities)))
        del data, logits  # the export holds the logits; neither is kept alive through the next case's network
    while exports:
        finish_one()


def _network(predictor: Predictor, data: np.ndarray) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    logits = predictor.predict_logits(data)
    if logits.device.type == "cuda":
        torch.cuda.synchronize(logits.device)
    return logits, time.perf_counter() - start


def _bounded_plan(predictor: Predictor, identifier: str, data: np.ndarray, props: dict[str, Any],
                  memory: MemoryPolicy | None) -> CasePlan | None:
    """The memory plan if this case takes the bounded path, else None."""
    if memory is None:
        return None
    plan = plan_for_case(predictor.model, identifier, shapes_of_preprocessed(data, props), memory.options(predictor))
    return plan if plan.mode == "bounded" else None


def _timing_line(timing: CaseTiming) -> str:
    bounded = f" ({timing.after_network:.2f} s after the network, bounded memory)" if timing.after_network else ""
    return (f"{timing.identifier}: read+preprocess {timing.read:.2f} s, network {timing.network:.2f} s, "
            f"export {timing.export:.2f} s{bounded}")


def _done(value: float) -> Future[float]:
    future: Future[float] = Future()
    future.set_result(value)
    return future


def _run_bounded(predictor: Predictor, identifier: str, data: np.ndarray, props: dict[str, Any], geometry: Any,
                 target: CaseTarget, plan: CasePlan, save_probabilities: bool, read_s: float, outer: Any) -> CaseTiming:
    """One case through :func:`predict_case_bounded`, with its own progress bar (network rows, then export rows; none
    without ``outer``)."""
    from tqdm import tqdm

    axis = streaming_axis(predictor.model, save_probabilities=save_probabilities)
    rows = {"network": int(data.shape[1]),
            "export": int(props["shape_after_cropping_and_before_resampling"][axis])}
    with tqdm(total=sum(rows.values()), disable=outer is None or bool(getattr(outer, "disable", False)), unit="row",
              desc=identifier, leave=False, file=sys.stderr) as bar:
        done = {"network": 0, "export": 0}

        def step(stage: str, n: int) -> None:
            done[stage] += n
            bar.set_postfix_str(f"network {done['network']}/{rows['network']}, "
                                f"export {done['export']}/{rows['export']} rows", refresh=False)
            bar.update(n)

        t = predict_case_bounded(predictor, data, props, target.truncated, slab_rows=plan.slab_rows,
                                 save_probabilities=save_probabilities, geometry=geometry, on_progress=step,
                                 tiles_per_call=plan.tiles, segmentation_file=target.segmentation_file,
                                 seg_io=target.io_name)
    return CaseTiming(identifier, read=read_s, network=t.network, export=t.export, after_network=t.after_network)
