"""Complete single-frame CT / MR Image IODs (dciodvfy: no errors) written from a volume, for the DICOM tests.

``write_series(volume_zyx, folder, spacing=(sx, sy, sz), origin=..., direction=...)`` writes one file per slice with
the geometry of a SimpleITK image (LPS, direction columns = row, column and slice axes), so a NIfTI case becomes a
DICOM series that SimpleITK's own series reader reads back with the same geometry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def _common(ds: Dataset, *, study_uid: str, series_uid: str, frame_uid: str, modality: str, series_number: int) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "NNSEG001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"nnseg test {modality}"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "nnseg tests"
    ds.ContentDate = "20240101"
    ds.ContentTime = "120000"
    ds.PatientPosition = "HFS"
    ds.Laterality = ""


def _modality_module(ds: Dataset, modality: str) -> None:
    if modality == "CT":
        ds.SOPClassUID = CT_IMAGE
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
    else:
        ds.SOPClassUID = MR_IMAGE
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "500"
        ds.EchoTime = "20"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "3"
        ds.ImagedNucleus = "1H"


def write_series(volume: np.ndarray, folder: Path, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 origin: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] = tuple(np.eye(3).ravel()),
                 modality: str = "CT", slope: float = 1.0, intercept: float = 0.0, study_uid: str | None = None,
                 series_uid: str | None = None, series_number: int = 1, names: str = "IM{:04d}") -> list[Path]:
    """Write ``volume`` (z, y, x) as one file per slice; stored = round((value - intercept) / slope) as uint16/int16."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    stored = np.round((np.asarray(volume, dtype=np.float64) - intercept) / slope)
    signed = stored.min() < 0
    stored = stored.astype(np.int16 if signed else np.uint16)
    paths = []
    for k in range(stored.shape[0]):
        ds = Dataset()
        _common(ds, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid, modality=modality,
                series_number=series_number)
        _modality_module(ds, modality)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        position = np.asarray(origin, dtype=np.float64) + d[:, 2] * spacing[2] * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*d[:, 0], *d[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        if modality == "CT" or (slope, intercept) != (1.0, 0.0):  # MR Image has no rescale (a standard extension)
            ds.RescaleIntercept = f"{intercept:g}"
            ds.RescaleSlope = f"{slope:g}"
            ds.RescaleType = "HU" if modality == "CT" else "US"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / names.format(k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of dciodvfy's report on ``path`` that start with 'Error' (skips outside CI when dciodvfy is missing)."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dciodvfy (Debian package dicom3tools) is missing in CI")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")]
