"""Diagnostic hook for data-parallel runs: per-step weight checksums.

It lets a test (or a user chasing a divergence) check from the outside that every rank holds the same weights after
every optimizer step. Add it through ``TrainRequest.hooks`` with ``functools.partial(checksum_hooks, folder)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch

from nnseg.jsonio import load_json, save_json
from nnseg.training.hooks import Hooks

T = TypeVar("T")


def weights_digest(module: torch.nn.Module) -> tuple[str, float]:
    """SHA-256 of every parameter and buffer's bytes (in state-dict order) and the float64 sum of the parameters."""
    h = hashlib.sha256()
    total = 0.0
    for name, value in module.state_dict().items():
        array = value.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(array.numpy().tobytes() if array.dtype != torch.bfloat16 else array.float().numpy().tobytes())
        if array.is_floating_point():
            total += float(array.double().sum())
    return h.hexdigest(), total


class WeightChecksums(Hooks):
    """Appends ``{epoch, iteration, sha256, sum}`` after every training step to ``folder/checksums_rank<R>.json``.

    The file is rewritten (atomically) at the end of every epoch; entries of an earlier, interrupted launch are kept.
    """

    def __init__(self, folder: Path, rank: int) -> None:
        self.path = Path(folder) / f"checksums_rank{rank}.json"
        self.entries: list[dict[str, Any]] = load_json(self.path) if self.path.is_file() else []
        self.module: torch.nn.Module | None = None

    def on_train_start(self, run: Any, state: Any, network: torch.nn.Module) -> None:
        self.module = network

    def _record(self, epoch: int, iteration: int) -> None:
        if self.module is None:
            raise RuntimeError("WeightChecksums.on_train_start was not called before the first step")
        digest, total = weights_digest(self.module)
        self.entries.append({"epoch": epoch, "iteration": iteration, "sha256": digest, "sum": total})

    def wrap_iterations(self, batches: Iterable[T], *, epoch: int, total: int) -> Iterator[T]:
        index = -1
        for index, batch in enumerate(batches):
            if index > 0:
                self._record(epoch, index - 1)  # asked for batch i: step i - 1 is done
            yield batch
        if index >= 0:
            self._record(epoch, index)

    def on_epoch_end(self, run: Any, state: Any) -> None:
        save_json(self.entries, self.path)


def checksum_hooks(folder: Path, info: Any) -> list[Hooks]:
    """A :class:`WeightChecksums` for the rank ``info`` (a ``DistInfo``): a ``TrainRequest.hooks`` factory."""
    return [WeightChecksums(Path(folder), int(info.rank))]
