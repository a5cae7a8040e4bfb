"""The interactive inference session: an image, a target buffer, prompts, and predictions written into the buffer.

Method names follow nnInteractive's ``nnInteractiveInferenceSession`` (``set_image``, ``set_target_buffer``,
``add_point_interaction`` ...), so scripts and viewer plugins written for it run with nnseg. Behaviour: see
docs/INTERACTIVE.md. Example::

    model = load_interactive_model("MODEL_FOLDER")
    session = InteractiveSession(model)
    session.set_image(image[None])                   # [c, x, y, z]
    session.set_target_buffer(mask := np.zeros(image.shape, np.uint8))
    session.add_point_interaction((40, 52, 30), include_interaction=True)   # mask now holds the object
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from nnseg.devices import resolve_precision
from nnseg.interactive.memory import check_session_fits, session_budget
from nnseg.interactive.model import InteractiveModel
from nnseg.interactive.ops import Box, clip_box, nonzero_box, paste, slicer
from nnseg.interactive.predict import PredictContext, predict_at
from nnseg.interactive.prompts import (box_prompt, check_image, check_mask_prompt, check_point, normalise_image,
                                       point_region, queue_entry_for_box)
from nnseg.interactive.undo import UndoLog

FP16_MAX = float(torch.finfo(torch.float16).max)


class InteractiveSession:
    """Prompts on one image at a time, predictions pasted into the caller's target buffer.

    Args:
        model: from :func:`nnseg.interactive.load_interactive_model` (its network's device is used).
        precision: ``auto`` (fp16 autocast on CUDA, bf16 on CPUs with native bf16, else fp32), ``fp32``, ``bf16``.
        do_autozoom: zoom out while the object leaves the patch.
        enable_undo: keep the pre-images that :meth:`undo` needs.
        seed: seeds the sampling of refinement boxes for voxels the greedy cover misses (reproducible results).
        max_memory_gb: the memory budget :meth:`set_image` checks each image against before it allocates anything
            (:func:`nnseg.interactive.check_session_fits`); None: 85 % of the memory free at that moment (RAM, or
            free GPU memory on CUDA), as ``--max-memory`` of ``nnseg predict``.
        check_memory: False when the caller budgets the session's memory itself (``nnseg serve`` reserves it from
            the server's shared budget, ``nnseg refine`` checks the image's header before reading it).

    Raises:
        ValueError: ``max_memory_gb`` is not positive.
    """

    def __init__(self, model: InteractiveModel, *, precision: str = "auto", do_autozoom: bool = True,
                 enable_undo: bool = True, seed: int = 0, max_memory_gb: float | None = None,
                 check_memory: bool = True) -> None:
        self.model = model
        self.capabilities = model.capabilities
        self.device = next(model.network.parameters()).device
        if max_memory_gb is not None:
            session_budget(model, max_memory_gb)  # refuses a non-positive budget now, not at the first image
        self.max_memory_gb, self.check_memory = max_memory_gb, bool(check_memory)
        self.precision = resolve_precision(precision, self.device)
        self.do_autozoom = bool(do_autozoom)
        self.supports_undo = bool(enable_undo)
        self._rng = np.random.RandomState(seed)
        self.image: torch.Tensor | None = None
        self.interactions: torch.Tensor | None = None
        self.target_buffer: np.ndarray | torch.Tensor | None = None
        self.original_image_shape: tuple[int, ...] | None = None
        self.intensity = 1.0
        self._queue: list[tuple[list[int], float]] = []
        self._log: UndoLog | None = None
        self._changed: Box | None = None
        self.last_zoom_out = 0.0  # zoom-out factor of the last prediction (1: none; 0: no prediction yet)

    # ------------------------------------------------------------------ image and buffer
    @property
    def patch_size(self) -> list[int]:
        return self.model.patch_size

    def set_image(self, image: np.ndarray, image_properties: dict[str, Any] | None = None) -> None:
        """Set the image ``[c, x, y, z]`` (any real dtype); prompts and the target buffer are dropped.

        Unless ``check_memory`` is off, the session's memory estimate for the image (with a uint8 target buffer) is
        checked against the budget before anything is allocated; a measured budget (no ``max_memory_gb``) is taken
        after the previous image is dropped (a refused image then leaves the session without one).

        Raises:
            ValueError: not 4D, wrong channel count, non-finite values, all zero or constant.
            CaseDoesNotFit (a ValueError): the image does not fit the memory budget (the message says what to do).
        """
        check_image(image, channels=self.model.num_image_channels)
        if self.check_memory:
            if self.max_memory_gb is None:
                self.reset_session()  # what the previous image held is free memory for this one
            budget, source = session_budget(self.model, self.max_memory_gb)
            check_session_fits(self.model, np.shape(image), budget_bytes=budget, budget_source=source,
                               enable_undo=self.supports_undo)
        tensor = normalise_image(image, channels=self.model.num_image_channels)
        self.reset_session()
        self.image = tensor
        self.original_image_shape = tuple(int(s) for s in np.shape(image))
        self.interactions = torch.zeros((self.capabilities.num_interaction_channels, *tensor.shape[1:]),
                                        dtype=torch.float16)

    def reset_session(self) -> None:
        """Forget the image, its prompts and the target buffer."""
        self.image = self.interactions = self.target_buffer = None
        self.original_image_shape = None
        self.intensity, self._queue, self._log, self._changed = 1.0, [], None, None

    def set_target_buffer(self, target_buffer: np.ndarray | torch.Tensor) -> None:
        """The 3D array predictions are written into (bool or integer; the image's shape once an image is set).

        Raises:
            ValueError: not 3D, not bool/integer, or not the image's shape.
        """
        dtype = np.dtype(str(target_buffer.dtype).replace("torch.", ""))
        if target_buffer.ndim != 3 or dtype.kind not in "biu":
            raise ValueError(f"the target buffer must be a 3D bool or integer array, got {target_buffer.ndim}D "
                             f"{dtype}")
        if self.image is not None and tuple(target_buffer.shape) != tuple(self.image.shape[1:]):
            raise ValueError(f"the target buffer has shape {tuple(target_buffer.shape)} but the image is "
                             f"{tuple(self.image.shape[1:])}; give a buffer of the image's spatial shape")
        self.target_buffer = target_buffer

    def set_do_autozoom(self, do_autozoom: bool) -> None:
        self.do_autozoom = bool(do_autozoom)

    def reset_interactions(self) -> None:
        """Clear every prompt, the previous mask and the target buffer (undo history too)."""
        self._log, self._changed, self.intensity = None, None, 1.0
        if self.interactions is not None:
            self.interactions.zero_()
        if self.target_buffer is not None:
            self.target_buffer[...] = 0

    # ------------------------------------------------------------------ prompts
    def add_point_interaction(self, coordinates: Sequence[float], include_interaction: bool, run_prediction: bool = True,
                              override_capability_checks: bool = False) -> Box | None:
        """A click at ``coordinates`` (voxels): positive (``include_interaction``) or negative."""
        channel = self._channel("points", include_interaction, override_capability_checks)
        point = check_point(coordinates, self._spatial_shape())
        with self._undoable():
            self._queue.append((point, 1.0))
            self._raise_intensity()
            region, values = point_region(point, self.capabilities.point_radius, self._spatial_shape(),
                                          self.intensity)
            self._write_maximum(channel, region, values)
            return self.predict() if run_prediction else None

    def add_bbox_interaction(self, bbox_coords: Sequence[Sequence[float]], include_interaction: bool,
                             run_prediction: bool = True, override_capability_checks: bool = False) -> Box | None:
        """A box ``[[x0, x1], [y0, y1], [z0, z1]]`` (half-open; size 1 along an axis: a 2D box on that slice)."""
        kind, box = box_prompt(bbox_coords, self._spatial_shape(), bbox3d=self.capabilities.is_supported("bbox3d"),
                               bbox2d=self.capabilities.is_supported("bbox2d"))
        channel = self._channel(kind, include_interaction, override_capability_checks)
        with self._undoable():
            self._queue.append(queue_entry_for_box(box, self.patch_size))
            self._raise_intensity()
            self._save_interactions(channel, box)
            self.interactions[(channel, *slicer(box))] = self.intensity
            return self.predict() if run_prediction else None

    def add_scribble_interaction(self, scribble_image: np.ndarray, include_interaction: bool, run_prediction: bool = True,
                                 override_capability_checks: bool = False,
                                 interaction_bbox: Sequence[Sequence[int]] | None = None) -> Box | None:
        """A scribble: a mask of the image's shape (or of ``interaction_bbox`` inside it), non-zero on the stroke."""
        return self._mask_prompt("scribble", scribble_image, include_interaction, run_prediction,
                                 override_capability_checks, interaction_bbox)

    def add_lasso_interaction(self, lasso_image: np.ndarray, include_interaction: bool, run_prediction: bool = True,
                              override_capability_checks: bool = False,
                              interaction_bbox: Sequence[Sequence[int]] | None = None) -> Box | None:
        """A lasso: the filled contour as a mask of the image's shape (or of ``interaction_bbox``)."""
        return self._mask_prompt("lasso", lasso_image, include_interaction, run_prediction,
                                 override_capability_checks, interaction_bbox)

    def add_initial_seg_interaction(self, initial_seg: np.ndarray, run_prediction: bool = False,
                                    override_capability_checks: bool = False) -> Box | None:
        """Start from an existing mask (e.g. an automatic model's): prompts are cleared, the mask becomes the previous
        mask and the target buffer; with ``run_prediction`` the whole object is refined."""
        self._check_supported("initial_label", override_capability_checks)
        seg = check_mask_prompt(initial_seg, [[0, s] for s in self._spatial_shape()], self._spatial_shape())
        whole = [[0, s] for s in self._spatial_shape()]
        with self._undoable():
            for ch in range(self.interactions.shape[0]):
                self._save_interactions(ch, whole)
            if self._log is not None:
                self._log.save_target(self.target_buffer, whole)
            self.interactions.zero_()
            self.intensity = 1.0
            if self.target_buffer is not None:
                self.target_buffer[...] = torch.from_numpy(seg) if isinstance(self.target_buffer, torch.Tensor) else seg
            seg_t = torch.from_numpy(seg)
            self.interactions[self.capabilities.prev_seg] = seg_t.to(torch.float16)
            if not run_prediction:
                return None
            self._queue_mask(seg_t, [0, 0, 0])
            return self.predict(force_full_refine=True)

    # ------------------------------------------------------------------ prediction and undo
    def predict(self, force_full_refine: bool = False) -> Box | None:
        """Predict around the last queued prompt and paste into the previous mask and the target buffer.

        Returns:
            The changed box (clipped to the image), or None when nothing was queued.
        """
        self._require_image()
        if not self._queue:
            return None
        centre, zoom = self._queue[-1]
        ctx = PredictContext(network=self.model.network, patch_size=self.patch_size, image=self.image,
                             interactions=self.interactions, prev_seg=self.capabilities.prev_seg,
                             dilate_channels=self._dilate_channels(), intensity=self.intensity, device=self.device,
                             precision=self.precision)
        result = predict_at(ctx, centre, zoom, do_autozoom=self.do_autozoom, full_refine=force_full_refine,
                            rng=self._rng)
        for box, mask in result.pastes:
            self._paste(box, mask)
        self._queue, self._changed, self.last_zoom_out = [], result.changed, result.zoom
        return self.changed_box()

    _predict = predict  # nnInteractive's name, used by its server and scripts

    def undo(self) -> bool:
        """Revert the last prompt (single level). Returns False when there is nothing to undo."""
        if self._log is None or self.interactions is None:
            return False
        log, self._log = self._log, None
        self._changed = log.restore(self.interactions, self.target_buffer)
        self.intensity, self._queue = log.intensity, list(log.queue)
        return True

    def changed_box(self) -> Box | None:
        """Box of the target buffer the last prediction or undo changed, clipped to the buffer (None: nothing)."""
        if self._changed is None or self.image is None:
            return None
        return clip_box(self._changed, self.image.shape[1:])

    def take_changed_box(self) -> Box | None:
        """:meth:`changed_box`, then forget it (so a later call without a prediction reports nothing)."""
        box, self._changed = self.changed_box(), None
        return box

    # ------------------------------------------------------------------ internals
    def _spatial_shape(self) -> tuple[int, ...]:
        return tuple(self._require_image().shape[1:])

    def _require_image(self) -> torch.Tensor:
        if self.image is None:
            raise ValueError("no image is set; call set_image first")
        return self.image

    def _check_supported(self, kind: str, override: bool) -> None:
        if self.capabilities.is_supported(kind):
            return
        message = f"the model does not support {kind} prompts (see its inference_info.json)"
        if not override:
            raise ValueError(message)
        warnings.warn(f"{message}; going ahead because override_capability_checks is set", RuntimeWarning,
                      stacklevel=3)

    def _channel(self, kind: str, positive: bool, override: bool) -> int:
        self._check_supported(kind, override)
        pos, neg = self.capabilities.pairs[kind]
        return pos if positive else neg

    def _dilate_channels(self) -> frozenset[int]:
        kinds = [k for k in ("points", "scribble") if self.capabilities.is_supported(k) and k in self.capabilities.pairs]
        return frozenset(c for k in kinds for c in self.capabilities.pairs[k])

    @contextmanager
    def _undoable(self) -> Iterator[None]:
        """One prompt: a fresh undo log; if the prompt fails, everything it changed is rolled back."""
        previous, changed = self._log, self._changed
        self._log = UndoLog(self.intensity, list(self._queue)) if self.supports_undo else None
        try:
            yield
        except BaseException:
            if self._log is not None:
                self.undo()
                self._log, self._changed = previous, changed
            raise

    def _raise_intensity(self) -> None:
        decay = self.capabilities.interaction_decay
        if not 0 < decay <= 1:
            raise ValueError(f"interaction_decay must be in (0, 1], got {decay} (inference_info.json)")
        if decay == 1:
            return
        self.intensity *= 1 / decay
        if self.intensity > FP16_MAX:
            target = FP16_MAX / 10
            whole = [[0, s] for s in self._spatial_shape()]
            for ch in range(self.interactions.shape[0]):
                if ch != self.capabilities.prev_seg:
                    self._save_interactions(ch, whole)
                    self.interactions[ch] *= target / self.intensity
            self.intensity = target

    def _save_interactions(self, channel: int, box: Box) -> None:
        if self._log is not None:
            self._log.save_interactions(self.interactions, channel, box)

    def _write_maximum(self, channel: int, box: Box | None, values: torch.Tensor) -> None:
        if box is None:
            return
        self._save_interactions(channel, box)
        view = self.interactions[(channel, *slicer(box))]
        torch.maximum(view, values.to(view.dtype), out=view)

    def _queue_mask(self, mask: torch.Tensor, offset: Sequence[int]) -> None:
        box = nonzero_box(mask)
        if box is not None:
            self._queue.append(queue_entry_for_box([[lo + o, hi + o] for (lo, hi), o in zip(box, offset)],
                                                   self.patch_size))

    def _mask_prompt(self, kind: str, mask: np.ndarray, positive: bool, run_prediction: bool, override: bool,
                     interaction_bbox: Sequence[Sequence[int]] | None) -> Box | None:
        channel = self._channel(kind, positive, override)
        box = [[0, s] for s in self._spatial_shape()] if interaction_bbox is None else interaction_bbox
        mask = check_mask_prompt(mask, box, self._spatial_shape())
        box = [[int(lo), int(hi)] for lo, hi in box]
        with self._undoable():
            self._queue_mask(torch.from_numpy(mask), [lo for lo, _ in box])
            self._raise_intensity()
            values = mask.astype(np.float16)
            if self.intensity != 1:
                values *= self.intensity
            self._write_maximum(channel, box, torch.from_numpy(values))
            return self.predict() if run_prediction else None

    def _paste(self, box: Box, mask: torch.Tensor) -> None:
        if self._log is not None:
            self._log.save_interactions(self.interactions, self.capabilities.prev_seg, box)
            self._log.save_target(self.target_buffer, box)
        paste(self.interactions[self.capabilities.prev_seg], mask, box)
        if self.target_buffer is not None:
            paste(self.target_buffer, mask, box)
