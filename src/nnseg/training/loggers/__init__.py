"""Experiment-tracking loggers as training hooks: Weights & Biases, MLflow, TensorBoard.

``logger_hooks(["mlflow"], env=..., output_folder=..., resume=..., rank=...)`` builds them for one fold (``--logger``
on the command line, repeatable; W&B also with nnU-Net's ``nnUNet_wandb_enabled=1``). Each tool is an optional extra
(``pip install nnseg[wandb]`` / ``[mlflow]`` / ``[tensorboard]``) imported only when chosen; a chosen tool that is
not installed is refused when the hooks are built, before training writes anything. Only rank 0 logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nnseg.training.loggers.common import (
    TRACKING_FILE,
    MissingTrackingLibrary,
    TrackingSetupError,
    epoch_metrics,
    flag_value,
)

if TYPE_CHECKING:  # not imported for the parsers that list LOGGERS (`nnUNetv2_train -h` imports neither numpy nor torch)
    from nnseg.training.hooks import Hooks

__all__ = ["LOGGERS", "TRACKING_FILE", "MissingTrackingLibrary", "TrackingSetupError", "check_loggers",
           "chosen_loggers", "epoch_metrics", "logger_hooks"]

LOGGERS = ("wandb", "mlflow", "tensorboard")
_MODULES = {"wandb": "wandb_logger", "mlflow": "mlflow_logger", "tensorboard": "tensorboard_logger"}
WANDB_SWITCH = "nnUNet_wandb_enabled"


def chosen_loggers(names: Sequence[str], *, env: Mapping[str, str]) -> list[str]:
    """The loggers to use: ``names`` (``--logger``) plus ``wandb`` when ``nnUNet_wandb_enabled`` is on; duplicates
    dropped.

    Raises:
        ValueError: an unknown logger name, or ``nnUNet_wandb_enabled`` set to something other than 0/1/true/false.
    """
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown --logger {unknown[0]!r}; choose from {list(LOGGERS)}")
    chosen = list(dict.fromkeys(names))
    if flag_value(env, WANDB_SWITCH) and "wandb" not in chosen:
        chosen.append("wandb")
    return chosen


def _chosen_by(name: str, names: Sequence[str]) -> str:
    return f"{WANDB_SWITCH}=1" if name == "wandb" and "wandb" not in names else f"--logger {name}"


def check_loggers(names: Sequence[str], *, env: Mapping[str, str]) -> list[str]:
    """The chosen loggers (:func:`chosen_loggers`), each installed and its settings usable (each back-end's
    ``preflight``: MLflow's tracking URI, W&B's mode, login and server, TensorBoard's import); call it before anything
    is written.

    Raises:
        ValueError: see :func:`chosen_loggers`; TrackingSetupError: a setting the back-end cannot start with (one line
            naming the setting and the fix).
        MissingTrackingLibrary: a chosen tool is not installed (the message names the pip extra).
    """
    import importlib

    chosen = chosen_loggers(names, env=env)
    for name in chosen:
        module = importlib.import_module(f"nnseg.training.loggers.{_MODULES[name]}")
        module.preflight(env, chosen_by=_chosen_by(name, names))
    return chosen


def logger_hooks(names: Sequence[str], *, env: Mapping[str, str], output_folder: Path, resume: bool,
                 rank: int = 0) -> list[Hooks]:
    """One hook per chosen logger for the fold in ``output_folder`` (none on ranks other than 0).

    Args:
        names: logger names from ``--logger`` (``wandb``, ``mlflow``, ``tensorboard``).
        env: the environment (``nnUNet_wandb_*``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``, job ids).
        output_folder: the fold folder (run ids are kept in its ``experiment_tracking.json``).
        resume: ``--c``: continue the runs recorded there instead of starting new ones.
        rank: this process's DDP rank.

    Raises:
        ValueError: see :func:`chosen_loggers`.
        MissingTrackingLibrary: a chosen tool is not installed (the message names the pip extra).
    """
    chosen = chosen_loggers(names, env=env)
    if rank != 0:
        return []
    hooks: list[Hooks] = []
    for name in chosen:
        by = _chosen_by(name, names)
        if name == "wandb":
            from nnseg.training.loggers.wandb_logger import WandbLogger

            hooks.append(WandbLogger(env=env, output_folder=output_folder, resume=resume, chosen_by=by))
        elif name == "mlflow":
            from nnseg.training.loggers.mlflow_logger import MlflowLogger

            hooks.append(MlflowLogger(env=env, output_folder=output_folder, resume=resume, chosen_by=by))
        else:
            from nnseg.training.loggers.tensorboard_logger import TensorBoardLogger

            hooks.append(TensorBoardLogger(output_folder=output_folder, resume=resume, chosen_by=by))
    return hooks
