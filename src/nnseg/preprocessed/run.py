"""Preprocess a whole dataset: every training case of every requested configuration, in a spawn pool.

Each worker reads one case, preprocesses it and writes it (``store.save_case``) before taking the next one, and
sends back only a few numbers, so peak memory is bounded by the number of workers. Finished cases are skipped on a
rerun (a case is finished when its ``.json`` exists next to both arrays); ``clean=True`` redoes everything, and so does
a change of the settings that shape the data (``nnseg_preprocessing.json`` in each data folder records them). A failure
stops the run with an error that names the case and its files, and leaves no incomplete case behind.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnseg.fingerprint.pool import limit_threads, pool_map
from nnseg.jsonio import atomic_path, load_json, save_json, to_jsonable
from nnseg.preprocessed import store
from nnseg.raw.input_checks import check_case_layout

DEFAULT_NUM_PROCESSES = {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}
DEFAULT_NUM_PROCESSES_OTHER = 4
SETTINGS_FILE = "nnseg_preprocessing.json"
_DATA_KEYS = ("spacing", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs",
              "resampling_fn_seg", "resampling_fn_seg_kwargs", "preprocessor_name")


def default_num_processes(configuration: str, *, cpu_count: int | None = None) -> int:
    """nnU-Net's per-configuration default (2d 8, 3d_fullres 4, 3d_lowres 8, other 4), capped at the CPU count."""
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(DEFAULT_NUM_PROCESSES.get(configuration, DEFAULT_NUM_PROCESSES_OTHER), cpus))


@dataclass(frozen=True)
class WorkerContext:
    """What every job of one :func:`preprocess_dataset` call shares (sent with each job, parsed once per worker)."""

    key: str
    plans_json: Mapping[str, Any]
    spec_json: Mapping[str, Any]
    folders: Mapping[str, str]


@dataclass(frozen=True)
class CaseJob:
    """One case for one or more configurations, as sent to a worker (paths only: the worker reads the files once)."""

    configurations: tuple[str, ...]
    identifier: str
    images: tuple[Path, ...]
    label: Path
    context: WorkerContext


@dataclass
class ConfigurationSummary:
    """What :func:`preprocess_dataset` did for one configuration."""

    configuration: str
    output_folder: Path
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}


def _worker_state(context: WorkerContext) -> dict[str, Any]:
    """Plans, dataset.json and output folders of ``context``, parsed once per worker process."""
    if _WORKER.get("key") != context.key:
        from nnseg.plans.schema import Plans
        from nnseg.raw.dataset_json import DatasetSpec

        plans = Plans.from_json(context.plans_json)
        _WORKER.clear()
        _WORKER.update(key=context.key, plans=plans, spec=DatasetSpec.from_json(context.spec_json),
                       configurations={name: plans.configuration(name) for name in context.folders},
                       folders={name: Path(p) for name, p in context.folders.items()})
    return _WORKER


def preprocess_job(job: CaseJob) -> tuple[str, tuple[str, ...], float]:
    """Read one case once, preprocess and store it for each of its configurations.

    Returns:
        ``(identifier, configurations, seconds)``.

    Raises:
        ValueError: the case's files cannot be read, fail the always-on checks (``nnseg.raw.input_checks``) or
            cannot be preprocessed; the message names the case and its files.
        OSError: writing the output failed (disk full, read-only, ...): names the output path, not the case.
        In every case no file of the case is left.
    """
    from nnseg.preprocessed.preprocess import preprocess_case

    start = time.perf_counter()
    state = _worker_state(job.context)
    plans, spec = state["plans"], state["spec"]
    images, seg, properties = _read_checked(job, state)
    for name in job.configurations:
        configuration = state["configurations"][name]
        try:
            data, seg_out, props = preprocess_case(images, seg, properties, plans=plans, configuration=configuration,
                                                   spec=spec)
        except Exception as e:
            _remove_job_files(job, state)
            raise _case_error(job, name, e) from None
        try:
            store.save_case(state["folders"][name], job.identifier, data, seg_out, props,
                            patch_size=configuration.patch_size)
        except Exception as e:  # the output could not be written: not the input case's fault
            _remove_job_files(job, state)
            raise _write_error(e, state["folders"][name], job.identifier) from None
        del data, seg_out, props
    return job.identifier, job.configurations, time.perf_counter() - start


