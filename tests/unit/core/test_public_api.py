"""Each package's public face: every name in ``__all__`` resolves to the object its module defines, lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PREDICTIONS = "nnseg.predictions"
FACADES = [PREDICTIONS, *(f"{PREDICTIONS}.{sub}" for sub in ("inference", "export", "run", "dicom")), "nnseg.sharing",
           "nnseg.launch"]


@pytest.mark.parametrize("package", FACADES)
def test_every_public_name_resolves_to_its_home(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, f"{package} declares no public names"
    for name in module.__all__:
        value = getattr(module, name)
        home = importlib.import_module(f"{package}.{module._HOMES[name]}")
        assert value is getattr(home, name), f"{package}.{name} is not {home.__name__}.{name}"
        assert name in dir(module)
    with pytest.raises(AttributeError, match="public names"):
        module.no_such_name  # noqa: B018 - the attribute access is the test


def test_from_import_of_a_public_name_and_of_a_submodule() -> None:
    from nnseg.predictions import PredictOptions, PredictRequest, predict_arrays, run_prediction
    from nnseg.predictions.export import from_logits, npz_stream
    from nnseg.predictions.request import PredictRequest as Request

    assert PredictRequest is Request and callable(run_prediction) and callable(predict_arrays)
    assert PredictOptions(folds=(0,)).folds == (0,)
    export = importlib.import_module(f"{PREDICTIONS}.export")
    assert from_logits.export_prediction is export.export_prediction and npz_stream.NpzStreamWriter is export.NpzStreamWriter


def test_importing_the_packages_and_the_options_does_not_import_torch() -> None:
    code = ("import sys\n"
            f"for p in {FACADES!r}: __import__(p)\n"
            "from nnseg.predictions import PredictOptions\n"
            "from nnseg.predictions.inference import DEFAULT_FOLDS\n"
            "PredictOptions(folds=DEFAULT_FOLDS)\n"
            "print(','.join(m for m in ('torch', 'SimpleITK', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "", f"importing the prediction packages pulled in {out.strip()}"
