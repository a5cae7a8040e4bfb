"""Training tasks: what a run learns beyond nnU-Net's segmentation, named by ``TrainConfig.task``.

nnU-Net's recipe is the task ``segmentation`` (no entry here). A later stage or an extension registers other tasks in
:data:`TASKS`; a task changes the run's inputs and outputs (``adapt_run``), how batches are made from the sampled and
augmented patches (``make_batches``), may rework each batch with the network in the loop before the step
(``prepare``, run in the training thread without gradients, e.g. simulated user corrections), names the class its
checkpoints record, adds files to the model folder and may replace the final validation. Every entry point
(``nnUNetv2_train``, DDP ranks, the Python API) goes through the same loop, so the task applies everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnseg.registry import Registry

SEGMENTATION = "segmentation"

Prepare = Callable[[nn.Module, torch.Tensor, list[torch.Tensor], int, int, bool],
                   tuple[torch.Tensor, list[torch.Tensor]]]
"""``prepare(network, image, targets, epoch, index, train) -> (image, targets)``."""


@dataclass(frozen=True)
class TrainingTask:
    """The parts of a run a task replaces (see the module docstring).

    Attributes:
        adapt_run: the RunSpec nnU-Net's recipe resolved -> the task's (input channels, heads, ...); raises
            ValueError for a dataset or setting the task cannot train (before anything is written).
        make_batches: the task's batch maker for a run (its ``train_batch``/``val_batch``/``case_ids``).
        make_prepare: ``run -> prepare`` (or None): reworks each batch in the training thread, see :data:`Prepare`.
        checkpoint_trainer_name: the trainer class checkpoints record (None: nnU-Net's rule).
        model_files: ``run -> {file name: JSON}`` written into the model folder beside plans.json.
        final_validation: replaces nnU-Net's final validation: ``(run, job, best, progress) -> (folder, mean Dice)``.
        input_names: ``run -> names`` of the input channels the task appends after the images (fine-tuning starts
            them at zero, so a pretrained automatic model is where an interactive one begins).
    """

    adapt_run: Callable[[Any], Any]  # RunSpec -> RunSpec (run_spec imports this module: no import back)
    make_batches: Callable[[Any], Any]  # RunSpec -> BatchMaker
    make_prepare: Callable[[Any], Prepare | None] = lambda run: None
    checkpoint_trainer_name: str | None = None
    model_files: Callable[[Any], dict[str, Any]] = lambda run: {}
    final_validation: Callable[..., Any] | None = None
    input_names: Callable[[Any], list[str]] = lambda run: []


TASKS: Registry[TrainingTask] = Registry("training task")
"""Named training tasks (``--set task=NAME``); ``segmentation`` is nnU-Net's recipe and needs no entry."""


def task_names() -> list[str]:
    return [SEGMENTATION, *TASKS.names()]


def task_of(name: str) -> TrainingTask | None:
    """The registered task (None for ``segmentation``).

    Raises:
        ValueError: an unknown task name (the message lists the known ones).
    """
    if name == SEGMENTATION:
        return None
    if name not in TASKS:
        raise ValueError(f"unknown training task {name!r}; available: {task_names()} (set it with --set task=NAME or "
                         "a trainer preset such as -tr nnsegInteractiveTrainer)")
    return TASKS[name]
