"""Everything a training run needs, resolved once from plans, dataset.json and the TrainConfig."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnseg.devices import keep_freed_memory_for_reuse
from nnseg.networks import NETWORKS, build_network
from nnseg.registry import Registry
from nnseg.training.augment.pipeline import AUGMENTATIONS, augmentation_setup, sampling_patch_size
from nnseg.training.cascade import CascadeInputs
from nnseg.training.config import TrainConfig
from nnseg.training.data import BatchMaker, TargetSpec
from nnseg.training.finetune import TargetInfo
from nnseg.training.losses import LOSSES, DeepSupervisionLoss, deep_supervision_scales, deep_supervision_weights
from nnseg.training.partial import PartialCodes
from nnseg.training.sampling import PatchSampler
from nnseg.training.schedule import LR_SCHEDULES
from nnseg.training.tasks import Prepare, task_names, task_of

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("sgd_nesterov")
def sgd_nesterov(params: Any, *, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """nnU-Net's optimizer: SGD with Nesterov momentum."""
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)


def check_component_names(config: TrainConfig) -> None:
    """Refuse a TrainConfig naming an unknown loss, LR schedule, optimizer, augmentation or network, before anything
    is written."""
    named = {"loss": (config.loss, LOSSES.names()), "lr_schedule": (config.lr_schedule, LR_SCHEDULES.names()),
             "optimizer": (config.optimizer, OPTIMIZERS.names()), "augmentation": (config.augmentation, AUGMENTATIONS.names())}
    if config.network is not None:
        named["network"] = (config.network, NETWORKS.names())
    named["task"] = (config.task, task_names())
    for field, (value, known) in named.items():
        if value not in known:
            raise ValueError(f"unknown {field} {value!r}; available: {known} (set it with --set {field}=NAME, or "
                             "register one in an extension: docs/EXTENSIONS.md)")


def architecture_for(config: TrainConfig, planned: dict[str, Any]) -> dict[str, Any]:
    """The plans ``architecture`` a run trains: the planned one, or with ``network_class_name`` set to
    ``config.network`` (the planned ``arch_kwargs`` are passed to that class)."""
    architecture = dict(planned)
    if config.network is not None:
        architecture["network_class_name"] = config.network
    return architecture


@dataclass(frozen=True)
class RunSpec:
    """One fold's training job. Build it with :func:`nnseg.training.setup.make_run_spec`."""

    architecture: dict[str, Any]
    patch_size: tuple[int, ...]
    batch_size: int
    batch_dice: bool
    num_input_channels: int
    num_heads: int
    regions: tuple[tuple[int, ...], ...] | None
    ignore_label: int | None
    annotated_key: Any
    mask_channels: tuple[int, ...]
    data_folder: Path
    output_folder: Path
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    trainer_name: str
    init_args: dict[str, Any]
    config: TrainConfig
    device: torch.device
    precision: str
    seed: int
    background: bool = True
    disable_checkpointing: bool = False
    prev_stage_folder: Path | None = None  # cascade: the previous stage's predicted_next_stage/<configuration>
    cascade_labels: tuple[int, ...] = ()  # cascade: foreground labels appended one-hot as input channels
    partial: PartialCodes | None = None  # dataset.json's annotated_labels (partially annotated cases), else None

    @property
    def strides(self) -> list[list[int]]:
        kw = self.architecture["arch_kwargs"]
        dims = len(self.patch_size)
        return [[s] * dims if isinstance(s, int) else list(s) for s in kw["strides"]]

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        setup = augmentation_setup(self.patch_size, mirroring=self.config.mirroring)
        return setup.mirror_axes or None


@dataclass
class Components:
    network: nn.Module  # what runs (maybe torch.compile'd)
    module: nn.Module  # the plain network whose state_dict is saved
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    loss: nn.Module
    batches: BatchMaker
    prepare: Prepare | None = None  # the task's rework of each batch in the training thread (training.tasks)


