"""What a training run is asked to do (:class:`TrainRequest`), and how it becomes the training stage's :class:`FoldJob`.

The CLI (``nnUNetv2_train``, ``nnseg cross-validate``) and the Dask backend build a :class:`TrainRequest` from their
own inputs; :func:`nnseg.launch.train.run_training` runs it. Nothing here reads ``os.environ`` or an argparse
namespace: environment switches (``nnUNet_compile``, ``nnUNet_n_proc_DA``) are resolved by the caller into fields.

Example:
    >>> trainer, config = resolve_trainer("nnUNetTrainer", epochs=5, iterations_per_epoch=10)
    >>> trainer, config.num_epochs, config.iterations_per_epoch
    ('nnUNetTrainer_5epochs', 5, 10)
"""

from __future__ import annotations

from collections.abc import Mapping, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import nnseg.interactive.training  # noqa: F401 - registers the task ``interactive`` and -tr nnsegInteractiveTrainer
from nnseg.devices import auto_device, resolve_precision
from nnseg.plans.schema import load_plans
from nnseg.raw.dataset_json import load_dataset_json
from nnseg.training.config import (
    FIELD_RULES,
    TrainConfig,
    apply_overrides,
    known_trainer_names,
    preset_for_trainer,
    trainer_name_for_epochs,
)
from nnseg.training.distributed import DistInfo
from nnseg.training.hooks import Hooks
from nnseg.training.setup import FoldJob

HookFactory = Callable[[DistInfo], Sequence[Hooks]]
"""Extra hooks for one rank (``DistInfo(0, 1)`` in a single process); a top-level function or ``functools.partial``
so that it survives the spawn of ``-num_gpus`` ranks."""


@dataclass(frozen=True)
class TrainRequest:
    """One fold to train (or only validate), as ``nnUNetv2_train DATASET CONFIGURATION FOLD [options]`` asks for it.

    Attributes:
        preprocessed_dataset_folder: ``nnUNet_preprocessed/DatasetX`` (plans, dataset.json, data, splits).
        results_dataset_folder: ``nnUNet_results/DatasetX`` (the fold folder goes below it).
        configuration: a configuration of the plans, e.g. ``3d_fullres``.
        fold: 0-4 (or any index of splits_final.json) or ``"all"``.
        trainer_name: the results folder's trainer part (``nnUNetTrainer_5epochs``; see :func:`resolve_trainer`).
        config: the training recipe (``config.precision``/``config.compile`` included).
        plans_identifier: the plans file ``<plans_identifier>.json``.
        device: ``auto``, ``cpu``, ``cuda`` (``cuda:1``) or ``mps``.
        continue_training: nnU-Net's ``--c`` (resume from the latest checkpoint; a finished fold is not retrained).
        validation_only, validate_best: ``--val`` / ``--val_best`` (needs checkpoint_final / checkpoint_best).
        save_probabilities: ``--npz`` (softmax of the final validation, for ensembling).
        pretrained_weights: a checkpoint or model zip to fine-tune from (see :mod:`nnseg.training.finetune`).
        num_gpus: local ranks to start (``-num_gpus``); under torchrun leave it at 1.
        disable_checkpointing: write no checkpoints (testing only).
        background_batches: make batches in a thread on accelerators (``nnUNet_n_proc_DA=0`` turns it off).
        progress: show progress bars (a terminal), else only log lines.
        hooks: extra per-rank hooks (diagnostics, loggers, fault injection in tests).
        lock_note: appended to the purpose recorded in the fold's lock file (the Dask backend puts its task key
            there, so that a rerun of the same task may take over the lock its lost predecessor left).
        env: the command's environment, where it differs from ``os.environ`` (extension folders, ``MASTER_PORT``);
            spawned ranks load the extensions it names. None: ``os.environ``.
    """

    preprocessed_dataset_folder: Path
    results_dataset_folder: Path
    configuration: str
    fold: int | str
    trainer_name: str = "nnUNetTrainer"
    config: TrainConfig = field(default_factory=TrainConfig)
    plans_identifier: str = "nnUNetPlans"
    device: str = "auto"
    continue_training: bool = False
    validation_only: bool = False
    validate_best: bool = False
    save_probabilities: bool = False
    pretrained_weights: Path | None = None
    num_gpus: int = 1
    disable_checkpointing: bool = False
    background_batches: bool = True
    progress: bool = True
    hooks: tuple[HookFactory, ...] = ()
    lock_note: str = ""
    env: Mapping[str, str] | None = None

    @property
    def validating(self) -> bool:
        """Only the final validation (``--val`` / ``--val_best``), no training."""
        return self.validation_only or self.validate_best

    @property
    def fold_folder(self) -> Path:
        """``<results>/<Trainer>__<Plans>__<configuration>/fold_<fold>``."""
        model = f"{self.trainer_name}__{self.plans_identifier}__{self.configuration}"
        return Path(self.results_dataset_folder) / model / f"fold_{self.fold}"


