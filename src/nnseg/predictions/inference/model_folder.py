"""A trained model folder (``nnUNet_results/DatasetX/<Trainer>__<Plans>__<config>``) and its networks.

The folder holds ``plans.json``, ``dataset.json`` and ``fold_<k>/checkpoint_*.pth``. The network is built from the
plans' ``architecture`` through :func:`nnseg.networks.build_network` (no class is imported by its dotted name), so a
model trained with any trainer subclass whose network is the planned one (e.g. ``nnUNetTrainer_bench``) predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nnseg._types import PathLike
from nnseg.jsonio import load_json
from nnseg.plans.schema import ConfigurationPlans, Plans
from nnseg.predictions.inference.checkpoint import (
    load_checkpoint,
    mirroring_axes,
    network_state_dict,
)
from nnseg.predictions.inference.defaults import DEFAULT_FOLDS, Fold  # noqa: F401 (re-exported)
from nnseg.raw.dataset_json import DatasetSpec


@dataclass(frozen=True)
class TrainedModel:
    """What a model folder says about its network and data (checkpoints are loaded separately).

    Attributes:
        folder: the model folder.
        plans, dataset_json: the parsed ``plans.json`` / ``dataset.json`` of the folder; ``plans_json`` and
            ``dataset_json_dict`` are the raw dicts (copied verbatim into prediction output folders).
        configuration_name: e.g. ``3d_fullres_bs2``; ``configuration`` its resolved plans.
        trainer_name: from the folder name (``<Trainer>__<Plans>__<config>``) or the checkpoint.
    """

    folder: Path
    plans: Plans
    configuration_name: str
    configuration: ConfigurationPlans
    spec: DatasetSpec
    trainer_name: str
    plans_json: dict[str, Any]
    dataset_json_dict: dict[str, Any]

    @property
    def num_input_channels(self) -> int:
        """Image channels (+ one-hot channels of the previous stage's foreground labels for a cascade)."""
        extra = len(self.spec.foreground_labels) if self.configuration.previous_stage else 0
        return self.spec.num_channels + extra

    @property
    def num_outputs(self) -> int:
        """Segmentation heads: number of foreground regions (region models) or of labels incl. background."""
        if self.spec.has_regions:
            return len(self.spec.foreground_regions)
        return len(self.spec.all_labels)


def model_folder_name(trainer: str, plans_identifier: str, configuration: str) -> str:
    """``<Trainer>__<Plans>__<config>`` as nnU-Net names results folders."""
    return f"{trainer}__{plans_identifier}__{configuration}"


def resolve_model_folder(results_root: PathLike, dataset_name: str, *, trainer: str = "nnUNetTrainer",
                         plans_identifier: str = "nnUNetPlans", configuration: str) -> Path:
    """``results_root/dataset_name/<Trainer>__<Plans>__<config>``, checked to exist.

    Raises:
        FileNotFoundError: the folder does not exist; the message lists the model folders of the dataset.
    """
    dataset_folder = Path(results_root) / dataset_name
    folder = dataset_folder / model_folder_name(trainer, plans_identifier, configuration)
    if not folder.is_dir():
        found = sorted(p.name for p in dataset_folder.iterdir() if p.is_dir()) if dataset_folder.is_dir() else []
        raise FileNotFoundError(
            f"no trained model {folder}; model folders of {dataset_name}: {found or 'none'}. Check -tr/-p/-c, "
            f"or install the model (nnUNetv2_install_pretrained_model_from_zip)")
    return folder


def _split_folder_name(folder: Path) -> tuple[str, str, str] | None:
    parts = folder.name.split("__")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def load_trained_model(folder: PathLike, *, configuration: str | None = None) -> TrainedModel:
    """Read ``plans.json`` and ``dataset.json`` of a model folder.

    Args:
        folder: the model folder.
        configuration: configuration name; default from the folder name ``<Trainer>__<Plans>__<config>``.

    Raises:
        FileNotFoundError: the folder or one of its json files is missing.
        ValueError: the configuration cannot be determined or is not in the plans, or the folder holds an interactive
            model (``inference_info.json``).
    """
    folder = Path(folder)
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; a model folder holds plans.json, dataset.json and "
                                    f"fold_<k>/checkpoint_final.pth (is {folder} a model folder?)")
    if (folder / "inference_info.json").is_file():
        raise ValueError(f"{folder} is an interactive model (it has inference_info.json): it segments what prompts "
                         "point at, not automatically. Run it with `nnseg serve --interactive FOLDER` or "
                         "nnseg.interactive.InteractiveSession (docs/INTERACTIVE.md)")
    plans_json, dataset_json = load_json(folder / "plans.json"), load_json(folder / "dataset.json")
    parts = _split_folder_name(folder)
    if configuration is None:
        if parts is None:
            raise ValueError(f"cannot tell the configuration of {folder}: its name is not <Trainer>__<Plans>__<config>; "
                             "pass the configuration explicitly")
        configuration = parts[2]
    plans = Plans.from_json(plans_json, source=folder / "plans.json")
    return TrainedModel(
        folder=folder, plans=plans, configuration_name=configuration, configuration=plans.configuration(configuration),
        spec=DatasetSpec.from_json(dataset_json, source=folder / "dataset.json"),
        trainer_name=parts[0] if parts else "", plans_json=plans_json, dataset_json_dict=dataset_json)


