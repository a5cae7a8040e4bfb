"""Models served by ``nnseg serve``: loaded once per device, and one uploaded case predicted end to end.

A model is named ``<DatasetName>_<configuration>`` (e.g. ``Dataset004_Hippocampus_3d_fullres``) unless given as
``NAME=FOLDER``. :func:`predict_case` reads the channel files with the plans' reader/writer (SimpleITK for other
endings), predicts with the loaded :class:`~nnseg.predictions.predict.Predictor` exactly as ``nnseg predict`` does,
and writes the label map with the input's geometry. Progress is reported per network call, and a cancelled job
stops at the next call.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnseg.predictions.export import convert_logits, write_segmentation
from nnseg.predictions.model_folder import DEFAULT_FOLDS, Fold
from nnseg.predictions.predict import Predictor
from nnseg.predictions.sliding_window import tile_slicers
from nnseg.raw.image_io import ImageReadError, get_io

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


@dataclass(frozen=True)
class ModelOptions:
    """How every served model is loaded (as ``nnseg predict``'s options)."""

    folds: tuple[Fold, ...] | None = DEFAULT_FOLDS
    checkpoint: str = "checkpoint_final.pth"
    precision: str | None = None
    step_size: float = 0.5
    use_tta: bool = True
    tile_batch_size: int | None = None
    backend: str = "torch"


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
        return {name: int(v) for name, v in spec.labels.items() if name != "ignore" and int(v) != 0}
    names = [n for n, v in spec.labels.items() if n != "ignore" and v not in (0, [0])]
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
    from nnseg.predictions.onnx_backend import load_predictor

    named = [model_name(s) for s in specs]
    names = [n for n, _ in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several models are named {duplicates}; give each its own name with NAME=FOLDER")
    out = {}
    for name, folder in named:
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist (--models)")
        predictor = load_predictor(folder, backend=options.backend, folds=options.folds, checkpoint=options.checkpoint,
                                   device=device, precision=options.precision, step_size=options.step_size,
                                   use_tta=options.use_tta, tile_batch_size=options.tile_batch_size)
        served = ServedModel(name=name, folder=folder, predictor=predictor, backend=options.backend)
        predictor.networks = [_TrackedNetwork(n, served.tracker) for n in predictor.networks]
        out[name] = served
    return out


def _network_calls(predictor: Predictor, shape: Sequence[int]) -> int:
    patch = predictor.model.configuration.patch_size
    spatial = [max(int(s), int(p)) for s, p in zip(shape[-len(patch):], patch)]
    lead = list(shape[1:-len(patch)])
    tiles = len(tile_slicers([*lead, *spatial], patch, predictor.step_size))
    return math.ceil(tiles / predictor.tiles_per_call()) * len(predictor.networks)


def _read(model: ServedModel, inputs: Sequence[Path]) -> tuple[np.ndarray, Any, str]:
    plans_io = get_io(model.predictor.model.plans.image_reader_writer)
    ending = next(e for e in UPLOAD_ENDINGS if inputs[0].name.endswith(e))
    io = plans_io if ending in plans_io.supported_file_endings else get_io("SimpleITKIO")
    try:
        data, geometry = io.read_images(inputs)
    except (ImageReadError, RuntimeError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        for i, path in enumerate(inputs):  # the client never sees the server's paths
            reason = reason.replace(str(path), f"upload {i}")
        raise CaseError(f"the uploaded image could not be read as {ending} ({reason[:300]}); "
                        f"upload a valid {'/'.join(UPLOAD_ENDINGS)} file") from None
    spec = model.predictor.model.spec
    if data.shape[0] != spec.num_channels:
        raise CaseError(f"model {model.name} expects {spec.num_channels} channel(s) {spec.channel_names}, the upload "
                        f"holds {data.shape[0]}; upload one file per channel in channel order", status=422)
    return data, geometry, io.name


def predict_case(model: ServedModel, inputs: Sequence[Path], output: Path, *,
                 progress: Callable[[float], None] | None = None, cancelled: threading.Event | None = None) -> None:
    """Predict one case (one file per channel) and write its label map to ``output`` (its ending picks the format).

    Raises:
        CaseError: unreadable file (status 400) or wrong number of channels (422).
        JobCancelled: ``cancelled`` was set while predicting.
    """
    report = progress or (lambda _: None)
    data, geometry, reader = _read(model, inputs)
    predictor = model.predictor
    pre, props = predictor.preprocess(np.asarray(data, dtype=np.float32), geometry)
    del data
    total, done = _network_calls(predictor, pre.shape), [0]
    report(0.05)

    def step() -> None:
        if cancelled is not None and cancelled.is_set():
            raise JobCancelled()
        done[0] += 1
        report(0.05 + 0.9 * min(done[0], total) / max(total, 1))

    model.tracker.callback = step
    try:
        logits = predictor.predict_logits(pre)
    finally:
        model.tracker.callback = None
    seg, _ = convert_logits(logits, props, plans=predictor.model.plans, configuration=predictor.model.configuration,
                            spec=predictor.model.spec)
    write_segmentation(seg, output, geometry, reader=reader)
    report(1.0)
