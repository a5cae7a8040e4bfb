"""``nnseg fingerprint | plan | preprocess | plan-and-preprocess | move-plans`` (= nnU-Net v2's
``nnUNetv2_extract_fingerprint``, ``nnUNetv2_plan_experiment``, ``nnUNetv2_preprocess``,
``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_move_plans_between_datasets``), with nnU-Net's arguments and defaults.

The commands parse arguments and call the workflow in :mod:`nnseg.preprocessed.workflow` (which writes
``nnUNet_preprocessed/DatasetX/dataset_fingerprint.json``, ``.../<plans_name>.json`` and one data folder per
configuration, plus ``gt_segmentations/`` and a copy of ``dataset.json``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from nnseg.cli.context import Context
from nnseg.preprocessed.workflow import (
    DEFAULT_CONFIGURATIONS,
    DEFAULT_NP,
    DatasetFolders,
    PlanAndPreprocessRequest,
    cap_processes,
    check_class_names,
    fingerprint_dataset,
    plan_and_preprocess,
    plan_dataset,
    preprocess_planned,
)


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


# ------------------------------------------------------------------------------------------------ commands
def _datasets(ctx: Context, refs: Sequence[str]) -> tuple[DatasetFolders, ...]:
    roots = ctx.roots()
    return tuple(DatasetFolders.find(ref, roots) for ref in refs)


def _fingerprint_np(ctx: Context, value: int | None) -> int:
    return cap_processes(value if value is not None else ctx.env_int("nnUNet_def_n_proc", DEFAULT_NP))


def run_fingerprint(args: argparse.Namespace, ctx: Context) -> int:
    check_class_names(extractor=args.fpe)
    for dataset in _datasets(ctx, args.d):
        fingerprint_dataset(dataset, num_processes=_fingerprint_np(ctx, args.np), clean=args.clean,
                            verify=args.verify_dataset_integrity, extractor=args.fpe, progress=not args.no_pbar,
                            verbose=args.verbose, env=ctx.env)
    return 0


def _plan_options(args: argparse.Namespace) -> dict[str, Any]:
    spacing = tuple(args.overwrite_target_spacing) if args.overwrite_target_spacing is not None else None
    return {"planner": args.pl, "gpu_memory_target_gb": args.gpu_memory_target,
            "preprocessor_name": args.preprocessor_name, "overwrite_target_spacing": spacing,
            "overwrite_plans_name": args.overwrite_plans_name}


def run_plan(args: argparse.Namespace, ctx: Context) -> int:
    check_class_names(planner=args.pl, preprocessor=args.preprocessor_name)
    for dataset in _datasets(ctx, args.d):
        plan_dataset(dataset, **_plan_options(args), env=ctx.env)
    return 0


def run_preprocess(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.cluster.preprocess import open_case_pool

    with open_case_pool(args.cluster) as cluster:
        for dataset in _datasets(ctx, args.d):
            preprocess_planned(dataset, plans_name=args.plans_name, configurations=args.c, num_processes=args.np,
                               clean=args.clean, progress=not args.no_pbar, verbose=args.verbose, env=ctx.env,
                               pool=cluster, in_flight=cluster.in_flight if cluster else None)
    return 0


def run_plan_and_preprocess(args: argparse.Namespace, ctx: Context) -> int:
    """One :class:`PlanAndPreprocessRequest` for :func:`plan_and_preprocess` (on ``--cluster``'s pool if given)."""
    check_class_names(extractor=args.fpe, planner=args.pl, preprocessor=args.preprocessor_name)
    request = PlanAndPreprocessRequest(
        datasets=_datasets(ctx, args.d), fingerprint_processes=_fingerprint_np(ctx, args.npfp),
        verify=args.verify_dataset_integrity, clean=args.clean, extractor=args.fpe, **_plan_options(args),
        configurations=tuple(args.c), num_processes=tuple(args.np) if args.np is not None else None,
        preprocess=not args.no_pp, progress=not args.no_pbar, verbose=args.verbose, env=ctx.env)
    if not args.cluster:
        plan_and_preprocess(request)
        return 0
    from nnseg.cluster.preprocess import open_case_pool

    with open_case_pool(args.cluster) as pool:  # the local workers are forked while no other thread runs
        plan_and_preprocess(request, pool=pool)
    return 0


def run_move_plans(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.plans.move import move_plans_between_datasets

    roots = ctx.roots()
    source, target = DatasetFolders.find(args.s, roots), DatasetFolders.find(args.t, roots)
    source_file = source.preprocessed / f"{args.sp}.json"
    if not source_file.is_file():
        raise FileNotFoundError(f"source plans {source_file} do not exist; plan {source.name} first "
                                f"(`nnseg plan -d {source.name}`) or check -sp")
    target_file = target.preprocessed / f"{args.tp or args.sp}.json"
    move_plans_between_datasets(source_file, target.checked_raw(), target_file, target_dataset_name=target.name)
    print(f"wrote {target_file} (from {source_file})")
    return 0
