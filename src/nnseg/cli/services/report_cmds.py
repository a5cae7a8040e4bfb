"""``nnseg report RESULTS_FOLDER`` or ``nnseg report -d DATASET [-c CONFIG] [-tr TRAINER] [-p PLANS]``: one
self-contained HTML page per trained model (no nnU-Net counterpart)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from nnseg.cli.context import Context
from nnseg.metrics.report import find_model_folder, write_report

_DATASET = re.compile(r"^Dataset\d{3}_.+$")


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_folder", nargs="?", default=None,
                   help="a trained model folder (nnUNet_results/DatasetX/<Trainer>__<Plans>__<config>), one of its "
                        "fold_k folders, or a dataset results folder (one page per model); or use -d instead")
    p.add_argument("-d", default=None, help="dataset id or name in nnUNet_results, as for nnUNetv2_predict (every "
                                             "model of the dataset, or those matching -c/-tr/-p)")
    p.add_argument("-c", default=None, help="with -d: configuration, e.g. 3d_fullres [every configuration]")
    p.add_argument("-tr", default=None, help="with -d: trainer name, e.g. nnUNetTrainer [every trainer]")
    p.add_argument("-p", default=None, help="with -d: plans identifier, e.g. nnUNetPlans [every plans]")
    p.add_argument("-o", dest="output", default=None,
                   help="output .html [<model folder>/report.html, or <fold folder>/report.html for a fold]")
    p.add_argument("--worst", type=int, default=5, help="number of worst validation cases drawn per fold [5]")
    p.add_argument("--raw", default=None, metavar="RAW_DATASET_FOLDER",
                   help="raw dataset folder with imagesTr for the overlays [nnUNet_raw/<dataset of the results folder>]")
    p.add_argument("--channel", type=int, default=0, help="image channel drawn under the labels [0]")


def _model_folders(path: Path) -> list[Path]:
    """The folder itself when it is a model or fold folder, else every model folder inside it."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; pass a trained model folder such as "
                                "nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres")
    if path.name.startswith("fold_") or any(p.is_dir() and p.name.startswith("fold_") for p in path.iterdir()):
        return [path]
    models = sorted(p for p in path.iterdir() if p.is_dir() and any(q.name.startswith("fold_") for q in p.iterdir()))
    if not models:
        raise ValueError(f"{path} holds no trained model (no fold_* folder in it or its subfolders); pass a model "
                         "folder such as nnUNet_results/DatasetX/<Trainer>__<Plans>__<configuration>")
    return models


def _dataset_models(args: argparse.Namespace, ctx: Context) -> list[Path]:
    """The model folders of ``-d`` in nnUNet_results matching ``-c``/``-tr``/``-p`` (each None: any)."""
    name = ctx.dataset_name(args.d)
    folder = ctx.roots().results / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: {name} has no trained model yet; train one first "
                                f"(`nnUNetv2_train {args.d} 3d_fullres 0`) or check nnUNet_results (`nnseg paths`)")
    wanted = (args.tr, args.p, args.c)
    found = sorted(p for p in folder.iterdir() if p.is_dir() and len(p.name.split("__")) == 3)
    chosen = [p for p in found if all(w is None or w == part for w, part in zip(wanted, p.name.split("__")))]
    if not chosen:
        what = "__".join(w or "*" for w in wanted)
        raise FileNotFoundError(f"no model {what} in {folder}; its models: {[p.name for p in found] or 'none'}. "
                                "Check -c/-tr/-p")
    return [m for p in chosen for m in _model_folders(p)]


def _targets(args: argparse.Namespace, ctx: Context) -> list[Path]:
    """The model (or fold) folders to report on: the folder given, or those of ``-d``."""
    if args.results_folder is not None and args.d is not None:
        raise ValueError(f"give a results folder ({args.results_folder}) or -d {args.d}, not both")
    if args.results_folder is not None:
        if args.c or args.tr or args.p:
            raise ValueError("-c/-tr/-p select models of -d; with a results folder, pass the model folder itself")
        return _model_folders(ctx.cwd / args.results_folder)
    if args.d is None:
        raise ValueError("say which model: `nnseg report -d DATASET [-c CONFIGURATION] [-tr TRAINER] [-p PLANS]` "
                         "or `nnseg report nnUNet_results/DatasetX/<Trainer>__<Plans>__<configuration>`")
    return _dataset_models(args, ctx)


def _sources(folder: Path, args: argparse.Namespace, ctx: Context) -> tuple[Path | None, Path | None]:
    """The raw dataset folder (``--raw`` or ``nnUNet_raw/<dataset>``) and ``gt_segmentations`` for one model."""
    model_folder, _ = find_model_folder(folder)
    dataset = model_folder.parent.name
    if not _DATASET.match(dataset):
        return (ctx.cwd / args.raw if args.raw else None), None
    roots = ctx.roots()
    raw = ctx.cwd / args.raw if args.raw else roots.raw / dataset
    gt = roots.preprocessed / dataset / "gt_segmentations"
    return raw, (gt if gt.is_dir() else None)


def run_report(args: argparse.Namespace, ctx: Context) -> int:
    if args.worst < 0:
        raise ValueError(f"--worst must be 0 or more, got {args.worst}")
    folders = _targets(args, ctx)
    if args.output and len(folders) > 1:
        raise ValueError(f"{args.results_folder or '-d ' + args.d} holds {len(folders)} models; drop -o (each page goes "
                         "into its model folder) or choose one model (-c/-tr/-p, or its folder)")
    for folder in folders:
        raw, gt = _sources(folder, args, ctx)
        if raw is not None and not raw.is_dir():
            print(f"note: raw dataset folder {raw} not found; overlays skipped (pass --raw)", file=sys.stderr)
            raw = None
        out = ctx.cwd / args.output if args.output else folder / "report.html"
        write_report(folder, out, raw_dataset_folder=raw, gt_folder=gt, worst=args.worst, channel=args.channel)
        print(f"wrote {out}")
    return 0
