"""The plan-and-preprocess workflow of a dataset, as ``nnUNetv2_plan_and_preprocess`` runs it, for Python callers too.

Steps (each also a command): :func:`fingerprint_dataset` (``nnUNetv2_extract_fingerprint``), :func:`plan_dataset`
(``nnUNetv2_plan_experiment``), :func:`preprocess_planned` (``nnUNetv2_preprocess``); :func:`plan_and_preprocess` runs
all three for a :class:`PlanAndPreprocessRequest`, with one worker pool for fingerprinting and preprocessing. Files:
``nnUNet_preprocessed/DatasetX/dataset_fingerprint.json``, ``.../<plans_name>.json``, one data folder per configuration,
``gt_segmentations/`` and a copy of ``dataset.json``. Nothing here reads ``os.environ``: the CLI resolves nnU-Net's
environment (folders, ``nnUNet_def_n_proc``) into the request.

Example:
    >>> from nnseg.paths import resolve_roots
    >>> roots = resolve_roots(os.environ, cwd=Path.cwd())                                   # doctest: +SKIP
    >>> plan_and_preprocess(PlanAndPreprocessRequest(datasets=(DatasetFolders.find(4, roots),),
    ...                                              configurations=("3d_fullres",)))        # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import importlib
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg.paths import DataRoots, find_dataset_name

FINGERPRINT_EXTRACTORS = ("DatasetFingerprintExtractor",)
PREPROCESSORS = ("DefaultPreprocessor",)
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
DEFAULT_NP = 8  # nnU-Net's default_num_processes (env nnUNet_def_n_proc)
# what pool workers of plan-and-preprocess import as they start (while this process scans the dataset)
WORKER_MODULES = ("nnseg.fingerprint.fingerprint", "nnseg.raw.image_io", "SimpleITK", "scipy.ndimage",
                  "nnseg.preprocessed.run", "nnseg.preprocessed.preprocess", "blosc2")

__all__ = ["DEFAULT_CONFIGURATIONS", "DatasetFolders", "PlanAndPreprocessRequest", "check_class_names",
           "fingerprint_dataset", "plan_and_preprocess", "plan_dataset", "preprocess_planned"]


def cap_processes(n: int) -> int:
    """Worker count capped at the CPU count (each worker costs a core and one case's memory)."""
    return max(1, min(int(n), os.cpu_count() or 1))


@dataclass(frozen=True)
class DatasetFolders:
    """One dataset's folders: ``raw`` = ``nnUNet_raw/DatasetX`` (with dataset.json), ``preprocessed`` =
    ``nnUNet_preprocessed/DatasetX``."""

    name: str
    raw: Path
    preprocessed: Path

    @classmethod
    def find(cls, ref: str | int, roots: DataRoots) -> DatasetFolders:
        """The folders of dataset ``ref`` (id such as 4, or name such as ``Dataset004_Hippocampus``) under ``roots``."""
        name = find_dataset_name(ref, roots)
        return cls(name, roots.raw / name, roots.preprocessed / name)

    def checked_raw(self) -> Path:
        """``raw``, refused if it has no dataset.json."""
        if not (self.raw / "dataset.json").is_file():
            raise FileNotFoundError(f"raw dataset {self.raw} (with dataset.json) does not exist; put the dataset in "
                                    f"nnUNet_raw ({self.raw.parent}) or convert it first (nnseg convert-msd)")
        return self.raw


def check_class_names(*, extractor: str | None = None, planner: str | None = None,
                      preprocessor: str | None = None) -> None:
    """Refuse a -fpe / -pl / -preprocessor_name nnseg does not implement, before any dataset is read or written.

    nnU-Net imports these classes by name; nnseg has the shipped ones as data (planners: ``plans.presets.PLANNERS``,
    to which an extension can add presets).
    """
    from nnseg.plans.presets import PLANNERS

    if extractor is not None and extractor not in FINGERPRINT_EXTRACTORS:
        raise ValueError(f"unknown fingerprint extractor -fpe {extractor!r}; available: {list(FINGERPRINT_EXTRACTORS)}")
    if planner is not None and planner not in PLANNERS:
        raise ValueError(f"unknown experiment planner -pl {planner!r}; nnseg implements {PLANNERS.names()} "
                         "(another planner: register a PlannerPreset in an extension, docs/EXTENSIONS.md)")
    if preprocessor is not None and preprocessor not in PREPROCESSORS:
        raise ValueError(f"unknown -preprocessor_name {preprocessor!r}; nnseg implements {list(PREPROCESSORS)}")


def _verify(folder: Path, num_processes: int) -> None:
    from nnseg.raw.verify import ERROR, format_report, verify_dataset

    problems = verify_dataset(folder, num_processes=num_processes)
    print(format_report(problems, folder))
    errors = [p for p in problems if p.severity == ERROR]
    if errors:
        raise ValueError(f"{folder} failed the integrity check with {len(errors)} error(s) (listed above); fix them "
                         "and rerun")


def fingerprint_dataset(dataset: DatasetFolders, *, num_processes: int = DEFAULT_NP, clean: bool = False,
                        verify: bool = False, extractor: str = "DatasetFingerprintExtractor", progress: bool = True,
                        verbose: bool = False, env: Mapping[str, str] | None = None, pool: Any = None) -> Path:
    """Extract (or, without ``clean``, reuse) ``dataset_fingerprint.json``; returns its path.

    Args:
        verify: check the raw dataset first (``--verify_dataset_integrity``) and stop on errors.
        env: variables for ``$VAR`` expansion in an explicit ``dataset`` entry of dataset.json.
        pool: an open pool to run the cases in (a local process pool or a cluster's).
    """
    from nnseg.fingerprint.fingerprint import FINGERPRINT_FILE, extract_fingerprint, save_fingerprint

    check_class_names(extractor=extractor)
    raw = dataset.checked_raw()
    if verify:
        _verify(raw, cap_processes(num_processes))
    target = dataset.preprocessed / FINGERPRINT_FILE
    if target.is_file() and not clean:
        print(f"{dataset.name}: using the existing fingerprint {target} (--clean re-extracts it)")
        return target
    print(f"{dataset.name}: extracting the fingerprint ({num_processes} processes)")
    start = time.perf_counter()
    fingerprint = extract_fingerprint(raw, num_processes=num_processes, progress=progress, env=env, pool=pool)
    save_fingerprint(fingerprint, target)
    if verbose:
        print(f"wrote {target} ({time.perf_counter() - start:.1f} s)")
    return target


def plan_dataset(dataset: DatasetFolders, *, planner: str = "ExperimentPlanner", gpu_memory_target_gb: float | None = None,
                 preprocessor_name: str = "DefaultPreprocessor",
                 overwrite_target_spacing: Sequence[float] | None = None, overwrite_plans_name: str | None = None,
                 env: Mapping[str, str] | None = None) -> str:
    """Plan from the fingerprint; writes ``<plans_name>.json`` (keeping user configurations of an existing file) and
    copies dataset.json; returns the plans name.

    Raises:
        ValueError: an unknown planner or preprocessor, or ``overwrite_target_spacing`` without 3 values.
    """
    from nnseg.fingerprint.fingerprint import FINGERPRINT_FILE, load_fingerprint
    from nnseg.plans.planner import merge_existing_configurations, plan_experiment
    from nnseg.plans.schema import load_plans, save_plans
    from nnseg.preprocessed.run import copy_dataset_files
    from nnseg.raw.dataset_json import load_dataset_json
    from nnseg.raw.discover import training_cases
    from nnseg.raw.image_io import determine_io

    check_class_names(planner=planner, preprocessor=preprocessor_name)
    start = time.perf_counter()
    if overwrite_target_spacing is not None and len(overwrite_target_spacing) != 3:
        raise ValueError(f"-overwrite_target_spacing needs 3 values (one per axis), got {list(overwrite_target_spacing)}")
    raw, out = dataset.checked_raw(), dataset.preprocessed
    fingerprint = load_fingerprint(out / FINGERPRINT_FILE)
    spec = load_dataset_json(raw / "dataset.json")
    cases = training_cases(raw, spec, env=env)
    io = determine_io(spec.file_ending, cases[0].images[0] if cases else None, overwrite=spec.overwrite_image_reader_writer)
    plans = plan_experiment(fingerprint, spec, dataset_name=dataset.name, image_reader_writer=io.name, planner=planner,
                            gpu_memory_target_gb=gpu_memory_target_gb, overwrite_target_spacing=overwrite_target_spacing,
                            overwrite_plans_name=overwrite_plans_name, preprocessor_name=preprocessor_name)
    target = out / f"{plans.plans_name}.json"
    if target.is_file():
        plans = merge_existing_configurations(plans, load_plans(target))
    save_plans(plans, target)
    copy_dataset_files(raw, out)
    print(f"{dataset.name}: plans {target} (configurations: {', '.join(plans.available_configurations)}; "
          f"{time.perf_counter() - start:.1f} s)")
    return plans.plans_name


def processes_per_configuration(configurations: Sequence[str], np_values: Sequence[int] | None) -> list[int]:
    """nnU-Net's ``-np``: one value for all configurations or one each (None: its 8/4/8 defaults), capped at the CPUs."""
    from nnseg.preprocessed.run import default_num_processes

    if np_values is None:
        return [default_num_processes(c) for c in configurations]
    values = list(np_values) * len(configurations) if len(np_values) == 1 else list(np_values)
    if len(values) != len(configurations):
        raise ValueError(f"-np got {len(values)} values {values} for {len(configurations)} configurations "
                         f"{list(configurations)}; give one value, or one per configuration")
    return [cap_processes(v) for v in values]


def _refuse_unknown_configurations(plans: Any, plans_file: Path, configurations: Sequence[str]) -> None:
    """A configuration in no plans is a mistake (exit 1); only those the planner may leave out are skipped."""
    unknown = [c for c in configurations if c not in plans.configurations and not plans.planner_may_omit(c)]
    if not unknown:
        return
    guesses = [g for c in unknown for g in difflib.get_close_matches(c, plans.available_configurations, n=1)]
    hint = f" (did you mean {' '.join(guesses)}?)" if guesses else ""
    raise ValueError(f"configuration {' '.join(unknown)} is not in {plans_file}, which has "
                     f"{' '.join(plans.available_configurations)}{hint}; choose from these with -c")


def _chosen_configurations(dataset: DatasetFolders, plans: Any, plans_file: Path,
                           configurations: Sequence[str]) -> list[str]:
    _refuse_unknown_configurations(plans, plans_file, configurations)
    chosen = []
    for c in configurations:
        if c not in plans.configurations:
            print(f"{dataset.name}: {plans_file.name} has no {c} (the planner did not need it for this dataset); "
                  "skipping it")
        elif plans.configuration(c).preprocessor_name not in PREPROCESSORS:
            raise ValueError(f"{plans_file}: configuration {c} uses preprocessor "
                             f"{plans.configuration(c).preprocessor_name!r}; nnseg implements {list(PREPROCESSORS)}")
        else:
            chosen.append(c)
    return chosen


def preprocess_planned(dataset: DatasetFolders, *, plans_name: str = "nnUNetPlans",
                       configurations: Sequence[str] = DEFAULT_CONFIGURATIONS, num_processes: Sequence[int] | None = None,
                       clean: bool = False, progress: bool = True, verbose: bool = False,
                       env: Mapping[str, str] | None = None, pool: Any = None, in_flight: int | None = None) -> None:
    """Preprocess the training cases of each configuration the plans have (ones the planner left out are skipped
    with a note; any other unknown configuration is refused before anything is written).

    Args:
        num_processes: nnU-Net's ``-np`` (see :func:`processes_per_configuration`).
        clean: preprocess every case again (default: resume, keeping finished cases made with the same plans).
        pool: an open pool to run the cases in; ``in_flight``: a cluster pool's cases in flight at once (instead of
            local processes).
    """
    from nnseg.plans.schema import load_plans
    from nnseg.preprocessed.run import preprocess_dataset

    plans_file = dataset.preprocessed / f"{plans_name}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"plans file {plans_file} does not exist; plan first: `nnseg plan -d {dataset.name}` "
                                f"(nnUNetv2_plan_experiment) or `nnseg plan-and-preprocess -d {dataset.name}`, or "
                                "check -plans_name")
    plans = load_plans(plans_file)
    numbers = dict(zip(configurations, processes_per_configuration(configurations, num_processes)))
    if in_flight is not None:
        numbers = {c: in_flight for c in configurations}
    chosen = _chosen_configurations(dataset, plans, plans_file, configurations)
    if not chosen:
        return
    unit = "cases in flight on the cluster" if in_flight is not None else "processes"
    print(f"{dataset.name}: preprocessing {', '.join(f'{c} ({numbers[c]} {unit})' for c in chosen)}")
    preprocess_dataset(dataset.checked_raw(), dataset.preprocessed, plans, chosen,
                       num_processes={c: numbers[c] for c in chosen}, progress=progress, verbose=verbose, clean=clean,
                       env=env, pool=pool)


