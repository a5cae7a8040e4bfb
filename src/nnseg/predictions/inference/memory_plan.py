"""How much memory predicting one case takes, whether it fits, and how to make it fit (``--max-memory``).

The estimate adds, in bytes (float32 unless said):

* ``input``: reading and preprocessing, ``C x voxels`` for the read image and its cropped/normalised copy plus the
  float64 spline scratch of one channel, then the network input ``C x grid``;
* ``network``: samples per call x (the network's activations at the plans' patch, from
  :func:`nnseg.networks.memory.estimate_feature_map_size`, which sums every conv output and so over-counts what
  inference keeps alive, plus the tile and its ``K``-channel output); a 256^3 patch on the Hippocampus U-Net is
  ~12 GB per sample whatever the image size, which is what issue 12 saw;
* one-shot (today's path): the ``(K, grid)`` accumulator and weights, the resampled logits and probabilities
  ``2 x K x voxels`` and, with probabilities, the uncropped ``(K, voxels)`` array and its copy;
* bounded (:mod:`nnseg.predictions.run.bounded`): the ring accumulator ``K x (patch rows + spread) x plane``, one finished
  slab of network rows, the export halo, ``slab_rows`` output rows (twice with probabilities or regions), and the
  one-byte label map.

Samples per call (tiles x mirrored copies per network call) used to be a constant 8. Measured with the Hippocampus
network (patch 40x56x40): H100, fp16, 343 tiles without TTA: 1 -> 8 tiles per call is 5.5x faster (0.93 -> 0.17 s),
more gains little; with TTA 4 tiles gain only 1.2x. 2-core CPU, 8 tiles without TTA: CPU time 3.7 -> 1.6 s (bf16),
5.7-8.9 -> 2.8 s (fp32) from 1 to 8 tiles per call. So 8 stays the ceiling, and the count never exceeds what fits in
a quarter of the budget (CPU RAM, or free GPU memory on CUDA): large patches get fewer.

The budget is a ceiling, not a target. On a GPU the count is the largest that fits (calls are cheap only when
large). On the CPU a call is efficient once it holds about 2^19 voxels, and every sample more only adds activation
memory: the count is the smallest power of two reaching 2^19 voxels (2-core AMD EPYC, bf16, CPU seconds per sample of
the 2-channel anisotropic U-Net, patch 40x96x112 = 430k voxels: 1 -> 2.0-2.2, 2 -> 1.8, 4 -> 1.76, 8 -> 1.53-1.65 on a
loaded machine; peak RSS 0.57, 0.86, 1.24, 1.99 GB; the Hippocampus patch, 90k voxels, keeps 8). With mirroring TTA the
samples of a call are mirrored copies of one tile (:func:`nnseg.predictions.inference.tta.mirror_tta`'s ``per_call``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from nnseg.networks.memory import estimate_feature_map_size
from nnseg.predictions.inference.model_folder import TrainedModel
from nnseg.plans.spacing import compute_new_shape

GIB = 1 << 30
MAX_SAMPLES_PER_CALL = 8
CPU_VOXELS_PER_CALL = 1 << 19  # CPU calls are efficient from about this many input voxels on (measured, see above)
BASELINE_BYTES = GIB  # interpreter, torch and its libraries (~0.45 GB), the weights, allocator slack (measured)
SLAB_ROW_CHOICES = (64, 32, 16, 8, 4, 2, 1)
SLAB_BYTES = GIB // 4  # larger export slabs only cost memory: 2 rows of a 118-class 512x512 plane are 0.25 GB


def available_bytes(device: torch.device) -> int:
    """Free memory where the work happens: free GPU memory on CUDA, else available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def memory_budget(max_memory_gb: float | None, device: torch.device) -> tuple[int, str]:
    """``(bytes, where it comes from)``: ``max_memory_gb`` if given, else 85 % of :func:`available_bytes`."""
    if max_memory_gb is not None:
        if max_memory_gb <= 0:
            raise ValueError(f"--max-memory must be a positive number of GB, got {max_memory_gb}")
        return int(max_memory_gb * GIB), f"--max-memory {max_memory_gb:g}"
    free = available_bytes(device)
    return int(free * 0.85), f"85 % of the {free / GIB:.1f} GB {'GPU' if device.type == 'cuda' else 'RAM'} free now"


