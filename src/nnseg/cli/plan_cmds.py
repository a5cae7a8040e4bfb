"""``nnseg fingerprint | plan | preprocess | plan-and-preprocess | move-plans`` (= nnU-Net v2's
``nnUNetv2_extract_fingerprint``, ``nnUNetv2_plan_experiment``, ``nnUNetv2_preprocess``,
``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_move_plans_between_datasets``), with nnU-Net's arguments and defaults.

Files: ``nnUNet_preprocessed/DatasetX/dataset_fingerprint.json``, ``.../<plans_name>.json`` and one data folder per
configuration (``.../<data_identifier>/``), plus ``gt_segmentations/`` and a copy of ``dataset.json``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnseg.cli.context import Context

FINGERPRINT_EXTRACTORS = ("DatasetFingerprintExtractor",)
PREPROCESSORS = ("DefaultPreprocessor",)
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
DEFAULT_NP = 8  # nnU-Net's default_num_processes (env nnUNet_def_n_proc)
# what pool workers of plan-and-preprocess import as they start (while this process scans the dataset)
WORKER_MODULES = ("nnseg.fingerprint.fingerprint", "nnseg.raw.image_io", "SimpleITK", "scipy.ndimage",
                  "nnseg.preprocessed.run", "nnseg.preprocessed.preprocess", "blosc2")


def _cap(n: int) -> int:
    """Worker count capped at the CPU count (each worker costs a core and one case's memory)."""
    return max(1, min(int(n), os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------------ arguments
def _add_dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", nargs="+", required=True, help="dataset id(s) or name(s), e.g. 4 or Dataset004_Hippocampus")


def _add_fingerprint_options(parser: argparse.ArgumentParser, np_flag: str) -> None:
    parser.add_argument("-fpe", default="DatasetFingerprintExtractor", help="fingerprint extractor class name "
                        "(only DatasetFingerprintExtractor; default %(default)s)")
    parser.add_argument(np_flag, type=int, default=None, help="processes for fingerprint extraction (default 8 or "
                        "$nnUNet_def_n_proc, capped at the number of CPUs)")
    parser.add_argument("--verify_dataset_integrity", action="store_true", help="check the raw dataset first and "
                        "stop on errors (recommended for a new dataset)")
    parser.add_argument("--clean", action="store_true", help="re-extract the fingerprint even if "
                        "dataset_fingerprint.json exists (default: reuse it) and preprocess every case again "
                        "(default: keep finished cases made with the same plans)")


def _add_planner_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-pl", default="ExperimentPlanner", help="experiment planner class name, e.g. "
                        "nnUNetPlannerResEncM/L/XL or nnUNetPlanner_torchres (default %(default)s)")
    parser.add_argument("-gpu_memory_target", type=float, default=None, help="GPU memory in GB to plan for "
                        "(default: the planner's own, 8 GB for ExperimentPlanner)")
    parser.add_argument("-preprocessor_name", default="DefaultPreprocessor", help="preprocessor written into the "
                        "plans (only DefaultPreprocessor; default %(default)s)")
    parser.add_argument("-overwrite_target_spacing", type=float, nargs="+", default=None, help="3d_fullres target "
                        "spacing (3 floats) instead of the planned one; also changes the cascade")
    parser.add_argument("-overwrite_plans_name", default=None, help="plans identifier instead of the planner's "
                        "default (e.g. nnUNetPlans); use it to keep several plans side by side")


def _add_preprocess_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", nargs="+", default=list(DEFAULT_CONFIGURATIONS), help="configurations to preprocess "
                        "(default 2d 3d_fullres 3d_lowres; ones the plans lack are skipped)")
    parser.add_argument("-np", type=int, nargs="+", default=None, help="processes per configuration, one value for "
                        "all or one per -c entry (default 2d 8, 3d_fullres 4, 3d_lowres 8, others 4; capped at the "
                        "number of CPUs). More processes need more RAM")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="print more")
    parser.add_argument("--no_pbar", action="store_true", help="no progress bar")


def _add_cluster_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT|FILE.json",
                        help="run one task per case on a Dask cluster (a LocalCluster of N processes, a running "
                        "scheduler, or a scheduler file); needs pip install nnseg[dask]")


def add_fingerprint(parser: argparse.ArgumentParser) -> None:
    _add_dataset(parser)
    _add_fingerprint_options(parser, "-np")
    _add_output_options(parser)


def add_plan(parser: argparse.ArgumentParser) -> None:
    _add_dataset(parser)
    _add_planner_options(parser)


def add_preprocess(parser: argparse.ArgumentParser) -> None:
    _add_dataset(parser)
    parser.add_argument("-plans_name", default="nnUNetPlans", help="plans identifier (file <name>.json; default "
                        "%(default)s)")
    _add_preprocess_options(parser)
    parser.add_argument("--clean", action="store_true", help="preprocess every case again (default: resume, keeping "
                        "finished cases made with the same plans)")
    _add_output_options(parser)
    _add_cluster_option(parser)


