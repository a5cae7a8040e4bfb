"""Fine-tuning across a label set and a channel count vs training from scratch, on Hippocampus-derived data.

* Pretraining: ``Dataset951_HippoPre``, the first 120 labelled Hippocampus cases (labels 1 anterior, 2 posterior),
  ``--pretrain-epochs`` epochs.
* Other label set: ``Dataset952_HippoMerged``, the other 80 cases with one label (hippocampus = anterior + posterior).
* Other channel count: ``Dataset953_HippoTwoChannel``, the same 80 cases with a second, synthetic channel
  ``T2syn`` (inverted, smoothed intensities) next to ``MRI``; labels as pretrained.

The targets get the pretraining plans with ``nnUNetv2_move_plans_between_datasets`` (the 2-channel target's
normalisation from its own fingerprint) and are then trained twice at the same short schedule, from scratch and
with ``-pretrained_weights`` (the load report is printed), with ``--set full_val_every=1``: the Dice curve is the
whole-image Dice of fold 0's validation cases after every epoch. Target: the fine-tuned run reaches the from-scratch
final Dice in at most half the epochs.

Usage: python bench/finetune.py [--work DIR] [--pretrain-epochs 40] [--epochs 10] [--iterations 25]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpuinfo import cpu_line  # noqa: E402 (bench/cpuinfo.py)
from hippocampus_sets import case_ids, hippocampus, roots, run, write_dataset  # noqa: E402

from nnseg.training.checkpoint import load_checkpoint  # noqa: E402
from nnseg.training.config import trainer_name_for_epochs  # noqa: E402

PRE, MERGED, TWO = 951, 952, 953
COMMON = ["3d_fullres", "0", "-device", "cpu", "--set", "val_iterations_per_epoch=5", "--set", "batch_size=2",
          "--seed", "0"]


def _synthetic_t2(image: np.ndarray) -> np.ndarray:
    smooth = ndimage.gaussian_filter(image, 1.0)
    return (smooth.max() - smooth) * 0.5 + 10.0


def build(work: Path, env: dict[str, str]) -> None:
    source = hippocampus(work, env)
    cases = case_ids(source)
    raw = Path(env["nnUNet_raw"])
    labels = {"background": 0, "Anterior": 1, "Posterior": 2}
    write_dataset(source, raw / "Dataset951_HippoPre", cases[:120], labels=labels)
    write_dataset(source, raw / "Dataset952_HippoMerged", cases[120:], labels={"background": 0, "hippocampus": 1},
                  label_fn=lambda case, seg: (seg > 0).astype(np.uint8))
    write_dataset(source, raw / "Dataset953_HippoTwoChannel", cases[120:], labels=labels,
                  extra_channels=[("T2syn", _synthetic_t2)])


def prepare(env: dict[str, str]) -> None:
    run(["nnUNetv2_plan_and_preprocess", "-d", str(PRE), "-c", "3d_fullres", "-np", "2", "--no_pbar"], env)
    for target in (MERGED, TWO):
        run(["nnUNetv2_extract_fingerprint", "-d", str(target), "-np", "2", "--no_pbar"], env)
        run(["nnUNetv2_move_plans_between_datasets", "-s", str(PRE), "-t", str(target), "-sp", "nnUNetPlans",
             "-tp", "nnUNetPlans"], env)
        run(["nnUNetv2_preprocess", "-d", str(target), "-c", "3d_fullres", "-np", "2", "--no_pbar"], env)


def curve(results: Path, dataset: str, epochs: int) -> list[float]:
    fold = results / dataset / f"{trainer_name_for_epochs(epochs)}__nnUNetPlans__3d_fullres" / "fold_0"
    return [float(v) for v in load_checkpoint(fold / "checkpoint_final.pth")["logging"]["full_val_dice"]]


def compare(target: int, name: str, pretrained: Path, env: dict[str, str], args: argparse.Namespace) -> None:
    short = ["--epochs", str(args.epochs), "--iterations-per-epoch", str(args.iterations), "--set", "full_val_every=1"]
    scratch_env = {**env, "nnUNet_results": str(Path(env["nnUNet_results"]) / "scratch")}
    tuned_env = {**env, "nnUNet_results": str(Path(env["nnUNet_results"]) / "finetuned")}
    t_scratch = run(["nnUNetv2_train", str(target), *COMMON, *short], scratch_env)
    t_tuned = run(["nnUNetv2_train", str(target), *COMMON, *short, "-pretrained_weights", str(pretrained)], tuned_env)
    a = curve(Path(scratch_env["nnUNet_results"]), name, args.epochs)
    b = curve(Path(tuned_env["nnUNet_results"]), name, args.epochs)
    report = json.loads((Path(tuned_env["nnUNet_results"]) / name / f"{trainer_name_for_epochs(args.epochs)}__nnUNetPlans__"
                         "3d_fullres" / "fold_0" / "pretrained_weights_report.json").read_text())
    print(f"\n== {name}: load report {report['counts']}")
    for c in report["channels"]:
        print(f"   input channel {c}")
    for e in report["reinitialised"] + report["mapped"]:
        print(f"   {e['name']}: {e['source_shape']} -> {e['shape']} ({e.get('why', '')})")
    print("| epoch | " + " | ".join(str(i + 1) for i in range(len(a))) + " |")
    print("|---|" + "---|" * len(a))
    print("| from scratch | " + " | ".join(f"{v:.3f}" for v in a) + " |")
    print("| fine-tuned | " + " | ".join(f"{v:.3f}" for v in b) + " |")
    reached = next((i + 1 for i, v in enumerate(b) if v >= a[-1]), None)
    print(f"from-scratch final whole-image Dice {a[-1]:.4f} ({t_scratch:.0f} s); fine-tuned reaches it at epoch "
          f"{reached} of {args.epochs} (target <= {args.epochs // 2}); fine-tuned final {b[-1]:.4f} ({t_tuned:.0f} s)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--pretrain-epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=25)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nnseg_finetune_"))
    env = roots(work)
    print(cpu_line(), flush=True)
    build(work, env)
    prepare(env)
    pre_fold = (Path(env["nnUNet_results"]) / "Dataset951_HippoPre" /
                f"{trainer_name_for_epochs(args.pretrain_epochs)}__nnUNetPlans__3d_fullres" / "fold_0")
    if not (pre_fold / "checkpoint_final.pth").is_file():
        seconds = run(["nnUNetv2_train", str(PRE), *COMMON, "--epochs", str(args.pretrain_epochs),
                       "--iterations-per-epoch", str(args.iterations)], env)
        print(f"pretraining: {args.pretrain_epochs} epochs x {args.iterations} iterations, {seconds:.0f} s", flush=True)
    for target, name in ((MERGED, "Dataset952_HippoMerged"), (TWO, "Dataset953_HippoTwoChannel")):
        compare(target, name, pre_fold / "checkpoint_final.pth", env, args)
    print(cpu_line())


if __name__ == "__main__":
    main()
