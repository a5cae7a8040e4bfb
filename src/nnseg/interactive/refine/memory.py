"""The memory check of ``nnseg refine``: from the image's header, before its voxels are read.

A refinement holds one interactive session without undo (:func:`nnseg.interactive.check_session_fits`, the check every
interactive entry point runs) and, beside it, the image as read (float32) and its label maps. The image is sized from
its files' headers (every reader's ``read_header``), so an image that cannot fit is refused before it is read; files
whose header leaves the shape open (4D or vector pixels) are checked right after reading, before the session is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from nnseg._types import ImageIO
from nnseg.interactive.memory import check_session_fits, session_budget
from nnseg.interactive.model import InteractiveModel

#: bytes per voxel refine holds beside the session: the seed and the refined map (up to uint16 each), the label's
#: target buffer and initial mask (uint8), the comparisons between them (bool)
LABEL_MAPS_BYTES_PER_VOXEL = 10


def header_shape(files: Sequence[Path], io: ImageIO) -> tuple[int, ...] | None:
    """The image ``(C, i, j, k)`` as the session sees it, from the files' headers without reading voxels (the reader's
    ``read_header``); None where only reading the files tells (4D or vector pixels, an unreadable header) or for a 2D
    file (reading it refuses it)."""
    found = io.read_header(files)
    if found is None or found[0][1] == 1:
        return None
    channels, k, j, i = found[0]
    return channels, i, j, k


def check_refine_memory(model: InteractiveModel, shape: Sequence[int], *, max_memory_gb: float | None,
                        image_read: bool) -> int:
    """:func:`nnseg.interactive.check_session_fits` for a refinement of an image ``(C, i, j, k)`` (``image_read``: it
    was read already, so a measured budget no longer counts it as free). Returns the estimate in bytes.

    Raises:
        CaseDoesNotFit: the image does not fit ``--max-memory`` (or 85 % of the memory free now).
    """
    budget, source = session_budget(model, max_memory_gb)
    voxels = math.prod(int(s) for s in shape[1:])
    image = 0 if image_read and max_memory_gb is None else 4 * int(shape[0]) * voxels
    return check_session_fits(model, shape, budget_bytes=budget, budget_source=source, enable_undo=False,
                              caller_bytes=image + LABEL_MAPS_BYTES_PER_VOXEL * voxels,
                              caller_holds="the image as read and the label maps")
