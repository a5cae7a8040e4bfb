"""CPU training threads: the free cores by load average, an explicit count wins, applied to torch."""

from __future__ import annotations

import pytest
import torch

from nnseg.training import cpu_threads
from nnseg.training.config import TrainConfig, apply_overrides, config_differences


@pytest.mark.parametrize("cores, load, own, expected", [
    (2, 0.1, 2, 2),    # quiet machine: every core
    (2, 2.3, 2, 2),    # only this process's own threads are running
    (2, 3.2, 2, 1),    # one other busy process
    (2, 9.0, 1, 1),    # a crowded shared machine: never 0
    (16, 4.0, 16, 16),
    (16, 6.0, 1, 11),
])
def test_threads_for_load(cores: int, load: float, own: int, expected: int) -> None:
    assert cpu_threads.threads_for_load(cores=cores, load=load, own_threads=own) == expected


def test_explicit_count_wins_and_auto_follows_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu_threads.os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    assert cpu_threads.choose_cpu_threads(0, own_threads=2) == 1
    assert cpu_threads.choose_cpu_threads(3, own_threads=2) == 3
    with pytest.raises(ValueError, match="cpu_threads"):
        cpu_threads.choose_cpu_threads(-1, own_threads=2)
    before = torch.get_num_threads()
    try:
        assert cpu_threads.apply_cpu_threads(0) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(cpu_threads.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
        assert cpu_threads.apply_cpu_threads(0) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_is_a_runtime_setting() -> None:
    config = apply_overrides(TrainConfig(), ["cpu_threads=1"])
    assert config.cpu_threads == 1
    assert config_differences(TrainConfig(), config) == []  # a continuation may run with another count
