"""Model selection and postprocessing commands, with nnU-Net's argument names and defaults:

``nnseg find-best`` (= ``nnUNetv2_find_best_configuration``), ``accumulate-cv`` (= ``nnUNetv2_accumulate_crossval_results``),
``determine-pp`` (= ``nnUNetv2_determine_postprocessing``), ``apply-pp`` (= ``nnUNetv2_apply_postprocessing``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from nnseg.cli.context import Context
from nnseg.metrics.best_config import DEFAULT_CONFIGURATIONS, DEFAULT_FOLDS
from nnseg.metrics.evaluate import DEFAULT_NUM_PROCESSES


def _path(ctx: Context, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else ctx.cwd / p


def _num_processes(args: argparse.Namespace, ctx: Context) -> int:
    if args.np is not None and args.np < 1:
        raise ValueError(f"-np must be >= 1, got {args.np}")
    return args.np if args.np is not None else ctx.env_int("nnUNet_def_n_proc", DEFAULT_NUM_PROCESSES)


def _np_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("-np", type=int, required=False, default=None,
                        help=f"number of processes for {what}. Default: nnUNet_def_n_proc or {DEFAULT_NUM_PROCESSES}")


def _json_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-plans_json", type=str, required=False, default=None,
                        help="plans file to use. Default: the plans.json in the input folder")
    parser.add_argument("-dataset_json", type=str, required=False, default=None,
                        help="dataset.json file to use. Default: the dataset.json in the input folder")


def add_find_best(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_name_or_id", type=str, help="Dataset name or id")
    parser.add_argument("-p", nargs="+", required=False, default=["nnUNetPlans"],
                        help="List of plan identifiers. Default: nnUNetPlans")
    parser.add_argument("-c", nargs="+", required=False, default=list(DEFAULT_CONFIGURATIONS),
                        help=f"List of configurations. Default: {list(DEFAULT_CONFIGURATIONS)}")
    parser.add_argument("-tr", nargs="+", required=False, default=["nnUNetTrainer"],
                        help="List of trainers. Default: nnUNetTrainer")
    _np_arg(parser, "ensembling, postprocessing etc")
    parser.add_argument("-f", nargs="+", type=int, default=list(DEFAULT_FOLDS), help="Folds to use. Default: 0 1 2 3 4")
    parser.add_argument("--disable_ensembling", action="store_true", required=False,
                        help="Set this flag to disable ensembling")
    parser.add_argument("--no_overwrite", action="store_true",
                        help="reuse existing cross-validation / ensemble outputs instead of recomputing them")


def run_find_best(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.metrics.best_config import find_best_configuration

    roots = ctx.roots()
    dataset = ctx.dataset_name(args.dataset_name_or_id)
    find_best_configuration(dataset, roots.results, roots.preprocessed, configurations=args.c, trainers=args.tr,
                            plans=args.p, folds=args.f, allow_ensembling=not args.disable_ensembling,
                            num_processes=_num_processes(args, ctx), overwrite=not args.no_overwrite,
                            raw_root=roots.raw)
    return 0


def add_accumulate_cv(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_name_or_id", type=str, help="Dataset name or id")
    parser.add_argument("-c", type=str, required=True, default="3d_fullres", help="Configuration")
    parser.add_argument("-o", type=str, required=False, default=None,
                        help="Output folder (must be empty). Default: crossval_results_folds_XXX in the trained model folder")
    parser.add_argument("-f", nargs="+", type=int, default=list(DEFAULT_FOLDS), help="Folds to use. Default: 0 1 2 3 4")
    parser.add_argument("-p", type=str, required=False, default="nnUNetPlans",
                        help="Plan identifier in which to search for the specified configuration. Default: nnUNetPlans")
    parser.add_argument("-tr", type=str, required=False, default="nnUNetTrainer", help="Trainer class. Default: nnUNetTrainer")


def run_accumulate_cv(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.metrics.best_config import ModelId
    from nnseg.metrics.crossval import accumulate_crossval_results, reference_folder

    roots = ctx.roots()
    dataset = ctx.dataset_name(args.dataset_name_or_id)
    model = roots.results / dataset / ModelId(args.tr, args.p, args.c).identifier
    if not model.is_dir():
        raise FileNotFoundError(f"trained model folder {model} does not exist; train it first "
                                f"(nnUNetv2_train {dataset} {args.c} FOLD -tr {args.tr} -p {args.p})")
    ref = reference_folder(dataset, preprocessed_root=roots.preprocessed, raw_root=roots.raw)
    merged = accumulate_crossval_results(model, folds=args.f, ref_folder=ref,
                                         output_folder=_path(ctx, args.o) if args.o else None,
                                         num_processes=ctx.env_int("nnUNet_def_n_proc", DEFAULT_NUM_PROCESSES))
    from nnseg.jsonio import load_json

    dice = load_json(merged / "summary.json")["foreground_mean"]["Dice"]
    print(f"cross-validation results of folds {args.f} in {merged}; foreground mean Dice {dice:.4f}")
    return 0


def add_determine_pp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", type=str, required=True, help="Input folder")
    parser.add_argument("-ref", type=str, required=True, help="Folder with gt labels")
    _json_args(parser)
    _np_arg(parser, "postprocessing and evaluation")
    parser.add_argument("--remove_postprocessed", action="store_true", required=False,
                        help="set this if you don't want to keep the postprocessed files")


def run_determine_pp(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.metrics.postprocess_folder import determine_postprocessing_for_folder

    folder = _path(ctx, args.i)
    decision = determine_postprocessing_for_folder(
        folder, _path(ctx, args.ref), plans_file=_path(ctx, args.plans_json) if args.plans_json else None,
        dataset_json_file=_path(ctx, args.dataset_json) if args.dataset_json else None,
        num_processes=_num_processes(args, ctx), keep_postprocessed=not args.remove_postprocessed)
    before, after = (float(s["foreground_mean"]["Dice"]) for s in (decision.before, decision.after))
    chosen = ", ".join(f"{s.name}({s.kwargs.get('labels_or_regions')})" for s in decision.steps) or "none"
    print(f"postprocessing: {chosen}; foreground mean Dice {before:.5f} -> {after:.5f}"
          f"{'' if math.isfinite(after) else ' (NaN: a class is empty everywhere)'}; wrote "
          f"{folder / 'postprocessing.json'} and postprocessing.pkl")
    return 0


def add_apply_pp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", type=str, required=True, help="Input folder")
    parser.add_argument("-o", type=str, required=True, help="Output folder")
    parser.add_argument("-pp_pkl_file", type=str, required=True,
                        help="postprocessing.pkl (nnU-Net's, read safely) or nnseg's postprocessing.json")
    _np_arg(parser, "postprocessing")
    _json_args(parser)


def run_apply_pp(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.metrics.postprocess_folder import apply_postprocessing_to_folder

    written = apply_postprocessing_to_folder(
        _path(ctx, args.i), _path(ctx, args.o), _path(ctx, args.pp_pkl_file),
        plans_file=_path(ctx, args.plans_json) if args.plans_json else None,
        dataset_json_file=_path(ctx, args.dataset_json) if args.dataset_json else None,
        num_processes=_num_processes(args, ctx))
    print(f"postprocessed {len(written)} segmentation(s) into {args.o}")
    return 0
