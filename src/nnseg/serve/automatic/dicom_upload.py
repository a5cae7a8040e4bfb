"""A ZIP of one DICOM image series as an upload of ``nnseg serve`` (native API and MONAI Label's ``/infer``).

The zip is checked when it arrives, before the job is queued: it must be a zip (400), hold no entry that would leave
its folder (absolute names, ``..``, drive letters) nor a nested zip (400), unpack to at most
:data:`UNZIPPED_PER_UPLOAD` times the server's upload limit (413; ``zipfile`` never writes more than an entry
declares), and hold exactly one valid image series (422, e.g. a missing slice, named as ``nnseg predict`` names it).
The worker then converts the series exactly as ``nnseg predict -i <dicom folder>`` does
(:func:`~nnseg.predictions.dicom.dicom_predict.write_series_image`: series geometry, rescale slope/intercept applied),
predicts it like a NIfTI upload and answers a NIfTI (``?result_format=.nrrd`` / ``.mha`` also) or, with
``?result_format=dicom-seg``, the DICOM SEG that ``--output-format dicom-seg`` writes. Everything is extracted under
the job's folder (server-made names) and removed with it; messages never show server paths.

Without pydicom (or highdicom for a SEG) the server answers 501: the request is valid, the server lacks the optional
component (``pip install nnseg[dicom]`` on the server), which the client cannot fix by changing the request.
"""

from __future__ import annotations

import shutil
import threading
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from nnseg.predictions.dicom.dicom_predict import check_model_for_dicom, segments_for, write_series_image, write_series_seg
from nnseg.predictions.inference.memory_plan import CasePlan
from nnseg.raw.dicom import require
from nnseg.raw.dicom.files import DicomSeries, scan_dicom
from nnseg.raw.dicom.series import series_geometry
from nnseg.serve.automatic.models import UPLOAD_ENDINGS, CaseError, ServedModel, check_shape, predict_case

DICOM_ZIP = ".zip"
DICOM_SEG = "dicom-seg"
SEG_ENDING = ".dcm"
UNZIPPED_PER_UPLOAD = 16  # a DICOM zip may unpack to 16x the upload limit (zero-padded CT compresses about 3-10:1)
MAX_ENTRIES = 20_000
MAX_NAME, MAX_PART, MAX_DEPTH = 1024, 255, 32  # entry name characters, bytes of one part (file systems), folders
SERIES = ("the uploaded DICOM series",)


def is_dicom_zip(filename: str | None) -> bool:
    """Whether an uploaded file's name says it is a zip (of a DICOM series)."""
    return (filename or "").lower().endswith(DICOM_ZIP)


def dicom_result_ending(requested: str | None) -> str:
    """The result file's ending for a DICOM upload: ``.nii.gz`` by default, ``.dcm`` for ``dicom-seg``."""
    if not requested:
        return ".nii.gz"
    if requested.lower() == DICOM_SEG:
        return SEG_ENDING
    ending = (requested if requested.startswith(".") else f".{requested}").lower()
    if ending not in UPLOAD_ENDINGS:
        raise CaseError(f"result format {requested!r} is not one of {', '.join((*UPLOAD_ENDINGS, DICOM_SEG))}")
    return ending


def check_dicom_request(model: ServedModel, *, files: int, seg: bool) -> None:
    """Refuse before reading the upload: several files (422), no pydicom (501), a model that cannot take DICOM (422)."""
    if files != 1:
        raise CaseError(f"a DICOM zip holds the whole case: send it alone as the field 'file' (got {files} files)",
                        status=422)
    try:
        require("pydicom")
        if seg:
            require("highdicom")
    except ImportError as e:
        raise CaseError(f"this server cannot read DICOM uploads: {e} (on the server); or upload a NIfTI/NRRD/MHA "
                        "image instead", status=501) from None
    try:
        check_model_for_dicom(model.predictor)
    except ValueError as e:
        raise CaseError(f"model {model.name}: {e}", status=422) from None


