"""One interactive prediction around the last prompt: network input at a zoom-out, AutoZoom, refinement planning.

Pure over tensors: reads the normalised image and the interaction channels, returns what to paste where
(:class:`Prediction`); the session applies it (with undo). The steps and thresholds are nnInteractive 2.6.0's
(docs/INTERACTIVE.md, "Prediction").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from nnseg.devices import autocast_context
from nnseg.interactive.cover import cover_boxes
from nnseg.interactive.ops import (Box, clip_box, crop_padded, dilate_nonnegative, nonzero_box, paste,
                                   round_to_nearest_odd, slicer, to_local, union_box, window_filter)
from nnseg.networks.memory import estimate_feature_map_size

MAX_ZOOM = 4.0
ZOOM_GROWTH = 1.5
BORDER_ABS, BORDER_MIN, BORDER_REL = 1500, 100, 0.2
NUM_OUTPUTS = 2


@dataclass
class PredictContext:
    """What a prediction reads: the network, the normalised image ``[C, x, y, z]`` (float32) and the interactions
    ``[N, x, y, z]`` (float16, prompts stored at their running intensity)."""

    network: torch.nn.Module
    patch_size: list[int]
    image: torch.Tensor
    interactions: torch.Tensor
    prev_seg: int
    dilate_channels: frozenset[int]
    intensity: float
    device: torch.device
    precision: str


@dataclass
class Prediction:
    """Masks to paste (box, 0/1 tensor) into the previous-mask channel and the target buffer, and the changed box."""

    pastes: list[tuple[Box, torch.Tensor]]
    changed: Box
    zoom: float


def normalise_prompts(x: torch.Tensor, prev_seg: int, intensity: float) -> None:
    """Divide every prompt channel (not the previous mask) by the running intensity, in place (float16)."""
    if intensity in (0, 1):
        return
    for ch in range(x.shape[0]):
        if ch != prev_seg:
            x[ch] /= intensity


def _zoomed_input(ctx: PredictContext, box: Box, zoom: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    patch, dev = ctx.patch_size, ctx.device
    k = round_to_nearest_odd(zoom * 2 - 1)
    dilate = ctx.dilate_channels if k > 1 else frozenset()
    prev = crop_padded(ctx.interactions[ctx.prev_seg:ctx.prev_seg + 1], box).to(dev)
    previous = F.interpolate(prev[None], patch, mode="nearest")[0, 0]
    prompts = torch.empty([ctx.interactions.shape[0], *patch], dtype=torch.float16, device=dev)
    for i in range(ctx.interactions.shape[0]):
        ch = crop_padded(ctx.interactions[i:i + 1], box).to(dev)
        if not bool(ch.any()):  # most prompt channels are empty: their resampled crop is zero too
            prompts[i] = 0
            continue
        if i in dilate:
            ch = dilate_nonnegative(ch, k)
        prompts[i:i + 1] = F.interpolate(ch[None], patch, mode="area")[0]
    image = F.interpolate(crop_padded(ctx.image, box).to(dev)[None], patch, mode="trilinear")[0]
    return image, prompts, previous


def network_input(ctx: PredictContext, centre: Sequence[int], zoom: float) -> tuple[torch.Tensor, Box, torch.Tensor]:
    """The network input ``[C + N, *patch]`` for a patch ``zoom`` times larger than the network's around ``centre``,
    the scaled box in image coordinates, and the previous mask seen at the network's resolution."""
    scaled = [round(p * zoom) for p in ctx.patch_size]
    box = [[c - s // 2, c + s // 2 + s % 2] for c, s in zip(centre, scaled)]
    if scaled != list(ctx.patch_size):
        image, prompts, previous = _zoomed_input(ctx, box, zoom)
    else:
        image = crop_padded(ctx.image, box).to(ctx.device)
        prompts = crop_padded(ctx.interactions, box).to(ctx.device)
        previous = prompts[ctx.prev_seg].clone()
    normalise_prompts(prompts, ctx.prev_seg, ctx.intensity)
    return torch.cat((image, prompts)), box, previous


def run_network(ctx: PredictContext, x: torch.Tensor) -> torch.Tensor:
    """Arg-max over the network's two outputs for one input ``[C, *patch]``."""
    with autocast_context(ctx.device, ctx.precision):
        return ctx.network(x[None].contiguous())[0].argmax(0)


def border_changed(pred: torch.Tensor, previous: torch.Tensor) -> bool:
    """True when, on some face of the patch, the prediction differs from the previous mask by more than 1500 voxels,
    or by more than 100 with the foreground count changed by more than 20 % (the object leaves the patch)."""
    for dim in range(pred.ndim):
        for idx in (0, pred.shape[dim] - 1):
            a, b = previous.select(dim, idx), pred.select(dim, idx).to(previous.device)
            n_prev = float(torch.sum(a, dtype=torch.float32))
            n_cur = float(torch.sum(b, dtype=torch.float32))
            n_diff = float(torch.sum(a != b, dtype=torch.float32))
            rel = max(n_prev, n_cur) / max(min(n_prev, n_cur), 1e-5) - 1
            if n_diff > BORDER_ABS or (n_diff > BORDER_MIN and rel > BORDER_REL):
                return True
    return False


def _autozoom(ctx: PredictContext, centre: Sequence[int], zoom: float, do_autozoom: bool):
    x, box, previous = network_input(ctx, centre, zoom)
    pred = run_network(ctx, x)
    changed = border_changed(pred, previous)
    while changed and do_autozoom and zoom < MAX_ZOOM:
        zoom = min(MAX_ZOOM, zoom * ZOOM_GROWTH)
        x, box, previous = network_input(ctx, centre, zoom)
        pred = run_network(ctx, x)
        changed = border_changed(pred, previous)
    return pred, box, zoom


def _prev_seg_box(ctx: PredictContext) -> Box | None:
    return nonzero_box((ctx.interactions[ctx.prev_seg] > 0.5)[None].to(torch.uint8))


def _diff_map(ctx: PredictContext, pred: torch.Tensor, box: Box, planning: Box) -> torch.Tensor:
    spatial = ctx.interactions.shape[1:]
    seen = clip_box(box, spatial)
    diff = torch.zeros([hi - lo for lo, hi in planning], dtype=torch.float16)
    pred_box = [[max(0, lo), min(hi, int(pred.shape[d]))] for d, (lo, hi) in enumerate(to_local(seen, box))]
    local = slicer(to_local(seen, planning))
    prev = ctx.interactions[(ctx.prev_seg, *slicer(seen))]
    diff[local] = (pred[slicer(pred_box)].cpu() != prev).to(diff.dtype)
    diff[local] = window_filter(diff[local], 5, minimum=True)
    diff[local] = window_filter(diff[local], 5)
    return diff.to(torch.uint8)


def plan_refinement(ctx: PredictContext, pred: torch.Tensor, box: Box, *, centre: Sequence[int], full: bool,
                    rng: np.random.RandomState) -> list[Box]:
    """Patch-sized boxes (image coordinates) covering where the coarse prediction changes the previous mask (and,
    for a full refinement, the whole previous mask); one patch at the prompt when nothing changes."""
    fallback = [[[c - p // 2, c - p // 2 + p] for c, p in zip(centre, ctx.patch_size)]]
    planning = clip_box(box, ctx.interactions.shape[1:])
    if full:
        planning = union_box(planning, _prev_seg_box(ctx))
    if planning is None or clip_box(box, ctx.interactions.shape[1:]) is None:
        return fallback
    diff = _diff_map(ctx, pred, box, planning)
    if full:
        diff[ctx.interactions[(ctx.prev_seg, *slicer(planning))] > 0.5] = 1
    local = cover_boxes(diff, ctx.patch_size, rng=rng)
    if not local:
        return fallback
    return [[[lo + planning[d][0], hi + planning[d][0]] for d, (lo, hi) in enumerate(b)] for b in local]


def refine(ctx: PredictContext, boxes: list[Box], coarse: torch.Tensor, coarse_box: Box) -> Prediction:
    """Predict each box at full resolution in order, with the coarse prediction as previous mask where no box has
    been refined yet; returns the refined boxes to paste and their union as the changed region."""
    cache_box = union_box(*boxes)
    image = crop_padded(ctx.image, cache_box).to(ctx.device)
    cache = crop_padded(ctx.interactions, cache_box).to(ctx.device)
    normalise_prompts(cache, ctx.prev_seg, ctx.intensity)
    inject = clip_box(coarse_box, ctx.interactions.shape[1:])
    if inject is not None:
        part = coarse[slicer(to_local(inject, coarse_box))]
        paste(cache[ctx.prev_seg], part, to_local(inject, cache_box))
    for b in boxes:
        local = slicer(to_local(b, cache_box))
        pred = run_network(ctx, torch.cat((image[(slice(None), *local)], cache[(slice(None), *local)])))
        cache[(ctx.prev_seg, *local)] = pred.to(cache.dtype)
    # views of the cache (not copies): however many boxes the cover picks, the pastes hold no memory of their own
    pastes = [(b, cache[(ctx.prev_seg, *slicer(to_local(b, cache_box)))]) for b in boxes]
    return Prediction(pastes=pastes, changed=cache_box, zoom=0.0)


@torch.inference_mode()
def predict_at(ctx: PredictContext, centre: Sequence[int], zoom: float, *, do_autozoom: bool, full_refine: bool,
               rng: np.random.RandomState) -> Prediction:
    """Predict around ``centre`` starting at ``zoom`` (capped at 4), zooming out while the object leaves the patch,
    refining at full resolution when zoomed out."""
    pred, box, zoom = _autozoom(ctx, centre, min(MAX_ZOOM, zoom), do_autozoom)
    if zoom == 1:
        return Prediction(pastes=[(box, pred.to(torch.float16))], changed=box, zoom=zoom)
    scaled = [hi - lo for lo, hi in box]
    if list(pred.shape) != scaled:
        pred = (F.interpolate(pred[None, None].to(torch.float32), scaled, mode="trilinear")[0, 0] >= 0.5)
        pred = pred.to(torch.uint8)
    boxes = plan_refinement(ctx, pred, box, centre=centre, full=full_refine, rng=rng)
    result = refine(ctx, boxes, pred, box)
    result.zoom = zoom
    return result


def prediction_memory_bytes(architecture: Mapping[str, Any], patch_size: Sequence[int], *, image_channels: int,
                            interaction_channels: int) -> int:
    """Upper bound of the working memory of one prediction that does not depend on the image (bytes).

    Predictions run one at a time (the server's one prediction thread), so this is held once, not per session.
    With ``P`` the patch's voxels, ``Z`` the voxels of the patch at the largest zoom-out (``MAX_ZOOM`` per axis),
    ``C`` image and ``N`` interaction channels:

    * the network on one patch: every conv output (fp32, :func:`nnseg.networks.memory.estimate_feature_map_size`,
      which over-counts what inference keeps alive), its float32 input ``(C + N) P`` and logits ``2 P`` plus the
      int64 arg-max ``P`` (``4 (maps + (C + N + 4) P)``);
    * the zoomed-out input: the image crop ``4 C Z`` and one prompt channel's crop with its dilation and the
      previous mask's crop (``8 Z``), their resampled copies ``(4 C + 2 N + 2) P``;
    * the coarse prediction resampled to the zoomed box: float32, bool and uint8 (``6 Z``).

    What grows with the image (the refinement crops, the change map) is counted per session
    (:func:`nnseg.interactive.memory.session_memory_bytes`).
    """
    patch = [int(p) for p in patch_size]
    voxels, zoomed = math.prod(patch), math.prod(round(p * MAX_ZOOM) for p in patch)
    channels = int(image_channels) + int(interaction_channels)
    maps = estimate_feature_map_size(architecture, patch, input_channels=channels, num_classes=NUM_OUTPUTS,
                                     deep_supervision=False)
    network = 4 * (maps + (channels + 2 * NUM_OUTPUTS) * voxels)
    zoom_input = (4 * image_channels + 8) * zoomed + (4 * image_channels + 2 * interaction_channels + 2) * voxels
    return int(network + zoom_input + 6 * zoomed)
