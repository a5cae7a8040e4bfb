"""TensorBoard (``--logger tensorboard``): event files in ``fold_X/tensorboard`` (``tensorboard --logdir`` on it).

nnU-Net's per-epoch metrics as scalars with ``step = epoch``, the run description and hyperparameters as text. A
fresh training clears the folder; ``--c`` writes on with ``purge_step`` = the epoch it resumes at, so epochs logged
after the checkpoint it continues from are replaced rather than doubled.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nnseg.training.hooks import Hooks
from nnseg.training.loggers.common import (
    TrackingSetupError,
    epoch_metrics,
    first_line,
    hyperparameters,
    one_line_start,
    require,
    run_description,
    store_run,
)

TOOL = "tensorboard"
LOG_DIR = "tensorboard"


def preflight(env: Mapping[str, str], *, chosen_by: str) -> None:
    """Refuse, in one line, a TensorBoard that torch cannot load (an incompatible tensorboard or protobuf).

    Raises:
        MissingTrackingLibrary: tensorboard is not installed. TrackingSetupError: torch.utils.tensorboard fails.
    """
    require("tensorboard", extra="tensorboard", chosen_by=chosen_by)
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception as e:  # noqa: BLE001 - an ImportError, or a protobuf/numpy version error at import
        raise TrackingSetupError(f"{chosen_by}: torch cannot load TensorBoard ({first_line(e)}); reinstall it with "
                                 "`pip install -U nnseg[tensorboard]`") from None


class TensorBoardLogger(Hooks):
    def __init__(self, *, output_folder: Path, resume: bool, chosen_by: str) -> None:
        require("tensorboard", extra="tensorboard", chosen_by=chosen_by)
        self.folder, self.resume = Path(output_folder), resume
        self.chosen_by = chosen_by
        self.fix = f"reinstall it (`pip install -U nnseg[tensorboard]`) or drop {chosen_by}"
        self.log_dir = self.folder / LOG_DIR
        self.writer: Any = None

    @one_line_start
    def on_train_start(self, run: Any, state: Any, network: torch.nn.Module) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if not self.resume and self.log_dir.is_dir():
            shutil.rmtree(self.log_dir)
        purge = state.current_epoch if self.resume and state.current_epoch > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)
        if purge is None:
            text = json.dumps({**run_description(run), "hparas": hyperparameters(run, state)}, indent=2, default=str)
            self.writer.add_text("run", f"```\n{text}\n```", global_step=0)
        store_run(self.folder, TOOL, {"log_dir": LOG_DIR})

    def on_epoch_end(self, run: Any, state: Any) -> None:
        epoch = state.current_epoch
        for key, value in epoch_metrics(state.logging, epoch).items():
            self.writer.add_scalar(key, value, global_step=epoch)
        self.writer.flush()

    def on_train_end(self, run: Any, state: Any, *, stopped_early: bool) -> None:
        self.writer.close()
