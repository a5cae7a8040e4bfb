"""Models served by ``nnseg serve``: loaded once per device, and one uploaded case predicted end to end.

A model is named ``<DatasetName>_<configuration>`` (e.g. ``Dataset004_Hippocampus_3d_fullres``) unless given as
``NAME=FOLDER``. :func:`predict_case` reads the channel files with the plans' reader/writer (SimpleITK for other
endings), predicts with the loaded :class:`~nnseg.predictions.run.predict.Predictor` exactly as ``nnseg predict`` does,
and writes the label map with the input's geometry. Progress is reported per network call, and a cancelled job
stops at the next call.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnseg.predictions.run.bounded import MemoryPolicy, check_case_header, check_case_shape
from nnseg.predictions.inference.memory_plan import CaseDoesNotFit, CasePlan
from nnseg.predictions.inference.options import PredictOptions
from nnseg.predictions.run.pipeline import predict_case as predict_one_case
from nnseg.predictions.inference.predictor import Predictor
from nnseg.predictions.inference.sliding_window import tile_slicers
from nnseg.raw.discover import CaseFiles
from nnseg.raw.image_io import ImageReadError, get_io
from nnseg.serve.memory import ServerMemory

#: Upload endings the server reads and writes (SimpleITK formats; the file name is used for nothing else).
UPLOAD_ENDINGS = (".nii.gz", ".nrrd", ".mha")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class CaseError(ValueError):
    """An uploaded case the model cannot take; ``status`` is the HTTP status to answer (400 or 422)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class JobCancelled(Exception):
    """Raised inside a running prediction when its job was cancelled."""


#: How every served model is loaded: nnseg predict's options (the device is each worker's; ``max_memory_gb`` is the
#: server's memory budget, shared by its workers: :mod:`nnseg.serve.memory`).
ModelOptions = PredictOptions


class _Tracker:
    """Counts network calls of the running case; raises :class:`JobCancelled` when its job is cancelled."""

    def __init__(self) -> None:
        self.callback: Callable[[], None] | None = None

    def step(self) -> None:
        if self.callback is not None:
            self.callback()


class _TrackedNetwork(torch.nn.Module):
    def __init__(self, network: torch.nn.Module, tracker: _Tracker) -> None:
        super().__init__()
        self.network = network
        self.tracker = tracker

    def forward(self, x: torch.Tensor) -> Any:
        self.tracker.step()
        return self.network(x)


@dataclass
class ServedModel:
    """One model on one device; only that device's worker thread predicts with it."""

    name: str
    folder: Path
    predictor: Predictor
    backend: str
    tracker: _Tracker = field(default_factory=_Tracker)
    memory: ServerMemory | None = None  # the server's shared budget (None: ``max_memory_gb`` / 85 % free, per case)

    def describe(self) -> dict[str, Any]:
        """What clients need to know: labels, channels, configuration, folds, device, backend."""
        model = self.predictor.model
        return {"name": self.name, "configuration": model.configuration_name,
                "trainer": model.trainer_name, "dataset": model.plans.dataset_name,
                "channels": dict(model.spec.channel_names), "labels": label_names(self),
                "dimension": 2 if len(model.configuration.patch_size) == 2 else 3,
                "folds": [str(f) for f in self.predictor.folds], "tta": self.predictor.use_tta,
                "precision": self.predictor.precision, "device": str(self.predictor.device), "backend": self.backend,
                "file_endings": list(UPLOAD_ENDINGS)}


def label_names(model: ServedModel) -> dict[str, int]:
    """Label name -> value in the returned label map (background left out; regions: their painted value)."""
    spec = model.predictor.model.spec
    if not spec.has_regions:
        return {name: int(v) for name, v in spec.labels.items() if name not in spec.ignore_names and int(v) != 0}
    names = [n for n, v in spec.labels.items() if n not in spec.ignore_names and v not in (0, [0])]
    return {name: int(value) for name, value in zip(names, spec.regions_class_order or [])}