@dataclass(frozen=True)
class TrainOutcome:
    """What :func:`nnseg.launch.train.run_training` did: the fold folder, the validation folder and its mean
    foreground Dice (None where this process did not evaluate: a torchrun rank other than 0, ``num_gpus > 1``)."""

    output_folder: Path
    validation_folder: Path
    foreground_dice: float | None


def lock_purpose(request: TrainRequest, *, ddp: bool = False) -> str:
    """What the fold's lock file says its owner does (``nnUNetv2_train fold 0 (DDP) [note]``)."""
    text = f"nnUNetv2_train fold {request.fold}" + (" (DDP)" if ddp else "")
    return f"{text} {request.lock_note}".strip()


def parse_fold(text: str | int) -> int | str:
    """``"3"`` -> 3, ``"all"`` -> ``"all"``; anything else is refused."""
    if isinstance(text, int) or text == "all":
        return text
    if not str(text).isdigit():
        raise ValueError(f"fold must be an integer 0-4 or 'all', got {text!r}")
    return int(text)


def resolve_trainer(trainer: str = "nnUNetTrainer", *, epochs: int | None = None, iterations_per_epoch: int | None = None,
                    early_stopping: int | None = None, time_budget_hours: float | None = None, seed: int | None = None,
                    precision: str | None = None, overrides: Sequence[str] = ()) -> tuple[str, TrainConfig]:
    """The trainer name (results folder) and TrainConfig of ``-tr``, ``--epochs`` and the other training flags.

    Raises:
        ValueError: ``--epochs`` contradicts an epoch preset of ``-tr``, a patience below 1, or a bad ``--set``.
    """
    config = preset_for_trainer(trainer)
    name = trainer
    if epochs is not None and trainer not in known_trainer_names():  # a preset (nnsegInteractiveTrainer): its folder
        config = config.replace(num_epochs=epochs)
    elif epochs is not None:
        if trainer not in ("nnUNetTrainer", "nnUNetTrainerNoMirroring") and config.num_epochs != epochs:
            raise ValueError(f"-tr {trainer} already sets {config.num_epochs} epochs; drop --epochs or -tr")
        name = trainer_name_for_epochs(epochs, mirroring=config.mirroring)
        config = config.replace(num_epochs=epochs)
    if early_stopping is not None and early_stopping < 1:
        raise ValueError(f"--early-stopping needs a patience of at least 1 epoch, got {early_stopping}")
    changes = {"iterations_per_epoch": iterations_per_epoch, "early_stopping_patience": early_stopping,
               "time_budget_hours": time_budget_hours, "seed": seed}
    changes = {k: v for k, v in changes.items() if v is not None}
    for key, value in changes.items():
        _check_flag(key, value)
    config = config.replace(**changes)
    if precision not in (None, "auto"):
        config = config.replace(precision=precision)
    return name, apply_overrides(config, list(overrides))


_FLAGS = {"iterations_per_epoch": "--iterations-per-epoch", "early_stopping_patience": "--early-stopping",
          "time_budget_hours": "--time-budget", "seed": "--seed"}


def _check_flag(key: str, value: object) -> None:
    """Refuse a bad value of a training flag naming the flag the user typed (not the TrainConfig field)."""
    ok, rule = FIELD_RULES[key]
    if not ok(value):
        raise ValueError(f"{_FLAGS[key]} {value} is invalid: it must be {rule} (nnU-Net's default: "
                         f"{getattr(TrainConfig, key)!r}; leave the flag out for it)")


def device_name(request: TrainRequest) -> str:
    """The request's device with ``auto`` resolved."""
    return auto_device() if request.device == "auto" else request.device


def fold_job(request: TrainRequest, device: torch.device) -> FoldJob:
    """Load plans and dataset.json of the request's dataset and describe the fold for ``device``.

    Raises:
        FileNotFoundError: the plans file is missing (the message says to plan and preprocess first).
        ValueError: the precision does not suit the device.
    """
    pre = Path(request.preprocessed_dataset_folder)
    plans_file = pre / f"{request.plans_identifier}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} does not exist; run `nnUNetv2_plan_and_preprocess -d {pre.name}` first "
                                "(or check -p)")
    precision = resolve_precision(request.config.precision, device)
    return FoldJob(plans=load_plans(plans_file), configuration_name=request.configuration,
                   spec=load_dataset_json(pre / "dataset.json"), preprocessed_dataset_folder=pre,
                   results_dataset_folder=Path(request.results_dataset_folder), fold=request.fold,
                   trainer_name=request.trainer_name, config=request.config, device=device, precision=precision,
                   background=request.background_batches and device.type != "cpu",
                   disable_checkpointing=request.disable_checkpointing)
