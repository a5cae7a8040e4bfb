"""What an interactive session holds, and the one check that an image fits before a session allocates anything.

:func:`session_memory_bytes` bounds what a session holds for an image; the network's working memory is
:func:`nnseg.interactive.predict.prediction_memory_bytes`. :func:`check_session_fits` adds the two (and what the
caller holds beside the session) and refuses an image that does not fit the budget with
:class:`~nnseg.predictions.inference.memory_plan.CaseDoesNotFit`, naming the shape, the estimate, the budget and the
fix. The budget (:func:`session_budget`) is ``--max-memory GB``, else 85 % of the memory free now on the model's
device, as ``nnseg predict`` resolves it. Every interactive entry point runs this check: ``InteractiveSession.set_image``
(unless its caller budgets the session, ``check_memory=False``) and ``nnseg refine`` (from the image's header, before
its voxels are read). ``nnseg serve --interactive`` reserves each session from the server's shared budget instead
(:class:`nnseg.serve.interactive.sessions.SessionBudget`, with the same two estimates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nnseg.interactive.model import InteractiveModel
from nnseg.interactive.predict import prediction_memory_bytes
from nnseg.predictions.inference.memory_plan import GIB, CaseDoesNotFit, memory_budget

#: per image voxel, scratch of one prediction or prompt that grows with the image (see session_memory_bytes)
SCRATCH_BYTES_PER_VOXEL = 32


def session_memory_bytes(image_shape: Sequence[int], *, num_interaction_channels: int, patch_size: Sequence[int],
                         target_itemsize: int = 1, enable_undo: bool = True) -> int:
    """Upper bound of the memory a session holds once an image ``[c, x, y, z]`` is set (bytes; host and device).

    With ``V`` the image's voxels, ``C`` its channels, ``N`` interaction channels, ``t`` the target buffer's
    itemsize and ``R = prod(s + p)`` (each axis of the image grown by the patch: the refinement's padded crop):

    * the normalised image ``4 C V`` (float32), the interaction channels ``2 N V`` (float16), the target buffer
      ``t V``;
    * with undo, the pre-images of one prompt, at worst every channel and the whole target (an initial mask),
      and the target copy undo compares with: ``2 N V + 2 t V``;
    * the scratch of one prediction or prompt that grows with the image: the refinement crops of image and
      channels ``(4 C + 2 N) R``, and :data:`SCRATCH_BYTES_PER_VOXEL` ``V`` (previous-mask box, float16 change map
      and its window filters, comparisons: 16; a prompt mask upload with its checked copy and float16 values: 13;
      slack: 3).

    The patch-sized working memory of the network, shared by all sessions (one prediction at a time), is
    :func:`nnseg.interactive.predict.prediction_memory_bytes`. Not counted: the request body being decoded.
    """
    shape = [int(v) for v in image_shape]
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"image_shape must be [c, x, y, z] with positive sizes, got {list(image_shape)}")
    channels, spatial = shape[0], shape[1:]
    voxels = math.prod(spatial)
    crop = math.prod(s + int(p) for s, p in zip(spatial, patch_size))
    held = (4 * channels + 2 * num_interaction_channels + target_itemsize) * voxels
    undo = (2 * num_interaction_channels + 2 * target_itemsize) * voxels if enable_undo else 0
    scratch = (4 * channels + 2 * num_interaction_channels) * crop + SCRATCH_BYTES_PER_VOXEL * voxels
    return int(held + undo + scratch)


def model_session_bytes(model: InteractiveModel, image_shape: Sequence[int], *, target_itemsize: int = 1,
                        enable_undo: bool = True) -> int:
    """:func:`session_memory_bytes` of a session of ``model`` (its interaction channels and patch) on an image
    ``[c, x, y, z]``."""
    return session_memory_bytes(image_shape, num_interaction_channels=model.capabilities.num_interaction_channels,
                                patch_size=model.patch_size, target_itemsize=target_itemsize, enable_undo=enable_undo)


def model_prediction_bytes(model: InteractiveModel) -> int:
    """:func:`~nnseg.interactive.predict.prediction_memory_bytes` of ``model``'s network (held once, shared by its
    sessions)."""
    return prediction_memory_bytes(model.configuration.architecture, model.patch_size,
                                   image_channels=model.num_image_channels,
                                   interaction_channels=model.capabilities.num_interaction_channels)


def session_budget(model: InteractiveModel, max_memory_gb: float | None) -> tuple[int, str]:
    """``(bytes, where they come from)``: ``max_memory_gb``, else 85 % of the memory free now on the device of the
    model's network (:func:`nnseg.predictions.inference.memory_plan.memory_budget`).

    Raises:
        ValueError: ``max_memory_gb`` is not positive.
    """
    return memory_budget(max_memory_gb, next(model.network.parameters()).device)


def check_session_fits(model: InteractiveModel, image_shape: Sequence[int], *, budget_bytes: int, budget_source: str,
                       enable_undo: bool = True, target_itemsize: int = 1, caller_bytes: int = 0,
                       caller_holds: str = "") -> int:
    """The memory an interactive session of ``model`` on an image ``[c, x, y, z]`` needs, checked against a budget.

    The estimate is :func:`session_memory_bytes` + :func:`~nnseg.interactive.predict.prediction_memory_bytes` +
    ``caller_bytes`` (what the caller holds beside the session, described by ``caller_holds``, e.g. the image as read).
    Nothing is allocated: call it with the shape alone (from a file's header) before reading or copying the image.

    Returns:
        The estimate in bytes (at most ``budget_bytes``).

    Raises:
        CaseDoesNotFit: the estimate exceeds ``budget_bytes``; the message names the image's shape, the estimate and
            its parts, the budget and ``budget_source``, and what to do.
    """
    shape = [int(v) for v in image_shape]
    session = model_session_bytes(model, shape, target_itemsize=target_itemsize, enable_undo=enable_undo)
    network = model_prediction_bytes(model)
    total = session + network + int(caller_bytes)
    if total <= budget_bytes:
        return total
    beside = f", {caller_holds} {caller_bytes / GIB:.2f} GB" if caller_bytes else ""
    raise CaseDoesNotFit(
        f"the image of shape {shape} ([c, x, y, z]) does not fit in memory: an interactive session on it needs about "
        f"{total / GIB:.2f} GB (the image, its prompts and the prediction scratch {session / GIB:.2f} GB, the "
        f"network's working memory {network / GIB:.2f} GB{beside}), more than the {budget_bytes / GIB:.2f} GB "
        f"allowed ({budget_source}). Raise --max-memory (max_memory_gb in Python) or free memory, use a machine "
        "with more memory, or crop the image to the region to segment. Nothing was allocated or written.")