def _read_checked(job: CaseJob, state: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """The case's images, label and reader properties, after the always-on input checks."""
    from nnseg.raw.discover import CaseFiles
    from nnseg.raw.image_io import get_io
    from nnseg.raw.input_checks import CaseRules, check_case_arrays, planned_dims

    plans = state["plans"]
    try:
        io = get_io(plans.image_reader_writer)
        images, geometry = io.read_images(list(job.images))
        seg, _ = io.read_seg(job.label)
    except Exception as e:
        _remove_job_files(job, state)
        raise _case_error(job, job.configurations[0], e) from None
    median = plans.original_median_shape_after_transp
    rules = CaseRules.from_spec(state["spec"], planned_dims=planned_dims(median) if median else None)
    try:
        check_case_arrays(CaseFiles(job.identifier, job.images, job.label), images, seg, rules)
    except ValueError:
        _remove_job_files(job, state)
        raise
    return images, seg, geometry.to_properties()


def _remove_job_files(job: CaseJob, state: dict[str, Any]) -> None:
    for c in job.configurations:
        try:
            store.remove_case(state["folders"][c], job.identifier)
        except OSError:  # e.g. a read-only folder: nothing could have been written there either
            pass


def _case_error(job: CaseJob, name: str, e: Exception) -> ValueError:
    files = ", ".join(str(p) for p in (*job.images, job.label))
    return ValueError(f"preprocessing case {job.identifier} ({name}) failed: {e}\n  files: {files}\n  fix or remove "
                      "this case (`nnseg verify -d ...` checks the whole dataset), then rerun: finished cases are kept")


def _write_error(e: Exception, folder: Path, identifier: str) -> Exception:
    """An OSError naming the output path (the input case is fine); other failures say the same in words."""
    from nnseg.fs_errors import is_system_error, with_path

    if is_system_error(e):
        return with_path(e, folder)  # type: ignore[arg-type]
    return RuntimeError(f"writing preprocessed case {identifier} to {folder} failed ({type(e).__name__}: {e}); the "
                        "input files are fine: check free disk space and that the folder is writable, then rerun "
                        "(finished cases are kept)")


# ---------------------------------------------------------------------------------------------- parent side
def _run_jobs(jobs: Sequence[CaseJob], limits: Mapping[str, int], pool: Any) -> Iterator[tuple[str, tuple[str, ...], float]]:
    """Run jobs in a spawn pool (``pool`` or a new one); a job is started only while fewer jobs than its
    configurations allow (the smallest of their worker counts) are in flight."""
    workers = max(1, min(max(limits.values(), default=1), len(jobs)))
    for _, result in pool_map(preprocess_job, jobs, num_workers=workers, pool=pool,
                              initializer=limit_threads if workers > 1 else _no_setup,
                              limit=lambda job: min(limits[c] for c in job.configurations),
                              describe=lambda job: f"case {job.identifier}"):
        yield result


def _no_setup() -> None:
    """Initializer when the jobs run in this process (its thread settings stay as they are)."""


def _progress(results: Iterator[Any], total: int, enabled: bool) -> Iterator[Any]:
    if not enabled or total == 0:
        yield from results
        return
    from tqdm import tqdm

    yield from tqdm(results, total=total, desc="preprocessing", unit="case")


def _remove_incomplete(folder: Path, identifiers: Sequence[str]) -> None:
    store.remove_temporary_files(folder)
    for identifier in identifiers:
        if not store.case_is_complete(folder, identifier):
            store.remove_case(folder, identifier)


def copy_file_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary name (never a half-written ``target``)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _up_to_date(source: Path, target: Path) -> bool:
    if not target.is_file():
        return False
    s, t = source.stat(), target.stat()
    return s.st_size == t.st_size and t.st_mtime >= s.st_mtime


def copy_dataset_files(raw_dataset_folder: Path, preprocessed_dataset_folder: Path) -> None:
    """Copy ``dataset.json`` (and ``splits_final.json`` when the raw folder has one) to the preprocessed folder."""
    for name in ("dataset.json", "splits_final.json"):
        source = Path(raw_dataset_folder) / name
        if source.is_file():
            copy_file_atomic(source, Path(preprocessed_dataset_folder) / name)


def copy_gt_segmentations(cases: Sequence[Any], file_ending: str, preprocessed_dataset_folder: Path, *,
                          clean: bool = False) -> None:
    """Copy every training label to ``gt_segmentations/CASE<file_ending>`` (skipping unchanged copies)."""
    folder = Path(preprocessed_dataset_folder) / "gt_segmentations"
    if clean and folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    store.remove_temporary_files(folder)
    for case in cases:
        target = folder / f"{case.identifier}{file_ending}"
        if case.label is not None and not Path(case.label).is_file():
            raise FileNotFoundError(f"label file {case.label} of training case {case.identifier} does not exist; add "
                                    f"it or remove the case's images (`nnseg verify` checks the whole dataset)")
        if case.label is not None and not _up_to_date(Path(case.label), target):
            copy_file_atomic(Path(case.label), target)


def _resolve_num_processes(configurations: Sequence[str], num_processes: int | Sequence[int] | Mapping[str, int] | None) -> dict[str, int]:
    if num_processes is None:
        return {c: default_num_processes(c) for c in configurations}
    if isinstance(num_processes, int):
        return {c: max(1, num_processes) for c in configurations}
    if isinstance(num_processes, Mapping):
        return {c: max(1, int(num_processes.get(c, default_num_processes(c)))) for c in configurations}
    values = [int(v) for v in num_processes]
    if len(values) == 1:
        values = values * len(configurations)
    if len(values) != len(configurations):
        raise ValueError(f"-np got {len(values)} values {values} for {len(configurations)} configurations "
                         f"{list(configurations)}; give one value, or one per configuration")
    return {c: max(1, v) for c, v in zip(configurations, values)}


def preprocessing_settings(plans: Any, configuration: str, spec_json: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that determines a configuration's preprocessed data (stored beside it to detect stale cases)."""
    resolved = plans.resolved_configuration_dict(configuration)
    return to_jsonable({
        "configuration": {k: resolved.get(k) for k in _DATA_KEYS},
        "transpose_forward": plans.transpose_forward,
        "image_reader_writer": plans.image_reader_writer,
        "foreground_intensity_properties_per_channel": plans.foreground_intensity_properties_per_channel,
        "labels": spec_json.get("labels"), "regions_class_order": spec_json.get("regions_class_order"),
    })


def _prepare_folder(folder: Path, identifiers: Sequence[str], settings: Mapping[str, Any], *, clean: bool) -> None:
    """Create the folder; wipe it with ``clean`` or when its cases were made with other settings; drop partial cases."""
    settings_file = folder / SETTINGS_FILE
    if folder.is_dir() and not clean and any(folder.iterdir()):
        previous = load_json(settings_file) if settings_file.is_file() else None
        if previous != settings:
            print(f"{folder}: made with other plans or an older version; preprocessing it again")
            clean = True
    if clean and folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_json(settings, settings_file)
    _remove_incomplete(folder, identifiers)


def _jobs(cases: Sequence[Any], folders: Mapping[str, Path], summaries: Mapping[str, ConfigurationSummary],
          context: WorkerContext) -> list[CaseJob]:
    """One job per case that some configuration still lacks (finished configurations are recorded as skipped)."""
    jobs = []
    for case in cases:
        todo = []
        for c, folder in folders.items():
            if store.case_is_complete(folder, case.identifier):
                summaries[c].skipped.append(case.identifier)
            else:
                todo.append(c)
        if todo and case.label is None:
            raise ValueError(f"training case {case.identifier} has no label file (dataset.json 'dataset' entry without "
                             "'label'); every training case needs one")
        if todo:
            jobs.append(CaseJob(tuple(todo), case.identifier, tuple(Path(p) for p in case.images), Path(case.label),
                                context))
    return jobs


def preprocess_dataset(raw_dataset_folder: Path, preprocessed_dataset_folder: Path, plans: Any,
                       configurations: Sequence[str], *, num_processes: int | Sequence[int] | Mapping[str, int] | None = None,
                       progress: bool = False, clean: bool = False, verbose: bool = False,
                       env: Mapping[str, str] | None = None, pool: Any = None) -> dict[str, ConfigurationSummary]:
    """Preprocess every training case for each configuration into ``preprocessed_dataset_folder/<data_identifier>``.

    Also writes ``gt_segmentations/CASE<ending>`` (copies of the labels), and copies ``dataset.json`` and, when the raw
    folder has one, ``splits_final.json``.

    Args:
        raw_dataset_folder: ``nnUNet_raw/DatasetXXX_Name``.
        preprocessed_dataset_folder: ``nnUNet_preprocessed/DatasetXXX_Name``.
        plans: a ``Plans`` (or its JSON dict).
        configurations: configuration names, e.g. ``["2d", "3d_fullres"]``; each must exist in the plans.
        num_processes: workers, one int for all or one per configuration (default: nnU-Net's 8/4/8, capped at the
            CPU count). The pool is shared; a configuration never has more cases in flight than its number.
        progress: show a tqdm progress bar.
        clean: delete each configuration's folder (and gt_segmentations) first instead of resuming.
        verbose: print per-configuration timing.
        env: variables for ``$VAR`` expansion in an explicit ``dataset`` entry of dataset.json.
        pool: an open pool (``nnseg.fingerprint.pool.open_pool``) to run in instead of starting one (e.g. the one
            that extracted the fingerprint: its workers are already started).

    Returns:
        ``{configuration: ConfigurationSummary}``.

    Raises:
        ValueError: a configuration is not in the plans, or a case failed (the message names its files).
    """
    from nnseg.plans.schema import Plans
    from nnseg.raw.dataset_json import load_dataset_json
    from nnseg.raw.discover import training_cases

    plans = plans if isinstance(plans, Plans) else Plans.from_json(plans)
    raw, out = Path(raw_dataset_folder), Path(preprocessed_dataset_folder)
    spec = load_dataset_json(raw / "dataset.json")
    cases = training_cases(raw, spec, env=env)
    if not cases:
        raise ValueError(f"no training cases in {raw / 'imagesTr'} (file ending {spec.file_ending!r})")
    check_case_layout(raw, cases, spec)
    folders = _data_folders(plans, configurations, out)
    limits = _resolve_num_processes(list(folders), num_processes)
    copy_dataset_files(raw, out)
    copy_gt_segmentations(cases, spec.file_ending, out, clean=clean)
    summaries = {c: ConfigurationSummary(c, folders[c]) for c in folders}
    spec_json = spec.to_json()
    for c, folder in folders.items():
        _prepare_folder(folder, [case.identifier for case in cases], preprocessing_settings(plans, c, spec_json),
                        clean=clean)
    context = WorkerContext(f"{os.getpid()}-{time.time_ns()}", plans.to_json(), spec_json,
                            {c: str(p) for c, p in folders.items()})
    jobs = _jobs(cases, folders, summaries, context)
    start = time.perf_counter()
    try:
        for identifier, done, seconds in _progress(_run_jobs(jobs, limits, pool), len(jobs), progress):
            for c in done:
                summaries[c].processed.append(identifier)
                summaries[c].seconds += seconds / len(done)
    finally:
        for folder in folders.values():
            _remove_incomplete(folder, [case.identifier for case in cases])
    if verbose:
        _report(summaries, time.perf_counter() - start)
    return summaries


def _data_folders(plans: Any, configurations: Sequence[str], out: Path) -> dict[str, Path]:
    """Configuration -> data folder; a configuration sharing an earlier one's folder is left out (done once)."""
    folders: dict[str, Path] = {}
    for c in configurations:
        folder = out / plans.configuration(c).data_identifier
        owner = [k for k, v in folders.items() if v == folder]
        if owner:  # e.g. a user configuration that inherits 3d_fullres's data_identifier
            print(f"{c}: same data folder {folder.name} as {owner[0]}; preprocessed once")
        else:
            folders[c] = folder
    return folders


def _report(summaries: Mapping[str, ConfigurationSummary], seconds: float) -> None:
    for s in summaries.values():
        print(f"{s.configuration}: {len(s.processed)} cases preprocessed, {len(s.skipped)} already done "
              f"({s.seconds:.1f} s in workers) -> {s.output_folder}")
    print(f"preprocessing took {seconds:.1f} s")