def add_plan_and_preprocess(parser: argparse.ArgumentParser) -> None:
    _add_dataset(parser)
    _add_fingerprint_options(parser, "-npfp")
    parser.add_argument("--no_pp", action="store_true", help="only fingerprint and plan, do not preprocess")
    _add_planner_options(parser)
    _add_preprocess_options(parser)
    _add_output_options(parser)
    _add_cluster_option(parser)


def add_move_plans(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-s", required=True, help="source dataset id or name")
    parser.add_argument("-t", required=True, help="target dataset id or name (its raw folder must exist)")
    parser.add_argument("-sp", required=True, help="source plans identifier, e.g. nnUNetPlans")
    parser.add_argument("-tp", default=None, help="target plans identifier (default: the same as -sp)")


# ------------------------------------------------------------------------------------------------ steps
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


def _raw_folder(ctx: Context, name: str) -> Path:
    folder = ctx.roots().raw / name
    if not (folder / "dataset.json").is_file():
        raise FileNotFoundError(f"raw dataset {folder} (with dataset.json) does not exist; put the dataset in "
                                f"nnUNet_raw ({ctx.roots().raw}) or convert it first (nnseg convert-msd)")
    return folder


def _verify(folder: Path, num_processes: int) -> None:
    from nnseg.raw.verify import ERROR, format_report, verify_dataset

    problems = verify_dataset(folder, num_processes=num_processes)
    print(format_report(problems, folder))
    errors = [p for p in problems if p.severity == ERROR]
    if errors:
        raise ValueError(f"{folder} failed the integrity check with {len(errors)} error(s) (listed above); fix them "
                         "and rerun")


def fingerprint_step(ctx: Context, name: str, *, num_processes: int, clean: bool, verify: bool, extractor: str,
                     progress: bool, verbose: bool, pool: Any = None) -> Path:
    """Extract (or, without ``clean``, reuse) ``dataset_fingerprint.json``; returns its path."""
    from nnseg.fingerprint.fingerprint import FINGERPRINT_FILE, extract_fingerprint, save_fingerprint

    if extractor not in FINGERPRINT_EXTRACTORS:
        raise ValueError(f"unknown fingerprint extractor -fpe {extractor!r}; available: {list(FINGERPRINT_EXTRACTORS)}")
    raw = _raw_folder(ctx, name)
    if verify:
        _verify(raw, _cap(num_processes))
    target = ctx.roots().preprocessed / name / FINGERPRINT_FILE
    if target.is_file() and not clean:
        print(f"{name}: using the existing fingerprint {target} (--clean re-extracts it)")
        return target
    print(f"{name}: extracting the fingerprint ({num_processes} processes)")
    start = time.perf_counter()
    fingerprint = extract_fingerprint(raw, num_processes=num_processes, progress=progress, env=ctx.env, pool=pool)
    save_fingerprint(fingerprint, target)
    if verbose:
        print(f"wrote {target} ({time.perf_counter() - start:.1f} s)")
    return target


def plan_step(ctx: Context, name: str, *, planner: str, gpu_memory_target: float | None, preprocessor_name: str,
              overwrite_target_spacing: Sequence[float] | None, overwrite_plans_name: str | None) -> str:
    """Plan from the fingerprint; writes ``<plans_name>.json`` (keeping user configurations); returns the plans name."""
    from nnseg.fingerprint.fingerprint import FINGERPRINT_FILE, load_fingerprint
    from nnseg.plans.planner import merge_existing_configurations, plan_experiment
    from nnseg.plans.schema import load_plans, save_plans
    from nnseg.preprocessed.run import copy_dataset_files
    from nnseg.raw.dataset_json import load_dataset_json
    from nnseg.raw.discover import training_cases
    from nnseg.raw.image_io import determine_io

    if preprocessor_name not in PREPROCESSORS:
        raise ValueError(f"unknown -preprocessor_name {preprocessor_name!r}; nnseg implements {list(PREPROCESSORS)}")
    start = time.perf_counter()
    if overwrite_target_spacing is not None and len(overwrite_target_spacing) != 3:
        raise ValueError(f"-overwrite_target_spacing needs 3 values (one per axis), got {list(overwrite_target_spacing)}")
    raw, out = _raw_folder(ctx, name), ctx.roots().preprocessed / name
    fingerprint = load_fingerprint(out / FINGERPRINT_FILE)
    spec = load_dataset_json(raw / "dataset.json")
    cases = training_cases(raw, spec, env=ctx.env)
    io = determine_io(spec.file_ending, cases[0].images[0] if cases else None, overwrite=spec.overwrite_image_reader_writer)
    plans = plan_experiment(fingerprint, spec, dataset_name=name, image_reader_writer=io.name, planner=planner,
                            gpu_memory_target_gb=gpu_memory_target, overwrite_target_spacing=overwrite_target_spacing,
                            overwrite_plans_name=overwrite_plans_name, preprocessor_name=preprocessor_name)
    target = out / f"{plans.plans_name}.json"
    if target.is_file():
        plans = merge_existing_configurations(plans, load_plans(target))
    save_plans(plans, target)
    copy_dataset_files(raw, out)
    print(f"{name}: plans {target} (configurations: {', '.join(plans.available_configurations)}; "
          f"{time.perf_counter() - start:.1f} s)")
    return plans.plans_name


def _num_processes_per_configuration(configurations: Sequence[str], np_values: Sequence[int] | None) -> list[int]:
    from nnseg.preprocessed.run import default_num_processes

    if np_values is None:
        return [default_num_processes(c) for c in configurations]
    values = list(np_values) * len(configurations) if len(np_values) == 1 else list(np_values)
    if len(values) != len(configurations):
        raise ValueError(f"-np got {len(values)} values {values} for {len(configurations)} configurations "
                         f"{list(configurations)}; give one value, or one per configuration")
    return [_cap(v) for v in values]


def _refuse_unknown_configurations(plans: Any, plans_file: Path, configurations: Sequence[str]) -> None:
    """A configuration in no plans is a mistake (exit 1); only those the planner may leave out are skipped."""
    import difflib

    unknown = [c for c in configurations if c not in plans.configurations and not plans.planner_may_omit(c)]
    if not unknown:
        return
    guesses = [g for c in unknown for g in difflib.get_close_matches(c, plans.available_configurations, n=1)]
    hint = f" (did you mean {' '.join(guesses)}?)" if guesses else ""
    raise ValueError(f"configuration {' '.join(unknown)} is not in {plans_file}, which has "
                     f"{' '.join(plans.available_configurations)}{hint}; choose from these with -c")


def preprocess_step(ctx: Context, name: str, *, plans_name: str, configurations: Sequence[str],
                    np_values: Sequence[int] | None, progress: bool, verbose: bool, clean: bool = False,
                    pool: Any = None, in_flight: int | None = None) -> None:
    """Preprocess the training cases of each configuration the plans have (others are skipped with a note)."""
    from nnseg.plans.schema import load_plans
    from nnseg.preprocessed.run import preprocess_dataset

    out = ctx.roots().preprocessed / name
    plans_file = out / f"{plans_name}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"plans file {plans_file} does not exist; plan first: `nnseg plan -d {name}` "
                                f"(nnUNetv2_plan_experiment) or `nnseg plan-and-preprocess -d {name}`, or check -plans_name")
    plans = load_plans(plans_file)
    numbers = dict(zip(configurations, _num_processes_per_configuration(configurations, np_values)))
    if in_flight is not None:  # a cluster: cases in flight at once instead of local processes
        numbers = {c: in_flight for c in configurations}
    _refuse_unknown_configurations(plans, plans_file, configurations)
    chosen = []
    for c in configurations:
        if c not in plans.configurations:
            print(f"{name}: {plans_file.name} has no {c} (the planner did not need it for this dataset); skipping it")
        elif plans.configuration(c).preprocessor_name not in PREPROCESSORS:
            raise ValueError(f"{plans_file}: configuration {c} uses preprocessor "
                             f"{plans.configuration(c).preprocessor_name!r}; nnseg implements {list(PREPROCESSORS)}")
        else:
            chosen.append(c)
    if not chosen:
        return
    unit = 'cases in flight on the cluster' if in_flight is not None else 'processes'
    print(f"{name}: preprocessing {', '.join(f'{c} ({numbers[c]} {unit})' for c in chosen)}")
    preprocess_dataset(_raw_folder(ctx, name), out, plans, chosen, num_processes={c: numbers[c] for c in chosen},
                       progress=progress, verbose=verbose, clean=clean, env=ctx.env, pool=pool)


