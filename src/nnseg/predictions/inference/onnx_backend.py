"""ONNX export of a model folder's networks and an onnxruntime backend for prediction.

:func:`export_onnx` writes ``fold_<k>/<checkpoint stem>.onnx`` next to each checkpoint (``checkpoint_final.onnx``):
the network without deep supervision, fp32, input ``image (B, C, X, Y[, Z])`` with dynamic batch and spatial size,
output ``logits (B, K, ...)``. :func:`onnx_predictor` builds a :class:`~nnseg.predictions.run.predict.Predictor` whose
networks are :class:`OnnxNetwork` modules (an onnxruntime session behind the ``(B, C, *patch) -> (B, K, *patch)``
call the sliding window makes), so preprocessing, sliding window, TTA, fold averaging and export are unchanged.

onnx, onnxscript and onnxruntime are imported only here, when used (``pip install nnseg[onnx]``).

Example:
    >>> export_onnx("results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres", folds=(0,))  # doctest: +SKIP
    >>> predictor = onnx_predictor("results/.../nnUNetTrainer__nnUNetPlans__3d_fullres", folds=(0,))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from nnseg._types import PathLike
from nnseg.jsonio import atomic_path
from nnseg.predictions.inference.model_folder import (
    DEFAULT_FOLDS,
    Fold,
    build_inference_network,
    checkpoint_paths,
    fold_of,
    load_fold_weights,
    load_trained_model,
    load_weights,
    parse_folds,
)
from nnseg.predictions.inference.options import BACKENDS, PredictOptions  # noqa: F401 - BACKENDS re-exported

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is not installed; ONNX export and the onnxruntime backend need "
                          "`pip install nnseg[onnx]`") from None


def onnx_path(checkpoint: Path) -> Path:
    """Where the ONNX file of a checkpoint lives: beside it, same stem (``fold_0/checkpoint_final.onnx``)."""
    return checkpoint.with_suffix(".onnx")


def export_onnx(model_folder: PathLike, *, folds: Sequence[Fold] | None = DEFAULT_FOLDS,
                checkpoint: str = "checkpoint_final.pth", overwrite: bool = True) -> list[Path]:
    """Write each fold's network as ONNX beside its checkpoint; returns the files written.

    The exported graph takes any batch size and any spatial size the network accepts (multiples of its total
    stride, e.g. the patch size). Export uses ``torch.onnx.export(dynamo=True)`` and falls back to the legacy
    TorchScript exporter with ``dynamic_axes`` where the dynamo exporter fails.

    Raises:
        FileNotFoundError: the model folder or a fold's checkpoint is missing.
        ImportError: onnx / onnxscript is not installed (``pip install nnseg[onnx]``).
    """
    _require("onnx")
    paths = checkpoint_paths(model_folder, parse_folds(folds), checkpoint_name=checkpoint)
    weights = load_fold_weights(paths)
    model = load_trained_model(model_folder, configuration=_configuration(model_folder, weights.configuration_name))
    example = torch.zeros((1, model.num_input_channels, *model.configuration.patch_size), dtype=torch.float32)
    written = []
    for path, state in zip(paths, weights.state_dicts):
        target = onnx_path(path)
        if target.is_file() and not overwrite:
            written.append(target)
            continue
        net = build_inference_network(model, device="cpu")
        load_weights(net, state, source=str(path))
        with atomic_path(target) as tmp:
            _export_network(net, example, tmp)
        written.append(target)
    return written


def _configuration(folder: PathLike, from_checkpoint: str | None) -> str | None:
    parts = Path(folder).name.split("__")
    return parts[2] if len(parts) == 3 else from_checkpoint


def _export_network(net: torch.nn.Module, example: torch.Tensor, target: Path) -> None:
    """Export ``net`` to ``target`` (dynamo exporter, legacy exporter as fallback), then check the file."""
    spatial = range(2, example.ndim)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        _export_quietly(net, example, target, spatial)
    finally:
        registration.setLevel(level)
    _require("onnx").checker.check_model(str(target))


def _export_quietly(net: torch.nn.Module, example: torch.Tensor, target: Path, spatial: range) -> None:
    with warnings.catch_warnings():
        # torch's own exporter trips deprecations inside torch (pytree LeafSpec, legacy exporter): not ours to fix
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|copyreg|onnxscript)")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(torch|onnxscript)")
        try:
            _require("onnxscript")
            dims = {0: torch.export.Dim("batch", min=1, max=4096),
                    **{i: torch.export.Dim(f"size{i - 2}", min=4, max=65536) for i in spatial}}
            program = torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes={"x": dims}, verbose=False)
            program.save(str(target))
        except Exception as e:  # noqa: BLE001 - any dynamo failure: try the legacy exporter, report both if it fails
            axes = {0: "batch", **{i: f"size{i - 2}" for i in spatial}}
            try:
                torch.onnx.export(net, (example,), str(target), dynamo=False, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], opset_version=17,
                                  dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})
            except Exception as legacy:
                raise RuntimeError(f"ONNX export failed with the dynamo exporter ({e}) and with the legacy exporter "
                                   f"({legacy}); report the network architecture") from legacy


class OnnxNetwork(torch.nn.Module):
    """An onnxruntime session behind the network call the sliding window makes: ``(B, C, ...) -> (B, K, ...)``.

    Inputs are run in float32 (autocast does not apply); the output is a float32 tensor on the input's device.
    """

    def __init__(self, path: PathLike, *, device: torch.device, threads: int | None = None,
                 fix: str = "re-export it with nnseg export-onnx") -> None:
        """Raises: ValueError: ``path`` is not an ONNX model nnseg exported (truncated, garbage, another graph),
        naming the file and ``fix``."""
        super().__init__()
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        # no busy-waiting threads between calls: they burn CPU others need (shared machines, an idle server)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        providers = _providers(ort, device)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors (InvalidProtobuf, Fail, ...) derive from Exception
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ValueError(f"{path} is not a readable ONNX model (truncated or damaged?): {reason}; {fix}") from None
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != ([INPUT_NAME], [OUTPUT_NAME]):
            raise ValueError(f"{path} is not a network nnseg exported (inputs {names[0]}, outputs {names[1]}; "
                             f"expected [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}]); {fix}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).numpy()
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(array)})
        return torch.from_numpy(out).to(x.device)


def _providers(ort: Any, device: torch.device) -> list[str]:
    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"device {device} with --backend onnxruntime needs onnxruntime-gpu (CUDAExecutionProvider); "
                             f"this onnxruntime has {available}. Install onnxruntime-gpu or use -device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.type != "cpu":
        raise ValueError(f"the onnxruntime backend runs on cpu or cuda, not {device}; use -device cpu")
    return ["CPUExecutionProvider"]


def onnx_predictor(model_folder: PathLike, *, folds: Sequence[Fold] | None = DEFAULT_FOLDS,
                   checkpoint: str = "checkpoint_final.pth", device: str | torch.device | None = "cpu",
                   step_size: float = 0.5, use_tta: bool = True, tile_batch_size: int | None = None) -> Any:
    """A :class:`~nnseg.predictions.run.predict.Predictor` whose networks run in onnxruntime (fp32).

    Plans, dataset.json, folds and mirroring axes come from the model folder and its checkpoints as for the torch
    backend; each fold's ``fold_<k>/<checkpoint stem>.onnx`` must exist (``nnseg export-onnx`` writes it).

    Raises:
        FileNotFoundError: an ONNX file is missing; ValueError: one is truncated, damaged or another graph (the
            messages name the file and give the export command).
    """
    from nnseg.predictions.inference.predictor import Predictor, resolve_device

    paths = checkpoint_paths(model_folder, parse_folds(folds), checkpoint_name=checkpoint)
    fold_args = " ".join(str(fold_of(p.parent)) for p in paths)
    export = f"nnseg export-onnx -m {model_folder} -f {fold_args} -chk {checkpoint}"
    missing = [str(onnx_path(p)) for p in paths if not onnx_path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"no ONNX file {missing}; export the model first: {export}")
    dev = resolve_device(device)
    predictor = Predictor.from_model_folder(model_folder, folds=folds, checkpoint=checkpoint, device="cpu",
                                            precision="fp32", step_size=step_size, use_tta=use_tta,
                                            tile_batch_size=tile_batch_size)
    threads = int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS", "").isdigit() else None
    predictor.networks = [OnnxNetwork(onnx_path(p), device=dev, threads=threads, fix=f"re-export it: {export}")
                          for p in paths]
    predictor.device = dev
    return predictor


def load_predictor(model_folder: PathLike, options: PredictOptions | None = None, **changes: Any) -> Any:
    """A loaded :class:`~nnseg.predictions.inference.predictor.Predictor` for ``options`` (its ``backend``: ``torch`` or
    ``onnxruntime``); ``changes``: fields of :class:`~nnseg.predictions.inference.options.PredictOptions` applied to ``options``
    (``load_predictor(folder, backend="onnxruntime", device="cpu")``).

    Raises:
        ValueError: a bad option (see :class:`~nnseg.predictions.inference.options.PredictOptions`).
    """
    from nnseg.predictions.inference.predictor import Predictor

    opts = (options or PredictOptions()).replace(**changes) if changes else (options or PredictOptions())
    if opts.backend == "torch":
        predictor = Predictor.from_model_folder(
            model_folder, folds=opts.folds, checkpoint=opts.checkpoint, device=opts.device, precision=opts.precision,
            step_size=opts.step_size, use_tta=opts.use_tta, tile_batch_size=opts.tile_batch_size,
            accumulate_on_device=opts.accumulate_on_device, max_memory_gb=opts.max_memory_gb)
        return predictor
    predictor = onnx_predictor(model_folder, folds=opts.folds, checkpoint=opts.checkpoint, device=opts.device or "cpu",
                               step_size=opts.step_size, use_tta=opts.use_tta, tile_batch_size=opts.tile_batch_size)
    predictor.accumulate_on_device = opts.accumulate_on_device
    predictor.max_memory_gb = opts.max_memory_gb
    return predictor
