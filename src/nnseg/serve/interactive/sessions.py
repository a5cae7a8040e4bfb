"""Sessions of the interactive server: leases, limits, timeouts, and the one thread that runs every prediction.

Each client claims a lease (a random token) and gets its own :class:`~nnseg.interactive.InteractiveSession` over the
one loaded model. A session is reaped when its user has been idle (no prompt, image or buffer call) for
``idle_timeout_s``, or when the client has been silent (not even a heartbeat) for ``liveness_timeout_s``; a request
with a reaped or unknown lease is answered 410. Predictions of all sessions run one at a time on one thread (the
network and the device are shared); each session also has a lock so one client cannot race its own state.

Memory: sessions draw from the server's budget (:class:`~nnseg.serve.memory.ServerMemory`, the one the automatic
jobs use). The model's prediction working memory is held once, from start-up (:class:`SessionBudget`); each
session holds its image's estimate (:func:`nnseg.interactive.session_memory_bytes`) from ``/set_image`` until it is
released, reaped or the server closes. An image whose estimate can never fit is refused with :class:`TooLarge`
(HTTP 413), one that does not fit beside what jobs and other sessions hold now with :class:`AtCapacity` (503);
a refused request holds nothing and leaves the session's previous image (and its reservation) as it was.
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
from nnseg.interactive.memory import model_prediction_bytes, model_session_bytes
from nnseg.serve.memory import ServerMemory

T = TypeVar("T")
SESSIONS, PREDICTION = "interactive sessions", "interactive prediction"
GB = float(1 << 30)
LEASE_GONE = "lease expired or unknown: the session was released or idle too long; claim a new one"


class LeaseGone(KeyError):
    """A missing, expired or unknown lease (HTTP 410)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "lease expired or unknown"


class AtCapacity(RuntimeError):
    """Every session slot is taken, or the memory budget has no room for an image now (HTTP 503)."""


class TooLarge(RuntimeError):
    """An image (or target buffer) whose memory estimate exceeds what the server's budget can ever give (HTTP 413)."""


class SessionBudget:
    """What interactive sessions hold of the server's memory budget (no budget: nothing is counted).

    Raises:
        ValueError: the model's prediction working memory alone does not fit the budget (on start-up).
    """

    def __init__(self, memory: ServerMemory | None, model: InteractiveModel) -> None:
        self.memory, self.shared = memory, 0
        if memory is None:
            return
        self.shared = model_prediction_bytes(model)
        if not memory.try_swap(0, self.shared, PREDICTION):
            raise ValueError(f"the interactive model's prediction working memory ({self.shared / GB:.2f} GB) does "
                             f"not fit the server's memory budget ({memory.free() / GB:.2f} of {memory.total / GB:.2f}"
                             f" GB free, {memory.source}); start the server with a larger --max-memory")

    def swap(self, old: int, new: int, what: str) -> None:
        """Hold ``new`` bytes instead of ``old`` for a session (raises, holding ``old`` still, when they do not fit)."""
        memory = self.memory
        if memory is None:
            return
        room = memory.total - self.shared
        if new > max(old, room):  # only growth can be too large; giving back (new <= old) always fits
            raise TooLarge(f"{what} needs about {new / GB:.2f} GB in an interactive session (its memory estimate), "
                           f"more than the {room / GB:.2f} GB the server's memory budget ({memory.source}) leaves "
                           f"beside the interactive prediction ({self.shared / GB:.2f} GB); restart the server with a "
                           "larger --max-memory, or send a smaller (cropped or downsampled) image")
        if not memory.try_swap(old, new, SESSIONS):
            raise AtCapacity(f"server at capacity: {what} needs about {new / GB:.2f} GB of the memory budget, "
                             f"{(memory.free() + old) / GB:.2f} of {memory.total / GB:.2f} GB are free now (running "
                             "jobs and other interactive sessions hold the rest); retry later")

    def close(self) -> None:
        if self.memory is not None:
            self.memory.release(self.shared, PREDICTION)
            self.shared = 0


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
    reserved: int = 0  # bytes of the server's memory budget held for this session


