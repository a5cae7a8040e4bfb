"""PredictOptions (the one declaration of prediction options) and PredictRequest.check (the option-combination rules,
in the library instead of the command line): each bad value or combination is refused before anything is loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nnseg._types import Geometry
from nnseg.predictions.inference.options import PredictOptions
from nnseg.predictions.request import DicomWebSource, PredictRequest, run_prediction


def test_options_are_checked_once_and_hashable() -> None:
    opts = PredictOptions(folds=["0", "all"], device="cpu")
    assert opts.folds == (0, "all") and hash(opts) == hash(PredictOptions(folds=(0, "all"), device="cpu"))
    assert opts.replace(step_size=0.25).step_size == 0.25 and opts.step_size == 0.5
    for bad, text in [({"step_size": 0}, "step_size must be in (0, 1]"), ({"tile_batch_size": 0}, "tile_batch_size"),
                      ({"backend": "tensorrt"}, "unknown backend 'tensorrt'"), ({"precision": "fp8"}, "fp8"),
                      ({"backend": "onnxruntime", "precision": "bf16"}, "precision 'bf16' does not apply"),
                      ({"max_memory_gb": -1}, "--max-memory must be a positive number"),
                      ({"max_memory_gb": float("nan")}, "--max-memory")]:
        with pytest.raises(ValueError, match=text.replace("(", r"\(").replace("]", r"\]")):
            PredictOptions(**bad)
    with pytest.raises(TypeError, match="unknown prediction option.*'step'"):
        opts.replace(step=0.5)


def test_serve_and_cluster_use_the_same_options() -> None:
    from nnseg.cluster.predict import PredictSettings
    from nnseg.serve.automatic.models import ModelOptions

    assert ModelOptions is PredictOptions
    settings = PredictSettings(Path("m"), PredictOptions(folds=(0,)), False, None)
    assert {settings: 1}[PredictSettings(Path("m"), PredictOptions(folds=("0",)), False, None)] == 1


def _geometry() -> Geometry:
    return Geometry(spacing=(1.0, 1.0, 1.0), reader="SimpleITKIO")


@pytest.mark.parametrize("fields, error, text", [
    ({}, ValueError, "-i INPUT_FOLDER is required"),
    ({"input_folder": ".", "files": [["a.nii.gz"]]}, ValueError, "give one input"),
    ({"input_folder": "does/not/exist", "output": "o"}, FileNotFoundError, "input folder does/not/exist does not exist"),
    ({"input_folder": "does/not/exist", "output": "o", "output_format": "dicom-seg"}, FileNotFoundError,
     "DICOM input does/not/exist does not exist"),
    ({"input_folder": ".", "output": "o", "output_format": "rtstruct"}, ValueError, "unknown output format"),
    ({"files": [["a.nii.gz"]]}, ValueError, "an output folder is required"),
    ({"files": [["a.nii.gz"]], "output": "o", "num_parts": 2, "part_id": 2}, ValueError, "part_id must be in"),
    ({"files": [["a.nii.gz"]], "output": "o", "slab_rows": 0}, ValueError, "slab_rows must be >= 1"),
    ({"arrays": [np.zeros((1, 2, 2, 2))], "geometries": [], }, ValueError, "got 1 images but 0 geometries"),
    ({"arrays": [np.zeros((1, 2, 2, 2))], "geometries": [_geometry()], "output": "o"}, ValueError, "come back as arrays"),
    ({"dicomweb": DicomWebSource("http://127.0.0.1:1/dicom-web", None), "output": "o"}, ValueError, "needs --study"),
    ({"dicomweb": DicomWebSource("http://127.0.0.1:1/dicom-web", "1.2.3"), "output": "o", "save_probabilities": True},
     ValueError, "not supported with DICOM input"),
])
def test_request_rules_refuse_before_any_model_is_loaded(fields: dict, error: type, text: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    request = PredictRequest(model=tmp_path / "no_model_here", **fields)
    with pytest.raises(error, match=text):
        run_prediction(request)  # the model folder does not exist: the request's rules answer first
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cluster_takes_files_and_the_torch_backend_only(tmp_path: Path) -> None:
    from nnseg.cluster.predict import check_cluster_request

    with pytest.raises(ValueError, match="--cluster predicts with the torch backend"):
        check_cluster_request(PredictRequest(model=tmp_path, input_folder=tmp_path, output=tmp_path / "o",
                                             options=PredictOptions(backend="onnxruntime")))
    with pytest.raises(ValueError, match="not arrays input"):
        check_cluster_request(PredictRequest(model=tmp_path, arrays=[np.zeros((1, 2, 2, 2))], geometries=[_geometry()]))
