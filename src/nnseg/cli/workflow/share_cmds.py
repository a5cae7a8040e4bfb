"""Model sharing and pictures: ``nnseg export-model`` (= ``nnUNetv2_export_model_to_zip``), ``nnseg download-model``
(= ``nnUNetv2_download_pretrained_model_by_url``) and ``nnseg plot-overlay`` (= ``nnUNetv2_plot_overlay_pngs``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nnseg.cli.context import Context

DEFAULT_NUM_PROCESSES = 8


def _path(ctx: Context, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else ctx.cwd / p


def add_export_model(parser: argparse.ArgumentParser) -> None:
    from nnseg.predictions.inference.defaults import EXPORT_CONFIGURATIONS as DEFAULT_CONFIGURATIONS

    parser.add_argument("-d", type=str, required=True, help="Dataset name or id")
    parser.add_argument("-o", type=str, required=True, help="Output file name (a .zip)")
    parser.add_argument("-c", nargs="+", type=str, default=list(DEFAULT_CONFIGURATIONS),
                        help="List of configuration names (those without a trained model are skipped; at least one must "
                             f"exist). Default: {' '.join(DEFAULT_CONFIGURATIONS)}")
    parser.add_argument("-tr", type=str, default="nnUNetTrainer", help="Trainer class. Default: nnUNetTrainer")
    parser.add_argument("-p", type=str, default="nnUNetPlans", help="Plans identifier. Default: nnUNetPlans")
    parser.add_argument("-f", nargs="+", type=str, default=["0", "1", "2", "3", "4"],
                        help="List of folds (numbers or 'all'). Default: 0 1 2 3 4")
    parser.add_argument("-chk", nargs="+", type=str, default=["checkpoint_final.pth"],
                        help="List of checkpoint names to export. Default: checkpoint_final.pth")
    parser.add_argument("--not_strict", action="store_true",
                        help="Skip folds that are missing or lack a requested checkpoint instead of failing "
                             "(a no-op in nnU-Net; nnseg honours it)")
    parser.add_argument("--exp_cv_preds", action="store_true",
                        help="Also export the cross-validation predictions (validation and crossval_results_folds_* files)")
    parser.add_argument("--strip_optimizer", action="store_true",
                        help="nnseg extra: write checkpoints without optimizer state (about half the size; inference "
                             "only, `nnUNetv2_train --c` cannot continue from them)")


def run_export_model(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.sharing.export_model import export_model_zip

    dataset = ctx.dataset_name(args.d)
    result = export_model_zip(ctx.roots().results, dataset, _path(ctx, args.o), configurations=args.c, trainer=args.tr,
                              plans=args.p, folds=args.f, checkpoints=args.chk, export_crossval_predictions=args.exp_cv_preds,
                              strip_optimizer=args.strip_optimizer, strict=not args.not_strict)
    for note in result.skipped:
        print(f"skipped: {note}")
    size = result.output_zip.stat().st_size / 2**20
    print(f"exported {dataset} ({', '.join(result.configurations)}; {len(result.entries)} files, {size:.1f} MiB) "
          f"to {result.output_zip}")
    return 0


def add_download_model(parser: argparse.ArgumentParser) -> None:
    from nnseg.cli.workflow.predict_cmds import add_zip_limit_options
    from nnseg.sharing.download import DEFAULT_RETRIES, DEFAULT_TIMEOUT

    parser.add_argument("url", type=str, help="URL of the pretrained model zip")
    parser.add_argument("--sha256", type=str, default=None, help="nnseg extra: expected SHA-256 of the zip (checked before installing)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"nnseg extra: seconds to wait for the server (connection and each read). Default: {DEFAULT_TIMEOUT:g}")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help=f"nnseg extra: how often an interrupted download is resumed before giving up. Default: {DEFAULT_RETRIES}")
    parser.add_argument("--no_pbar", action="store_true", help="nnseg extra: no progress bar")
    add_zip_limit_options(parser)


def _cache_dir(ctx: Context) -> Path | None:
    """``$XDG_CACHE_HOME/nnseg/downloads``, else ``~/.cache/nnseg/downloads``, else None (results folder)."""
    if ctx.env.get("XDG_CACHE_HOME"):
        return Path(ctx.env["XDG_CACHE_HOME"]) / "nnseg" / "downloads"
    home = ctx.env.get("HOME") or ctx.env.get("USERPROFILE")
    return Path(home) / ".cache" / "nnseg" / "downloads" if home else None


def run_download_model(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.cli.workflow.predict_cmds import zip_limits
    from nnseg.sharing.download import download_model

    results = ctx.roots().results
    installed = download_model(args.url, results, sha256=args.sha256, cache_dir=_cache_dir(ctx), progress=not args.no_pbar,
                               timeout=args.timeout, retries=args.retries, limits=zip_limits(args, ctx))
    for folder in installed:
        print(f"installed {folder.relative_to(results).as_posix()} into {results}")
    return 0


def add_plot_overlay(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", type=str, required=True, help="Dataset name or id")
    parser.add_argument("-o", type=str, required=True, help="output folder")
    parser.add_argument("-np", type=int, default=None,
                        help=f"number of processes used. Default: nnUNet_def_n_proc or {DEFAULT_NUM_PROCESSES}")
    parser.add_argument("-channel_idx", type=int, default=0, help="channel index used (0 = _0000). Default: 0")
    parser.add_argument("--use_raw", action="store_true", help="if set we use the raw data instead of the preprocessed data")
    parser.add_argument("-p", type=str, default="nnUNetPlans",
                        help="plans identifier. Only used if --use_raw is not set! Default: nnUNetPlans")
    parser.add_argument("-c", type=str, default=None,
                        help="configuration name. Only used if --use_raw is not set! Default: 3d_fullres if available, else 2d")
    parser.add_argument("-overlay_intensity", type=float, default=0.6,
                        help="overlay intensity. Higher = brighter/less transparent. Default: 0.6")


def run_plot_overlay(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.metrics.overlay import plot_overlay_pngs_preprocessed, plot_overlay_pngs_raw, preprocessed_data_folder

    if args.np is not None and args.np < 1:
        raise ValueError(f"-np must be >= 1, got {args.np}")
    num_processes = args.np if args.np is not None else ctx.env_int("nnUNet_def_n_proc", DEFAULT_NUM_PROCESSES)
    dataset = ctx.dataset_name(args.d)
    roots = ctx.roots()
    options = {"channel_idx": args.channel_idx, "overlay_intensity": args.overlay_intensity, "num_processes": num_processes}
    output = _path(ctx, args.o)
    if args.use_raw:
        written = plot_overlay_pngs_raw(roots.raw / dataset, output, **options)
    else:
        folder = preprocessed_data_folder(roots.preprocessed / dataset, plans_name=args.p, configuration=args.c)
        written = plot_overlay_pngs_preprocessed(folder, output, **options)
    print(f"wrote {len(written)} overlay pictures to {output}")
    return 0
