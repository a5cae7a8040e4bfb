"""Interactive segmentation on Hippocampus: an interactive model trained by nnseg, driven by a robot user.

Every fifth case of the 200 labelled Hippocampus cases is held out (40 test cases), as in bench/partial_labels.py; the
other 160 form ``Dataset961_HippoFull`` (fold 0 = those less ``--val-cases`` (16) spread over the list). An interactive
model is trained on them with ``nnUNetv2_train 961 3d_fullres 0 -tr nnsegInteractiveTrainer`` on
``bench/train_hippocampus.sh``'s CPU budget (40 epochs x 25 iterations, batch 2, 5 validation iterations, seed 0); the
automatic 3d_fullres model is trained the same way (or reused: ``--automatic-model FOLDER``, e.g. bench/partial_labels.py's
``results/Dataset961_HippoFull/nnUNetTrainer_40epochs__nnUNetPlans__3d_fullres``) and predicts the test cases
(``nnUNetv2_predict_from_modelfolder``, no test-time mirroring).

Robot user, per object (each foreground label) of each test case, in nnseg's InteractiveSession (precision auto: bf16
on CPUs with native bf16, AutoZoom off since the images fit in the patch): one initial prompt, either a click at the
object's centre (the voxel farthest from its border) or its 3D bounding box, then clicks at the centre of the largest
error region (missed -> positive, extra -> negative). Images are read as nnU-Net reads them (SimpleITK order and the
plans' transpose), so the session sees the orientation the model was trained on.
Prints the mean Dice after 1, 3, 5 and 10 interactions for both initial prompts, the automatic model's mean Dice on
the same objects, and the median seconds per interaction. Targets: after 3 interactions >= automatic + 0.04, after 5
>= 0.90, median <= 1.0 s per interaction.

With ``--from-automatic`` the interactive model starts from the automatic model's weights
(``nnUNetv2_train ... -tr nnsegInteractiveTrainer -pretrained_weights .../checkpoint_final.pth``: body and image channel
loaded, prompt channels from zero, heads new) and trains the same 40 x 25 iterations on top of the automatic model's.

Usage: python bench/interactive.py [--work DIR] [--automatic-model FOLDER] [--from-automatic] [--epochs 40]
       [--iterations 25] [--train-only] [--initial point,box] [--interactions 10] [--cases N] [--checkpoint checkpoint_latest.pth]
A run is resumable: steps already done in --work (preprocessing, trainings, predictions) are not repeated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpuinfo import cpu_line  # noqa: E402 (bench/cpuinfo.py)
from hippocampus_sets import case_ids, hippocampus, roots, run, test_images, write_dataset  # noqa: E402

LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}
DATASET = "Dataset961_HippoFull"
INTERACTIVE = "nnsegInteractiveTrainer__nnUNetPlans__3d_fullres"
REPORTED = (1, 3, 5, 10)


def prepare(work: Path, env: dict[str, str], val_cases: int) -> tuple[Path, list[str]]:
    """Raw and preprocessed Dataset961_HippoFull with bench/partial_labels.py's split; the held-out cases."""
    source = hippocampus(work, env)
    cases = case_ids(source)
    test = cases[::5]
    train = [c for c in cases if c not in set(test)]
    write_dataset(source, Path(env["nnUNet_raw"]) / DATASET, train, labels=LABELS)
    pre = Path(env["nnUNet_preprocessed"]) / DATASET
    if not (pre / "splits_final.json").is_file():
        run(["nnUNetv2_plan_and_preprocess", "-d", "961", "-c", "3d_fullres", "-np", "2", "--no_pbar"], env)
        ids = sorted(p.name[: -len(".nii.gz")] for p in (pre / "gt_segmentations").glob("*.nii.gz"))
        val = ids[:: max(1, len(ids) // val_cases)][:val_cases]
        (pre / "splits_final.json").write_text(json.dumps([{"train": [c for c in ids if c not in val], "val": val}]))
    return source, test


def train(env: dict[str, str], args: argparse.Namespace, *, interactive: bool, pretrained: Path | None = None) -> Path:
    """Train (or continue) fold 0, fine-tuning from ``pretrained`` (a checkpoint) when given; returns the model
    folder."""
    results = Path(env["nnUNet_results"]) / DATASET
    budget = ["--set", f"num_epochs={args.epochs}", "--set", f"iterations_per_epoch={args.iterations}",
              "--set", "val_iterations_per_epoch=5", "--set", "batch_size=2", "--set", "save_every=5", "--seed", "0"]
    if interactive:
        folder, extra = results / INTERACTIVE, ["-tr", "nnsegInteractiveTrainer"]
        extra += [a for kv in args.set for a in ("--set", kv)]
    else:
        folder, extra = results / f"nnUNetTrainer_{args.epochs}epochs__nnUNetPlans__3d_fullres", []
        budget = ["--epochs", str(args.epochs)] + budget[2:]
    fold = folder / "fold_0"
    if not (fold / "checkpoint_final.pth").is_file():
        resume = ["--c"] if (fold / "checkpoint_latest.pth").is_file() else []
        resume += ["-pretrained_weights", str(pretrained)] if pretrained is not None and not resume else []
        seconds = run(["nnUNetv2_train", "961", "3d_fullres", "0", "-device", "cpu", *extra, *budget, *resume], env,
                      quiet=False)
        print(f"trained {folder.name} in {seconds:.0f} s", flush=True)
    return folder


def automatic_predictions(model: Path, images: Path, out: Path, env: dict[str, str]) -> Path:
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        raise SystemExit(f"--automatic-model {model} has no fold_0/checkpoint_final.pth (is its training finished?)")
    if len(list(out.glob("*.nii.gz"))) < len(list(images.glob("*_0000.nii.gz"))):
        run(["nnUNetv2_predict_from_modelfolder", "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0",
             "--disable_tta", "-device", "cpu"], env)
    return out


def read_case(source: Path, case: str, transpose: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Image ``[1, ...]`` and labels as nnU-Net reads them (SimpleITK order, then the plans' transpose_forward)."""
    from nnseg.raw.image_io import read_images, read_seg

    image, _ = read_images([source / "imagesTr" / f"{case}_0000.nii.gz"], "SimpleITKIO")
    seg, _ = read_seg(source / "labelsTr" / f"{case}.nii.gz", "SimpleITKIO")
    axes = [0, *[a + 1 for a in transpose]]
    return image.transpose(axes), seg.transpose(axes)[0].astype(np.int16)


def read_prediction(folder: Path, case: str, transpose: list[int]) -> np.ndarray:
    from nnseg.raw.image_io import read_seg

    seg, _ = read_seg(folder / f"{case}.nii.gz", "SimpleITKIO")
    return seg.transpose([0, *[a + 1 for a in transpose]])[0].astype(np.int16)


def robot_scores(model_folder: Path, source: Path, test: list[str], automatic: Path, args: argparse.Namespace
                 ) -> tuple[dict[str, np.ndarray], list[float], list[float]]:
    """Dice per (object, interaction) for each initial prompt, the automatic Dice per object, seconds per
    interaction."""
    from nnseg.interactive import InteractiveSession, load_interactive_model
    from nnseg.interactive.robot import dice, run_robot

    model = load_interactive_model(model_folder, fold=0, checkpoint_name=args.checkpoint)
    session = InteractiveSession(model, precision="auto", do_autozoom=False)
    transpose = json.loads((model_folder / "plans.json").read_text())["transpose_forward"]
    scores: dict[str, list[list[float]]] = {k: [] for k in args.initial.split(",")}
    auto, seconds = [], []
    for i, case in enumerate(test):
        image, labels = read_case(source, case, transpose)
        predicted = read_prediction(automatic, case, transpose)
        for label in (1, 2):
            target = labels == label
            if not target.any():
                continue
            auto.append(dice(predicted == label, target))
            for initial in scores:
                robot = run_robot(session, image, target, interactions=args.interactions, initial=initial)
                scores[initial].append(robot.dice)
                seconds += robot.seconds
        print(f"\rrobot: case {i + 1}/{len(test)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return {k: np.array(v) for k, v in scores.items()}, auto, seconds


def report(scores: dict[str, np.ndarray], auto: list[float], seconds: list[float], args: argparse.Namespace,
           test: list[str]) -> None:
    shown = [n for n in REPORTED if n <= args.interactions]
    print(f"\nInteractive Hippocampus: {len(test)} held-out cases, {len(auto)} objects (labels), interactive model "
          f"{args.epochs} x {args.iterations} iterations{' fine-tuned from the automatic model' if args.from_automatic else ''}, "
          f"batch 2{''.join(', ' + kv for kv in args.set)}, CPU; robot: initial prompt then clicks at the centre "
          "of the largest error region")
    print("| initial prompt | " + " | ".join(f"Dice after {n}" for n in shown) + " |")
    print("|---|" + "---|" * len(shown))
    for initial, table in scores.items():
        print(f"| {initial} | " + " | ".join(f"{table[:, n - 1].mean():.4f}" for n in shown) + " |")
    mean_auto = float(np.mean(auto))
    print(f"| automatic 3d_fullres (no interaction) | {mean_auto:.4f} |" + " |" * (len(shown) - 1))
    print(f"median seconds per interaction: {statistics.median(seconds):.3f} ({len(seconds)} interactions; mean "
          f"{statistics.mean(seconds):.3f}, max {max(seconds):.3f})")
    for initial, table in scores.items():
        if args.interactions >= 5:
            after3, after5 = table[:, 2].mean(), table[:, 4].mean()
            print(f"targets ({initial}): after 3 {after3:.4f} vs automatic + 0.04 = {mean_auto + 0.04:.4f} "
                  f"({'met' if after3 >= mean_auto + 0.04 else 'NOT met'}); after 5 {after5:.4f} vs 0.90 "
                  f"({'met' if after5 >= 0.90 else 'NOT met'})")
    print(f"target: median <= 1.0 s per interaction ({'met' if statistics.median(seconds) <= 1.0 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--automatic-model", type=Path, default=None,
                        help="an automatic 3d_fullres model folder trained on this split (else one is trained)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--val-cases", type=int, default=16)
    parser.add_argument("--interactions", type=int, default=10)
    parser.add_argument("--initial", default="point,box", help="initial prompts to run: point, box or both")
    parser.add_argument("--train-only", action="store_true", help="stop after training the interactive model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the interactive training, e.g. interactive_corrections=5 (repeatable)")
    parser.add_argument("--from-automatic", action="store_true",
                        help="fine-tune the interactive model from the automatic model (-pretrained_weights: body and "
                             "image channel loaded, prompt channels from zero) instead of training it from scratch")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth",
                        help="the interactive model's checkpoint to measure (checkpoint_latest.pth: a run not finished)")
    parser.add_argument("--cases", type=int, default=0, help="measure only the first N held-out cases (0: all 40)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nnseg_interactive_"))
    env = roots(work)
    print(cpu_line(), flush=True)
    source, test = prepare(work, env, args.val_cases)
    automatic = (args.automatic_model or train(env, args, interactive=False)) if args.from_automatic else None
    if args.checkpoint == "checkpoint_final.pth":
        pretrained = automatic / "fold_0" / "checkpoint_final.pth" if automatic is not None else None
        interactive = train(env, args, interactive=True, pretrained=pretrained)
    else:  # measuring a run that is still going: no training here
        interactive = Path(env["nnUNet_results"]) / DATASET / INTERACTIVE
    if args.train_only:
        return
    test = test[: args.cases] if args.cases else test
    automatic = automatic or args.automatic_model or train(env, args, interactive=False)
    images = test_images(source, work / "test_images", test)
    predicted = automatic_predictions(automatic, images, work / "test_automatic", env)
    start = time.perf_counter()
    scores, auto, seconds = robot_scores(interactive, source, test, predicted, args)
    print(f"robot user: {time.perf_counter() - start:.0f} s", flush=True)
    report(scores, auto, seconds, args, test)
    print(cpu_line())


if __name__ == "__main__":
    main()
