"""Partial labels on Hippocampus: full labels vs half the cases per label declared partial vs the same treated as complete.

Every fifth case of the 200 labelled Hippocampus cases is held out (40 test cases, full labels). From the other 160:

* (a) ``Dataset961_HippoFull``: all labels;
* (b) ``Dataset962_HippoPartial``: the first half of the cases keep only label 1 (anterior), the second half only
  label 2 (posterior); the removed label becomes background and ``annotated_labels`` declares what each case has;
* (c) ``Dataset963_HippoPartialAsFull``: the same label files as (b) without the key (missing = background).

Each is planned, preprocessed and trained with the real commands (3d_fullres, batch size 2, fold 0 of the default
splits, ``bench/train_hippocampus.sh``'s CPU budget by default: 40 epochs x 25 iterations, 5 validation iterations),
then predicts the 40 held-out cases (no test-time mirroring), scored per label against the full labels. Fold 0 is
the 160 cases less ``--val-cases`` (16) spread over both halves, which the final validation scores.
Target: (b) within 0.02 of (a) on each label; (c) visibly worse.

Usage: python bench/partial_labels.py [--work DIR] [--epochs 40] [--iterations 25] [--only a,b,c] [--val-cases 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpuinfo import cpu_line  # noqa: E402 (bench/cpuinfo.py)
from nnseg.training.config import trainer_name_for_epochs  # noqa: E402
from hippocampus_sets import case_ids, dice_per_label, hippocampus, roots, run, test_images, write_dataset  # noqa: E402

LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}
VARIANTS = {"a": (961, "HippoFull"), "b": (962, "HippoPartial"), "c": (963, "HippoPartialAsFull")}


def _partial(first_half: set[str]):  # type: ignore[no-untyped-def]
    def keep(case: str, seg: np.ndarray) -> np.ndarray:
        drop = 2 if case in first_half else 1
        return np.where(seg == drop, 0, seg)
    return keep


def build(work: Path, env: dict[str, str]) -> tuple[dict[str, Path], Path, list[str]]:
    source = hippocampus(work, env)
    cases = case_ids(source)
    test = cases[::5]
    train = [c for c in cases if c not in set(test)]
    first = set(train[: len(train) // 2])
    annotated = {c: ["Anterior"] if c in first else ["Posterior"] for c in train}
    raw = Path(env["nnUNet_raw"])
    folders = {
        "a": write_dataset(source, raw / "Dataset961_HippoFull", train, labels=LABELS),
        "b": write_dataset(source, raw / "Dataset962_HippoPartial", train, labels=LABELS, label_fn=_partial(first),
                           extra_json={"annotated_labels": annotated}),
        "c": write_dataset(source, raw / "Dataset963_HippoPartialAsFull", train, labels=LABELS,
                           label_fn=_partial(first)),
    }
    return folders, source, test


def train_and_test(variant: str, env: dict[str, str], args: argparse.Namespace, images: Path, refs: Path,
                   test: list[str]) -> tuple[list[float], float]:
    dataset_id, name = VARIANTS[variant]
    run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres", "-np", "2", "--no_pbar"], env)
    pre = Path(env["nnUNet_preprocessed"]) / f"Dataset{dataset_id}_{name}"
    cases = sorted(p.name[: -len(".nii.gz")] for p in (pre / "gt_segmentations").glob("*.nii.gz"))
    val = cases[:: max(1, len(cases) // args.val_cases)][: args.val_cases]  # from both halves of (b)
    (pre / "splits_final.json").write_text(json.dumps([{"train": [c for c in cases if c not in val], "val": val}]))
    seconds = run(["nnUNetv2_train", str(dataset_id), "3d_fullres", "0", "-device", "cpu", "--epochs", str(args.epochs),
                   "--iterations-per-epoch", str(args.iterations), "--set", "val_iterations_per_epoch=5",
                   "--set", "batch_size=2", "--seed", "0"], env)
    out = Path(env["nnUNet_results"]) / f"test_{variant}"
    run(["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id), "-c", "3d_fullres", "-f", "0",
         "-tr", trainer_name_for_epochs(args.epochs), "--disable_tta", "-device", "cpu"], env)
    return dice_per_label(refs, out, [1, 2]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--only", default="a,b,c")
    parser.add_argument("--val-cases", type=int, default=16, help="fold 0's validation cases (the rest train)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nnseg_partial_"))
    env = roots(work)
    print(cpu_line(), flush=True)
    _, source, test = build(work, env)
    images = test_images(source, work / "test_images", test)
    refs = work / "test_labels"
    refs.mkdir(exist_ok=True)
    for case in test:
        (refs / f"{case}.nii.gz").write_bytes((source / "labelsTr" / f"{case}.nii.gz").read_bytes())
    results = {}
    for variant in args.only.split(","):
        results[variant] = train_and_test(variant, env, args, images, refs, test)
        dice, seconds = results[variant]
        print(f"({variant}) {VARIANTS[variant][1]}: held-out Dice anterior {dice[0]:.4f}, posterior {dice[1]:.4f} "
              f"(training {seconds:.0f} s)", flush=True)
    print(f"\nHeld-out Dice on {len(test)} cases, {args.epochs} epochs x {args.iterations} iterations, batch 2, CPU:")
    print("| run | anterior | posterior |\n|---|---|---|")
    for variant, (dice, _) in results.items():
        print(f"| ({variant}) {VARIANTS[variant][1]} | {dice[0]:.4f} | {dice[1]:.4f} |")
    if "a" in results and "b" in results:
        gap = [results["b"][0][i] - results["a"][0][i] for i in range(2)]
        print(f"(b) - (a): {gap[0]:+.4f}, {gap[1]:+.4f} (target: within 0.02 on each label)")
    if "c" in results and "b" in results:
        gap = [results["c"][0][i] - results["b"][0][i] for i in range(2)]
        print(f"(c) - (b): {gap[0]:+.4f}, {gap[1]:+.4f} (target: visibly worse)")
    print(cpu_line())


if __name__ == "__main__":
    main()