def activation_bytes_per_sample(model: TrainedModel) -> int:
    """One network sample at the plans' patch: activations (all conv outputs, fp32), the tile and its output."""
    cfg = model.configuration
    patch = math.prod(cfg.patch_size)
    maps = estimate_feature_map_size(cfg.architecture, cfg.patch_size, input_channels=model.num_input_channels,
                                     num_classes=model.num_outputs, deep_supervision=False)
    return 4 * (maps + patch * (model.num_input_channels + 2 * model.num_outputs))


def largest_call_block(model: TrainedModel, samples: int) -> int:
    """Bytes of the largest single tensor of one network call of ``samples`` samples (fp32): the first stage's
    feature maps or the output logits at the plans' patch (deeper stages hold fewer voxels)."""
    cfg = model.configuration
    features = cfg.architecture.get("arch_kwargs", {}).get("features_per_stage") or [32]
    widest = max(int(features[0]), model.num_outputs, model.num_input_channels)
    return 4 * samples * widest * math.prod(cfg.patch_size)


def tiles_per_call(samples: int, *, tile_batch_size: int | None, tta_passes: int) -> int:
    """Tiles per network call: ``tile_batch_size`` if set, else ``samples`` (per call) divided by the TTA passes, at
    least 1 (the predictor's choice, and the cluster's estimate of it)."""
    if tile_batch_size is not None:
        return int(tile_batch_size)
    return max(1, int(samples) // int(tta_passes))


def samples_per_call(model: TrainedModel, budget: int, *, device: torch.device | None = None) -> int:
    """Network samples per call, between 1 and 8, never more than fit in a quarter of ``budget``: on CUDA/MPS as many
    as fit; on the CPU (``device`` None or cpu) the fewest (a power of two) that reach :data:`CPU_VOXELS_PER_CALL`."""
    fit = max(1, min(MAX_SAMPLES_PER_CALL, budget // 4 // activation_bytes_per_sample(model)))
    if device is not None and device.type != "cpu":
        return fit
    enough = 1
    while enough < MAX_SAMPLES_PER_CALL and enough * math.prod(model.configuration.patch_size) < CPU_VOXELS_PER_CALL:
        enough *= 2
    return min(fit, enough)


@dataclass(frozen=True)
class CaseShapes:
    """The sizes of one case, in the plans' (transposed) axis order."""

    channels: int
    full: tuple[int, ...]      # shape_before_cropping
    cropped: tuple[int, ...]   # shape_after_cropping_and_before_resampling
    grid: tuple[int, ...]      # network input (after resampling)


def case_shapes(model: TrainedModel, raw_shape: Sequence[int], spacing: Sequence[float]) -> CaseShapes:
    """Shapes of a case from its raw ``(C, X, Y, Z)`` shape and spacing (no cropping assumed: an upper bound)."""
    tf = model.plans.transpose_forward
    full = tuple(int(raw_shape[1 + a]) for a in tf)
    spacing_t = [float(spacing[a]) for a in tf]
    cfg_spacing = list(model.configuration.spacing)
    target = cfg_spacing if len(cfg_spacing) == 3 else [spacing_t[0], *cfg_spacing]
    return CaseShapes(int(raw_shape[0]), full, full, compute_new_shape(full, spacing_t, target))


@dataclass
class CasePlan:
    """How a case is predicted: ``one-shot`` (today's path) or ``bounded`` with ``slab_rows`` output rows per slab."""

    identifier: str
    mode: str
    slab_rows: int
    samples: int
    estimate: int
    budget: int
    budget_source: str
    parts: dict[str, int] = field(default_factory=dict)
    tiles: int | None = None  # tiles per network call of the bounded path (None: the predictor's own)
    grid: tuple[int, ...] = ()  # the network grid it was planned for (progress reports count its tiles)

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.parts.items())
        return f"{self.estimate / GIB:.2f} GB ({parts} GB)"


def _stream_geometry(model: TrainedModel, shapes: CaseShapes, tiles: int, axis: int) -> tuple[int, int, int]:
    """``(ring rows, rows per finished slab, plane voxels)`` of the padded grid along the streaming axis."""
    cfg = model.configuration
    patch = list(cfg.patch_size) if len(cfg.patch_size) == 3 else [1, *cfg.patch_size]
    padded = [max(g, p) for g, p in zip(shapes.grid, patch)]
    step = max(1, int(patch[axis] * 0.5))
    starts = list(range(0, padded[axis] - patch[axis] + 1, step)) or [0]
    tiles_per_row = max(1, math.prod(max(1, math.ceil((padded[a] - patch[a]) / (patch[a] * 0.5)) + 1)
                                     for a in range(3) if a != axis))
    return ring_rows(starts, tiles_per_row, patch[axis], tiles), step, math.prod(padded) // padded[axis]


def ring_rows(starts: Sequence[int], per_row: int, patch_rows: int, tiles: int) -> int:
    """:func:`~nnseg.predictions.inference.streaming_window.window_rows` of evenly spaced ``starts`` each repeated ``per_row``
    times, without listing every tile (a 960^3 grid has 1.7 M; listing them took a minute per plan): the calls'
    spreads repeat every ``lcm(per_row, tiles)`` tiles."""
    total = len(starts) * per_row
    period = min(total, math.lcm(per_row, tiles) + tiles)
    return int(patch_rows) + max(starts[(min(i + tiles, total) - 1) // per_row] - starts[i // per_row]
                                 for i in range(0, period, tiles))


def estimate_parts(model: TrainedModel, shapes: CaseShapes, *, samples: int, tiles: int, folds: int,
                   save_probabilities: bool, slab_rows: int | None, axis: int = 0) -> dict[str, int]:
    """The estimate's parts in bytes (``slab_rows`` None: the one-shot path; ``axis``: the export's axis, the
    network streams along 0)."""
    k, grid, full, cropped = model.num_outputs, math.prod(shapes.grid), math.prod(shapes.full), math.prod(shapes.cropped)
    parts = {"baseline": BASELINE_BYTES,
             "input": 4 * shapes.channels * full * 2 + 8 * full // max(1, shapes.channels) + 4 * model.num_input_channels * grid,
             "network": samples * activation_bytes_per_sample(model)}
    if slab_rows is None:
        patch = list(model.configuration.patch_size)
        padded = math.prod(max(g, p) for g, p in zip(shapes.grid[-len(patch):], patch)) * (
            shapes.grid[0] if len(patch) == 2 else 1)
        parts["accumulator"] = 4 * (k + 1) * padded * (2 if folds > 1 else 1)
        parts["export"] = 4 * k * cropped * 2 + 2 * full + (8 * k * full if save_probabilities else 0)
        return parts
    ring, step, plane = _stream_geometry(model, shapes, tiles, 0)
    parts["accumulator"] = folds * 4 * (k + 1) * ring * plane + 4 * k * step * plane * (2 if folds > 1 else 1)
    plane_out = cropped // shapes.cropped[axis]
    ratio = shapes.grid[axis] / max(1, shapes.cropped[axis])
    if axis != 0:  # the export reads slab_rows network rows at a time from the spill file, after the network
        step, plane = slab_rows, grid // shapes.grid[axis]
    source_rows = int(math.ceil(slab_rows * ratio)) + 2
    twice = 2 if save_probabilities or model.spec.has_regions else 1
    parts["export"] = (4 * k * (step + source_rows) * plane + 4 * k * source_rows * plane_out
                       + 4 * k * slab_rows * plane_out * twice + 2 * full
                       + (8 * k * slab_rows * (full // shapes.full[axis]) if save_probabilities else 0))
    return parts


def _total(parts: Mapping[str, int], *, sequential: bool = False) -> int:
    """Peak: the input stage, or the network with its accumulator and the export (one after the other when the
    logits go through the spill file, else at the same time)."""
    net = parts["network"] + parts["accumulator"]
    run = max(net, parts["export"]) if sequential else net + parts["export"]
    return parts["baseline"] + max(parts["input"], run)


class CaseDoesNotFit(ValueError):
    """A case whose estimated memory exceeds the budget (raised before any work)."""


def _advice(model: TrainedModel, shapes: CaseShapes, parts: Mapping[str, int], budget: int) -> str:
    biggest = max(("input", "network", "accumulator", "export"), key=lambda k: parts[k])
    patch = list(model.configuration.patch_size)
    if biggest == "network" or parts["network"] > budget // 2:
        return (f"the network alone needs {parts['network'] / GIB:.2f} GB at the plans' patch_size {patch} "
                f"(configuration {model.configuration_name}): use a plans file with a smaller patch_size")
    if biggest == "input":
        return f"the image itself ({shapes.channels} x {list(shapes.full)} voxels) takes most of it"
    return (f"{model.num_outputs} outputs on a {list(shapes.grid)} network grid need large slabs even at 1 row; "
            "a smaller patch along the first axis shrinks the accumulator")


def plan_case(model: TrainedModel, identifier: str, shapes: CaseShapes, *, budget: int, budget_source: str,
              samples: int, tiles: int, folds: int = 1, save_probabilities: bool = False, slab_rows: int | None = None,
              axis: int = 0) -> CasePlan:
    """Choose the path for one case: one-shot if it fits (and ``slab_rows`` is not given), else
    the bounded path with the largest slab that fits; if none does, the same with one tile per network call (no
    spread of tile rows in the ring accumulator, activations of one tile). ``CasePlan.samples`` is then 1.

    Raises:
        CaseDoesNotFit: not even one output row per slab fits; the message names the case, the estimate and the fix.
    """
    common = dict(folds=folds, save_probabilities=save_probabilities, axis=axis)
    if slab_rows is None:
        parts = estimate_parts(model, shapes, slab_rows=None, samples=samples, tiles=tiles, **common)  # type: ignore[arg-type]
        if _total(parts) <= budget:
            return CasePlan(identifier, "one-shot", 0, samples, _total(parts), budget, budget_source, parts)
    rows_out = max(1, shapes.cropped[axis])
    row_bytes = 4 * model.num_outputs * math.prod(shapes.cropped) // rows_out
    choices = [int(slab_rows)] if slab_rows is not None else [
        r for r in SLAB_ROW_CHOICES if r <= rows_out and (r == 1 or r * row_bytes <= SLAB_BYTES)] or [1]
    per_tile = max(1, samples // max(1, tiles))
    parts: dict[str, int] = {}
    for n_samples, n_tiles in dict.fromkeys([(samples, tiles), (min(samples, per_tile), 1)]):
        for rows in choices:
            parts = estimate_parts(model, shapes, slab_rows=rows, samples=n_samples, tiles=n_tiles, **common)  # type: ignore[arg-type]
            total = _total(parts, sequential=axis != 0)
            if total <= budget:
                return CasePlan(identifier, "bounded", rows, n_samples, total, budget, budget_source, parts, n_tiles)
    plan = CasePlan(identifier, "bounded", choices[-1], 1, _total(parts, sequential=axis != 0), budget, budget_source,
                    parts)
    raise CaseDoesNotFit(
        f"case {identifier} does not fit in memory: predicting it needs about {plan.describe()} with "
        f"{choices[-1]} output row(s) per export slab and one tile per network call, more than the "
        f"{budget / GIB:.2f} GB allowed ({budget_source}); {_advice(model, shapes, parts, budget)}. Raise --max-memory "
        "(or free memory), or predict on a machine with more memory. Nothing was written.")


@dataclass(frozen=True)
class PlanOptions:
    """What a case's plan depends on besides the model and the case: the budget (bytes, and where it comes from, for
    the message), network samples and tiles per call, folds, whether probabilities are written, and a forced slab size
    (None: the plan chooses; set: the bounded path)."""

    budget: int
    budget_source: str
    samples: int
    tiles: int
    folds: int = 1
    save_probabilities: bool = False
    slab_rows: int | None = None


def streaming_axis(model: TrainedModel, *, save_probabilities: bool) -> int:
    """The export's axis: 0, or with probabilities the plans axis that is the input file's last
    (``transpose_backward[2]``); the network always streams along 0 (see :mod:`nnseg.predictions.export.logit_spill`)."""
    return int(model.plans.transpose_backward[2]) if save_probabilities else 0


def plan_for_case(model: TrainedModel, identifier: str, shapes: CaseShapes, options: PlanOptions) -> CasePlan:
    """:func:`plan_case` for the path the predictor runs (the export along :func:`streaming_axis`); the plan records
    the network grid it was made for."""
    plan = plan_case(model, identifier, shapes, budget=options.budget, budget_source=options.budget_source,
                     samples=options.samples, tiles=options.tiles, folds=options.folds,
                     save_probabilities=options.save_probabilities, slab_rows=options.slab_rows,
                     axis=streaming_axis(model, save_probabilities=options.save_probabilities))
    plan.grid = tuple(shapes.grid)
    return plan


def plan_from_header(model: TrainedModel, identifier: str, raw_shape: Sequence[int], spacing: Sequence[float],
                     options: PlanOptions) -> CasePlan:
    """The plan of a case known from its header: raw ``(C, X, Y, Z)`` shape and spacing as the reader returns them
    (:meth:`nnseg.raw.io_sitk.ImageHeader.array_shape` for a file's header), no cropping assumed (an upper bound).
    The one step behind the per-case check every entry point runs
    (:func:`nnseg.predictions.run.bounded.check_case_header`) and the cluster's task sizes
    (:func:`nnseg.cluster.memory.predict_bytes`).

    Raises:
        CaseDoesNotFit: see :func:`plan_case`.
    """
    return plan_for_case(model, identifier, case_shapes(model, raw_shape, spacing), options)
