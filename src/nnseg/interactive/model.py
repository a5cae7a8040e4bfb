"""Load an nnInteractive model folder (or write one): plans, dataset, capabilities and the network's weights.

Checkpoints are read with nnseg's safe loader (no arbitrary unpickling), networks are built from the plans through
nnseg's network registry with ``image channels + interaction channels`` inputs and 2 outputs (see docs/INTERACTIVE.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nnseg._types import PathLike
from nnseg.interactive.capabilities import Capabilities, read_capabilities
from nnseg.jsonio import atomic_path, load_json
from nnseg.plans.schema import ConfigurationPlans, Plans
from nnseg.predictions.inference.checkpoint import load_checkpoint, network_state_dict, save_checkpoint
from nnseg.predictions.inference.model_folder import load_weights
from nnseg.raw.dataset_json import DatasetSpec

NUM_OUTPUTS = 2  # nnInteractive's networks always segment one object against the background


@dataclass
class InteractiveModel:
    """A loaded nnInteractive model: the network (eval mode, on ``device``) and what the session needs.

    Attributes:
        folder: the model folder; ``fold``: the fold folder name used (``fold_0``).
        capabilities: from ``inference_info.json``.
        configuration_name, configuration: the plans configuration the checkpoint was trained with.
        num_image_channels: image channels the network expects before the interaction channels.
        trainer_name: from the checkpoint. ``license``: first line of ``LICENSE`` or ``!!MISSING!!``.
    """

    folder: Path
    fold: str
    capabilities: Capabilities
    configuration_name: str
    configuration: ConfigurationPlans
    num_image_channels: int
    network: torch.nn.Module
    trainer_name: str
    license: str

    @property
    def patch_size(self) -> list[int]:
        return [int(p) for p in self.configuration.patch_size]


def _fold_folder(folder: Path, fold: int | str | None, checkpoint_name: str) -> Path:
    if fold is not None:
        path = folder / ("fold_all" if str(fold) == "all" else f"fold_{int(fold)}")
    else:
        found = sorted(p for p in folder.glob("fold_*") if p.is_dir())
        if len(found) != 1:
            raise ValueError(f"{folder} holds {len(found)} fold folders ({[p.name for p in found]}); name the fold "
                             "to use (fold=...)")
        path = found[0]
    if not (path / checkpoint_name).is_file():
        raise FileNotFoundError(f"{path / checkpoint_name} does not exist; folds in {folder}: "
                                f"{sorted(p.name for p in folder.glob('fold_*'))}")
    return path


def _read_license(folder: Path, plans: dict[str, Any], configuration: str | None) -> str:
    path = folder / "LICENSE"
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return line.strip()
    if plans.get("dataset_name") == "Dataset225_nnInteractiveV2" and configuration == "3d_fullres_ps192_bs24":
        return "CC BY-NC-SA 4.0"  # nnInteractive's published v1 weights ship without a LICENSE file
    return "!!MISSING!!"


def _json_files(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; an nnInteractive model folder holds "
                                    "inference_info.json, plans.json, dataset.json and fold_<k>/checkpoint_final.pth")
    return load_json(folder / "plans.json"), load_json(folder / "dataset.json")


def load_interactive_model(folder: PathLike, *, fold: int | str | None = None,
                           checkpoint_name: str = "checkpoint_final.pth",
                           device: torch.device | str = "cpu") -> InteractiveModel:
    """Read an nnInteractive model folder and build its network with the checkpoint's weights.

    Raises:
        FileNotFoundError: a required file is missing (named).
        ValueError: bad capabilities, more than one fold without ``fold``, an unsafe checkpoint, or weights that
            do not fit the planned network.
    """
    folder = Path(folder)
    caps = read_capabilities(folder)
    plans_json, dataset_json = _json_files(folder)
    fold_path = _fold_folder(folder, fold, checkpoint_name)
    ckpt = load_checkpoint(fold_path / checkpoint_name)
    init_args = ckpt.get("init_args") if isinstance(ckpt.get("init_args"), dict) else {}
    plans = Plans.from_json(plans_json, source=folder / "plans.json")
    name = init_args.get("configuration") or _only_configuration(plans, folder)
    configuration = plans.configuration(name)
    spec = DatasetSpec.from_json(dataset_json, source=folder / "dataset.json")
    extra = len(spec.foreground_labels) if configuration.previous_stage else 0
    network = build_interactive_network(configuration, num_image_channels=spec.num_channels + extra,
                                        num_interaction_channels=caps.num_interaction_channels, initialize=False)
    load_weights(network, network_state_dict(ckpt), source=str(fold_path / checkpoint_name))
    return InteractiveModel(folder=folder, fold=fold_path.name, capabilities=caps, configuration_name=name,
                            configuration=configuration, num_image_channels=spec.num_channels + extra,
                            network=network.to(device).eval(), trainer_name=str(ckpt.get("trainer_name", "")),
                            license=_read_license(folder, plans_json, name))


def _only_configuration(plans: Plans, folder: Path) -> str:
    names = plans.available_configurations()
    if len(names) != 1:
        raise ValueError(f"the checkpoint in {folder} does not name its configuration (init_args) and the plans hold "
                         f"{names}; add init_args.configuration to the checkpoint")
    return names[0]


def build_interactive_network(configuration: ConfigurationPlans, *, num_image_channels: int,
                              num_interaction_channels: int, initialize: bool = True) -> torch.nn.Module:
    """The planned network with the interaction channels as extra inputs and 2 outputs, no deep supervision."""
    from nnseg.networks import build_network

    return build_network(configuration.architecture, input_channels=num_image_channels + num_interaction_channels,
                         num_classes=NUM_OUTPUTS, deep_supervision=False, initialize=initialize)


def save_interactive_model(folder: PathLike, *, network: torch.nn.Module, plans_json: dict[str, Any],
                           dataset_json: dict[str, Any], configuration: str, inference_info: dict[str, Any],
                           fold: int | str = 0, trainer_name: str = "nnInteractiveTrainer_stub",
                           license_text: str | None = None, extra_checkpoint: dict[str, Any] | None = None) -> Path:
    """Write an nnInteractive model folder that nnInteractive's own session and server load.

    Every file is written under a temporary name and renamed. Returns the checkpoint path. The default trainer name
    is the one nnInteractive resolves inside its own package (its network is the plans' network), so loading does
    not search, and import, every nnU-Net trainer.
    """
    folder = Path(folder)
    fold_dir = folder / ("fold_all" if str(fold) == "all" else f"fold_{int(fold)}")
    fold_dir.mkdir(parents=True, exist_ok=True)
    for name, content in (("plans.json", plans_json), ("dataset.json", dataset_json),
                          ("inference_info.json", inference_info)):
        with atomic_path(folder / name) as tmp:
            Path(tmp).write_text(json.dumps(content, indent=4), encoding="utf-8")
    if license_text is not None:
        with atomic_path(folder / "LICENSE") as tmp:
            Path(tmp).write_text(license_text.rstrip("\n") + "\n", encoding="utf-8")
    weights = {k: v.detach().cpu() for k, v in getattr(network, "_orig_mod", network).state_dict().items()}
    ckpt = {"network_weights": weights, "trainer_name": trainer_name, "init_args": {"configuration": configuration},
            "current_epoch": 0, **(extra_checkpoint or {})}
    save_checkpoint(ckpt, fold_dir / "checkpoint_final.pth")
    return fold_dir / "checkpoint_final.pth"
