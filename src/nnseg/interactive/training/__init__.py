"""Promptable training (the task ``interactive`` and the preset ``-tr nnsegInteractiveTrainer``).

Importing this package registers both (``nnseg.launch`` imports it, so ``nnUNetv2_train D 3d_fullres F -tr
nnsegInteractiveTrainer`` finds them). See docs/INTERACTIVE.md, "Training an interactive model".
"""

from __future__ import annotations

from nnseg.interactive.training.task import (
    INFERENCE_INFO, adapt_run, input_names, make_batches, make_prepare, model_files)
from nnseg.interactive.training.validation import robot_validation
from nnseg.training.config import TRAINER_PRESETS, TrainConfig
from nnseg.training.tasks import TASKS, TrainingTask

TRAINER_NAME = "nnsegInteractiveTrainer"
CHECKPOINT_TRAINER = "nnInteractiveTrainer_stub"  # the class nnInteractive's session resolves in its own package

INTERACTIVE_TASK = TrainingTask(adapt_run=adapt_run, make_batches=make_batches, make_prepare=make_prepare,
                                checkpoint_trainer_name=CHECKPOINT_TRAINER, model_files=model_files,
                                final_validation=robot_validation, input_names=input_names)

TASKS.add("interactive", INTERACTIVE_TASK)
# every patch is centred on an object (a patch without one teaches nothing about prompts)
TRAINER_PRESETS.add(TRAINER_NAME, TrainConfig(task="interactive", oversample_foreground=1.0))

__all__ = ["CHECKPOINT_TRAINER", "INFERENCE_INFO", "INTERACTIVE_TASK", "TRAINER_NAME"]