@dataclass(frozen=True)
class PlanAndPreprocessRequest:
    """``nnUNetv2_plan_and_preprocess -d ... [options]`` as typed values (nnU-Net's defaults); checked on creation.

    Attributes:
        datasets: the datasets' folders (:meth:`DatasetFolders.find`).
        fingerprint_processes: ``-npfp`` (capped at the CPU count).
        verify: ``--verify_dataset_integrity``; clean: ``--clean`` (re-extract the fingerprint, preprocess every case
            again).
        extractor, planner, gpu_memory_target_gb, preprocessor_name, overwrite_target_spacing, overwrite_plans_name:
            ``-fpe``, ``-pl``, ``-gpu_memory_target``, ``-preprocessor_name``, ``-overwrite_target_spacing``,
            ``-overwrite_plans_name``.
        configurations, num_processes: ``-c`` and ``-np``; preprocess: False is ``--no_pp`` (fingerprint and plan only).
        env: variables for ``$VAR`` expansion in an explicit ``dataset`` entry of dataset.json.
    """

    datasets: tuple[DatasetFolders, ...]
    fingerprint_processes: int = DEFAULT_NP
    verify: bool = False
    clean: bool = False
    extractor: str = "DatasetFingerprintExtractor"
    planner: str = "ExperimentPlanner"
    gpu_memory_target_gb: float | None = None
    preprocessor_name: str = "DefaultPreprocessor"
    overwrite_target_spacing: tuple[float, ...] | None = None
    overwrite_plans_name: str | None = None
    configurations: tuple[str, ...] = DEFAULT_CONFIGURATIONS
    num_processes: tuple[int, ...] | None = None
    preprocess: bool = True
    progress: bool = True
    verbose: bool = False
    env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        check_class_names(extractor=self.extractor, planner=self.planner, preprocessor=self.preprocessor_name)
        if self.preprocess:
            processes_per_configuration(self.configurations, self.num_processes)

    def plan_options(self) -> dict[str, Any]:
        return {"planner": self.planner, "gpu_memory_target_gb": self.gpu_memory_target_gb,
                "preprocessor_name": self.preprocessor_name, "overwrite_target_spacing": self.overwrite_target_spacing,
                "overwrite_plans_name": self.overwrite_plans_name, "env": self.env}


