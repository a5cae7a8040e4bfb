"""``nnseg evaluate`` (= ``nnUNetv2_evaluate_folder``) and ``nnseg evaluate-simple`` (= ``nnUNetv2_evaluate_simple``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from nnseg.cli.context import Context
from nnseg.metrics.evaluate import DEFAULT_NUM_PROCESSES, evaluate_folder_simple, evaluate_folder_with_dataset
from nnseg.metrics.surface import SurfaceOptions


def _path(ctx: Context, value: str) -> Path:
    """A path argument; relative paths are kept as typed (as nnU-Net writes them) when ctx.cwd is the process cwd."""
    p = Path(value)
    if p.is_absolute() or ctx.cwd.resolve() == Path.cwd().resolve():
        return p
    return ctx.cwd / p


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", type=str, required=False, default=None,
                        help="Output file. Optional. Default: pred_folder/summary.json")
    parser.add_argument("-np", type=int, required=False, default=None,
                        help=f"number of processes used. Optional. Default: nnUNet_def_n_proc or {DEFAULT_NUM_PROCESSES}")
    parser.add_argument("--chill", action="store_true",
                        help="dont crash if folder_pred does not have all files that are present in folder_gt")
    parser.add_argument("--surface_metrics", action="store_true",
                        help="nnseg extra: also compute HD95 and normalised surface Dice per case (extra keys in summary.json)")
    parser.add_argument("--nsd_tolerance_mm", type=float, nargs="+", default=[1.0],
                        help="nnseg extra: NSD tolerance(s) in mm, used with --surface_metrics (default 1.0)")


def _options(args: argparse.Namespace, ctx: Context) -> dict[str, Any]:
    if args.np is not None and args.np < 1:
        raise ValueError(f"-np must be >= 1, got {args.np}")
    if any(t < 0 for t in args.nsd_tolerance_mm):
        raise ValueError(f"--nsd_tolerance_mm must be >= 0, got {args.nsd_tolerance_mm}")
    surface = SurfaceOptions(nsd_tolerances_mm=tuple(args.nsd_tolerance_mm)) if args.surface_metrics else None
    return {
        "output_file": _path(ctx, args.o) if args.o is not None else None,
        "num_processes": args.np if args.np is not None else ctx.env_int("nnUNet_def_n_proc", DEFAULT_NUM_PROCESSES),
        "chill": args.chill,
        "surface_metrics": surface,
    }


def _report(summary: dict[str, Any], output: Path) -> None:
    dice = summary["foreground_mean"].get("Dice", math.nan)
    print(f"evaluated {len(summary['metric_per_case'])} cases; foreground mean Dice {dice:.4f}; wrote {output}")


def add_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gt_folder", type=str, help="folder with gt segmentations")
    parser.add_argument("pred_folder", type=str, help="folder with predicted segmentations")
    parser.add_argument("-djfile", type=str, required=True, help="dataset.json file")
    parser.add_argument("-pfile", type=str, required=True, help="plans.json file")
    _add_common(parser)


def run_evaluate(args: argparse.Namespace, ctx: Context) -> int:
    opts = _options(args, ctx)
    pred = _path(ctx, args.pred_folder)
    summary = evaluate_folder_with_dataset(_path(ctx, args.gt_folder), pred, dataset_json_file=_path(ctx, args.djfile),
                                           plans_file=_path(ctx, args.pfile), **opts)
    _report(summary, opts["output_file"] or pred / "summary.json")
    return 0


def add_evaluate_simple(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("gt_folder", type=str, help="folder with gt segmentations")
    parser.add_argument("pred_folder", type=str, help="folder with predicted segmentations")
    parser.add_argument("-l", type=int, nargs="+", required=True, help="list of labels")
    parser.add_argument("-il", type=int, required=False, default=None, help="ignore label")
    _add_common(parser)


def run_evaluate_simple(args: argparse.Namespace, ctx: Context) -> int:
    opts = _options(args, ctx)
    pred = _path(ctx, args.pred_folder)
    summary = evaluate_folder_simple(_path(ctx, args.gt_folder), pred, labels=args.l, ignore_label=args.il, **opts)
    _report(summary, opts["output_file"] or pred / "summary.json")
    return 0
