"""One case predicted and written in bounded memory: streamed sliding window -> slab export -> files.

:func:`predict_case_bounded` runs the folds' sliding windows in lockstep
(:func:`nnseg.predictions.inference.streaming_window.sliding_window_slabs`: fp32 ring accumulator), averages their finished
slabs as :meth:`Predictor.predict_logits` averages whole volumes, and feeds them to a
:class:`nnseg.predictions.export.streaming_export.SlabExporter` at once, so neither the ``(K, network grid)`` logits nor any
``(K, original grid)`` array exists. The label map is written at the end (atomically); ``save_probabilities`` streams
``CASE.npz`` into a temporary name renamed at the end, then ``CASE.pkl``. Peak memory: see
:mod:`nnseg.predictions.inference.memory_plan`.

The streaming axis is the first axis of the plans' axis order (bitwise the one-shot path's logits), or with
``save_probabilities`` the axis that is last in the input file (the ``.npz`` is written in its own order).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseg._types import Geometry
from nnseg.devices import autocast_context, return_large_blocks_to_os
from nnseg.jsonio import atomic_path
from nnseg.predictions.export.from_logits import current_and_target_spacing, write_segmentation
from nnseg.predictions.run.input_checks import check_case_geometry
from nnseg.predictions.export.logit_spill import LogitSpill
from nnseg.predictions.inference.memory_plan import (
    CasePlan,
    CaseShapes,
    PlanOptions,
    memory_budget,
    plan_from_header,
    streaming_axis,
)
from nnseg.predictions.inference.predictor import Predictor
from nnseg.predictions.export.predict_io import save_properties_pkl
from nnseg.predictions.export.slab_resample import SlabResampler, slab_resampler
from nnseg.predictions.export.npz_stream import NpzStreamWriter
from nnseg.predictions.export.streaming_export import CaseSink, SlabExporter
from nnseg.predictions.inference.streaming_window import sliding_window_slabs
from nnseg.raw.discover import CaseFiles
from nnseg.raw.image_io import get_io


@dataclass
class BoundedTiming:
    """Seconds: in the network (incl. accumulation), in the export (interleaved), after the last network call."""

    network: float = 0.0
    export: float = 0.0
    after_network: float = 0.0


def case_resampler(predictor: Predictor, grid_shape: tuple[int, ...], properties: Mapping[str, Any],
                   axis: int) -> SlabResampler:
    """The plans' probability resampling of this case as a :class:`SlabResampler` along ``axis``."""
    model = predictor.model
    cfg = model.configuration
    current, target = current_and_target_spacing(properties, model.plans, cfg)
    kwargs = dict(cfg.resampling_fn_probabilities_kwargs)
    kwargs.pop("is_seg", None)
    return slab_resampler(cfg.resampling_fn_probabilities, kwargs, grid_shape,
                          properties["shape_after_cropping_and_before_resampling"], current, target, axis=axis)


