"""``NaturalImage2DIO``: 2D PNG, BMP and TIFF images, with the arrays ``skimage.io.imread`` would give.

PNG/BMP are read with pillow the way skimage's imageio plugin does (palette images become RGB(A), 16-bit
PNGs stay 16-bit); ``.tif`` is read with tifffile (skimage's plugin for TIFF, including its move of a
leading colour axis to the end). Grey images become ``(1, 1, X, Y)``, RGB(A) ``(3 or 4, 1, X, Y)``; the
spacing is nnU-Net's placeholder ``(999, 1, 1)``. The header (``read_header``) comes from pillow's ``Image.open`` (size
and mode, no pixels decoded) or tifffile's page structure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nnseg._types import Geometry
from nnseg.raw.io_common import BaseImageIO, ImageReadError, ShapeAndSpacing
from nnseg.raw.io_tiff import tiff_shape

NATURAL_SPACING = (999, 1, 1)  # ints, as nnU-Net (its fingerprint JSON shows [999, 1, 1])


def imread_like_skimage(path: Path) -> np.ndarray:
    """``skimage.io.imread(path)`` without skimage: ``(H, W)`` or ``(H, W, C)`` in the file's dtype."""
    if path.name.lower().endswith((".tif", ".tiff")):
        import tifffile

        image = np.asarray(tifffile.imread(str(path)))
    else:
        image = _pillow_read(path)
    if _colour_first(image.shape):
        image = np.swapaxes(np.swapaxes(image, -1, -3), -2, -3)  # (C, H, W) -> (H, W, C), as skimage does
    return image


def shape_like_skimage(path: Path) -> tuple[int, ...] | None:
    """The shape of :func:`imread_like_skimage` ``(path)`` from the file's header (pillow: size and mode; TIFF: the
    page structure), no pixel decoded; None for a TIFF without pages."""
    if path.name.lower().endswith((".tif", ".tiff")):
        shape = tiff_shape(path)
        if shape is None:
            return None
    else:
        from PIL import Image

        with Image.open(path) as img:
            img.seek(0)
            bands = Image.getmodebands(_pillow_mode(img))
            shape = (img.height, img.width) + ((bands,) if bands > 1 else ())
    if _colour_first(shape):
        return (*shape[:-3], shape[-2], shape[-1], shape[-3])
    return shape


def _colour_first(shape: tuple[int, ...]) -> bool:
    """skimage's test for a leading colour axis, ``(..., C, H, W)`` with C 3 or 4 and W not."""
    return len(shape) > 2 and shape[-1] not in (3, 4) and shape[-3] in (3, 4)


def _pillow_mode(img: Any) -> str:
    """The mode :func:`_pillow_read` converts ``img`` to: palette images to their palette's mode, 16-bit grey PNG to
    ``I;16`` (imageio returns uint16), else the image's own."""
    if img.mode == "P":
        return img.palette.mode if img.palette is not None else "RGB"
    if img.format == "PNG" and img.mode == "I":
        return "I;16"
    return str(img.mode)


def _pillow_read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.seek(0)
        mode = _pillow_mode(img)
        if mode != img.mode:
            img = img.convert(mode)
        img.load()
        return np.array(img)


class NaturalImage2DIO(BaseImageIO):
    """nnU-Net's reader for natural 2D images; the writer stores uint8 (or uint16 when labels reach 255)."""

    name: ClassVar[str] = "NaturalImage2DIO"
    supported_file_endings: ClassVar[tuple[str, ...]] = (".png", ".bmp", ".tif")

    def _read_file(self, path: Path) -> tuple[np.ndarray, Geometry]:
        image = imread_like_skimage(path)
        if image.ndim == 2:
            array = image[None, None]
        elif image.ndim == 3 and image.shape[-1] in (3, 4):
            array = image.transpose(2, 0, 1)[:, None]
        else:
            raise ImageReadError(f"{path} has shape {image.shape}; NaturalImage2DIO reads grey (H, W) or RGB/RGBA "
                                 f"(H, W, 3|4) images (3D stacks: use Tiff3DIO with a .tif/.tiff stack)")
        return array, Geometry(spacing=NATURAL_SPACING, reader=self.name)

    def _read_file_header(self, path: Path) -> ShapeAndSpacing | None:
        """:meth:`_read_file`'s ``(C, 1, H, W)`` from :func:`shape_like_skimage`; None for the shapes it refuses."""
        shape = shape_like_skimage(path)
        if shape is not None and len(shape) == 2:
            return (1, 1, *shape), NATURAL_SPACING
        if shape is not None and len(shape) == 3 and shape[-1] in (3, 4):
            return (shape[-1], 1, shape[0], shape[1]), NATURAL_SPACING
        return None

    def _write_file(self, seg: np.ndarray, path: Path, geometry: Geometry) -> None:
        if seg.shape[0] != 1:
            raise ValueError(f"cannot write {path}: a 2D segmentation must have shape (1, X, Y), got {seg.shape}")
        plane = np.ascontiguousarray(seg[0])
        if path.name.lower().endswith((".tif", ".tiff")):
            import tifffile

            tifffile.imwrite(str(path), plane, photometric="minisblack")
            return
        from PIL import Image

        if plane.dtype == np.uint16 and path.name.lower().endswith(".bmp"):
            raise ValueError(f"cannot write {path}: BMP holds 8-bit labels only, but the labels reach {plane.max()}; "
                             f"use .png or .tif")
        fmt = "BMP" if path.name.lower().endswith(".bmp") else "PNG"
        Image.fromarray(plane).save(path, format=fmt)
