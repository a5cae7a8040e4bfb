"""Raw-data commands: ``convert-msd``, ``convert-old``, ``verify``, ``demo-data``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nnseg.cli.context import Context


def _path(ctx: Context, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else ctx.cwd / p


def _num_processes(args: argparse.Namespace, ctx: Context) -> int:
    """``-np`` if given, else ``nnUNet_def_n_proc`` (default 8), capped at the number of CPUs."""
    if args.np is not None:
        if args.np < 1:
            raise ValueError(f"-np {args.np}: use at least 1 process")
        return int(args.np)
    return max(1, min(ctx.env_int("nnUNet_def_n_proc", 8), os.cpu_count() or 1))


def add_convert_msd(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", type=str, required=True, help="MSD task folder (TaskXX_Name with imagesTr, labelsTr, "
                        "dataset.json; imagesTs optional)")
    parser.add_argument("-overwrite_id", type=int, default=None, help="dataset id to use instead of the task number")
    parser.add_argument("-np", type=int, default=None, help="worker processes (default 8, or nnUNet_def_n_proc; "
                        "capped at the number of CPUs)")


def run_convert_msd(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.raw.convert import convert_msd

    roots = ctx.roots()
    out = convert_msd(_path(ctx, args.i), roots.raw, preprocessed_root=roots.preprocessed,
                      results_root=roots.results, overwrite_id=args.overwrite_id,
                      num_processes=_num_processes(args, ctx))
    print(f"converted {args.i} -> {out}")
    return 0


def add_convert_old(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_folder", type=str, help="nnU-Net v1 raw task folder (images already split into _0000 files)")
    parser.add_argument("output_dataset_name", type=str, help="new dataset name DatasetXXX_Name (in nnUNet_raw)")


def run_convert_old(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.raw.convert import convert_old_nnunet

    roots = ctx.roots()
    out = convert_old_nnunet(_path(ctx, args.input_folder), args.output_dataset_name, roots.raw,
                             preprocessed_root=roots.preprocessed, results_root=roots.results)
    print(f"converted {args.input_folder} -> {out}")
    return 0


def add_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", nargs="+", required=True, help="dataset id(s) or name(s) in nnUNet_raw, or path(s) to "
                        "raw dataset folders")
    parser.add_argument("-np", type=int, default=None, help="worker processes reading the files (default 8, capped at "
                        "the number of CPUs)")


def run_verify(args: argparse.Namespace, ctx: Context) -> int:
    """Print every problem of each dataset; exit code 1 if any dataset has an error."""
    from nnseg.raw.verify import ERROR, format_report, verify_dataset

    failed = False
    n = _num_processes(args, ctx)
    for ref in args.d:
        as_path = _path(ctx, ref)
        if ("/" in ref or "\\" in ref) and as_path.is_dir():  # a dataset folder given by path
            folder = as_path
        else:
            folder = ctx.roots().raw / ctx.dataset_name(ref)
        problems = verify_dataset(folder, num_processes=n)
        print(format_report(problems, folder))
        failed |= any(p.severity == ERROR for p in problems)
    return 1 if failed else 0


def add_demo_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=str, help="dataset folder to write, e.g. $nnUNet_raw/Dataset999_Demo")
    parser.add_argument("--2d", dest="two_d", action="store_true", help="2D png cases instead of 3D nii.gz")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 2), help="number of channels (default 1)")
    parser.add_argument("--anisotropic", action="store_true", help="3D spacing 3 x 0.75 x 0.75 mm")
    parser.add_argument("--regions", action="store_true", help="region labels organ=[1,2], lesion=2")
    parser.add_argument("--ignore", action="store_true", help="add an ignore label over part of each label map")
    parser.add_argument("--cases", type=int, default=8, help="number of training cases (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shape", type=int, nargs="+", default=None, metavar="N",
                        help="spatial shape of every case, e.g. --shape 160 160 160 for a realistic 3D size "
                             "(default 32 40 40; 16 48 48 anisotropic; 64 64 in 2D)")
    parser.add_argument("--test-cases", dest="test_cases", type=int, default=2,
                        help="unlabelled cases written to imagesTs (default 2)")


def run_demo_data(args: argparse.Namespace, ctx: Context) -> int:
    from nnseg.raw.demo_data import make_demo_dataset

    out = make_demo_dataset(_path(ctx, args.out), num_cases=args.cases, dims=2 if args.two_d else 3,
                            num_channels=args.channels, anisotropic=args.anisotropic, regions=args.regions,
                            ignore_label=args.ignore, seed=args.seed,
                            shape=tuple(args.shape) if args.shape else None, num_test=args.test_cases)
    print(f"wrote a synthetic dataset with {args.cases} training and {args.test_cases} test cases to {out}")
    return 0