def fold_folder_name(fold: Fold) -> str:
    return "fold_all" if str(fold) == "all" else f"fold_{int(fold)}"


def parse_folds(folds: Sequence[Fold] | None) -> list[Fold] | None:
    """Folds as given on the command line (``0 1``, ``all``) -> ints or ``'all'``; None stays None (auto-detect).

    Raises:
        ValueError: an entry is neither an integer nor ``all``.
    """
    if folds is None:
        return None
    out: list[Fold] = []
    for f in folds:
        text = str(f).strip()
        if text == "all":
            out.append("all")
        elif text.lstrip("-").isdigit() and int(text) >= 0:
            out.append(int(text))
        else:
            raise ValueError(f"fold {f!r} is not a fold number (0, 1, ...) or 'all'")
    return out


def fold_of(fold_folder: PathLike) -> Fold:
    """The fold a ``fold_X`` folder holds: ``fold_3`` -> 3, ``fold_all`` -> ``'all'`` (any other suffix as text)."""
    suffix = Path(fold_folder).name[len("fold_"):]
    return int(suffix) if suffix.isdigit() else suffix


def available_folds(folder: PathLike, *, checkpoint_name: str = "checkpoint_final.pth") -> list[Fold]:
    """Folds of a model folder that hold ``checkpoint_name`` (nnU-Net's auto-detection when no -f is given)."""
    found: list[Fold] = []
    for sub in sorted(Path(folder).glob("fold_*")):
        if (sub / checkpoint_name).is_file():
            found.append(fold_of(sub))
    return found


def checkpoint_paths(folder: PathLike, folds: Sequence[Fold] | None, *,
                     checkpoint_name: str = "checkpoint_final.pth") -> list[Path]:
    """The checkpoint file of every fold.

    Raises:
        FileNotFoundError: a fold folder or checkpoint is missing (the message lists the folds and checkpoints found).
    """
    folder = Path(folder)
    chosen = available_folds(folder, checkpoint_name=checkpoint_name) if folds is None else list(folds)
    if not chosen:
        raise FileNotFoundError(f"no fold_*/{checkpoint_name} in {folder}; {_describe_folds(folder)}")
    paths = [folder / fold_folder_name(f) / checkpoint_name for f in chosen]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing checkpoint(s) {[str(p.relative_to(folder)) for p in missing]} in {folder}; "
                                f"{_describe_folds(folder)}. Pick other folds with -f or a checkpoint with -chk")
    return paths


def _describe_folds(folder: Path) -> str:
    rows = []
    for sub in sorted(folder.glob("fold_*")):
        ckpts = sorted(p.name for p in sub.glob("checkpoint*.pth"))
        rows.append(f"{sub.name}: {ckpts or 'no checkpoints'}")
    return "found " + ("; ".join(rows) if rows else "no fold_* folders")


@dataclass
class FoldWeights:
    """The weights of each fold and the checkpoint facts inference needs."""

    state_dicts: list[dict[str, torch.Tensor]]
    mirroring_axes: tuple[int, ...] | None
    trainer_name: str
    configuration_name: str | None


def load_fold_weights(paths: Sequence[Path]) -> FoldWeights:
    """Load every checkpoint safely (CPU tensors); mirroring axes and names come from the first one."""
    states, axes, trainer, config = [], None, "", None
    for i, path in enumerate(paths):
        ckpt = load_checkpoint(path)
        states.append(network_state_dict(ckpt))
        if i == 0:
            axes = mirroring_axes(ckpt)
            trainer = str(ckpt.get("trainer_name", ""))
            init_args = ckpt.get("init_args") or {}
            config = init_args.get("configuration") if isinstance(init_args, dict) else None
    return FoldWeights(states, axes, trainer, config)


def build_inference_network(model: TrainedModel, *, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The planned network (no deep supervision) in eval mode on ``device``, weights not yet loaded."""
    from nnseg.networks import build_network

    network = build_network(model.configuration.architecture, input_channels=model.num_input_channels,
                            num_classes=model.num_outputs, deep_supervision=False)
    return network.to(device).eval()


def load_weights(network: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Load weights strictly; a mismatch names the differing keys (wrong plans/configuration for this checkpoint)."""
    try:
        network.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ValueError(f"the weights in {source} do not fit the network the plans describe ({str(e).splitlines()[0]} ...); "
                         "is the checkpoint from this plans/configuration?") from None
