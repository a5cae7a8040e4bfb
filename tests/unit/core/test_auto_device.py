"""One ``auto`` device rule for training and prediction: CUDA, then MPS, then the CPU."""

from __future__ import annotations

import argparse

import pytest
import torch

from nnseg import devices
from nnseg.cli.workflow import predict_cmds
from nnseg.predictions.run.predict import resolve_device


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_order_is_the_same_for_training_and_prediction(cuda: bool, mps: bool, expected: str,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert devices.auto_device() == expected
    assert predict_cmds._device(None) == expected == predict_cmds._device("auto")  # prediction's -device left out
    assert ("no CUDA GPU found" in capsys.readouterr().err) == (expected != "cuda")
    assert predict_cmds._device("cpu") == "cpu"
    if expected != "mps":  # resolving checks that the device exists (no MPS here)
        threads = torch.get_num_threads()
        assert resolve_device(None).type == expected  # the library's default too
        torch.set_num_threads(threads)


def test_training_resolves_auto_with_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    threads = torch.get_num_threads()
    try:
        assert devices.resolve_device("auto") == torch.device("cpu")
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="use auto or one of cpu, cuda, mps"):
        devices.resolve_device("tpu")
    from nnseg.cli.main import build_parser
    from nnseg.cli.table import by_name

    args = build_parser(by_name()["train"], prog="t").parse_args(["1", "2d", "0"])
    assert isinstance(args, argparse.Namespace) and args.device == "auto"
