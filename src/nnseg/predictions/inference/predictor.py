"""A loaded model ready to predict: :class:`Predictor` (plans, dataset.json, one network per fold on a device).

It turns preprocessed arrays into logits: sliding window with Gaussian weighting, mirroring TTA, folds averaged as
nnU-Net does (logits summed, then divided), autocast in the chosen precision. Also the report types of a run
(:class:`CaseTiming`, :class:`PredictionReport`). The runs themselves (folders, file lists, arrays) are in
:mod:`nnseg.predictions.run.predict`; this module imports none of the run machinery, so every part of it may import this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseg import devices
from nnseg._types import Geometry, PathLike
from nnseg.devices import (
    autocast_context,
    keep_freed_memory_for_reuse,
    release_free_heap,
    resolve_precision,
)
from nnseg.predictions.inference.memory_plan import largest_call_block, memory_budget, samples_per_call, tiles_per_call
from nnseg.predictions.inference.model_folder import (
    DEFAULT_FOLDS,
    Fold,
    TrainedModel,
    build_inference_network,
    checkpoint_paths,
    fold_of,
    load_fold_weights,
    load_trained_model,
    load_weights,
    parse_folds,
)
from nnseg.predictions.inference.options import PredictOptions
from nnseg.predictions.inference.sliding_window import sliding_window_predict
from nnseg.predictions.inference.tta import mirror_tta
from nnseg.preprocessed.preprocess import preprocess_case

__all__ = ["CaseTiming", "PredictionReport", "Predictor", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``'auto'``: the training rule :func:`nnseg.devices.auto_device` (CUDA, then MPS, then CPU); otherwise
    :func:`nnseg.devices.resolve_device` (checked).

    Raises:
        ValueError: unknown device, or CUDA/MPS requested but not available.
    """
    return devices.resolve_device("auto" if device is None else str(device))


TRIM_AFTER_BYTES = 1 << 28  # logits from this size on: free heap goes back to the OS before the export


