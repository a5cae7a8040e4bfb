"""TrainConfig: every training knob in one dataclass with nnU-Net's defaults, and nnU-Net's trainer names as presets.

nnU-Net varies training by subclassing (``nnUNetTrainer_250epochs``). nnseg keeps those names, so the results folder
``<Trainer>__<Plans>__<config>`` and ``-tr`` for prediction are the same in both tools, but a name is only a preset of
this dataclass. Overrides beyond the preset are saved in the fold's ``train_config.json``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from nnseg.jsonio import to_jsonable
from nnseg.registry import Registry

NNUNET_EPOCH_PRESETS = (1, 5, 10, 20, 50, 100, 250, 500, 750, 2000, 4000, 8000)
DEFAULT_TRAINER = "nnUNetTrainer"
RUNTIME_ONLY_FIELDS = ("compile", "cpu_threads")  # how, not what, is computed: may change between a run and its continuation
_EPOCHS_RE = re.compile(r"^nnUNetTrainer_(\d+)epochs?(_NoMirroring)?$")


@dataclass(frozen=True)
class TrainConfig:
    """nnU-Net v2's training recipe (reference §1.9). Change a field with ``--set key=value``."""

    num_epochs: int = 1000
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    initial_lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99
    optimizer: str = "sgd_nesterov"
    lr_schedule: str = "poly"
    grad_clip: float = 12.0
    loss: str = "dice_ce"
    dice_smooth: float = 1e-5
    oversample_foreground: float = 0.33
    deep_supervision: bool = True
    mirroring: bool = True
    augmentation: str = "default"  # a name in training.augment.pipeline.AUGMENTATIONS: "default" or "none"
    network: str | None = None  # a name in networks.NETWORKS replacing the plans' network class (None: the planned one)
    batch_size: int | None = None
    seed: int | None = None
    precision: str = "auto"
    compile: str = "auto"
    cpu_threads: int = 0  # CPU training: torch threads; 0 = the cores other processes leave free (training.cpu_threads)
    early_stopping_patience: int | None = None
    time_budget_hours: float | None = None
    save_every: int = 50
    ema_alpha: float = 0.9
    full_val_every: int = 0  # whole-image validation every N epochs (0: off); checkpoint_best and early stopping use it
    pretrained_new_channels: str = "mean"  # -pretrained_weights: input channels the source lacks ("mean", "zero", "random")
    task: str = "segmentation"  # a name in training.tasks.TASKS ("interactive": promptable training, see docs/INTERACTIVE.md)
    interactive_corrections: int = 3  # task interactive: at most this many simulated corrective prompts per batch
    interactive_correction_prob: float = 0.5  # task interactive: share of batches that get corrective prompts

    def __post_init__(self) -> None:
        """Every value is checked against its rule in :data:`FIELD_RULES` when a TrainConfig is made (or changed)."""
        for name, problem in config_problems(self).items():
            raise ValueError(f"TrainConfig {name}={getattr(self, name)!r} is invalid: it must be {problem}. "
                             f"Set it with --set {name}=VALUE (default {getattr(TrainConfig, name, None)!r})")
        patience, every = self.early_stopping_patience, self.full_val_every
        if patience is not None and every and patience < every:
            raise ValueError(f"--early-stopping {patience} is shorter than full_val_every={every}: with whole-image "
                             f"validation the patience counts epochs since its best Dice, so it must be at least "
                             f"{every} (or validate more often)")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_at_least(low: int, *, optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return (optional and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= low)
    return ok, f"an integer >= {low}" + (" or none" if optional else "")


def _float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
              optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if optional and v is None:
            return True
        if not _number(v) or math.isnan(v) or (math.isinf(v) and high != math.inf):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    text = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return ok, text + (" or none" if optional else "")


def _choice(*values: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, str) and v.lower() in values), f"one of {list(values)}"


def _bool() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool)), "true or false"


def _name() -> tuple[Callable[[Any], bool], str]:  # registered names: checked by run_spec.check_component_names
    return (lambda v: isinstance(v, str) and bool(v)), "a registered name"


INF = math.inf
FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_epochs": _int_at_least(1), "iterations_per_epoch": _int_at_least(1), "val_iterations_per_epoch": _int_at_least(0),
    "initial_lr": _float_in(0, INF, high_open=True), "weight_decay": _float_in(0, INF, high_open=True),
    "momentum": _float_in(0, 1, low_open=True, high_open=True), "optimizer": _name(), "lr_schedule": _name(),
    "grad_clip": _float_in(0, INF, low_open=True), "loss": _name(), "dice_smooth": _float_in(0, INF, high_open=True),
    "oversample_foreground": _float_in(0, 1), "deep_supervision": _bool(), "mirroring": _bool(), "augmentation": _name(),
    "batch_size": _int_at_least(1, optional=True), "seed": _int_at_least(0, optional=True),
    "precision": _choice("auto", "fp32", "bf16", "fp16"),
    "compile": _choice("auto", "true", "false", "1", "0", "t", "f", "yes", "no", "on", "off"),
    "early_stopping_patience": _int_at_least(1, optional=True),
    "time_budget_hours": _float_in(0, INF, low_open=True, high_open=True, optional=True),
    "save_every": _int_at_least(1), "ema_alpha": _float_in(0, 1),
    "network": ((lambda v: v is None or (isinstance(v, str) and bool(v))), "a registered network name or none"),
    "cpu_threads": _int_at_least(0), "pretrained_new_channels": _choice("mean", "zero", "random"),
    "full_val_every": _int_at_least(0), "task": _name(), "interactive_corrections": _int_at_least(0),
    "interactive_correction_prob": _float_in(0, 1),
}


