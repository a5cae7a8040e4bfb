"""ISBI 2012 training variants side by side: membrane Dice on the 5 held-back images, and Dice per threshold.

Trains fold 0 of the held-back split that bench/train_isbi.sh writes (train em_00..em_24, validate em_25..em_29) once
per variant through ``nnseg train``, several at a time (a GPU has room for 4-5 of these small runs), and prints for each
the membrane Dice of the final validation and the Dice of its probabilities cut at 0.3 .. 0.7 (a systematic
over- or under-segmentation would show as a best cut away from 0.5).

Usage (after bench/train_isbi.sh has preprocessed into WORK):
    python bench/isbi_sweep.py WORK/preprocessed variants.json --device cuda --parallel 5 --out /tmp/sweep
variants.json: ``[{"name": "base", "epochs": 30, "iters": 10, "set": ["initial_lr=0.02"]}, ...]`` (optional keys:
``seed``, ``compile`` (default false: compiling does not pay off in a few hundred iterations), ``timeout`` seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image

DATASET = "Dataset120_ISBI2012"
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


def train_command(variant: dict, device: str) -> list[str]:
    sets = ["val_iterations_per_epoch=2", f"compile={variant.get('compile', 'false')}", *variant.get("set", [])]
    return [sys.executable, "-m", "nnseg.cli.main", "train", "120", "2d", "0", "-device", device,
            "--epochs", str(variant["epochs"]), "--iterations-per-epoch", str(variant["iters"]),
            "--seed", str(variant.get("seed", 0)), "--npz", *[a for s in sets for a in ("--set", s)]]


def threshold_dice(validation: Path, gt_folder: Path) -> dict[float, float]:
    """Membrane Dice over all held-back images of the saved probabilities cut at each threshold."""
    counts = {t: np.zeros(3) for t in THRESHOLDS}  # tp, fp, fn
    for npz in sorted(validation.glob("*.npz")):
        prob = np.load(npz)["probabilities"][1].squeeze()
        gt = np.asarray(Image.open(gt_folder / f"{npz.stem}.png")).squeeze() == 1
        for t in THRESHOLDS:
            pred = prob > t
            counts[t] += [(pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()]
    return {t: round(float(2 * c[0] / (2 * c[0] + c[1] + c[2])), 4) for t, c in counts.items()}


def run_variant(variant: dict, preprocessed: Path, out: Path, device: str) -> str:
    name = variant["name"]
    results = out / f"results_{name}"
    env = dict(os.environ, nnUNet_raw=str(out / "raw"), nnUNet_preprocessed=str(preprocessed),
               nnUNet_results=str(results), PYTHONUNBUFFERED="1")
    start = time.time()
    with open(out / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run(train_command(variant, device), env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=variant.get("timeout", 3600)).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.time() - start
    fold = next(results.glob(f"{DATASET}/*/fold_0"), None)
    if rc or fold is None:
        return f"{name}: failed ({rc}) after {wall:.0f} s; see {out / (name + '.log')}"
    dice = json.loads((fold / "validation" / "summary.json").read_text())["mean"]["1"]["Dice"]
    cuts = threshold_dice(fold / "validation", preprocessed / DATASET / "gt_segmentations")
    return f"{name}: membrane Dice {dice:.4f}, wall {wall:.0f} s, Dice per threshold {cuts}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preprocessed", type=Path, help="nnUNet_preprocessed holding Dataset120_ISBI2012")
    parser.add_argument("variants", type=Path, help="JSON list of variants")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True, help="folder for the results and logs (must not exist)")
    args = parser.parse_args()
    variants = json.loads(args.variants.read_text())
    from cpuinfo import cpu_line  # bench/cpuinfo.py

    print(cpu_line(), flush=True)
    args.out.mkdir(parents=True)
    preprocessed = args.out / "preprocessed"
    shutil.copytree(args.preprocessed, preprocessed)  # every run reads the same split; nothing writes back
    with ThreadPoolExecutor(args.parallel) as pool:
        jobs = [pool.submit(run_variant, v, preprocessed, args.out, args.device) for v in variants]
        for job in as_completed(jobs):
            print(job.result(), flush=True)


if __name__ == "__main__":
    main()