# ------------------------------------------------------------------------------------------------ commands
def _preload(module: str) -> None:
    """Import ``module`` in a background thread (a failure is left for the real import to report)."""

    def load() -> None:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the step that needs the module imports it again and reports the error
            pass

    threading.Thread(target=load, name=f"preload {module}", daemon=True).start()


def _fingerprint_np(ctx: Context, value: int | None) -> int:
    return _cap(value if value is not None else ctx.env_int("nnUNet_def_n_proc", DEFAULT_NP))


def run_fingerprint(args: argparse.Namespace, ctx: Context) -> int:
    check_class_names(extractor=args.fpe)
    for ref in args.d:
        fingerprint_step(ctx, ctx.dataset_name(ref), num_processes=_fingerprint_np(ctx, args.np), clean=args.clean,
                         verify=args.verify_dataset_integrity, extractor=args.fpe, progress=not args.no_pbar,
                         verbose=args.verbose)
    return 0


def _plan_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return {"planner": args.pl, "gpu_memory_target": args.gpu_memory_target, "preprocessor_name": args.preprocessor_name,
            "overwrite_target_spacing": args.overwrite_target_spacing, "overwrite_plans_name": args.overwrite_plans_name}


def run_plan(args: argparse.Namespace, ctx: Context) -> int:
    check_class_names(planner=args.pl, preprocessor=args.preprocessor_name)
    for ref in args.d:
        plan_step(ctx, ctx.dataset_name(ref), **_plan_kwargs(args))  # type: ignore[arg-type]
    return 0


