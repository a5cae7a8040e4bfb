"""Training stops with a message that names the cause: a non-finite loss, an unreadable checkpoint to continue from.

Non-finite loss: every step's loss is already copied to the host for the epoch log (``train_step`` returns
``float(loss)``), so checking ``math.isfinite`` on that number costs nothing, on CUDA too (no extra synchronisation).
Only when it fails are the batch's images inspected (one ``isfinite`` reduction) and its cases re-derived from the
batch seed, to tell bad data (NaN/inf voxels: the cases are named) from a diverging optimisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from nnseg.training.checkpoint import load_checkpoint
from nnseg.training.config import TrainConfig


def non_finite_loss_error(loss: float, image: torch.Tensor, case_ids: Sequence[str], *, phase: str, epoch: int,
                          iteration: int, precision: str, config: TrainConfig, data_folder: Path) -> ValueError:
    """The error for a NaN/inf loss in step ``iteration`` of ``epoch`` (``phase``: training or validation)."""
    finite = torch.isfinite(image.detach()).flatten(1).all(1).cpu().tolist()
    bad = sorted({c for c, ok in zip(case_ids, finite) if not ok})
    where = f"{phase} loss is {loss} at epoch {epoch}, iteration {iteration} (batch cases: {', '.join(case_ids)})"
    if bad:
        return ValueError(f"{where}: the input patches of {', '.join(bad)} hold NaN/inf values. Fix those images in "
                          f"imagesTr (`nnUNetv2_plan_and_preprocess --verify_dataset_integrity` lists every bad case), "
                          f"then rerun nnUNetv2_preprocess; the preprocessed cases are in {data_folder}")
    hint = "; with fp16 try --precision bf16 or fp32" if precision == "fp16" else ""
    return ValueError(f"{where} with finite inputs: the optimisation diverged. Lower the learning rate (--set "
                      f"initial_lr=..., now {config.initial_lr}) or grad_clip (now {config.grad_clip}){hint}, then "
                      "train again")


def unreadable_checkpoint_error(path: Path, error: Exception, alternatives: Sequence[Path]) -> ValueError:
    """The error for ``--c`` when the checkpoint to continue from cannot be read, offering the next readable one."""
    for other in alternatives:
        try:
            epoch = load_checkpoint(other)["current_epoch"]
        except (ValueError, FileNotFoundError, KeyError):
            continue
        return ValueError(f"cannot continue from {path}: {error}. {other.name} (epoch {epoch}) is readable: to continue "
                          f"from it, move the damaged file away (`mv {path} {path}.damaged`) and rerun with --c; or "
                          "delete the fold folder and train again without --c")
    return ValueError(f"cannot continue from {path}: {error}. No other checkpoint in {path.parent} is readable; "
                      f"delete {path} and train again without --c")
