"""Sessions of the interactive server: leases, limits, timeouts, and the one thread that runs every prediction.

Each client claims a lease (a random token) and gets its own :class:`~nnseg.interactive.InteractiveSession` over the
one loaded model. A session is reaped when its user has been idle (no prompt, image or buffer call) for
``idle_timeout_s``, or when the client has been silent (not even a heartbeat) for ``liveness_timeout_s``; a request
with a reaped or unknown lease is answered 410. Predictions of all sessions run one at a time on one thread (the
network and the device are shared); each session also has a lock so one client cannot race its own state.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nnseg.interactive import InteractiveModel, InteractiveSession

T = TypeVar("T")


class LeaseGone(KeyError):
    """A missing, expired or unknown lease (HTTP 410)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "lease expired or unknown"


class AtCapacity(RuntimeError):
    """Every session slot is taken (HTTP 503)."""


@dataclass(frozen=True)
class InteractiveOptions:
    """How ``nnseg serve --interactive`` runs its model (defaults: nnInteractive's server)."""

    folder: str
    fold: str | None = None
    max_sessions: int = 1
    idle_timeout_s: float = 600.0
    liveness_timeout_s: float = 60.0
    do_autozoom: bool = True
    enable_undo: bool = True
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.idle_timeout_s <= 0 or self.liveness_timeout_s <= 0:
            raise ValueError(f"--interactive_max_sessions must be >= 1 and the timeouts > 0, got {self.max_sessions}, "
                             f"{self.idle_timeout_s} s, {self.liveness_timeout_s} s")


@dataclass
class _Entry:
    session: InteractiveSession
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)


class SessionRegistry:
    """Lease token -> session, with the limits of :class:`InteractiveOptions` and a reaper thread."""

    def __init__(self, model: InteractiveModel, options: InteractiveOptions) -> None:
        self.model, self.options = model, options
        self._entries: dict[str, _Entry] = {}
        self._mu = threading.Lock()
        self._predictor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nnseg-interactive")
        self._stop = threading.Event()
        interval = min(15.0, max(0.1, min(options.idle_timeout_s, options.liveness_timeout_s) / 4))
        self._reaper = threading.Thread(target=self._reap_loop, args=(interval,), daemon=True,
                                        name="nnseg-interactive-reaper")
        self._reaper.start()

    def claim(self) -> str:
        """A new session's lease token.

        Raises:
            AtCapacity: ``max_sessions`` leases are out.
        """
        with self._mu:
            if len(self._entries) >= self.options.max_sessions:
                raise AtCapacity(f"server is at capacity ({self.options.max_sessions} sessions); retry later or start "
                                 "the server with a larger --interactive_max_sessions")
            token = secrets.token_hex(16)
            self._entries[token] = _Entry(InteractiveSession(
                self.model, precision=self.options.precision, do_autozoom=self.options.do_autozoom,
                enable_undo=self.options.enable_undo))
            return token

    def release(self, token: str | None) -> bool:
        with self._mu:
            return self._entries.pop(token or "", None) is not None

    def _entry(self, token: str | None, *, touch: bool) -> _Entry:
        if not token:
            raise LeaseGone("lease token missing: send the X-Lease-Token header from POST /claim")
        with self._mu:
            entry = self._entries.get(token)
        if entry is None:
            raise LeaseGone("lease expired or unknown: the session was released or idle too long; claim a new one")
        if touch:
            entry.seen = time.monotonic()
        return entry

    def remaining_s(self, token: str | None, *, heartbeat: bool) -> float:
        """Seconds until the idle timeout (a heartbeat proves liveness only; it does not postpone idling)."""
        entry = self._entry(token, touch=heartbeat)
        return max(0.0, self.options.idle_timeout_s - (time.monotonic() - entry.active))

    def run(self, token: str | None, action: Callable[[InteractiveSession], T], *, predicts: bool = False) -> T:
        """Run a user action on the lease's session under its lock; prompt/prediction work goes to the one
        prediction thread (sessions take turns)."""
        entry = self._entry(token, touch=True)
        entry.active = time.monotonic()
        with entry.lock:
            if predicts:
                return self._predictor.submit(action, entry.session).result()
            return action(entry.session)

    def sweep(self) -> int:
        """Drop idle or silent sessions; returns how many."""
        now, opts = time.monotonic(), self.options
        with self._mu:
            gone = [t for t, e in self._entries.items()
                    if now - e.seen > opts.liveness_timeout_s or now - e.active > opts.idle_timeout_s]
            for t in gone:
                del self._entries[t]
        return len(gone)

    def _reap_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sweep()

    def close(self) -> None:
        self._stop.set()
        self._predictor.shutdown(wait=True)
        with self._mu:
            self._entries.clear()

    def describe(self) -> dict[str, Any]:
        with self._mu:
            return {"sessions": len(self._entries), "max_sessions": self.options.max_sessions}
