"""``Tiff3DIO``: 3D TIFF stacks (``.tif``, ``.tiff``) with the spacing in a sidecar ``CASE.json``.

Images ``CASE_0000.tif`` take their spacing from ``CASE.json`` beside them, labels ``CASE.tif`` from
``CASE.json`` beside the label (``{"spacing": [sx, sy, sz]}`` in array-axis order). Without a sidecar the
spacing is (1, 1, 1) and a warning says so. The writer stores zlib-compressed TIFF plus the sidecar. The header
(``read_header``) is the shape of the file's first series (what ``tifffile.imread`` returns) and the sidecar's spacing,
without decoding a page.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nnseg._types import Geometry, PathLike
from nnseg.jsonio import load_json, save_json
from nnseg.raw.io_common import (
    BaseImageIO,
    ImageReadError,
    ShapeAndSpacing,
    as_geometry,
    check_paths,
    stack_case,
    strip_ending,
)

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")


class Tiff3DIO(BaseImageIO):
    """nnU-Net's reader for 3D TIFF stacks (2D TIFFs belong to :class:`NaturalImage2DIO`)."""

    name: ClassVar[str] = "Tiff3DIO"
    supported_file_endings: ClassVar[tuple[str, ...]] = (".tif", ".tiff")

    def read_images(self, paths: Sequence[PathLike]) -> tuple[np.ndarray, Geometry]:
        """Read a case's stacks, float32 ``(C, X, Y, Z)``; spacing from ``CASE.json`` (the first file's case)."""
        files = check_paths(paths, self.name)
        return self._read_with_sidecar(files, self._case_sidecar(files))

    def read_header(self, paths: Sequence[PathLike]) -> ShapeAndSpacing | None:
        """``(data.shape, geometry.spacing)`` of :meth:`read_images` from the stacks' page structure and ``CASE.json``,
        no page decoded; None when a file's header does not tell (the read then gives the error). A missing sidecar
        gives (1, 1, 1) without the warning (the read warns).

        Raises:
            ValueError: a malformed sidecar, or the files disagree in shape (the errors of :meth:`read_images`).
        """
        found = super().read_header(paths)  # the stacks' shapes; their spacing is the sidecar's
        if found is None:
            return None
        files = check_paths(paths, self.name)
        return found[0], _read_spacing(self._case_sidecar(files), files, warn=False)

    def _case_sidecar(self, files: Sequence[Path]) -> Path:
        stem = strip_ending(files[0], self.supported_file_endings)
        return files[0].with_name(_CHANNEL_SUFFIX.sub("", stem) + ".json")

    def read_seg(self, path: PathLike) -> tuple[np.ndarray, Geometry]:
        """Read a label stack, float32 ``(1, X, Y, Z)``; spacing from ``CASE.json`` beside it."""
        files = check_paths([path], self.name)
        sidecar = files[0].with_name(strip_ending(files[0], self.supported_file_endings) + ".json")
        return self._read_with_sidecar(files, sidecar)

    def _read_with_sidecar(self, files: list[Path], sidecar: Path) -> tuple[np.ndarray, Geometry]:
        arrays = [self._read_checked(f)[0] for f in files]
        geometry = Geometry(spacing=_read_spacing(sidecar, files), reader=self.name)
        return stack_case([(a, geometry) for a in arrays], files)

    def _read_file(self, path: Path) -> tuple[np.ndarray, Geometry]:
        import tifffile

        stack = np.asarray(tifffile.imread(str(path)))
        if stack.ndim != 3:
            raise ImageReadError(f"Tiff3DIO reads 3D stacks only; {path} has shape {stack.shape} "
                                 f"(2D images: use the .tif ending with NaturalImage2DIO)")
        return stack[None], Geometry(spacing=(1, 1, 1), reader=self.name)

    def _read_file_header(self, path: Path) -> ShapeAndSpacing | None:
        shape = tiff_shape(path)
        return ((1, *shape), (1, 1, 1)) if shape is not None and len(shape) == 3 else None

    def _write_file(self, seg: np.ndarray, path: Path, geometry: Geometry) -> None:
        import tifffile

        tifffile.imwrite(str(path), np.ascontiguousarray(seg), compression="zlib", photometric="minisblack")

    def write_seg(self, seg: np.ndarray, path: PathLike, geometry: Geometry | Mapping[str, Any]) -> None:
        """Write a label stack ``(X, Y, Z)`` (zlib TIFF) and its spacing sidecar ``<name>.json``."""
        super().write_seg(seg, path, geometry)
        path = Path(path)
        spacing = list(as_geometry(geometry, self.name).spacing)  # as nnU-Net: the values as they are
        save_json({"spacing": spacing}, path.with_name(path.name[: -len(path.suffix)] + ".json"))


def tiff_shape(path: Path) -> tuple[int, ...] | None:
    """The shape ``tifffile.imread(path)`` returns (its first series), from the file's tags without decoding; None for
    a file without pages."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        return tuple(int(s) for s in tif.series[0].shape) if tif.pages else None


def _read_spacing(sidecar: Path, files: Sequence[Path], *, warn: bool = True) -> tuple[float, ...]:
    if not sidecar.is_file():
        if warn:
            warnings.warn(f"no spacing file {sidecar} for {[str(f) for f in files]}; assuming spacing (1, 1, 1)",
                          UserWarning, stacklevel=4)
        return (1, 1, 1)
    content = load_json(sidecar)
    spacing = content.get("spacing") if isinstance(content, dict) else None
    if not isinstance(spacing, list) or len(spacing) != 3 or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in spacing):
        raise ImageReadError(f"{sidecar} must hold {{\"spacing\": [s0, s1, s2]}} with three positive numbers, "
                             f"got {content!r}")
    return tuple(spacing)  # as written (ints stay ints, as in nnU-Net's properties)
