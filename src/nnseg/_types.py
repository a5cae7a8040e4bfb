"""Types shared by every stage.

Array convention (as nnU-Net): images are float32 ``(C, X, Y, Z)`` where the spatial axes are in
*reversed* SimpleITK order (SimpleITK's (x, y, z) index order becomes numpy axes (z, y, x); nnU-Net
and nnseg call them X, Y, Z). 2D images are ``(C, 1, X, Y)``. ``spacing`` always lists one value per
spatial array axis, in array order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, Union

import numpy as np

Spacing = tuple[float, ...]
Shape = tuple[int, ...]
LabelOrRegion = Union[int, tuple[int, ...]]
PathLike = Union[str, Path]
IgnoreLabels = Union[int, Sequence[int], None]  # reference values left out of the metrics (several: ignore_labels)


@dataclass(frozen=True)
class Geometry:
    """Where an image sits in the world, as the reader found it; writers restore it exactly.

    Attributes:
        spacing: voxel size per spatial array axis (nnU-Net's ``properties['spacing']``).
        reader: name of the reader/writer class that produced it (nnU-Net's class name, e.g. ``SimpleITKIO``).
        origin, direction: SimpleITK geometry in SimpleITK's own (x, y, z) order (``sitk_stuff``), or None.
        sitk_spacing: SimpleITK spacing in SimpleITK order (``sitk_stuff['spacing']``), or None.
        affine: the file's original 4x4 affine (nibabel readers, ``nibabel_stuff['original_affine']``), or None.
        reoriented_affine: the affine after reorientation to RAS (``nibabel_stuff['reoriented_affine']``), or None.
        original_orientation: SimpleITK orientation code of the file before reorientation
            (``sitk_stuff['original_orientation']``, ``SimpleITKIOWithReorient`` only), or None.
        extra: any further reader-specific entries, kept verbatim.
    """

    spacing: Spacing
    reader: str
    origin: tuple[float, ...] | None = None
    direction: tuple[float, ...] | None = None
    sitk_spacing: tuple[float, ...] | None = None
    affine: tuple[tuple[float, ...], ...] | None = None
    reoriented_affine: tuple[tuple[float, ...], ...] | None = None
    original_orientation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_properties(self) -> dict[str, Any]:
        """nnU-Net's properties dict for this geometry (what its readers return and its ``.pkl`` files hold)."""
        props: dict[str, Any] = {}
        if self.sitk_spacing is not None:
            props["sitk_stuff"] = {
                "spacing": tuple(self.sitk_spacing),
                "origin": tuple(self.origin or ()),
                "direction": tuple(self.direction or ()),
            }
            if self.original_orientation is not None:
                props["sitk_stuff"]["original_orientation"] = self.original_orientation
        if self.affine is not None:
            stuff: dict[str, Any] = {"original_affine": np.asarray(self.affine, dtype=np.float64)}
            if self.reoriented_affine is not None:
                stuff["reoriented_affine"] = np.asarray(self.reoriented_affine, dtype=np.float64)
            props["nibabel_stuff"] = stuff
        props.update(self.extra)
        props["spacing"] = [float(s) for s in self.spacing]
        return props

    @classmethod
    def from_properties(cls, props: dict[str, Any], *, reader: str) -> "Geometry":
        """Inverse of :meth:`to_properties` (accepts the dicts nnU-Net pickles or nnseg stores as JSON)."""
        known = {"sitk_stuff", "nibabel_stuff", "spacing"}
        sitk = props.get("sitk_stuff")
        nib = props.get("nibabel_stuff")

        def _mat(a: Any) -> tuple[tuple[float, ...], ...] | None:
            return None if a is None else tuple(tuple(float(v) for v in row) for row in np.asarray(a))

        return cls(
            spacing=tuple(float(s) for s in props["spacing"]),
            reader=reader,
            origin=tuple(float(v) for v in sitk["origin"]) if sitk else None,
            direction=tuple(float(v) for v in sitk["direction"]) if sitk else None,
            sitk_spacing=tuple(float(v) for v in sitk["spacing"]) if sitk else None,
            affine=_mat(nib.get("original_affine")) if nib else None,
            reoriented_affine=_mat(nib.get("reoriented_affine")) if nib else None,
            original_orientation=sitk.get("original_orientation") if sitk else None,
            extra={k: v for k, v in props.items() if k not in known},
        )


class ImageIO(Protocol):
    """A reader/writer of one family of image files (registered in ``nnseg.raw.image_io.IMAGE_IO``).

    ``name`` is nnU-Net's class name (``SimpleITKIO``, ``NibabelIO``, ``NibabelIOWithReorient``,
    ``NaturalImage2DIO``, ``Tiff3DIO``) so that ``plans.json['image_reader_writer']`` and
    ``dataset.json['overwrite_image_reader_writer']`` mean the same thing in nnseg and nnU-Net.
    """

    name: str
    supported_file_endings: tuple[str, ...]

    def read_images(self, paths: Sequence[PathLike]) -> tuple[np.ndarray, Geometry]:
        """Read one case's channel files into float32 ``(C, X, Y, Z)``."""
        ...

    def read_header(self, paths: Sequence[PathLike]) -> tuple[Shape, Spacing] | None:
        """``(data.shape, geometry.spacing)`` of :meth:`read_images` from the headers (no voxels); None when only
        reading the image tells."""
        ...

    def read_seg(self, path: PathLike) -> tuple[np.ndarray, Geometry]:
        """Read a label map into float32 ``(1, X, Y, Z)``."""
        ...

    def write_seg(self, seg: np.ndarray, path: PathLike, geometry: Geometry) -> None:
        """Write an integer label map ``(X, Y, Z)`` with the geometry it was read with."""
        ...
