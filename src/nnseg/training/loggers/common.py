"""What every experiment-tracking logger shares: nnU-Net's per-epoch metrics, run ids kept in the fold folder, and
the clear error when the chosen tool is not installed."""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

TRACKING_FILE = "experiment_tracking.json"
EPOCH_SCALARS = ("lrs", "train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "epoch_start_timestamps",
                 "epoch_end_timestamps")
PER_CLASS = "dice_per_class_or_region"
FULL_VAL = "full_val_dice"  # full_val_every > 0: whole-image validation Dice


class MissingTrackingLibrary(RuntimeError):
    """The logger a user chose needs a library that is not installed (the message says which pip install fixes it)."""


class TrackingSetupError(ValueError):
    """A chosen tracking back-end cannot start with the settings given (the message names the setting and the fix)."""


def one_line_start(method: Callable[..., None]) -> Callable[..., None]:
    """For a logger's ``on_train_start``: what still fails after the preflight (a server gone in between, a refused
    run) becomes one :class:`TrackingSetupError` line naming the ``--logger`` (errors of the disk stay as they are)."""

    @functools.wraps(method)
    def start(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except (TrackingSetupError, KeyboardInterrupt):
            raise
        except OSError as e:
            if e.errno is not None and e.strerror is not None:  # disk full, permissions: the OSError's own line
                raise
            raise TrackingSetupError(f"{self.chosen_by}: could not start the run ({first_line(e)}); {self.fix}") from e
        except Exception as e:  # noqa: BLE001 - each tracking library raises its own kinds
            raise TrackingSetupError(f"{self.chosen_by}: could not start the run ({first_line(e)}); {self.fix}") from e

    return start


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (tracking libraries write paragraphs), at most 200 characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def require(module: str, *, extra: str, chosen_by: str) -> ModuleType:
    """Import ``module`` or refuse with ``pip install nnseg[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingTrackingLibrary(f"{chosen_by} needs the {module!r} package, which is not installed ({e}); "
                                     f"install it with `pip install nnseg[{extra}]`, or drop {chosen_by}") from None


def epoch_metrics(logging: Mapping[str, list[Any]], epoch: int) -> dict[str, float]:
    """nnU-Net's per-epoch values of ``epoch`` under nnU-Net's names (``MetaLogger.log``): the scalars plus
    ``dice_per_class_or_region/class_<i+1>`` for each foreground class or region."""
    out = {key: float(logging[key][epoch]) for key in EPOCH_SCALARS if len(logging.get(key, [])) > epoch}
    full = logging.get(FULL_VAL, [])
    if len(full) > epoch and not math.isnan(full[epoch]):  # only epochs that ran the whole-image validation
        out[FULL_VAL] = float(full[epoch])
    per_class = logging.get(PER_CLASS, [])
    if len(per_class) > epoch:
        out.update({f"{PER_CLASS}/class_{i + 1}": float(v) for i, v in enumerate(per_class[epoch])})
    return out


def hyperparameters(run: Any, state: Any) -> dict[str, Any]:
    """nnU-Net's ``hparas`` (the names its trainer logs) from a RunSpec and TrainState."""
    cfg = run.config
    return {"initial_lr": cfg.initial_lr, "weight_decay": cfg.weight_decay,
            "oversample_foreground_percent": cfg.oversample_foreground, "probabilistic_oversampling": False,
            "num_iterations_per_epoch": cfg.iterations_per_epoch,
            "num_val_iterations_per_epoch": cfg.val_iterations_per_epoch, "num_epochs": state.num_epochs,
            "enable_deep_supervision": cfg.deep_supervision, "batch_size": run.batch_size}


def run_description(run: Any) -> dict[str, Any]:
    """Dataset, configuration, fold and trainer of a RunSpec (nnU-Net logs the plans, configuration, fold, dataset)."""
    init = run.init_args
    return {"dataset": init["plans"].get("dataset_name"), "configuration": init["configuration"],
            "fold": init["fold"], "trainer": run.trainer_name, "plans": init["plans"].get("plans_name")}


def cluster_job_id(env: Mapping[str, str]) -> str | None:
    """nnU-Net's ``JobID``: SLURM_JOB_ID, else LSB_JOBID, else None."""
    return env.get("SLURM_JOB_ID") or env.get("LSB_JOBID")


def stored_run(folder: Path, tool: str) -> dict[str, Any] | None:
    """What ``experiment_tracking.json`` in the fold folder records about ``tool``'s run, or None."""
    path = folder / TRACKING_FILE
    if not path.is_file():
        return None
    from nnseg.jsonio import load_json  # here, not at the top: the help of `nnUNetv2_train` lists LOGGERS without numpy

    entry = load_json(path).get(tool)
    return entry if isinstance(entry, dict) else None


def store_run(folder: Path, tool: str, entry: dict[str, Any]) -> None:
    """Record ``tool``'s run in ``experiment_tracking.json`` (written atomically), so ``--c`` continues it."""
    path = folder / TRACKING_FILE
    from nnseg.jsonio import load_json, save_json

    data = load_json(path) if path.is_file() else {}
    data[tool] = entry
    save_json(data, path, sort_keys=True)


def flag_value(env: Mapping[str, str], name: str) -> bool:
    """nnU-Net's on/off variables: 0/false or 1/true (any case); unset is off.

    Raises:
        ValueError: any other value.
    """
    value = str(env.get(name, "0")).strip().lower()
    if value in ("0", "false", ""):
        return False
    if value in ("1", "true"):
        return True
    raise ValueError(f"environment variable {name}={env.get(name)!r} must be 0/false (off) or 1/true (on)")