def run_preprocess(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.cluster.preprocess import open_case_pool

    with open_case_pool(args.cluster) as cluster:
        for ref in args.d:
            preprocess_step(ctx, ctx.dataset_name(ref), plans_name=args.plans_name, configurations=args.c,
                            np_values=args.np, progress=not args.no_pbar, verbose=args.verbose, clean=args.clean,
                            pool=cluster, in_flight=cluster.in_flight if cluster else None)
    return 0


def run_plan_and_preprocess(args: argparse.Namespace, ctx: Context) -> int:
    """Fingerprint, plan, preprocess; one worker pool serves fingerprinting and preprocessing (started once)."""
    from nnseg.fingerprint.pool import open_pool

    check_class_names(extractor=args.fpe, planner=args.pl, preprocessor=args.preprocessor_name)
    names = [ctx.dataset_name(ref) for ref in args.d]
    if args.cluster:
        return _plan_and_preprocess_on_cluster(args, ctx, names)
    npfp = _fingerprint_np(ctx, args.npfp)
    np_max = max(_num_processes_per_configuration(args.c, args.np), default=1) if not args.no_pp else 1
    with open_pool(max(npfp, np_max), preload=WORKER_MODULES if max(npfp, np_max) > 1 else ()) as pool:
        _preload("nnseg.plans.planner")  # its imports (torch, ~1.5 s) overlap with fingerprinting in the workers
        for name in names:
            fingerprint_step(ctx, name, num_processes=npfp, clean=args.clean, verify=args.verify_dataset_integrity,
                             extractor=args.fpe, progress=not args.no_pbar, verbose=args.verbose,
                             pool=pool if npfp > 1 else None)
        plans_names = {name: plan_step(ctx, name, **_plan_kwargs(args)) for name in names}  # type: ignore[arg-type]
        if args.no_pp:
            return 0
        for name in names:
            preprocess_step(ctx, name, plans_name=plans_names[name], configurations=args.c, np_values=args.np,
                            progress=not args.no_pbar, verbose=args.verbose, clean=args.clean,
                            pool=pool if np_max > 1 else None)
    return 0


def _plan_and_preprocess_on_cluster(args: argparse.Namespace, ctx: Context, names: Sequence[str]) -> int:
    """plan-and-preprocess with fingerprint and preprocessing cases as tasks on ``--cluster``."""
    from nnseg.cluster.preprocess import open_case_pool

    with open_case_pool(args.cluster) as pool:  # first: the local workers are forked while no other thread runs
        _preload("nnseg.plans.planner")
        for name in names:
            fingerprint_step(ctx, name, num_processes=pool.in_flight, clean=args.clean,
                             verify=args.verify_dataset_integrity, extractor=args.fpe, progress=not args.no_pbar,
                             verbose=args.verbose, pool=pool)
        plans_names = {name: plan_step(ctx, name, **_plan_kwargs(args)) for name in names}  # type: ignore[arg-type]
        for name in [] if args.no_pp else names:
            preprocess_step(ctx, name, plans_name=plans_names[name], configurations=args.c, np_values=args.np,
                            progress=not args.no_pbar, verbose=args.verbose, clean=args.clean, pool=pool,
                            in_flight=pool.in_flight)
    return 0


def run_move_plans(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.plans.move import move_plans_between_datasets

    source, target = ctx.dataset_name(args.s), ctx.dataset_name(args.t)
    target_plans = args.tp or args.sp
    roots = ctx.roots()
    source_file = roots.preprocessed / source / f"{args.sp}.json"
    if not source_file.is_file():
        raise FileNotFoundError(f"source plans {source_file} do not exist; plan {source} first "
                                f"(`nnseg plan -d {source}`) or check -sp")
    target_file = roots.preprocessed / target / f"{target_plans}.json"
    move_plans_between_datasets(source_file, _raw_folder(ctx, target), target_file, target_dataset_name=target)
    print(f"wrote {target_file} (from {source_file})")
    return 0