def fold_slabs(predictor: Predictor, data: np.ndarray | torch.Tensor, *, timing: BoundedTiming,
               axis: int = 0, tiles: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Finished slabs of the fold-averaged logits (the folds' sliding windows advance together)."""
    image = torch.as_tensor(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data, dtype=torch.float32)
    if image.shape[0] != predictor.model.num_input_channels:
        raise ValueError(f"input has {image.shape[0]} channels, the model expects {predictor.model.num_input_channels}")
    device = predictor.device
    image = image.to(device)
    acc = device if predictor.accumulate_on_device else torch.device("cpu")
    cfg = predictor.model.configuration
    gens = [sliding_window_slabs(predictor.tta_predictor(net), image, cfg.patch_size,
                                 num_outputs=predictor.model.num_outputs, step_size=predictor.step_size,
                                 batch_size=tiles or predictor.tiles_per_call(), device=device, accumulate_device=acc,
                                 axis=axis)
            for net in predictor.networks]
    while True:
        start = time.perf_counter()
        with autocast_context(device, predictor.precision):
            items = [next(g, None) for g in gens]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timing.network += time.perf_counter() - start
        if items[0] is None:
            return
        first, total = items[0]  # type: ignore[misc]
        for item in items[1:]:
            total = total + item[1]  # type: ignore[index]
        if len(items) > 1:
            total /= len(items)
        del items
        yield first, total
        del total  # the consumer holds what it still needs; a second slab must not stay alive here


def predict_case_bounded(predictor: Predictor, data: np.ndarray | torch.Tensor, properties: Mapping[str, Any],
                         output_truncated: Path, *, slab_rows: int, save_probabilities: bool = False,
                         geometry: Geometry | None = None, on_progress: Callable[[str, int], None] | None = None,
                         tiles_per_call: int | None = None, segmentation_file: Path | None = None,
                         seg_io: str | None = None) -> BoundedTiming:
    """Predict one preprocessed case and write ``<output_truncated><ending>`` (+ ``.npz``/``.pkl``) in bounded memory.

    Args:
        predictor: the loaded model.
        data, properties: from :meth:`Predictor.preprocess`.
        output_truncated: output path without file ending.
        slab_rows: output rows per export slab (from :func:`nnseg.predictions.inference.memory_plan.plan_case`).
        save_probabilities: also write ``CASE.npz`` (streamed, Fortran order) and ``CASE.pkl``.
        geometry: the input's geometry (default rebuilt from ``properties``).
        on_progress: called with ``("network", rows)`` / ``("export", rows)`` as rows are finished.
        tiles_per_call: tiles per network call (default the predictor's; the memory plan may choose 1).
        segmentation_file, seg_io: write the label map there with that reader/writer (its ending picks the format)
            instead of ``<output_truncated><file_ending>`` with the plans' (a server's upload format).

    Raises:
        ValueError: the plans' probability resampling is not separable (see :mod:`nnseg.predictions.export.slab_resample`).
    """
    if tiles_per_call is not None and tiles_per_call != predictor.tiles_per_call():
        predictor = dataclasses.replace(predictor, tile_batch_size=int(tiles_per_call))
    model = predictor.model
    if predictor.device.type == "cpu" or not predictor.accumulate_on_device:
        return_large_blocks_to_os()
    axis = streaming_axis(model, save_probabilities=save_probabilities)
    resampler = case_resampler(predictor, tuple(int(s) for s in data.shape[1:]), properties, axis)
    reader = model.plans.image_reader_writer
    geometry = geometry or Geometry.from_properties(dict(properties), reader=reader)
    output_truncated = Path(output_truncated)
    timing = BoundedTiming()
    if not save_probabilities:
        seg = _run(predictor, data, properties, resampler, axis, slab_rows, None, timing, on_progress,
                   output_truncated.parent)
    else:
        full = [int(properties["shape_before_cropping"][a]) for a in model.plans.transpose_backward]
        with atomic_path(output_truncated.with_name(output_truncated.name + ".npz")) as tmp, \
                NpzStreamWriter(tmp, "probabilities", (model.num_outputs, *full), fortran_order=True) as writer:
            seg = _run(predictor, data, properties, resampler, axis, slab_rows, writer, timing, on_progress,
                       output_truncated.parent)
        save_properties_pkl(properties, output_truncated.with_name(output_truncated.name + ".pkl"))
    target = segmentation_file or output_truncated.with_name(output_truncated.name + model.spec.file_ending)
    write_segmentation(seg, Path(target), geometry, reader=seg_io or reader)
    timing.after_network = time.perf_counter() - timing.after_network
    return timing


def bounded_labels(predictor: Predictor, data: np.ndarray | torch.Tensor, properties: Mapping[str, Any], *,
                   slab_rows: int, tiles_per_call: int | None = None) -> np.ndarray:
    """The label map of one preprocessed case in bounded memory, returned instead of written (in-memory API): the
    label path of :func:`predict_case_bounded`."""
    if tiles_per_call is not None and tiles_per_call != predictor.tiles_per_call():
        predictor = dataclasses.replace(predictor, tile_batch_size=int(tiles_per_call))
    if predictor.device.type == "cpu" or not predictor.accumulate_on_device:
        return_large_blocks_to_os()
    resampler = case_resampler(predictor, tuple(int(s) for s in data.shape[1:]), properties, 0)
    return _run(predictor, data, properties, resampler, 0, slab_rows, None, BoundedTiming(), None, Path("."))


def _network_into(consume: Callable[[int, Any], None], predictor: Predictor, data: Any, timing: BoundedTiming,
                  report: Callable[[str, int], None]) -> None:
    """The network slab by slab along axis 0, each finished slab handed to ``consume(first_row, rows)`` at once (the
    time ``consume`` takes counts as export) and dropped before the next one is computed."""
    for first, rows in fold_slabs(predictor, data, timing=timing):
        report("network", rows.shape[1])
        start = time.perf_counter()
        consume(first, rows)
        del rows
        timing.export += time.perf_counter() - start


def _export_through_spill(predictor: Predictor, data: Any, exporter: SlabExporter, axis: int, slab_rows: int,
                          timing: BoundedTiming, report: Callable[[str, int], None], folder: Path) -> None:
    """Network along axis 0 into a :class:`LogitSpill`, then the export along ``axis`` from it."""
    grid = tuple(int(s) for s in data.shape[1:])
    spill = LogitSpill(folder, (predictor.model.num_outputs, *grid), axis)
    try:
        _network_into(spill.write, predictor, data, timing, report)
        timing.after_network = time.perf_counter()
        for a in range(0, grid[axis], slab_rows):
            start = time.perf_counter()
            exporter.feed(a, spill.read(a, min(a + slab_rows, grid[axis])))
            timing.export += time.perf_counter() - start
    finally:
        spill.close()


def _run(predictor: Predictor, data: Any, properties: Mapping[str, Any], resampler: SlabResampler, axis: int,
         slab_rows: int, writer: NpzStreamWriter | None, timing: BoundedTiming,
         on_progress: Callable[[str, int], None] | None, spill_folder: Path) -> np.ndarray:
    model = predictor.model
    sink = CaseSink(model.spec, properties, axis=axis, num_outputs=model.num_outputs,
                    transpose_backward=model.plans.transpose_backward, probabilities=writer)
    report = on_progress or (lambda stage, rows: None)
    exporter = SlabExporter(resampler, sink.write, slab_rows=slab_rows, on_slab=lambda rows: report("export", rows))
    if axis == 0:
        _network_into(exporter.feed, predictor, data, timing, report)
    else:
        _export_through_spill(predictor, data, exporter, axis, slab_rows, timing, report, spill_folder)
    start = time.perf_counter()
    timing.after_network = timing.after_network or start
    exporter.close()
    seg = sink.result()
    timing.export += time.perf_counter() - start
    return seg


@dataclass(frozen=True)
class MemoryPolicy:
    """How cases are planned besides the predictor: budget, forced slab size, outputs (:meth:`options`)."""

    budget: int
    budget_source: str
    slab_rows: int | None = None
    save_probabilities: bool = False

    @classmethod
    def create(cls, predictor: Predictor, *, max_memory_gb: float | None, slab_rows: int | None = None,
               save_probabilities: bool = False) -> MemoryPolicy:
        if slab_rows is not None and slab_rows < 1:
            raise ValueError(f"slab_rows must be >= 1, got {slab_rows}")
        budget, source = memory_budget(max_memory_gb, predictor.device)
        return cls(budget, source, slab_rows, save_probabilities)

    def options(self, predictor: Predictor) -> PlanOptions:
        """The :class:`~nnseg.predictions.inference.memory_plan.PlanOptions` of ``predictor`` under this policy: its
        samples and tiles per call and folds."""
        return PlanOptions(self.budget, self.budget_source, predictor.samples_per_call(), predictor.tiles_per_call(),
                           len(predictor.networks), self.save_probabilities, self.slab_rows)


def shapes_of_preprocessed(data: np.ndarray, properties: Mapping[str, Any]) -> CaseShapes:
    """The :class:`CaseShapes` of a preprocessed case (exact, cropping known)."""
    return CaseShapes(int(data.shape[0]), tuple(int(s) for s in properties["shape_before_cropping"]),
                      tuple(int(s) for s in properties["shape_after_cropping_and_before_resampling"]),
                      tuple(int(s) for s in data.shape[1:]))


def check_cases_fit(predictor: Predictor, cases: Sequence[CaseFiles], policy: MemoryPolicy) -> None:
    """Refuse, before anything is read or written, a case whose estimate exceeds the budget (see
    :func:`check_case_header`, run for each case)."""
    for case in cases:
        check_case_header(predictor, case, policy)


def check_case_header(predictor: Predictor, case: CaseFiles, policy: MemoryPolicy, *,
                      reader: str | None = None) -> CasePlan:
    """The checks one case gets from its headers, before its voxels are read: 2D vs 3D and the resampling factor
    (:func:`nnseg.predictions.run.input_checks.check_case_geometry`), then the memory plan.

    Shapes come from the files' headers through the reader's own ``read_header``
    (:meth:`nnseg.raw.io_common.BaseImageIO.read_header`: every reader, no voxel read) without cropping, an upper bound;
    only where a header leaves the shape open (4D files and vector pixels for the SimpleITK readers, an unreadable
    header) is the image read. ``reader``: the reader/writer of these files (default the plans').

    Raises:
        ValueError: the geometry check. :class:`nnseg.predictions.inference.memory_plan.CaseDoesNotFit`: not even the bounded
        path fits the budget.
    """
    raw_shape, spacing = _header_shape(reader or predictor.model.plans.image_reader_writer, case)
    return check_case_shape(predictor, case, raw_shape, spacing, policy)


def check_case_shape(predictor: Predictor, case: CaseFiles, raw_shape: Sequence[int], spacing: Sequence[float],
                     policy: MemoryPolicy) -> CasePlan:
    """:func:`check_case_header` for a case whose ``(C, X, Y, Z)`` shape and spacing are known otherwise (e.g. from a
    DICOM series' headers)."""
    model = predictor.model
    if raw_shape[0] != model.spec.num_channels:
        raise ValueError(f"case {case.identifier} has {raw_shape[0]} channel(s) ({', '.join(str(f) for f in case.images)}) "
                         f"but the model expects {model.spec.num_channels} channel(s) {dict(model.spec.channel_names)}; give one "
                         "file per channel in channel order")
    check_case_geometry(case.images[0], raw_shape[1:], spacing, plans=model.plans, configuration=model.configuration,
                        configuration_name=model.configuration_name)
    return plan_from_header(model, case.identifier, raw_shape, spacing, policy.options(predictor))


def _header_shape(reader: str, case: CaseFiles) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``(C, X, Y, Z)`` and spacing as the reader would return them (a 2D file: ``(C, 1, X, Y)``, spacing 999*max):
    from its headers, else (None: only the image tells) from reading the image."""
    io = get_io(reader)
    header = io.read_header(case.images)
    if header is None:
        data, geometry = io.read_images(case.images)
        header = data.shape, geometry.spacing
    return tuple(int(s) for s in header[0]), tuple(float(s) for s in header[1])
