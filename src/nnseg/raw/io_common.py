"""Shared machinery of the image readers/writers: file checks, per-case consistency, label casting.

Each reader class implements ``_read_file(path) -> (array (C, X, Y, Z), Geometry)`` for one file and
``_write_file(seg (X, Y, Z) uint8/uint16, tmp_path, geometry)``; :class:`BaseImageIO` adds the checks that
nnU-Net's readers make (all files of one case agree in shape and spacing; origin/direction/affine
differences only warn) and writes atomically. ``_read_file_header(path)`` gives one file's array shape and spacing
from its header, without the voxels (:meth:`BaseImageIO.read_header`), or None where only reading the image tells.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nnseg._types import Geometry, PathLike
from nnseg.jsonio import atomic_path

#: ``(shape, spacing)`` of a case as :meth:`BaseImageIO.read_images` returns it: ``data.shape`` (``(C, X, Y, Z)``)
#: and ``geometry.spacing``
ShapeAndSpacing = tuple[tuple[int, ...], tuple[float, ...]]


class ImageReadError(ValueError):
    """A file could not be read, or the files of one case do not fit together (the message names the files)."""


class BaseImageIO:
    """Base of every reader/writer; subclasses set ``name``, ``supported_file_endings`` and the two file hooks."""

    name: ClassVar[str] = ""
    supported_file_endings: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        return f"{self.name}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    # -- hooks -------------------------------------------------------------------------------------------
    def _read_file(self, path: Path) -> tuple[np.ndarray, Geometry]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _write_file(self, seg: np.ndarray, path: Path, geometry: Geometry) -> None:  # pragma: no cover
        raise NotImplementedError

    def _read_file_header(self, path: Path) -> ShapeAndSpacing | None:
        """``(array shape, spacing)`` that :meth:`_read_file` returns for ``path``, from the header only; None: only
        reading the image tells (the default)."""
        return None

    # -- public API ----------------------------------------------------------------------------------------
    def read_images(self, paths: Sequence[PathLike]) -> tuple[np.ndarray, Geometry]:
        """Read the channel files of one case.

        Args:
            paths: one file per channel (``CASE_0000<ending>``, ``CASE_0001<ending>``, ...); a 4D file holds
                several channels itself.

        Returns:
            ``(data, geometry)``: float32 ``(C, X, Y, Z)`` (2D images: ``(C, 1, X, Y)``) and the geometry of the
            first file.

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: a file is unreadable, or the files disagree in shape or spacing.
        """
        files = check_paths(paths, self.name)
        parts = [self._read_checked(f) for f in files]
        return stack_case(parts, files)

    def read_header(self, paths: Sequence[PathLike]) -> ShapeAndSpacing | None:
        """``(data.shape, geometry.spacing)`` of :meth:`read_images` on ``paths``, from the files' headers: no voxel is
        read or decoded, so a whole-body volume costs a few kB of I/O.

        Returns:
            ``((C, X, Y, Z), spacing)`` in the reader's axis order and conventions (2D images: ``(C, 1, X, Y)``);
            None when only reading the image tells (a layout the header leaves open, e.g. 4D or vector pixels, or a
            header the library cannot read): then read the image, whose reader gives the error if there is one.

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: the headers disagree in shape or spacing (the error :meth:`read_images` gives).
        """
        files = check_paths(paths, self.name)
        headers = []
        for f in files:
            header = self._header_checked(f)
            if header is None:
                return None
            headers.append(header)
        return stack_headers(headers, files)

    def read_seg(self, path: PathLike) -> tuple[np.ndarray, Geometry]:
        """Read a label map into float32 ``(1, X, Y, Z)`` with its geometry."""
        return self.read_images([path])

    def write_seg(self, seg: np.ndarray, path: PathLike, geometry: Geometry | Mapping[str, Any]) -> None:
        """Write an integer label map ``(X, Y, Z)`` (2D: ``(1, X, Y)``) with the geometry it was read with.

        ``geometry`` may also be nnU-Net's properties dict (as pickled in its ``.pkl`` files). The label map is
        stored as uint8 when its maximum is below 255, else uint16 (as nnU-Net). Written atomically.
        """
        path = Path(path)
        labels = seg_for_writing(seg, path)
        geo = as_geometry(geometry, self.name)
        with atomic_path(path) as tmp:
            self._write_file(labels, tmp, geo)

    def _read_checked(self, path: Path) -> tuple[np.ndarray, Geometry]:
        try:
            return self._read_file(path)
        except (ImageReadError, FileNotFoundError):
            raise
        except Exception as e:  # the libraries raise many types (RuntimeError, OSError, ImageFileError, ...)
            raise ImageReadError(
                f"{self.name} cannot read {path}: {type(e).__name__}: {e}. The file is corrupt or not in a format this "
                f"reader understands; re-export it, or pick another reader with dataset.json['overwrite_image_reader_writer']"
            ) from e

    def _header_checked(self, path: Path) -> ShapeAndSpacing | None:
        try:
            return self._read_file_header(path)
        except Exception:  # noqa: BLE001 - an unreadable header: reading the image gives the reader's own error
            return None


def check_paths(paths: Sequence[PathLike], reader: str) -> list[Path]:
    """Turn ``paths`` into existing file paths; a single str/Path is refused (a case is a sequence of files)."""
    if isinstance(paths, (str, Path)):
        raise TypeError(f"{reader}.read_images expects a sequence of files (one per channel), got the single path {paths!r}; "
                        f"pass [{str(paths)!r}]")
    files = [Path(p) for p in paths]
    if not files:
        raise ValueError(f"{reader}.read_images got no files; pass one file per channel")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"image file {f} does not exist (or is not a file); check the dataset folder")
    return files


def stack_case(parts: Sequence[tuple[np.ndarray, Geometry]], files: Sequence[Path]) -> tuple[np.ndarray, Geometry]:
    """Check that all files of a case agree (shape, spacing: error; origin/direction/affine: warning) and stack.

    Args:
        parts: per file ``(array (C_i, X, Y, Z), geometry)``.
        files: the files, for messages.

    Returns:
        float32 ``(sum C_i, X, Y, Z)`` and the first file's geometry.
    """
    arrays = [a for a, _ in parts]
    geos = [g for _, g in parts]
    listing = ", ".join(str(f) for f in files)
    spacings = {attr: [getattr(g, attr) for g in geos] for attr in ("spacing", "sitk_spacing")}
    _check_same_grid([a.shape[1:] for a in arrays], spacings, listing)
    for attr in ("origin", "direction", "affine", "reoriented_affine"):
        values = [getattr(g, attr) for g in geos]
        if not _all_close(values):
            warnings.warn(f"the images of one case differ in {attr}: {listing} ({values}); check that they overlap",
                          UserWarning, stacklevel=3)
    data = np.vstack(arrays, dtype=np.float32, casting="unsafe")
    return data, geos[0]


def stack_headers(headers: Sequence[ShapeAndSpacing], files: Sequence[Path]) -> ShapeAndSpacing:
    """What :func:`stack_case` returns for per-file ``(shape (C_i, X, Y, Z), spacing)`` headers: the channels summed,
    the first file's spacing; the same error when the files disagree in shape or spacing."""
    shapes = [tuple(int(s) for s in shape) for shape, _ in headers]
    _check_same_grid([s[1:] for s in shapes], {"spacing": [spacing for _, spacing in headers]},
                     ", ".join(str(f) for f in files))
    return (sum(s[0] for s in shapes), *shapes[0][1:]), tuple(headers[0][1])


