"""``nnseg demo``: the whole nnU-Net workflow on a generated dataset, through the same commands a user types.

Steps: generate data -> verify -> plan and preprocess -> train -> find best configuration -> predict unseen cases ->
evaluate. Everything goes to one folder (``./nnseg_demo`` unless ``-o`` says otherwise), which holds the three
nnU-Net folders. Each step is echoed as the command a user would type (``nnUNetv2_*`` where nnU-Net has one, else
``nnseg ...``), so after the printed ``export`` line any of them can be pasted and rerun; the closing lines say where
the model, the predictions and their summary are and what to run next.
"""

from __future__ import annotations

import argparse
import shlex
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


def command_line(argv: Sequence[str]) -> str:
    """``argv`` of ``nnseg.cli.main.main`` as a user types it: nnU-Net's script name where there is one (the same
    arguments), else ``nnseg <command>``; quoted for a POSIX shell (paths with spaces)."""
    from nnseg.cli.table import by_name

    cmd = by_name().get(argv[0])
    program = [cmd.script] if cmd is not None and cmd.script else ["nnseg", argv[0]]
    return shlex.join([*program, *argv[1:]])


def _step(number: int, total: int, text: str, argv: Sequence[str] = ()) -> None:
    shown = command_line(argv) if argv else ""
    print(f"\n[{number}/{total}] {text}" + (f"\n    $ {shown}" if shown else ""), flush=True)


def _call(argv: list[str], env: Mapping[str, str], cwd: Path) -> None:
    from nnseg.cli.main import main

    code = main(argv, env=env, cwd=cwd)
    if code != 0:
        raise RuntimeError(f"demo step `{command_line(argv)}` failed with exit code {code}")


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
    print(f"nnseg demo: everything goes to {root}; to rerun a step's command by hand, first:\n  {_exports(env)}")
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
    _closing(root, env, trainer, args, time.perf_counter() - start)
    return 0


def _exports(env: Mapping[str, str]) -> str:
    return "export " + " ".join(f"{k}={shlex.quote(env[k])}" for k in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                       "nnUNet_results"))


def _closing(root: Path, env: Mapping[str, str], trainer: str, args: argparse.Namespace, seconds: float) -> None:
    """Where the results are and what to run next (pasteable after the export line)."""
    model = Path(env["nnUNet_results"]) / DATASET / f"{trainer}__nnUNetPlans__3d_fullres"
    out = root / "predictions"
    report = ["report", "-d", str(DATASET_ID), "-c", "3d_fullres", "-tr", trainer]
    serve = ["serve", "--models", str(model), "-f", "0"] + ([] if args.device == "auto" else ["-device", args.device])
    predict = ["predict", "-i", "YOUR_IMAGES", "-o", "OUT", "-d", str(DATASET_ID), "-c", "3d_fullres", "-tr", trainer,
               "-f", "0"]
    print(f"\nnnseg demo finished in {seconds:.0f} s.\n"
          f"  model (fold 0):  {model}\n"
          f"  predictions:     {out} (Dice per case and label: {out / 'summary.json'})\n"
          f"next, in a shell (after: {_exports(env)}):\n"
          f"  {command_line(report)}    # an HTML page: training curves, Dice table, worst cases\n"
          f"  {command_line(serve)}    # the model warm over HTTP, for 3D Slicer (MONAI Label)\n"
          f"  {command_line(predict)}    # your own images (CASE_0000.nii.gz, ...)")


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