def config_problems(config: TrainConfig) -> dict[str, str]:
    """``{field: what it must be}`` for every field whose value breaks its rule in :data:`FIELD_RULES`."""
    return {name: text for name, (ok, text) in FIELD_RULES.items() if not ok(getattr(config, name))}


TRAINER_PRESETS: Registry[TrainConfig] = Registry("trainer preset")
"""User presets (``-tr NAME``), added by extensions: ``TRAINER_PRESETS.add("MyPreset", TrainConfig(loss=...))``."""


def preset_for_trainer(name: str) -> TrainConfig:
    """The TrainConfig an nnU-Net trainer name (or a preset an extension registered) stands for.

    Raises:
        ValueError: a trainer name nnseg has no preset for (the message lists the known ones).
    """
    if name not in known_trainer_names() and name in TRAINER_PRESETS:
        preset = TRAINER_PRESETS[name]
        if not isinstance(preset, TrainConfig):
            raise ValueError(f"trainer preset {name!r} is a {type(preset).__name__}, not a TrainConfig; register "
                             "TrainConfig(...) objects in TRAINER_PRESETS")
        return preset
    base = TrainConfig()
    if name == DEFAULT_TRAINER:
        return base
    if name == "nnUNetTrainerNoMirroring":
        return base.replace(mirroring=False)
    if name == "nnUNetTrainerNoDA":
        return base.replace(augmentation="none", mirroring=False)
    m = _EPOCHS_RE.match(name)
    if m and int(m.group(1)) >= 1:
        epochs, mirroring = int(m.group(1)), m.group(2) is None
        if name == trainer_name_for_epochs(epochs, mirroring=mirroring):
            return base.replace(num_epochs=epochs, mirroring=mirroring)
    known = ", ".join(known_trainer_names() + TRAINER_PRESETS.names())
    raise ValueError(f"unknown trainer {name!r}; nnseg knows {known} (any nnUNetTrainer_<N>epochs[_NoMirroring] works too). "
                     "Other settings go through --set key=value instead of a trainer class, or register a preset in "
                     "an extension (docs/EXTENSIONS.md)")


def known_trainer_names() -> list[str]:
    names = [DEFAULT_TRAINER, "nnUNetTrainerNoMirroring", "nnUNetTrainerNoDA"]
    for n in NNUNET_EPOCH_PRESETS:
        stem = "nnUNetTrainer_1epoch" if n == 1 else f"nnUNetTrainer_{n}epochs"
        names += [stem, f"{stem}_NoMirroring"]
    return names


def nnunet_trainer_class(name: str) -> str:
    """The nnU-Net trainer class to record in checkpoints for results folder ``name``.

    nnU-Net's predictor looks the checkpoint's ``trainer_name`` up among its own classes (only to build the network,
    which all of them build from the plans). For a name nnU-Net does not ship (``--epochs 40`` gives
    ``nnUNetTrainer_40epochs``) the closest shipped class is recorded, so nnU-Net can predict with the model too.
    """
    if name in known_trainer_names():
        return name
    return "nnUNetTrainerNoMirroring" if name.endswith("_NoMirroring") else DEFAULT_TRAINER


def trainer_name_for_epochs(epochs: int, *, mirroring: bool = True) -> str:
    """The nnU-Net trainer name of ``--epochs N`` (``1`` is nnU-Net's ``nnUNetTrainer_1epoch``)."""
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    stem = "nnUNetTrainer_1epoch" if epochs == 1 else f"nnUNetTrainer_{epochs}epochs"
    return stem if mirroring else f"{stem}_NoMirroring"


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` into a typed value for that TrainConfig field."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    types = {f.name: f.type for f in fields(TrainConfig)}
    if key not in types:
        raise ValueError(f"--set {text!r}: unknown field {key!r}; fields: {sorted(types)}")
    kind = str(types[key])
    if raw.lower() in ("none", "null") and "None" in kind:
        return key, None
    try:
        if kind.startswith("bool"):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return key, raw.lower() in ("true", "1")
        if kind.startswith("int"):
            return key, int(raw)
        if kind.startswith("float"):
            return key, float(raw)
    except ValueError:
        raise ValueError(f"--set {text!r}: {raw!r} is not a valid {kind}") from None
    return key, raw


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    return config.replace(**dict(parse_override(o) for o in overrides))


def config_differences(saved: TrainConfig, requested: TrainConfig) -> list[str]:
    """Human-readable list of fields that differ (``name: saved -> requested``)."""
    out = []
    for f in fields(TrainConfig):
        if f.name in RUNTIME_ONLY_FIELDS:
            continue
        a, b = getattr(saved, f.name), getattr(requested, f.name)
        if a != b:
            out.append(f"{f.name}: {a!r} (saved) vs {b!r} (requested)")
    return out
