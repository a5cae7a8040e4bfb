"""``NaturalImage2DIO``: 2D PNG, BMP and TIFF images, with the arrays ``skimage.io.imread`` would give.

PNG/BMP are read with pillow the way skimage's imageio plugin does (palette images become RGB(A), 16-bit
PNGs stay 16-bit); ``.tif`` is read with tifffile (skimage's plugin for TIFF, including its move of a
leading colour axis to the end). Grey images become ``(1, 1, X, Y)``, RGB(A) ``(3 or 4, 1, X, Y)``; the
spacing is nnU-Net's placeholder ``(999, 1, 1)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from nnseg._types import Geometry
from nnseg.raw.io_common import BaseImageIO, ImageReadError

NATURAL_SPACING = (999, 1, 1)  # ints, as nnU-Net (its fingerprint JSON shows [999, 1, 1])


def imread_like_skimage(path: Path) -> np.ndarray:
    """``skimage.io.imread(path)`` without skimage: ``(H, W)`` or ``(H, W, C)`` in the file's dtype."""
    if path.name.lower().endswith((".tif", ".tiff")):
        import tifffile

        image = np.asarray(tifffile.imread(str(path)))
    else:
        image = _pillow_read(path)
    if image.ndim > 2 and image.shape[-1] not in (3, 4) and image.shape[-3] in (3, 4):
        image = np.swapaxes(np.swapaxes(image, -1, -3), -2, -3)  # (C, H, W) -> (H, W, C), as skimage does
    return image


def _pillow_read(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.seek(0)
        if img.mode == "P":
            img = img.convert(img.palette.mode if img.palette is not None else "RGB")
        elif img.format == "PNG" and img.mode == "I":
            img = img.convert("I;16")  # 16-bit grey PNG: imageio returns uint16
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