@dataclass
class Predictor:
    """A loaded model ready to predict (build it with :meth:`from_model_folder`)."""

    model: TrainedModel
    networks: list[torch.nn.Module]
    mirror_axes: tuple[int, ...] | None
    device: torch.device
    precision: str
    step_size: float = 0.5
    use_tta: bool = True
    tile_batch_size: int | None = None
    accumulate_on_device: bool = True
    folds: list[Fold] = field(default_factory=list)
    max_memory_gb: float | None = None  # memory budget (None: from the free memory), see nnseg.predictions.inference.memory_plan

    @classmethod
    def from_model_folder(cls, model_folder: PathLike, *, folds: Sequence[Fold] | None = DEFAULT_FOLDS,
                          checkpoint: str = "checkpoint_final.pth", device: str | torch.device | None = None,
                          precision: str | None = None, step_size: float = 0.5, use_tta: bool = True,
                          tile_batch_size: int | None = None, accumulate_on_device: bool = True,
                          max_memory_gb: float | None = None) -> Predictor:
        """Load plans, dataset.json and the checkpoints of ``folds`` (None: every fold that has ``checkpoint``).

        Raises:
            FileNotFoundError: the folder, a json file or a checkpoint is missing (what exists is listed).
            ValueError: bad device/precision/step size, unsafe checkpoint, or weights that do not fit the plans.
        """
        PredictOptions(step_size=step_size, tile_batch_size=tile_batch_size)  # the option rules, before any loading
        dev = resolve_device(device)
        chosen = parse_folds(folds)
        paths = checkpoint_paths(model_folder, chosen, checkpoint_name=checkpoint)
        weights = load_fold_weights(paths)
        model = load_trained_model(model_folder, configuration=_configuration_name(model_folder, weights.configuration_name))
        networks = []
        for path, state in zip(paths, weights.state_dicts):
            net = build_inference_network(model, device=dev)
            load_weights(net, state, source=str(path))
            networks.append(net)
        predictor = cls(model=model, networks=networks, mirror_axes=weights.mirroring_axes, device=dev,
                        precision=resolve_precision(precision, dev), step_size=step_size, use_tta=use_tta,
                        tile_batch_size=tile_batch_size, accumulate_on_device=accumulate_on_device,
                        folds=[fold_of(p.parent) for p in paths], max_memory_gb=max_memory_gb)
        if dev.type == "cpu":  # the heap keeps one network call's blocks; accumulators and exports go back to the OS
            keep_freed_memory_for_reuse(largest_call_block(model, predictor.samples_in_one_call()))
        return predictor

    def samples_per_call(self) -> int:
        """Network samples per call (tiles x mirrored copies) that fit the memory budget, 1-8 (see memory_plan)."""
        return samples_per_call(self.model, memory_budget(self.max_memory_gb, self.device)[0], device=self.device)

    def tiles_per_call(self) -> int:
        """``tile_batch_size`` if set, else :meth:`samples_per_call` divided by the TTA passes (at least 1)."""
        return tiles_per_call(self.samples_per_call(), tile_batch_size=self.tile_batch_size,
                              tta_passes=self.tta_passes())

    def samples_in_one_call(self) -> int:
        """Samples (tiles x mirrored copies) the network gets per call."""
        copies = self.tta_passes() if self.tile_batch_size is not None else min(self.tta_passes(), self.samples_per_call())
        return self.tiles_per_call() * copies

    def tta_passes(self) -> int:
        return 2 ** len(self.mirror_axes) if self.use_tta and self.mirror_axes else 1

    def tta_predictor(self, net: torch.nn.Module) -> Any:
        """``net`` wrapped by mirroring TTA; as many mirrored copies share one call as :meth:`samples_per_call` allows
        (all of them with ``tile_batch_size``)."""
        per_call = self.tta_passes() if self.tile_batch_size is not None else self.samples_per_call()
        return mirror_tta(net, self.mirror_axes if self.use_tta else None, per_call=per_call)

    def predict_logits(self, data: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits ``(K, X, Y, Z)`` float32 of a preprocessed case ``(C, X, Y, Z)``, averaged over folds.

        The result lives on the device (CPU with ``accumulate_on_device=False``).
        """
        image = torch.as_tensor(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data, dtype=torch.float32)
        if image.shape[0] != self.model.num_input_channels:
            raise ValueError(f"input has {image.shape[0]} channels, the model expects {self.model.num_input_channels} "
                             f"(dataset.json channel_names {self.model.spec.channel_names})")
        image = image.to(self.device)
        acc = self.device if self.accumulate_on_device else torch.device("cpu")
        total: torch.Tensor | None = None
        for net in self.networks:
            predictor = self.tta_predictor(net)
            with autocast_context(self.device, self.precision):
                logits = sliding_window_predict(predictor, image, self.model.configuration.patch_size,
                                                num_outputs=self.model.num_outputs, step_size=self.step_size,
                                                batch_size=self.tiles_per_call(), device=self.device, accumulate_device=acc)
            total = logits if total is None else total + logits
        if total is None:
            raise RuntimeError("the predictor holds no networks; build it with Predictor.from_model_folder")
        if len(self.networks) > 1:
            total /= len(self.networks)
        if self.device.type == "cpu" and total.numel() * total.element_size() >= TRIM_AFTER_BYTES:
            release_free_heap()  # a large export follows: the network's reusable blocks need not stay resident
        return total

    def preprocess(self, data: np.ndarray, geometry: Geometry,
                   prev_stage_seg: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Preprocess raw ``(C, X, Y, Z)`` images with :func:`preprocess_case`; a cascade appends the previous stage."""
        model = self.model
        if data.shape[0] != model.spec.num_channels:
            raise ValueError(f"the case has {data.shape[0]} channel(s), the model expects {model.spec.num_channels} "
                             f"({model.spec.channel_names})")
        if model.configuration.previous_stage and prev_stage_seg is None:
            raise ValueError(f"configuration {model.configuration_name} is a cascade stage: pass the predictions of "
                             f"{model.configuration.previous_stage} (-prev_stage_predictions)")
        seg_in = prev_stage_seg if model.configuration.previous_stage else None
        pre, seg, props = preprocess_case(data, seg_in, geometry.to_properties(), plans=model.plans,
                                          configuration=model.configuration, spec=model.spec if seg_in is not None else None)
        if seg is not None:
            onehot = np.stack([(seg[0] == label) for label in model.spec.foreground_labels]).astype(np.float32)
            pre = np.concatenate([pre, onehot])
        props.pop("class_locations", None)
        return pre, props


def _configuration_name(folder: PathLike, from_checkpoint: str | None) -> str | None:
    parts = Path(folder).name.split("__")
    return parts[2] if len(parts) == 3 else from_checkpoint


@dataclass
class CaseTiming:
    """Seconds spent on one case (``read`` includes preprocessing)."""

    identifier: str
    read: float = 0.0
    network: float = 0.0
    export: float = 0.0
    after_network: float = 0.0  # bounded path: the export is interleaved; this is what remains after the network


@dataclass
class PredictionReport:
    """What a run did: outputs written, cases skipped (``continue_prediction``), timings; ``results``: per image held
    in memory its label map (or ``(seg, probabilities)``), in order."""

    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    timings: list[CaseTiming] = field(default_factory=list)
    wall_s: float = 0.0
    results: list[Any] = field(default_factory=list)

    @property
    def network_s(self) -> float:
        return sum(t.network for t in self.timings)
