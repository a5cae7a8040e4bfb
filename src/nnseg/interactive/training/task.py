"""The training task ``interactive``: promptable training on an ordinary labelled dataset.

Each sample of nnU-Net's batch (sampled, augmented) becomes one object: a foreground label (or region) present in the
patch, or one of its connected components; the target is that object against everything else. The simulated user's
initial prompt is drawn into the interaction channels appended to the image (``episodes.initial_prompt``). On a
share of the training batches the network then predicts without gradients and the user corrects it, up to
``interactive_corrections`` times (the prediction becomes the previous-mask input, a corrective prompt is placed in
an error region); the step then trains on the corrected inputs. The run writes an nnInteractive model folder.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from nnseg.devices import autocast_context
from nnseg.interactive.capabilities import capabilities_from_json
from nnseg.interactive.model import NUM_OUTPUTS
from nnseg.interactive.training.episodes import correction, initial_prompt
from nnseg.interactive.training.simulate import Layout
from nnseg.raw.dataset_json import DatasetSpec
from nnseg.training.augment.base import Batch
from nnseg.training.data import BatchMaker, make_targets
from nnseg.training.run_spec import RunSpec, standard_batches
from nnseg.training.tasks import Prepare

CORRECTIONS = 2  # batch_rng kind of the corrections (0 and 1: training and validation batches)
COMPONENT_SHARE = 0.5  # objects that are one connected component of a label (when it has several in the patch)
MIN_COMPONENT_VOXELS = 10
INFERENCE_INFO = {
    "inference_class": "nnInteractiveInferenceSession",
    "inference_class_min_version": "2.6.0",
    "supported_interactions": {"points": True, "bbox2d": True, "bbox3d": True, "scribble": True, "lasso": True},
    "supports_initial_label": True,
    "supports_zero_shot_label_refinement": True,
    "interaction_channels": 6,
    "channel_mapping": {"prev_seg": 0, "bbox2d": [1, 2], "bbox3d": [1, 2], "lasso": [1, 2], "points": [3, 4],
                        "scribble": [5, 6]},
    "point_radius": 4,
    "preferred_scribble_thickness": [2, 2, 2],
    "interaction_decay": 0.98,
    "pad_mode_image": "constant",
    "trained_by": "nnseg nnsegInteractiveTrainer",
}


def layout() -> Layout:
    """Where the simulated prompts go: the channels :data:`INFERENCE_INFO` declares."""
    return Layout.from_capabilities(capabilities_from_json(INFERENCE_INFO, source=Path("inference_info.json")))


def object_classes(dataset_json: dict) -> list[tuple[int, ...]]:
    """The label values of each object class: every foreground label, or every region of a region dataset."""
    spec = DatasetSpec.from_json(dataset_json)
    return [tuple(int(v) for v in r) if isinstance(r, (tuple, list)) else (int(r),)
            for r in spec.foreground_labels_or_regions]


def choose_object(seg: np.ndarray, classes: list[tuple[int, ...]], rng: np.random.Generator) -> np.ndarray:
    """One object of a sample's labels: a class present in the patch, or (``COMPONENT_SHARE``) one of its connected
    components (drawn by size among those of at least ``MIN_COMPONENT_VOXELS``); empty when no class is present."""
    present = [c for c in classes if np.isin(seg, c).any()]
    if not present:
        return np.zeros(seg.shape, dtype=bool)
    obj = np.isin(seg, present[int(rng.integers(len(present)))])
    if rng.random() < COMPONENT_SHARE:
        labels, n = ndimage.label(obj)
        sizes = np.bincount(labels.ravel())[1:]
        big = np.flatnonzero(sizes >= MIN_COMPONENT_VOXELS)
        if n > 1 and len(big):
            obj = labels == big[int(rng.choice(len(big), p=sizes[big] / sizes[big].sum()))] + 1
    return obj


@dataclass
class InteractiveBatches(BatchMaker):
    """nnU-Net's batches turned into (image + interaction channels, binary object targets)."""

    classes: tuple[tuple[int, ...], ...] = ()
    layout: Layout = field(default_factory=layout)
    ignore_label: int | None = None

    def train_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._promptable(*self.augmented_batch(epoch, index))

    def val_batch(self, epoch: int, index: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self._promptable(*self.sampled_val_batch(epoch, index))

    def _promptable(self, batch: Batch, rng: np.random.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
        seg = batch.seg[:, 0].cpu().numpy()
        channels = np.zeros((seg.shape[0], self.layout.num_channels, *seg.shape[1:]), dtype=np.float32)
        target = np.zeros(seg.shape, dtype=np.int16)
        for b in range(seg.shape[0]):
            ignored = seg[b] == self.ignore_label if self.ignore_label is not None else np.zeros(seg[b].shape, bool)
            obj = choose_object(seg[b], list(self.classes), rng)
            initial_prompt(channels[b], obj, (seg[b] >= 0) & ~ignored, self.layout, rng)
            target[b] = obj
            if self.ignore_label is not None:
                target[b][ignored] = self.ignore_label
        image = torch.cat([batch.image, torch.from_numpy(channels).to(batch.image.device, batch.image.dtype)], 1)
        return image.contiguous(), make_targets(torch.from_numpy(target)[:, None].to(batch.image.device), self.targets)


def make_batches(run: RunSpec) -> InteractiveBatches:
    base = standard_batches(run)
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(BatchMaker)}
    return InteractiveBatches(**fields, classes=tuple(object_classes(run.init_args["dataset_json"])), layout=layout(),
                              ignore_label=run.ignore_label)


def make_prepare(run: RunSpec) -> Prepare | None:
    """Simulated corrections: on ``interactive_correction_prob`` of the training batches, 1 to
    ``interactive_corrections`` rounds of predict (no gradients) and correct."""
    steps, share = run.config.interactive_corrections, run.config.interactive_correction_prob
    if steps == 0 or share == 0:
        return None
    lay, image_channels = layout(), run.num_input_channels - layout().num_channels

    def prepare(network: nn.Module, image: torch.Tensor, targets: list[torch.Tensor], epoch: int, index: int,
                train: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rng = np.random.default_rng([run.seed, epoch, index, CORRECTIONS])
        if not train or rng.random() >= share:
            return image, targets
        target = targets[0][:, 0].cpu().numpy()
        valid = target != (run.ignore_label if run.ignore_label is not None else -1)
        channels = image[:, image_channels:].cpu().numpy().copy()
        for _ in range(int(rng.integers(1, steps + 1))):
            with torch.no_grad(), autocast_context(image.device, run.precision):
                out = network(image)
            prediction = (out[0] if isinstance(out, (list, tuple)) else out).argmax(1).cpu().numpy() == 1
            for b in range(image.shape[0]):
                correction(channels[b], target[b] == 1, prediction[b], valid[b], lay, rng)
            image = torch.cat([image[:, :image_channels], torch.from_numpy(channels).to(image.device, image.dtype)], 1)
        return image.contiguous(), targets
    return prepare


def adapt_run(run: RunSpec) -> RunSpec:
    """Image channels + interaction channels in, 2 outputs (object, background); refuses what it cannot train."""
    where = f"(training {run.output_folder})"
    if run.prev_stage_folder is not None:
        raise ValueError(f"the interactive task trains on one configuration's images; a cascade stage {where} takes the "
                         "previous stage's labels as input: train 3d_fullres (or 2d / 3d_lowres) instead")
    if run.partial is not None:
        raise ValueError(f"the interactive task needs complete labels, the dataset declares annotated_labels {where}: "
                         "an unannotated label is not background, so objects and errors cannot be simulated there")
    if run.config.full_val_every:
        raise ValueError(f"full_val_every={run.config.full_val_every} runs automatic whole-image validation, which an "
                         f"interactive model cannot do {where}; leave it at 0 (its final validation is a simulated user)")
    _note_normalisation(run)
    return dataclasses.replace(run, num_input_channels=run.num_input_channels + layout().num_channels,
                               num_heads=NUM_OUTPUTS, regions=None)


def _note_normalisation(run: RunSpec) -> None:
    """The session z-scores every image itself: a plan that normalises otherwise (CT) trains on other intensities."""
    plans = run.init_args.get("plans") or {}
    cfg = plans.get("configurations", {}).get(run.init_args.get("configuration"), {})
    schemes = [s for s in cfg.get("normalization_schemes", []) if s != "ZScoreNormalization"]
    if schemes:
        print(f"note: the plans normalise with {schemes}, but an interactive session z-scores each image with its own "
              "mean and standard deviation: the model will see other intensities than in training. Plan with "
              "ZScoreNormalization for interactive models (docs/INTERACTIVE.md)", file=sys.stderr)


def input_names(run: RunSpec) -> list[str]:
    """The prompt channels' names, e.g. ``prompt 3: points +`` (fine-tuning from an automatic model starts them at
    zero, so training begins from that model's segmentation)."""
    lay = layout()
    kinds: dict[int, list[str]] = {lay.prev_seg: ["previous mask"]}
    for kind, (pos, neg) in lay.pairs.items():
        kinds.setdefault(pos, []).append(f"{kind} +")
        kinds.setdefault(neg, []).append(f"{kind} -")
    return [f"prompt {i}: {', '.join(kinds.get(i, ['unused']))}" for i in range(lay.num_channels)]


def model_files(run: RunSpec) -> dict:
    return {"inference_info.json": dict(INFERENCE_INFO)}