def _preload(module: str) -> None:
    """Import ``module`` in a background thread (a failure is left for the real import to report)."""

    def load() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the step that needs the module imports it again and reports the error
            pass

    threading.Thread(target=load, name=f"preload {module}", daemon=True).start()


def plan_and_preprocess(request: PlanAndPreprocessRequest, *, pool: Any = None) -> dict[str, str]:
    """Fingerprint, plan and preprocess every dataset of ``request``; returns ``{dataset name: plans name}``.

    Without ``pool`` one local process pool serves fingerprinting and preprocessing (started once); with a cluster's
    pool (``nnseg.cluster.preprocess.open_case_pool``, which has ``in_flight``) each case is a task on the cluster.
    """
    if pool is not None:
        return _run_steps(request, pool, pool.in_flight, pool.in_flight)
    from nnseg.fingerprint.pool import open_pool

    npfp = cap_processes(request.fingerprint_processes)
    np_max = max(processes_per_configuration(request.configurations, request.num_processes), default=1) \
        if request.preprocess else 1
    workers = max(npfp, np_max)
    with open_pool(workers, preload=WORKER_MODULES if workers > 1 else ()) as local:
        return _run_steps(request, local, npfp, None, fingerprint_pool=npfp > 1, preprocess_pool=np_max > 1)


def _run_steps(request: PlanAndPreprocessRequest, pool: Any, npfp: int, in_flight: int | None, *,
               fingerprint_pool: bool = True, preprocess_pool: bool = True) -> dict[str, str]:
    _preload("nnseg.plans.planner")  # its imports (torch, ~1.5 s) overlap with fingerprinting in the workers
    for dataset in request.datasets:
        fingerprint_dataset(dataset, num_processes=npfp, clean=request.clean, verify=request.verify,
                            extractor=request.extractor, progress=request.progress, verbose=request.verbose,
                            env=request.env, pool=pool if fingerprint_pool else None)
    plans_names = {d.name: plan_dataset(d, **request.plan_options()) for d in request.datasets}
    for dataset in request.datasets if request.preprocess else ():
        preprocess_planned(dataset, plans_name=plans_names[dataset.name], configurations=request.configurations,
                           num_processes=request.num_processes, clean=request.clean, progress=request.progress,
                           verbose=request.verbose, env=request.env, pool=pool if preprocess_pool else None,
                           in_flight=in_flight)
    return plans_names
