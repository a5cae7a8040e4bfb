"""A small nnInteractive model folder for tests: the golden Hippocampus plans with a 3-stage U-Net (patch 80³), random
weights (seeded), written by nnseg as nnInteractive writes its folders. Also a synthetic image with two blobs.

A plain module at the tests root (on sys.path like shared_paths) so tests can import it by a unique name."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from shared_paths import EXPECTED

PATCH = [80, 80, 80]
CONFIGURATION = "3d_fullres_interactive_tiny"
INFERENCE_INFO = {
    "inference_class": "nnInteractiveInferenceSession",
    "supported_interactions": {"points": True, "bbox2d": True, "bbox3d": True, "scribble": True, "lasso": True},
    "interaction_channels": 6, "point_radius": 4, "interaction_decay": 0.98, "preferred_scribble_thickness": [2, 2, 2],
    "pad_mode_image": "constant",
}


def tiny_plans() -> dict:
    plans = json.loads((EXPECTED / "Dataset004_Hippocampus" / "nnUNetPlans.json").read_text())
    cfg = copy.deepcopy(plans["configurations"]["3d_fullres"])
    cfg.update(patch_size=PATCH, data_identifier="nnUNetPlans_interactive_tiny")
    cfg["architecture"]["arch_kwargs"].update(
        n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3, 3, 3]] * 3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1])
    plans["configurations"] = {CONFIGURATION: cfg}
    return plans


def dataset_json() -> dict:
    return {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "object": 1}, "numTraining": 1,
            "file_ending": ".nii.gz"}


# input channels: image 0, then nnInteractive's default mapping shifted by one: previous mask 1, box/lasso (2, 3),
# points (4, 5), scribble (6, 7)
SIGNAL = {0: 0.3, 1: 0.6, 2: 1.0, 3: -1.0, 4: 1.0, 5: -1.0, 6: 1.0, 7: -1.0}


def make_prompt_driven(network: torch.nn.Module, *, threshold: float = 1.5) -> None:
    """Random weights segment noise, which sends every prompt to the maximal zoom-out. Route a weighted sum of the
    inputs (image, previous mask, positive minus negative prompts) through feature 0 of the top encoder stage and
    the skip into the last decoder stage, so the network segments what the prompts mark (a real prompt-driven
    network that nnInteractive's session and nnseg's must run alike); the deeper stages still compute but the last
    decoder stage ignores them."""
    with torch.no_grad():
        first = network.encoder.stages[0][0].convs[0].conv
        first.weight.zero_(); first.bias.zero_()
        for channel, weight in SIGNAL.items():
            first.weight[0, channel, 1, 1, 1] = weight
        last = network.decoder.stages[-1].convs[0].conv
        last.weight.zero_(); last.bias.zero_()
        skip_feature0 = last.weight.shape[1] // 2
        last.weight[0, skip_feature0, 1, 1, 1] = 1.0
        seg = network.decoder.seg_layers[-1]
        seg.weight.zero_()
        seg.weight[1, 0] = 1.0
        seg.bias[:] = torch.tensor([threshold, 0.0])


def write_model_folder(folder: Path, *, seed: int = 0, inference_info: dict | None = None) -> Path:
    """Write the folder; the network is nnseg's, He-initialised with ``seed`` and made prompt-driven
    (:func:`make_prompt_driven`)."""
    from nnseg.interactive import build_interactive_network, save_interactive_model
    from nnseg.plans.schema import Plans

    plans = tiny_plans()
    torch.manual_seed(seed)
    cfg = Plans.from_json(plans).configuration(CONFIGURATION)
    network = build_interactive_network(cfg, num_image_channels=1, num_interaction_channels=7)
    make_prompt_driven(network)
    save_interactive_model(folder, network=network, plans_json=plans, dataset_json=dataset_json(),
                           configuration=CONFIGURATION, inference_info=inference_info or INFERENCE_INFO,
                           license_text="CC BY 4.0\nnnseg test model")
    return folder


def blob_image(shape=(48, 72, 104), seed: int = 0) -> np.ndarray:
    """``[1, x, y, z]`` float32: noise, a large ellipsoid and a small ball, brighter than the background."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    big = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (24, 36, 52), (12, 18, 44))) <= 1
    small = sum((g - c) ** 2 for g, c in zip(grid, (10, 62, 12))) <= 36
    image = rng.normal(0, 0.3, shape) + 2.0 * big + 3.0 * small
    return image.astype(np.float32)[None]


def write_training_dataset(folder: Path, *, plans: dict, configuration: str, n: int = 4,
                           shape: tuple[int, int, int] = (20, 20, 20), seed: int = 0) -> Path:
    """A preprocessed dataset for interactive training, written straight to the store: ``n`` cases of two labelled
    balls (label 2 in two pieces, so objects can be connected components) on noise; ``folder`` is
    ``nnUNet_preprocessed/DatasetX_Name``."""
    from nnseg.preprocessed.class_locations import sample_class_locations
    from nnseg.preprocessed.store import save_case

    cfg = plans["configurations"][configuration]
    data_folder = folder / cfg["data_identifier"]
    data_folder.mkdir(parents=True, exist_ok=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps({**plans, "dataset_name": folder.name}))
    spec = {**dataset_json(), "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": n}
    (folder / "dataset.json").write_text(json.dumps(spec))
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    for i in range(n):
        seg = np.zeros(shape, np.int16)
        for label, pieces in ((1, 1), (2, 2)):
            for _ in range(pieces):
                centre = [rng.uniform(0.25 * s, 0.75 * s) for s in shape]
                seg[sum((g - c) ** 2 for g, c in zip(grid, centre)) <= rng.uniform(2.5, 4.0) ** 2] = label
        data = (seg[None] * 1.5 + rng.normal(0, 0.5, (1, *shape))).astype(np.float32)
        props = {"spacing": [1.0] * 3, "shape_before_cropping": list(shape),
                 "bbox_used_for_cropping": [[0, s] for s in shape], "shape_after_cropping_and_before_resampling":
                     list(shape), "class_locations": sample_class_locations(seg[None], [1, 2])}
        save_case(data_folder, f"case_{i:03d}", data, seg[None], props, patch_size=cfg["patch_size"])
    return folder


def small_plans(patch: int = 16) -> dict:
    """:func:`tiny_plans` with a ``patch``³ patch (fast training; too small for AutoZoom's refinement)."""
    plans = tiny_plans()
    plans["configurations"][CONFIGURATION]["patch_size"] = [patch] * 3
    return plans