def _loss(run: RunSpec) -> nn.Module:
    extra = {} if run.partial is None else {"partial": (run.partial.base, run.partial.sets)}
    base = LOSSES[run.config.loss](batch_dice=run.batch_dice, smooth=run.config.dice_smooth,
                                   ignore_label=run.ignore_label, has_regions=run.regions is not None, **extra)
    n_outputs = len(run.strides) - 1 if run.config.deep_supervision else 1
    return DeepSupervisionLoss(base, deep_supervision_weights(max(1, n_outputs)))


def standard_batches(run: RunSpec) -> BatchMaker:
    """nnU-Net's batches: patches sampled, augmented and turned into the (deep-supervision) loss targets."""
    setup = augmentation_setup(run.patch_size, mirroring=run.config.mirroring)
    transforms = AUGMENTATIONS[run.config.augmentation](setup)
    common = dict(folder=run.data_folder, final_patch_size=run.patch_size, batch_size=run.batch_size,
                  oversample_foreground=run.config.oversample_foreground, annotated_key=run.annotated_key,
                  prev_stage_folder=run.prev_stage_folder, partial=run.partial)
    train = PatchSampler(identifiers=list(run.train_ids), patch_size=sampling_patch_size(setup, transforms), **common)
    val = PatchSampler(identifiers=list(run.val_ids or run.train_ids), patch_size=run.patch_size, **common)
    scales = deep_supervision_scales(run.strides) if run.config.deep_supervision else None
    targets = TargetSpec(regions=run.regions, ignore_label=run.ignore_label,
                         ds_scales=None if scales is None else tuple(tuple(s) for s in scales),
                         mask_channels=run.mask_channels, partial=run.partial)
    aug_device = run.device if run.device.type == "cuda" else torch.device("cpu")
    cascade = CascadeInputs(run.cascade_labels) if run.prev_stage_folder is not None else None
    return BatchMaker(train, val, transforms, targets, aug_device, run.seed, cascade)


def build_components(run: RunSpec) -> Components:
    """Network (He-initialised, seeded), optimizer (SGD-Nesterov), loss with deep supervision, grad scaler, batch maker."""
    if run.device.type == "cpu":
        keep_freed_memory_for_reuse()
    torch.manual_seed(run.seed)
    np.random.seed(run.seed % (2**32))
    network = build_network(run.architecture, input_channels=run.num_input_channels, num_classes=run.num_heads,
                            deep_supervision=run.config.deep_supervision).to(run.device)
    cfg = run.config
    check_component_names(cfg)
    optimizer = OPTIMIZERS[cfg.optimizer](network.parameters(), lr=cfg.initial_lr, weight_decay=cfg.weight_decay,
                                          momentum=cfg.momentum)
    scaler = torch.amp.GradScaler("cuda") if run.device.type == "cuda" and run.precision == "fp16" else None
    runner = torch.compile(network) if use_compile(run) else network
    task = task_of(cfg.task)
    if task is None:
        return Components(runner, network, optimizer, scaler, _loss(run), standard_batches(run))
    return Components(runner, network, optimizer, scaler, _loss(run), task.make_batches(run), task.make_prepare(run))


def use_compile(run: RunSpec) -> bool:
    """nnU-Net's rule: compile on CUDA unless ``nnUNet_compile``/``compile`` says false; never on CPU, MPS, Windows."""
    if run.config.compile.lower() in ("false", "0", "f", "off", "no"):
        return False
    return run.device.type == "cuda" and os.name != "nt"


def pretrained_target(run: RunSpec, dataset_json: dict[str, Any]) -> TargetInfo:
    """What ``-pretrained_weights`` load into: the dataset's channels, a cascade's label maps, the task's inputs."""
    task = task_of(run.config.task)
    return TargetInfo.from_dataset_json(dataset_json, new_channels=run.config.pretrained_new_channels,
                                        extra_channels=[f"previous stage label {c}" for c in run.cascade_labels],
                                        task_channels=[] if task is None else task.input_names(run))
