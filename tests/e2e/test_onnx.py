"""ONNX export of nnU-Net's golden Hippocampus model and the onnxruntime backend (predict and serve).

Acceptance: ``nnseg export-onnx`` writes ``fold_0/checkpoint_final.onnx`` (dynamic batch and spatial size); predictions
with ``--backend onnxruntime`` equal torch's fp32 predictions (probabilities within 1e-4, same label maps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from golden_model import IMAGES, install_golden_model

from nnseg.cli.main import main

pytestmark = [pytest.mark.golden, pytest.mark.slow]
CASES = ("hippocampus_020", "hippocampus_037")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    model = install_golden_model(root / "results")
    (root / "in").mkdir()
    for case in CASES:
        (root / "in" / f"{case}_0000.nii.gz").symlink_to(IMAGES / f"{case}.nii.gz")
    return {"root": root, "model": model, "in": root / "in", "images": IMAGES}


def _predict(exported: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["predict-from-modelfolder", "-i", str(exported["in"]), "-o", str(out), "-m", str(exported["model"]),
                 "-f", "0", "-device", "cpu", "--precision", "fp32", "--disable_tta", "--save_probabilities",
                 "--disable_progress_bar", "-npp", "0", "-nps", "0", *extra])


def test_missing_onnx_file_names_the_export_command(exported: dict[str, Path], capsys) -> None:
    assert _predict(exported, exported["root"] / "none", "--backend", "onnxruntime") == 1
    err = capsys.readouterr().err
    assert "checkpoint_final.onnx" in err and f"nnseg export-onnx -m {exported['model']} -f 0" in err


def test_export_and_onnxruntime_predictions_equal_torch(exported: dict[str, Path], capsys) -> None:
    import onnx
    import onnxruntime

    assert main(["export-onnx", "-m", str(exported["model"]), "-f", "0"]) == 0
    path = exported["model"] / "fold_0" / "checkpoint_final.onnx"
    assert f"wrote {path}" in capsys.readouterr().out
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 1 and all(isinstance(d, str) for d in dims[:1] + dims[2:])  # batch and spatial size dynamic
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": np.zeros((2, 1, 48, 64, 48), dtype=np.float32)})[0]
    assert out.shape == (2, 3, 48, 64, 48)  # another size than the patch (40, 56, 40) runs too

    torch_out, ort_out = exported["root"] / "torch", exported["root"] / "ort"
    assert _predict(exported, torch_out) == 0
    assert _predict(exported, ort_out, "--backend", "onnxruntime") == 0
    for case in CASES:
        p, q = (np.load(d / f"{case}.npz")["probabilities"] for d in (torch_out, ort_out))
        assert np.abs(p - q).max() < 1e-4, case
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(d / f"{case}.nii.gz"))) for d in (torch_out, ort_out))
        np.testing.assert_array_equal(a, b)


def test_served_with_onnxruntime(exported: dict[str, Path], tmp_path: Path) -> None:
    """The server's model loading with ``--backend onnxruntime`` (its HTTP layer is the same for both backends)."""
    from nnseg.serve.automatic.models import ModelOptions, load_models, predict_case

    if not (exported["model"] / "fold_0" / "checkpoint_final.onnx").is_file():
        assert main(["export-onnx", "-m", str(exported["model"]), "-f", "0"]) == 0
    options = ModelOptions(folds=(0,), precision="fp32", use_tta=False, backend="onnxruntime")
    [model] = load_models([f"hippo={exported['model']}"], device="cpu", options=options).values()
    assert model.describe()["backend"] == "onnxruntime" and model.name == "hippo"
    assert type(model.predictor.networks[0].network).__name__ == "OnnxNetwork"
    seen: list[float] = []
    predict_case(model, [exported["images"] / f"{CASES[0]}.nii.gz"], tmp_path / "seg.nrrd", progress=seen.append)
    assert seen[0] < seen[-1] == 1.0 and seen == sorted(seen)
    torch_seg = exported["root"] / "torch" / f"{CASES[0]}.nii.gz"
    if torch_seg.is_file():
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nrrd"))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(torch_seg))))
    with pytest.raises(ValueError, match="precision 'bf16' does not apply"):
        load_models([str(exported["model"])], device="cpu",
                    options=ModelOptions(folds=(0,), precision="bf16", backend="onnxruntime"))
