"""When a fold's settings become binding: ``train_config.json`` and the checkpoints of a fold folder.

A fold's ``train_config.json`` records the TrainConfig of the run that owns the folder. It is written when training
actually starts (after every check, see :mod:`nnseg.training.preflight`) and binds the folder only once a checkpoint
exists: a run that failed before its first checkpoint (bad value, NaN loss, SIGKILL while building the network) has
produced nothing to protect, so the next command may use other settings. A failure before the first checkpoint also
removes the ``train_config.json`` it wrote.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nnseg.jsonio import load_json, save_json
from nnseg.training.config import TrainConfig, config_differences

TRAIN_CONFIG_FILE = "train_config.json"
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def has_checkpoint(folder: Path) -> bool:
    """True when the fold folder holds any of nnU-Net's checkpoints."""
    return any((Path(folder) / name).is_file() for name in CHECKPOINT_NAMES)


def check_saved_config(folder: Path, config: TrainConfig, *, resume: bool) -> None:
    """Refuse to continue or overwrite a fold that was trained with other settings (naming the differences).

    A ``train_config.json`` without any checkpoint next to it belongs to a start that failed; it does not bind.
    """
    path = Path(folder) / TRAIN_CONFIG_FILE
    if not path.is_file():
        return
    if not has_checkpoint(folder):
        try:
            diffs = config_differences(TrainConfig.from_json(load_json(path)), config)
        except ValueError as e:  # e.g. a value refused since: it never trained
            diffs = [str(e)]
        if diffs:
            print(f"note: {path} is from an earlier start that wrote no checkpoint; its settings are replaced "
                  f"({'; '.join(diffs)})", file=sys.stderr)
        return
    diffs = config_differences(TrainConfig.from_json(load_json(path)), config)
    if diffs:
        action = "continue (--c)" if resume else "overwrite"
        raise ValueError(f"{folder} was trained with other settings; refusing to {action} it. Differences: "
                         f"{'; '.join(diffs)}. Use the same settings, or another fold/trainer name, or delete the folder")


def write_train_config(folder: Path, config: TrainConfig) -> None:
    """``train_config.json`` of the run that starts training in ``folder`` now (atomic)."""
    save_json(config.to_json(), Path(folder) / TRAIN_CONFIG_FILE)


def discard_failed_start(folder: Path) -> None:
    """After a failure: remove ``train_config.json`` unless a checkpoint made the settings binding."""
    if not has_checkpoint(folder):
        (Path(folder) / TRAIN_CONFIG_FILE).unlink(missing_ok=True)