def _check_same_grid(shapes: Sequence[tuple[int, ...]], spacings: Mapping[str, Sequence[Any]], listing: str) -> None:
    if any(s != shapes[0] for s in shapes):
        raise ImageReadError(f"the images of one case differ in shape {[tuple(s) for s in shapes]}: {listing}; "
                             f"all channels (and the label) of a case must be on the same voxel grid")
    for attr, values in spacings.items():
        if not _all_close(values):
            raise ImageReadError(f"the images of one case differ in {attr} {values}: {listing}; resample them to one grid")


def _all_close(values: Sequence[Any]) -> bool:
    first = values[0]
    for v in values[1:]:
        if (v is None) != (first is None):
            return False
        if v is None:
            continue
        a, b = np.asarray(v, dtype=np.float64), np.asarray(first, dtype=np.float64)
        if a.shape != b.shape or not np.allclose(a, b):
            return False
    return True


def seg_for_writing(seg: np.ndarray, path: Path) -> np.ndarray:
    """Validate a label map and cast it as nnU-Net does: uint8 if ``max < 255`` else uint16."""
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise ValueError(f"cannot write {path}: a segmentation must be 3D (X, Y, Z), or (1, X, Y) for 2D; got shape {seg.shape}")
    if seg.size == 0:
        raise ValueError(f"cannot write {path}: the segmentation is empty (shape {seg.shape})")
    if seg.dtype == bool:
        seg = seg.astype(np.uint8)
    lo, hi = seg.min(), seg.max()
    if lo < 0 or hi > np.iinfo(np.uint16).max:
        raise ValueError(f"cannot write {path}: label values must lie in [0, 65535], got [{lo}, {hi}]; "
                         f"map the labels to non-negative integers first")
    return seg.astype(np.uint8 if hi < 255 else np.uint16, copy=False)


def as_geometry(geometry: Geometry | Mapping[str, Any], reader: str) -> Geometry:
    """Accept a :class:`Geometry` or nnU-Net's properties dict (``spacing``, ``sitk_stuff`` / ``nibabel_stuff``)."""
    if isinstance(geometry, Geometry):
        return geometry
    if isinstance(geometry, Mapping):
        if "spacing" not in geometry:
            raise ValueError(f"{reader}: a properties dict needs a 'spacing' entry, got keys {sorted(geometry)}")
        return Geometry.from_properties(dict(geometry), reader=reader)
    raise TypeError(f"{reader}: geometry must be a Geometry or a properties dict, got {type(geometry).__name__}")


def strip_ending(path: Path, endings: Sequence[str]) -> str:
    """The file name without the longest matching ending from ``endings`` (case-insensitive), else without its suffix."""
    name = path.name
    for ending in sorted(endings, key=len, reverse=True):
        if name.lower().endswith(ending.lower()):
            return name[: -len(ending)]
    return path.stem
