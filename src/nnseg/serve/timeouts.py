"""A header timeout for uvicorn's HTTP/1.1 connections (slowloris: clients that send their headers a byte at a time).

uvicorn closes idle keep-alive connections, but waits without limit for a connection's first request and for the
headers of any request. :func:`timed_h11_protocol` makes uvicorn's h11 protocol close a connection whose request
headers are not complete ``timeout_s`` seconds after it opened (or after the previous answer). The body is timed by
:class:`nnseg.serve.automatic.uploads.SizeLimit` (408).
"""

from __future__ import annotations

from typing import Any


def timed_h11_protocol(timeout_s: float) -> type:
    """uvicorn's ``H11Protocol`` with a header timeout of ``timeout_s`` seconds (pass as ``uvicorn.Config(http=...)``).

    Raises:
        ValueError: ``timeout_s`` is not positive.
    """
    if not timeout_s > 0:
        raise ValueError(f"the request timeout must be a positive number of seconds, got {timeout_s}")
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):  # type: ignore[misc]
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request's headers get the same time

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.transport.close()

    return TimedH11Protocol