class UnzipBudget:
    """The bytes DICOM zips may hold unpacked at once on the server, across all jobs (``--max_unzipped_mb``).

    A zip reserves its declared unpacked size when it arrives and keeps it until its job ends (the worker unpacks it
    again); a zip that would exceed the rest is answered 429 (retry later), one larger than the whole budget 413, and
    one the disk cannot hold next to the other reservations 507.
    """

    def __init__(self, total: int, folder: Path) -> None:
        self.total = total
        self.folder = folder
        self.reserved = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> int:
        """Reserve ``size`` bytes (returned, to :meth:`release` later). Raises CaseError 413/429/507."""
        with self._lock:
            if size > self.total:
                raise CaseError(f"the zip unpacks to {size / 2**20:.1f} MiB, more than this server unpacks at once "
                                f"({self.total / 2**20:.1f} MiB, --max_unzipped_mb); send a smaller series", status=413)
            if self.reserved + size > self.total:
                raise CaseError(f"other uploads hold {self.reserved / 2**20:.1f} of the {self.total / 2**20:.1f} MiB "
                                f"this server unpacks at once; the zip needs {size / 2**20:.1f} MiB: retry later",
                                status=429)
            if self.reserved + size > shutil.disk_usage(self.folder).free:
                raise CaseError(f"the server has too little free disk to unpack the zip ({size / 2**20:.1f} MiB); "
                                "retry later", status=507)
            self.reserved += size
        return size

    def release(self, size: int) -> None:
        with self._lock:
            self.reserved = max(0, self.reserved - size)


def check_dicom_zip(upload: Path, *, max_unzipped_bytes: int, budget: UnzipBudget | None = None,
                    model: ServedModel | None = None) -> tuple[int, CasePlan | None]:
    """The checks made when a zip arrives (see the module text); the series is read (headers only) and removed.
    With ``model``, the series' shape and spacing also get the prediction checks and the memory plan
    (:func:`~nnseg.serve.automatic.models.check_shape`: a one-slice series for a 3D model 422, too large 413).

    Returns the bytes reserved in ``budget`` (release them when the job ends; 0 without a budget) and the case's
    memory plan (None without ``model``).

    Raises:
        CaseError: 400 not a zip / unsafe, nested, encrypted or clashing entries, 413 too large unpacked, 429 the
        server's unzip budget is taken, 422 not exactly one valid series.
    """
    total = _check_entries(upload, max_unzipped_bytes)
    reserved = budget.reserve(total) if budget is not None else 0
    scratch, plan = upload.parent / "dicom_check", None
    try:
        series = read_one_series(upload, scratch)
        if model is not None:
            geometry = series_geometry(series)
            plan = check_shape(model, [upload], (1, *geometry.shape), geometry.spacing[::-1], names=SERIES)
    except BaseException:
        if budget is not None:
            budget.release(reserved)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return reserved, plan


def _check_entries(upload: Path, limit: int) -> int:
    try:
        with zipfile.ZipFile(upload) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CaseError("the upload named *.zip is not a zip archive; send a zip of one DICOM series") from None
    _check_names(infos)
    total = sum(i.file_size for i in infos)
    if total > limit or len(infos) > MAX_ENTRIES:
        raise CaseError(f"the zip unpacks to {total / 2**20:.1f} MiB in {len(infos)} entries, more than this server "
                        f"takes (at most {limit / 2**20:.1f} MiB = {UNZIPPED_PER_UPLOAD} x --max_upload_mb, and "
                        f"{MAX_ENTRIES} entries); send one series, or start the server with a larger --max_upload_mb",
                        status=413)
    if total > shutil.disk_usage(upload.parent).free:
        raise CaseError(f"the server has too little free disk to unpack the zip ({total / 2**20:.1f} MiB); retry "
                        "later", status=507)
    return total


def _check_names(infos: Sequence[zipfile.ZipInfo]) -> None:
    """400 for entries that cannot be unpacked safely: unsafe, nested zips, encrypted, too long or deep, clashing."""
    problems = [
        ("holds {n} unsafe entry name(s) (absolute, '..' or a drive), e.g. {e}; zip the series folder with relative "
         "names", lambda i: _unsafe(i.filename)),
        ("holds another zip ({e}); send one zip of the series' DICOM files", lambda i: i.filename.lower().endswith(DICOM_ZIP)),
        ("holds {n} encrypted entry(ies), e.g. {e}; send the series unencrypted", lambda i: bool(i.flag_bits & 0x1)),
        (f"holds {{n}} entry name(s) longer than {MAX_NAME} characters, with a part longer than {MAX_PART} bytes or "
         f"deeper than {MAX_DEPTH} folders, e.g. {{e}}; zip the series folder itself", _too_long),
    ]
    for what, bad in problems:
        found = [i.filename for i in infos if bad(i)]
        if found:
            raise CaseError("the zip " + what.format(n=len(found), e=repr(found[0][:120])))
    files = {i.filename.rstrip("/") for i in infos if not i.is_dir()}
    folders = {str(PurePosixPath(*PurePosixPath(n).parts[:k])) for n in (i.filename for i in infos)
               for k in range(1, len(PurePosixPath(n).parts))}
    clash = sorted(files & folders)
    if clash:
        raise CaseError(f"the zip holds {clash[0][:120]!r} both as a file and as a folder; send a zip of one DICOM "
                        "series folder")