class SessionRegistry:
    """Lease token -> session, with the limits of :class:`InteractiveOptions` and a reaper thread."""

    def __init__(self, model: InteractiveModel, options: InteractiveOptions,
                 memory: ServerMemory | None = None) -> None:
        self.model, self.options = model, options
        self.budget = SessionBudget(memory, model)
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
            self._entries[token] = _Entry(InteractiveSession(  # memory: reserved from the budget (SessionBudget)
                self.model, precision=self.options.precision, do_autozoom=self.options.do_autozoom,
                enable_undo=self.options.enable_undo, check_memory=False))
            return token

    def release(self, token: str | None) -> bool:
        with self._mu:
            entry = self._entries.pop(token or "", None)
            if entry is not None:
                self._drop(entry)
            return entry is not None

    def _drop(self, entry: _Entry) -> None:
        """Give back what a session removed from the registry held (caller holds ``_mu``)."""
        self.budget.swap(entry.reserved, 0, "")
        entry.reserved = 0

    def image_bytes(self, image_shape: Any, target_itemsize: int = 1) -> int:
        """The memory estimate of a session of this server holding an image ``[c, x, y, z]``."""
        return model_session_bytes(self.model, image_shape, target_itemsize=target_itemsize,
                                   enable_undo=self.options.enable_undo)

    def _entry(self, token: str | None, *, touch: bool) -> _Entry:
        if not token:
            raise LeaseGone("lease token missing: send the X-Lease-Token header from POST /claim")
        with self._mu:
            entry = self._entries.get(token)
        if entry is None:
            raise LeaseGone(LEASE_GONE)
        if touch:
            entry.seen = time.monotonic()
        return entry

    def remaining_s(self, token: str | None, *, heartbeat: bool) -> float:
        """Seconds until the idle timeout (a heartbeat proves liveness only; it does not postpone idling)."""
        entry = self._entry(token, touch=heartbeat)
        return max(0.0, self.options.idle_timeout_s - (time.monotonic() - entry.active))

    def run(self, token: str | None, action: Callable[[InteractiveSession], T], *, predicts: bool = False,
            memory: Callable[[InteractiveSession], tuple[int, str]] | None = None) -> T:
        """Run a user action on the lease's session under its lock; prompt/prediction work goes to the one
        prediction thread (sessions take turns). ``memory(session)``: ``(bytes, what)`` the session holds once the
        action succeeds; reserved before it runs (:class:`TooLarge`, :class:`AtCapacity`), the previous
        reservation kept if it fails."""
        entry = self._entry(token, touch=True)
        entry.active = time.monotonic()
        with entry.lock:
            if memory is None:
                return self._call(entry, action, predicts)
            previous = entry.reserved
            need, what = memory(entry.session)
            self._hold(token, entry, max(previous, need), what)  # never shrink before the old image is gone
            try:
                result = self._call(entry, action, predicts)
            except BaseException:
                self._hold(token, entry, previous, what, strict=False)
                raise
            self._hold(token, entry, need, what, strict=False)
            return result

    def _call(self, entry: _Entry, action: Callable[[InteractiveSession], T], predicts: bool) -> T:
        if predicts:
            return self._predictor.submit(action, entry.session).result()
        return action(entry.session)

    def _hold(self, token: str | None, entry: _Entry, nbytes: int, what: str, *, strict: bool = True) -> None:
        with self._mu:
            if self._entries.get(token or "") is not entry:  # released or reaped meanwhile: it holds nothing
                if strict:
                    raise LeaseGone(LEASE_GONE)
                return
            self.budget.swap(entry.reserved, nbytes, what)
            entry.reserved = nbytes

    def sweep(self) -> int:
        """Drop idle or silent sessions; returns how many."""
        now, opts = time.monotonic(), self.options
        with self._mu:
            gone = [t for t, e in self._entries.items()
                    if now - e.seen > opts.liveness_timeout_s or now - e.active > opts.idle_timeout_s]
            for t in gone:
                self._drop(self._entries.pop(t))
        return len(gone)

    def _reap_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.sweep()

    def close(self) -> None:
        self._stop.set()
        self._predictor.shutdown(wait=True)
        with self._mu:
            for entry in self._entries.values():
                self._drop(entry)
            self._entries.clear()
        self.budget.close()

    def describe(self) -> dict[str, Any]:
        with self._mu:
            return {"sessions": len(self._entries), "max_sessions": self.options.max_sessions,
                    "memory_held_bytes": sum(e.reserved for e in self._entries.values()),
                    "prediction_memory_bytes": self.budget.shared}
