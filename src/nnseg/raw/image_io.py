"""Image readers/writers: nnU-Net's five classes, by name, and its rule for picking one.

``IMAGE_IO`` maps nnU-Net's class names (the values of ``plans.json['image_reader_writer']`` and
``dataset.json['overwrite_image_reader_writer']``) to classes. Every reader returns float32 ``(C, X, Y, Z)``
plus a :class:`~nnseg._types.Geometry` whose ``to_properties()`` is the dict nnU-Net's reader returns.

Example:
    >>> io = determine_io(".nii.gz")
    >>> io.name
    'SimpleITKIO'
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnseg._types import Geometry, ImageIO, PathLike
from nnseg.raw.io_common import BaseImageIO, ImageReadError
from nnseg.raw.io_natural import NaturalImage2DIO
from nnseg.raw.io_nibabel import NibabelIO, NibabelIOWithReorient
from nnseg.raw.io_sitk import SimpleITKIO, SimpleITKIOWithReorient
from nnseg.raw.io_tiff import Tiff3DIO
from nnseg.registry import Registry

__all__ = [
    "IMAGE_IO", "SELECTION_ORDER", "ImageReadError", "BaseImageIO",
    "NaturalImage2DIO", "SimpleITKIO", "Tiff3DIO", "NibabelIO", "NibabelIOWithReorient", "SimpleITKIOWithReorient",
    "get_io", "determine_io", "read_images", "read_seg", "write_seg",
]

IMAGE_IO: Registry[type] = Registry("image reader/writer")
for _cls in (NaturalImage2DIO, SimpleITKIO, Tiff3DIO, NibabelIO, NibabelIOWithReorient, SimpleITKIOWithReorient):
    IMAGE_IO.add(_cls.name, _cls)

#: nnU-Net's ``LIST_OF_IO_CLASSES``: the order in which readers are tried for a file ending
#: (``SimpleITKIOWithReorient`` is registered but, as in nnU-Net, used only when named).
SELECTION_ORDER: tuple[str, ...] = ("NaturalImage2DIO", "SimpleITKIO", "Tiff3DIO", "NibabelIO", "NibabelIOWithReorient")


def get_io(name: str | ImageIO) -> ImageIO:
    """A reader/writer instance by nnU-Net class name (an instance is returned unchanged).

    Raises:
        ValueError: the name is unknown (the message lists the known ones).
    """
    if not isinstance(name, str):
        return name
    cls = IMAGE_IO.get(name)
    if cls is None:
        raise ValueError(f"unknown image reader/writer {name!r}; known: {IMAGE_IO.names()} "
                         f"(fix dataset.json['overwrite_image_reader_writer'] or plans.json['image_reader_writer'])")
    return cls()


def determine_io(file_ending: str, example_file: PathLike | None = None, *, overwrite: str | None = None) -> ImageIO:
    """Pick the reader/writer for a dataset, as nnU-Net's ``determine_reader_writer_from_dataset_json``.

    Args:
        file_ending: ``dataset.json['file_ending']`` (e.g. ``.nii.gz``; compared in lower case).
        example_file: one image of the dataset; when given, a reader is taken only if it can read this file.
        overwrite: ``dataset.json['overwrite_image_reader_writer']``; a class name (the string ``"None"`` means
            unset) that is used without any check.

    Returns:
        The first reader in :data:`SELECTION_ORDER` whose endings contain ``file_ending`` and that can read
        ``example_file``.

    Raises:
        ValueError: no reader supports the ending or can read the example (the message says why for each).
        FileNotFoundError: ``example_file`` does not exist.
    """
    if overwrite is not None and overwrite != "None":
        return get_io(overwrite)
    ending = file_ending.lower()
    candidates = [IMAGE_IO[n] for n in SELECTION_ORDER if n in IMAGE_IO and ending in IMAGE_IO[n].supported_file_endings]
    if not candidates:
        known = sorted({e for n in IMAGE_IO for e in IMAGE_IO[n].supported_file_endings})
        raise ValueError(f"no image reader/writer supports file ending {file_ending!r}; supported endings: {known} "
                         f"(file_ending in dataset.json must include the dot, e.g. '.nii.gz')")
    if example_file is None:
        return candidates[0]()
    example = Path(example_file)
    if not example.is_file():
        raise FileNotFoundError(f"example image {example} does not exist; cannot choose a reader for {file_ending!r}")
    failures = []
    for cls in candidates:
        io = cls()
        problem = _cannot_read(io, example)
        if problem is None:
            return io
        failures.append(f"{cls.name}: {problem}")
    raise ValueError(f"no image reader/writer for {file_ending!r} can read {example}:\n  " + "\n  ".join(failures)
                     + "\nConvert the file, or set dataset.json['overwrite_image_reader_writer']")


def _cannot_read(io: ImageIO, example: Path) -> str | None:
    """None if ``io`` reads ``example`` (warnings silenced), else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            io.read_images([example])
    except Exception as e:  # any failure means "this reader cannot read it": the caller tries the next one
        return f"{type(e).__name__}: {e}"
    return None


def read_images(paths: Sequence[PathLike], io: str | ImageIO) -> tuple[np.ndarray, Geometry]:
    """Read one case's channel files with ``io`` (a name or an instance): float32 ``(C, X, Y, Z)`` and geometry."""
    return get_io(io).read_images(paths)


def read_seg(path: PathLike, io: str | ImageIO) -> tuple[np.ndarray, Geometry]:
    """Read a label map with ``io``: float32 ``(1, X, Y, Z)`` and geometry."""
    return get_io(io).read_seg(path)


def write_seg(seg: np.ndarray, path: PathLike, geometry: Geometry | Mapping[str, Any], *,
              io: str | ImageIO | None = None) -> None:
    """Write an integer label map ``(X, Y, Z)`` with the writer that read it.

    Args:
        seg: integer labels ``(X, Y, Z)`` (2D images: ``(1, X, Y)``).
        path: the output file (its ending should be the dataset's ``file_ending``).
        geometry: the :class:`Geometry` the image was read with, or nnU-Net's properties dict.
        io: the writer; default ``geometry.reader`` (a properties dict then needs ``io``).
    """
    if io is None:
        if not isinstance(geometry, Geometry):
            raise ValueError(f"write_seg({path}): pass io=... when geometry is a properties dict")
        io = geometry.reader
    get_io(io).write_seg(seg, path, geometry)
