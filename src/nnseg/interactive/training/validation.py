"""The final validation of an interactive model: the robot user on every object of the fold's validation cases.

Each validation case (preprocessed image and labels) is segmented object by object (every foreground label or region
present) with a click at the object's centre and corrective clicks (:mod:`nnseg.interactive.robot`); the mean Dice
after each interaction goes to ``validation/summary.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from nnseg.interactive.model import load_interactive_model
from nnseg.interactive.robot import run_robot
from nnseg.interactive.session import InteractiveSession
from nnseg.interactive.training.task import object_classes
from nnseg.jsonio import save_json
from nnseg.preprocessed.store import load_case
from nnseg.training.run_spec import RunSpec
from nnseg.training.setup import FoldJob

VALIDATION_INTERACTIONS = 5


def can_zoom(shape: tuple[int, ...], patch_size: list[int]) -> bool:
    """AutoZoom helps where the image exceeds the patch, and its refinement needs patches over 2 x 24 voxels."""
    return any(s > p for s, p in zip(shape, patch_size)) and min(patch_size) > 48


def _case_runs(session: InteractiveSession, run: RunSpec, case: str, classes: list[tuple[int, ...]]) -> dict[str, Any]:
    data, seg, _ = load_case(run.data_folder, case)
    image, labels = np.asarray(data[...], dtype=np.float32), np.asarray(seg[...])[0]
    session.set_do_autozoom(can_zoom(image.shape[1:], session.patch_size))
    out = {}
    for values in classes:
        target = np.isin(labels, values)
        if target.any():
            robot = run_robot(session, image, target, interactions=VALIDATION_INTERACTIONS)
            out["+".join(map(str, values))] = {"dice": robot.dice, "seconds": robot.seconds}
    return out


def robot_validation(run: RunSpec, job: FoldJob, *, best: bool, progress: bool) -> tuple[Path, float]:
    """Run the robot on the validation cases with checkpoint_final (``best``: checkpoint_best); returns the folder
    and the mean Dice after the last interaction."""
    folder = run.output_folder / ("validation_best" if best else "validation")
    model = load_interactive_model(run.output_folder.parent, fold=job.fold, device=run.device,
                                   checkpoint_name="checkpoint_best.pth" if best else "checkpoint_final.pth")
    # no memory check: in the training process a measured budget (free GPU memory) would not see what torch's
    # allocator keeps cached for reuse, and refuse cases the trainer has just handled
    session = InteractiveSession(model, precision="fp32" if run.precision == "fp32" else "auto", check_memory=False)
    classes = object_classes(run.init_args["dataset_json"])
    start, cases = time.perf_counter(), {}
    for i, case in enumerate(run.val_ids):
        cases[case] = _case_runs(session, run, case, classes)
        if progress:
            print(f"\rrobot validation {i + 1}/{len(run.val_ids)}", end="", file=sys.stderr, flush=True)
    runs = [r for per_case in cases.values() for r in per_case.values()]
    mean = [float(np.mean([r["dice"][k] for r in runs])) if runs else float("nan")
            for k in range(VALIDATION_INTERACTIONS)]
    per_class = {name: float(np.mean([c[name]["dice"][-1] for c in cases.values() if name in c]))
                 for name in sorted({n for c in cases.values() for n in c})}
    summary = {"robot": "click at the object's centre, then at the centre of the largest error region",
               "interactions": VALIDATION_INTERACTIONS, "mean_dice_after_interaction": mean,
               "mean_dice_per_object_class": per_class, "cases": cases}
    folder.mkdir(parents=True, exist_ok=True)
    save_json(summary, folder / "summary.json")
    print(f"{'' if not progress else chr(10)}Validation of {run.output_folder} (robot user, {len(run.val_ids)} cases, "
          f"{len(runs)} objects, {time.perf_counter() - start:.1f} s): mean Dice after 1..{VALIDATION_INTERACTIONS} "
          f"interactions {[round(d, 4) for d in mean]}; per object class after {VALIDATION_INTERACTIONS}: "
          f"{ {k: round(v, 4) for k, v in per_class.items()} }; summary in {folder / 'summary.json'}")
    return folder, mean[-1]
