"""Broken DICOM input: every kind gives a clear error naming the series (or is left out with a note), never a
silently wrong geometry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dicom_synth import write_series

from nnseg.raw.dicom.files import open_dicom
from nnseg.raw.dicom.geometry import DicomGeometryError
from nnseg.raw.dicom.series import DicomReadError, read_volume

pydicom = pytest.importorskip("pydicom")


def _series(folder: Path, rng: np.random.Generator, n: int = 8) -> list[Path]:
    return write_series(rng.integers(0, 1000, size=(n, 16, 16)).astype(float), folder, spacing=(1.0, 1.0, 2.0))


def _edit(path: Path, change: Callable[[Any], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _read(folder: Path) -> tuple[np.ndarray, list[str]]:
    with open_dicom(folder) as scan:
        (series,) = scan.series
        return read_volume(series)[0], scan.notes


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def _shift(k: int, offset: tuple[float, float, float]) -> Callable[[Any], None]:
    def change(ds: Any) -> None:
        ds.ImagePositionPatient = [float(v) + o * k for v, o in zip(ds.ImagePositionPatient, offset)]
    return change


BROKEN: dict[str, tuple[Callable[[list[Path]], None], type[Exception], str]] = {
    "missing slice": (lambda f: f[3].unlink(), DicomGeometryError, "misses 1 slice(s) between positions 4.000 and 8.000"),
    "mixed sizes": (lambda f: _edit(f[2], lambda ds: setattr(ds, "Columns", 8) or setattr(ds, "PixelData", bytes(512))),
                    DicomGeometryError, "mixes image sizes"),
    "mixed orientations": (lambda f: _edit(f[5], lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1])),
                           DicomGeometryError, "mixes orientations"),
    "gantry tilt": (lambda f: [_edit(p, _shift(k, (0.0, 0.5, 0.0))) for k, p in enumerate(f)],
                    DicomGeometryError, "gantry tilt"),
    "inconsistent spacing": (lambda f: _edit(f[4], _shift(1, (0.0, 0.0, 0.6))), DicomGeometryError,
                             "non-uniform slice spacing"),
    "two slices at one position": (lambda f: _edit(f[4], _shift(1, (0.0, 0.0, -2.0))), DicomGeometryError,
                                   "two slices at the same position"),
    "multi-frame": (lambda f: _edit(f[0], lambda ds: setattr(ds, "NumberOfFrames", 2)), DicomGeometryError,
                    "multi-frame image (2 frames"),
    "no pixel data": (lambda f: _edit(f[6], lambda ds: delattr(ds, "PixelData")), DicomReadError, "has no pixel data"),
    "no position": (lambda f: _edit(f[1], lambda ds: delattr(ds, "ImagePositionPatient")), DicomGeometryError,
                    "lacks ImagePositionPatient"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_series_is_refused_with_a_message_naming_it(tmp_path: Path, rng: np.random.Generator, kind: str) -> None:
    files = _series(tmp_path / "in", rng)
    uid = _uid(files[0])
    damage, error, message = BROKEN[kind]
    damage(files)
    with pytest.raises(error, match=f"series {uid}") as info:
        _read(tmp_path / "in")
    assert message in str(info.value)


def test_compressed_transfer_syntax_without_decoder(tmp_path: Path, rng: np.random.Generator) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    files = _series(tmp_path / "in", rng)

    def jpeg2000(ds: Any) -> None:
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])  # a J2K start, not a decodable codestream
        ds["PixelData"].VR = "OB"

    _edit(files[2], jpeg2000)
    with pytest.raises(DicomReadError, match=f"series {_uid(files[0])}: cannot decode the pixel data") as info:
        _read(tmp_path / "in")
    assert "JPEG 2000 Image Compression (Lossless Only)" in str(info.value) and "pylibjpeg" in str(info.value)


def test_non_image_objects_and_localizers_are_left_out_with_a_note(tmp_path: Path, rng: np.random.Generator) -> None:
    from nnseg.raw.dicom.seg import derived_uid, label_names, make_segments, write_segmentation

    files = _series(tmp_path / "in", rng)
    sources = [pydicom.dcmread(f) for f in files]
    segments = make_segments(label_names({"background": 0, "a": 1}))
    write_segmentation(np.ones((8, 16, 16), np.uint8), sources, segments, tmp_path / "in" / "seg.dcm",
                       series_uid=derived_uid("s"), sop_uid=derived_uid("i"), description="t", version="0")
    for modality, sop_class, name in (("SR", "1.2.840.10008.5.1.4.1.1.88.11", "sr"),
                                      ("PR", "1.2.840.10008.5.1.4.1.1.11.1", "pr")):
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        ds.Modality, ds.SOPClassUID, ds.SeriesInstanceUID = modality, sop_class, derived_uid(name)
        del ds.Rows, ds.Columns
        ds.save_as(tmp_path / "in" / name)
    localizer = write_series(np.zeros((1, 16, 16)), tmp_path / "in", direction=(0, 0, 1, 1, 0, 0, 0, 1, 0),
                             series_uid=_uid(files[0]), names="scout{}")
    _edit(localizer[0], lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    volume, notes = _read(tmp_path / "in")
    assert volume.shape == (8, 16, 16)
    assert sum("not an image series" in n for n in notes) == 3
    assert any("Modality SEG" in n for n in notes) and any("Modality SR" in n for n in notes)
    assert f"series {_uid(files[0])}: left out 1 localizer slice(s) (ImageType LOCALIZER)" in notes


def _headers(positions: np.ndarray) -> list:
    from nnseg.raw.dicom.geometry import SliceHeader

    return [SliceHeader(path=f"f{k}", position=tuple(p), orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=(0.7, 0.7),
                        rows=4, columns=4) for k, p in enumerate(positions)]


def test_positions_rounded_to_hundredths_pass_and_a_small_tilt_does_not() -> None:
    from nnseg.raw.dicom.geometry import stack_geometry

    rng = np.random.default_rng(1)
    exact = np.stack([np.zeros(40), np.zeros(40), 0.625 * np.arange(40)], axis=1) + [12.3456, -7.891, 3.0]
    shuffled = rng.permutation(40)
    geometry = stack_geometry(_headers(np.round(exact, 2)[shuffled]), series="1.2.3")
    assert np.isclose(geometry.spacing[2], 0.625, atol=0.01) and [shuffled[i] for i in geometry.order] == list(range(40))
    tilted = exact + np.stack([np.zeros(40), np.tan(np.radians(0.5)) * 0.625 * np.arange(40), np.zeros(40)], axis=1)
    with pytest.raises(DicomGeometryError, match=r"series 1.2.3: slices are shifted sideways by 0.50 degrees"):
        stack_geometry(_headers(tilted), series="1.2.3")


def test_a_file_with_dicm_but_no_file_meta_is_left_out_at_once(tmp_path: Path, rng: np.random.Generator) -> None:
    """pydicom would parse 64 MiB of zeros after 'DICM' as millions of empty elements (minutes): it is not DICOM."""
    import time

    _series(tmp_path / "in", rng)
    (tmp_path / "in" / "zeros.dcm").write_bytes(bytes(128) + b"DICM" + bytes(64 * 2**20))
    start = time.monotonic()
    volume, notes = _read(tmp_path / "in")
    assert volume.shape == (8, 16, 16) and "skipped 1 file(s) that are not DICOM" in notes
    assert time.monotonic() - start < 10  # pydicom took 5 s per 8 MiB of zeros (EPYC, shared)