def model_name(spec: str | Path) -> tuple[str, Path]:
    """``NAME=FOLDER`` or ``FOLDER`` -> (name, folder); the default name is ``<DatasetName>_<configuration>``.

    Raises:
        ValueError: the name has characters other than letters, digits, ``_ . -``.
    """
    text = str(spec)
    if "=" in text and not Path(text).exists():
        name, folder = text.split("=", 1)
    else:
        folder = text
        parts = Path(folder).name.split("__")
        name = f"{Path(folder).parent.name}_{parts[2] if len(parts) == 3 else Path(folder).name}"
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} may hold only letters, digits, '_', '.', '-' (at most 128); "
                         "name the model with NAME=FOLDER")
    return name, Path(folder)


def load_models(specs: Sequence[str | Path], *, device: str, options: ModelOptions) -> dict[str, ServedModel]:
    """Load every model on ``device`` (once; the server keeps them warm).

    Raises:
        ValueError: two models get the same name (name them with ``NAME=FOLDER``), or bad options.
        FileNotFoundError: a model folder, checkpoint or ONNX file is missing.
    """
    from nnseg.predictions.inference.onnx_backend import load_predictor

    named = [model_name(s) for s in specs]
    names = [n for n, _ in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several models are named {duplicates}; give each its own name with NAME=FOLDER")
    out = {}
    for name, folder in named:
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist (--models)")
        predictor = load_predictor(folder, options.replace(device=device))
        served = ServedModel(name=name, folder=folder, predictor=predictor, backend=options.backend)
        predictor.networks = [_TrackedNetwork(n, served.tracker) for n in predictor.networks]
        out[name] = served
    return out


def _network_calls(predictor: Predictor, grid: Sequence[int], tiles: int | None) -> int:
    patch = predictor.model.configuration.patch_size
    spatial = [max(int(s), int(p)) for s, p in zip(grid[-len(patch):], patch)]
    lead = [int(s) for s in grid[:-len(patch)]]
    count = len(tile_slicers([*lead, *spatial], patch, predictor.step_size))
    return math.ceil(count / (tiles or predictor.tiles_per_call())) * len(predictor.networks)


def io_name_for(model: ServedModel, inputs: Sequence[Path]) -> str:
    """The reader/writer of an upload: the plans' if it reads the upload's ending, else SimpleITK."""
    plans_io = get_io(model.predictor.model.plans.image_reader_writer)
    ending = next(e for e in UPLOAD_ENDINGS if inputs[0].name.endswith(e))
    return plans_io.name if ending in plans_io.supported_file_endings else "SimpleITKIO"


def memory_policy(model: ServedModel) -> MemoryPolicy:
    """The budget one case of ``model`` is planned against: the server's whole shared budget
    (:mod:`nnseg.serve.memory`), or without one ``--max-memory`` / 85 % of the memory free now."""
    if model.memory is not None:
        return model.memory.policy()
    return MemoryPolicy.create(model.predictor, max_memory_gb=model.predictor.max_memory_gb)


def check_upload(model: ServedModel, inputs: Sequence[Path], *, names: Sequence[str] | None = None) -> CasePlan:
    """The library's header checks and memory plan for an upload, before its voxels are read (and before it is
    queued): :func:`nnseg.predictions.run.bounded.check_case_header`.

    Raises:
        CaseError: unreadable header (400), wrong channels, a 2D/3D mismatch or implausible spacing (422), a case
        that does not fit the server's memory budget even in bounded memory (413, with the estimate).
    """
    with _client_errors(model, inputs, names, reading=True):
        return check_case_header(model.predictor, _case(inputs), memory_policy(model), reader=io_name_for(model, inputs))


def check_shape(model: ServedModel, inputs: Sequence[Path], shape: Sequence[int], spacing: Sequence[float], *,
                names: Sequence[str] | None = None) -> CasePlan:
    """:func:`check_upload` for an upload whose ``(C, X, Y, Z)`` shape and spacing come from elsewhere (a DICOM
    series' headers); ``inputs`` only name it in messages."""
    with _client_errors(model, inputs, names):
        return check_case_shape(model.predictor, _case(inputs), shape, spacing, memory_policy(model))


def _case(inputs: Sequence[Path]) -> CaseFiles:
    return CaseFiles(identifier="upload", images=tuple(inputs), label=None)


def _read_error(error: Exception, reading: bool, inputs: Sequence[Path]) -> bool:
    """Whether ``error`` says an upload could not be read (SimpleITK raises RuntimeError, so does torch; an OSError
    while predicting may be the server's own, e.g. a full disk)."""
    if isinstance(error, (ImageReadError, EOFError)):
        return True
    if isinstance(error, OSError):
        return reading or str(getattr(error, "filename", "")) in {str(p) for p in inputs}
    return isinstance(error, RuntimeError) and (reading or "ITK" in str(error))


@contextlib.contextmanager
def _client_errors(model: ServedModel, inputs: Sequence[Path], names: Sequence[str] | None, *,
                   reading: bool = False) -> Iterator[None]:
    """Library errors as :class:`CaseError` (400 unreadable, 413 does not fit, 422 refused), server paths hidden."""
    names = list(names or [f"upload {i}" for i in range(len(inputs))])
    try:
        yield
    except CaseError:
        raise
    except Exception as e:
        if _read_error(e, reading, inputs):
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            ending = next((x for x in UPLOAD_ENDINGS if inputs[0].name.endswith(x)), inputs[0].suffix)
            raise CaseError(f"the uploaded image could not be read as {ending} ({_hide(reason, inputs, names)[:300]}); "
                            f"upload a valid {'/'.join(UPLOAD_ENDINGS)} file") from None
        if isinstance(e, CaseDoesNotFit):
            raise CaseError(_hide(str(e), inputs, names), status=413) from None
        if isinstance(e, ValueError):
            raise CaseError(f"model {model.name}: {_hide(str(e), inputs, names)}", status=422) from None
        raise


def _hide(text: str, inputs: Sequence[Path], names: Sequence[str]) -> str:
    """``text`` with the server's paths of the uploads replaced by the names the client knows."""
    for path, name in sorted(zip(inputs, names), key=lambda pn: -len(str(pn[0]))):
        text = text.replace(str(path), name)
    return text.replace(str(Path(inputs[0]).parent), "the upload's folder")


def predict_case(model: ServedModel, inputs: Sequence[Path], output: Path, *,
                 progress: Callable[[float], None] | None = None, cancelled: threading.Event | None = None,
                 names: Sequence[str] | None = None) -> None:
    """Predict one case (one file per channel) and write its label map to ``output`` (its ending picks the format).

    The case goes through the library's per-case function (:func:`nnseg.predictions.run.pipeline.predict_case`), as
    ``nnseg predict`` runs it: the input checks, the memory plan with the server's budget (the bounded path when the
    one-shot does not fit), then the network. ``names``: how messages call the inputs (default ``upload 0``, ...).

    Raises:
        CaseError: unreadable file (400), refused by the checks or wrong channels (422), does not fit (413).
        JobCancelled: ``cancelled`` was set while predicting.
    """
    report = progress or (lambda _: None)
    predictor = model.predictor
    plan = check_upload(model, inputs, names=names)
    grid = plan.grid or ()
    total, done = _network_calls(predictor, grid, plan.tiles) if grid else 1, [0]
    report(0.05)

    def step() -> None:
        if cancelled is not None and cancelled.is_set():
            raise JobCancelled()
        done[0] += 1
        report(0.05 + 0.9 * min(done[0], total) / max(total, 1))

    model.tracker.callback = step
    try:
        with _client_errors(model, inputs, names):
            predict_one_case(predictor, _case(inputs), output.parent, memory=memory_policy(model),
                             io_name=io_name_for(model, inputs), segmentation_file=output)
    finally:
        model.tracker.callback = None
    report(1.0)