def _too_long(info: zipfile.ZipInfo) -> bool:
    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
    return (len(info.filename) > MAX_NAME or len(parts) > MAX_DEPTH
            or any(len(p.encode("utf-8", "surrogateescape")) > MAX_PART for p in parts))


def _unsafe(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return (name.startswith(("/", "\\")) or ".." in parts or (bool(parts) and ":" in parts[0]) or "\x00" in name)


def client_message(error: Exception, *paths: Path) -> str:
    """The error's text without server paths (extracted files are shown by their name inside the zip)."""
    text = str(error)
    for path in sorted(paths, key=lambda p: -len(str(p))):
        text = text.replace(f"{path}/", "").replace(str(path), "the upload")
    return text


def read_one_series(upload: Path, scratch: Path) -> DicomSeries:
    scratch.mkdir(mode=0o700, exist_ok=True)
    try:
        scan = scan_dicom(upload, scratch=scratch)
        if len(scan.series) != 1:
            found = "; ".join(s.replace(str(scratch), "") for s in scan.notes)[:300]
            uids = ", ".join(s.uid for s in scan.series[:3]) + (", ..." if len(scan.series) > 3 else "")
            raise CaseError(f"the zip holds {len(scan.series)} DICOM image series{f' ({uids})' if uids else ''}; send "
                            f"a zip of exactly one series{f' ({found})' if found else ''}", status=422)
        series_geometry(scan.series[0])
    except CaseError:
        raise
    except ValueError as e:
        raise CaseError(client_message(e, *sorted(scratch.glob("zip*")), scratch, upload), status=422) from None
    except (OSError, RuntimeError, RecursionError, NotImplementedError, zipfile.BadZipFile, EOFError) as e:
        reason = client_message(e, *sorted(scratch.glob("zip*")), scratch, upload)[:200]
        raise CaseError(f"the zip could not be unpacked ({type(e).__name__}: {reason}); send a plain zip (deflate) "
                        "of one DICOM series", status=400) from None
    return scan.series[0]


def predict_dicom_zip(model: ServedModel, inputs: Sequence[Path], output: Path, *,
                      progress: Callable[[float], None] | None = None, cancelled: threading.Event | None = None) -> None:
    """Predict the series in ``inputs[0]`` (a checked zip) into ``output``: a label image, or a SEG for ``.dcm``.

    Raises:
        CaseError: the series cannot be read (422; e.g. undecodable pixel data). JobCancelled: see predict_case.
    """
    import SimpleITK as sitk

    folder = inputs[0].parent
    scratch = folder / "dicom"
    ending = model.predictor.model.spec.file_ending
    image = folder / f"dicom_image{ending if ending in UPLOAD_ENDINGS else '.nii.gz'}"
    labels_file = folder / "dicom_labels.nii.gz"
    try:
        series = read_one_series(inputs[0], scratch)
        try:
            headers = write_series_image(series, image)
        except ValueError as e:
            raise CaseError(client_message(e, *sorted(scratch.glob("zip*")), scratch), status=422) from None
        if output.name.endswith(SEG_ENDING):
            predict_case(model, [image], labels_file, progress=progress, cancelled=cancelled, names=SERIES)
            labels = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_file)))
            write_series_seg(model.predictor, labels, series.uid, headers, segments_for(model.predictor, None), output)
        else:
            predict_case(model, [image], output, progress=progress, cancelled=cancelled, names=SERIES)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        image.unlink(missing_ok=True)
        labels_file.unlink(missing_ok=True)
