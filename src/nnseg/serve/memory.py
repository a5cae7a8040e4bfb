"""The memory budget of ``nnseg serve``, shared by its workers.

The budget is resolved once, when the server starts (after its models are loaded): ``--max-memory GB``, else 85 %
of the memory free then (:func:`nnseg.predictions.inference.memory_plan.memory_budget`, on the first device). Every case is
planned against the whole budget with the memory plan ``nnseg predict`` uses
(:func:`nnseg.predictions.run.bounded.check_case_header`): one-shot when that fits, else the bounded path, and refused
(HTTP 413, with the estimate and the budget) before it is queued when not even the bounded path fits. A worker
reserves its case's estimate from the budget before it starts the case and gives it back when the case ends; a case
that fits the budget but not what the running cases leave of it waits at the head of the queue (status ``queued``)
until enough is given back. So the cases running at once never add up to more than the budget, and a case the CLI
predicts with ``--max-memory GB`` is served by a server started with the same ``--max-memory GB``.

Each estimate counts the process's own baseline (interpreter, torch, the weights; 1 GB), so two cases running at once
count it twice: the sum is an upper bound.

Interactive sessions (``--interactive``) draw from the same budget: the interactive model's prediction working
memory is held from start-up to shutdown, and each session holds its image's estimate
(:func:`nnseg.interactive.session_memory_bytes`) from ``/set_image`` until it is released or reaped. Holders are
named (``jobs``, ``interactive sessions``, ``interactive prediction``) so ``GET /v1/models`` shows who holds what.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from nnseg.predictions.run.bounded import MemoryPolicy
from nnseg.predictions.inference.memory_plan import GIB, memory_budget


class ServerMemory:
    """Bytes of the server's budget held by running cases (thread-safe; the job queue waits on its own lock)."""

    def __init__(self, total: int, source: str) -> None:
        if total <= 0:
            raise ValueError(f"the server's memory budget must be positive, got {total} bytes")
        self.total = int(total)
        self.source = source
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def resolve(cls, max_memory_gb: float | None, device: str) -> ServerMemory:
        """``--max-memory`` or 85 % of the memory free now on ``device`` (RAM for the CPU, else the GPU's)."""
        total, source = memory_budget(max_memory_gb, torch.device(device))
        return cls(total, f"{source}, the server's budget shared by its workers")

    def policy(self) -> MemoryPolicy:
        """The memory plan's view of the budget: every case is planned against all of it."""
        return MemoryPolicy(self.total, self.source)

    @property
    def used(self) -> int:
        with self._lock:
            return sum(self._held.values())

    def held(self) -> dict[str, int]:
        """Bytes held per holder (``jobs``, ``interactive sessions``, ...)."""
        with self._lock:
            return dict(self._held)

    def free(self) -> int:
        return self.total - self.used

    def on_release(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (outside this object's lock) whenever bytes are given back: a waiting job may fit."""
        self._listeners.append(listener)

    def try_reserve(self, nbytes: int, holder: str = "jobs") -> int | None:
        """Reserve ``nbytes`` (at most the whole budget) if that much is free now; returns the bytes reserved, or
        None (nothing reserved) when the running cases hold too much of the budget."""
        nbytes = max(0, min(int(nbytes), self.total))
        return nbytes if self.try_swap(0, nbytes, holder) else None

    def try_swap(self, old: int, new: int, holder: str) -> bool:
        """Replace a reservation of ``old`` bytes by one of ``new`` if the rest of the budget leaves room (atomic:
        on False the ``old`` reservation is kept as it was)."""
        with self._lock:
            if sum(self._held.values()) - old + new > self.total:
                return False
            self._held[holder] = max(0, self._held.get(holder, 0) - int(old)) + int(new)
        if new < old:
            self._notify()
        return True

    def release(self, nbytes: int, holder: str = "jobs") -> None:
        with self._lock:
            self._held[holder] = max(0, self._held.get(holder, 0) - int(nbytes))
        self._notify()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()
