"""``nnseg demo``: the whole nnU-Net workflow on a generated dataset, through the same commands a user types.

Steps: generate data -> verify -> plan and preprocess -> train -> find best configuration -> predict unseen cases ->
evaluate. Everything goes to one folder (``./nnseg_demo`` unless ``-o`` says otherwise), which holds the three
nnU-Net folders, so the printed commands can be rerun by hand there with the printed environment.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from nnseg.cli.context import Context

DATASET_ID = 999
DATASET = f"Dataset{DATASET_ID:03d}_Demo"


def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="nnseg_demo", help="folder for all demo data [./nnseg_demo]")
    p.add_argument("--cases", type=int, default=20, help="number of training cases to generate [20]")
    p.add_argument("--test-cases", dest="test_cases", type=int, default=5, help="unseen labelled cases to predict [5]")
    p.add_argument("--epochs", type=int, default=30, help="training epochs [30]")
    p.add_argument("--iterations", type=int, default=25, help="training iterations per epoch [25]")
    p.add_argument("-device", default="auto", help="cuda, cpu or mps [auto]")
    p.add_argument("--keep", action="store_true", help="reuse an existing demo folder instead of starting fresh")


def _step(number: int, total: int, text: str, argv: Sequence[str] = ()) -> None:
    shown = " ".join(argv)
    print(f"\n[{number}/{total}] {text}" + (f"\n    $ {shown}" if shown else ""), flush=True)


def _call(argv: list[str], env: Mapping[str, str], cwd: Path) -> None:
    from nnseg.cli.main import main

    code = main(argv, env=env, cwd=cwd)
    if code != 0:
        raise RuntimeError(f"demo step `nnseg {' '.join(argv)}` failed with exit code {code}")


def _generate(root: Path, args: argparse.Namespace) -> Path:
    from nnseg.raw.demo_data import make_demo_dataset

    raw = root / "raw" / DATASET
    make_demo_dataset(raw, num_cases=args.cases, num_test=0, seed=0)
    test = make_demo_dataset(root / "unseen", num_cases=args.test_cases, num_test=0, seed=12345)
    return test


def run_demo(args: argparse.Namespace, ctx: Context) -> int:
    root = (ctx.cwd / args.output).resolve()
    if root.exists() and not args.keep:
        shutil.rmtree(root)
    env = dict(ctx.env)
    env.update({"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
                "nnUNet_results": str(root / "results"), "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA", "1")})
    start, total = time.perf_counter(), 7
    print(f"nnseg demo: everything goes to {root}\n  export nnUNet_raw={env['nnUNet_raw']} "
          f"nnUNet_preprocessed={env['nnUNet_preprocessed']} nnUNet_results={env['nnUNet_results']}")
    _step(1, total, f"generate a synthetic 3D dataset ({args.cases} training + {args.test_cases} unseen cases)")
    test = _generate(root, args)
    steps = [
        ("check the raw dataset", ["verify", "-d", str(DATASET_ID)]),
        ("fingerprint, plan and preprocess", ["plan-and-preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2"]),
        ("train fold 0 (a short schedule)", ["train", str(DATASET_ID), "3d_fullres", "0", "--npz", "-device", args.device,
                                            "--epochs", str(args.epochs), "--iterations-per-epoch", str(args.iterations),
                                            "--set", "val_iterations_per_epoch=5", "--seed", "0"]),
    ]
    for i, (text, argv) in enumerate(steps, start=2):
        _step(i, total, text, argv)
        _call(argv, env, root)
    trainer = "nnUNetTrainer_1epoch" if args.epochs == 1 else f"nnUNetTrainer_{args.epochs}epochs"
    _finish(root, env, test, trainer, args, total)
    print(f"\nnnseg demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def _finish(root: Path, env: Mapping[str, str], test: Path, trainer: str, args: argparse.Namespace, total: int) -> None:
    from nnseg.jsonio import load_json

    find = ["find-best", str(DATASET_ID), "-c", "3d_fullres", "-tr", trainer, "-f", "0"]
    _step(5, total, "find the best configuration from the cross-validation results", find)
    _call(find, env, root)
    out = root / "predictions"
    predict = ["predict", "-i", str(test / "imagesTr"), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres",
               "-tr", trainer, "-f", "0", "-device", args.device]
    _step(6, total, "predict the unseen cases", predict)
    _call(predict, env, root)
    evaluate = ["evaluate", str(test / "labelsTr"), str(out), "-djfile", str(out / "dataset.json"),
                "-pfile", str(out / "plans.json")]
    _step(7, total, "evaluate against their labels", evaluate)
    _call(evaluate, env, root)
    summary = load_json(out / "summary.json")
    organ = summary["mean"]["1"]["Dice"]
    print(f"\nDice on {args.test_cases} unseen cases: organ {organ:.3f}, lesion {summary['mean']['2']['Dice']:.3f}, "
          f"mean foreground {summary['foreground_mean']['Dice']:.3f}")
