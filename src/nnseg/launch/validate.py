"""The final validation of a trained fold: predict its validation cases, evaluate them, write next-stage inputs.

In one process every validation case is predicted here; under DDP rank ``r`` predicts ``val_ids[r::world]`` into the
same folder and, after a barrier, rank 0 evaluates the whole folder (``summary.json``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnseg.metrics.evaluate import evaluate_folder_with_dataset
from nnseg.launch.next_stage import NextStageWriter, next_stages
from nnseg.launch.validate_cases import validate_fold
from nnseg.training.distributed import DistributedTraining
from nnseg.training.run_spec import RunSpec
from nnseg.training.setup import FoldJob
from nnseg.training.tasks import task_of


@dataclass(frozen=True)
class ValidationResult:
    """Where the validation went and its mean foreground Dice (None on ranks other than 0)."""

    folder: Path
    foreground_dice: float | None


def next_stage_writer(run: RunSpec, job: FoldJob) -> NextStageWriter | None:
    """nnU-Net's lowres rule: the final validation also writes predicted_next_stage/<next>/CASE.b2nd."""
    cfg = job.plans.configuration(job.configuration_name)
    stages = next_stages(job.plans, cfg, preprocessed_dataset_folder=Path(job.preprocessed_dataset_folder),
                         model_folder=run.output_folder.parent)
    return NextStageWriter(stages, configuration=cfg, spec=job.spec) if stages else None


def _evaluate(run: RunSpec, job: FoldJob, out: Path) -> dict[str, Any]:
    pre = Path(job.preprocessed_dataset_folder)
    return evaluate_folder_with_dataset(pre / "gt_segmentations", out, dataset_json_file=pre / "dataset.json",
                                        plans_file=run.output_folder.parent / "plans.json", chill=True,
                                        num_processes=1)


def final_validation(run: RunSpec, job: FoldJob, *, best: bool, npz: bool, progress: bool,
                     ddp: DistributedTraining | None = None) -> ValidationResult:
    """Predict (this rank's share of) the validation cases with checkpoint_final (``best``: checkpoint_best) into
    ``validation`` (``validation_best``), then evaluate them on rank 0 and print the Dice."""
    world, rank = (1, 0) if ddp is None else (ddp.info.world_size, ddp.info.rank)
    task = task_of(run.config.task)
    if task is not None and task.final_validation is not None:  # e.g. an interactive model: a simulated user
        if ddp is not None:
            ddp.barrier()
        if rank != 0:
            return ValidationResult(run.output_folder / ("validation_best" if best else "validation"), None)
        return ValidationResult(*task.final_validation(run, job, best=best, progress=progress))
    out = run.output_folder / ("validation_best" if best else "validation")
    writer = next_stage_writer(run, job)
    seconds = validate_fold(run.output_folder.parent, job.fold, run.data_folder, run.val_ids[rank::world], out,
                            checkpoint="checkpoint_best.pth" if best else "checkpoint_final.pth", device=run.device,
                            precision=run.precision, save_probabilities=npz, progress=progress and ddp is None,
                            prev_stage_folder=run.prev_stage_folder, on_case=writer)
    if ddp is not None:
        ddp.barrier()
    if rank != 0:
        return ValidationResult(out, None)
    summary = _evaluate(run, job, out)
    dice = float(summary["foreground_mean"]["Dice"])
    per_label = {k: round(v["Dice"], 4) for k, v in summary["mean"].items()}
    where = f"{len(run.val_ids)} cases" + (f" on {world} ranks" if ddp is not None else "")
    print(f"Validation of {run.output_folder} ({where}, {seconds:.1f} s{' on rank 0' if ddp else ''}): mean foreground "
          f"Dice {dice:.4f}; per label {per_label}; summary in {out / 'summary.json'}")
    if writer is not None and writer.written:
        print(f"Wrote {len(writer.written)} segmentation(s) for the next stage to {writer.written[0].parent.parent}")
    return ValidationResult(out, dice)
