"""
Responses written progressively: a view returns a L{StreamingResponse}
(status, headers, and a coroutine that writes the body), and the
application sends the status and headers, ends the request's transaction
as for any response, then runs the coroutine with a L{Stream}.

The stream is outside every transaction: what it reads, it reads in
transactions of its own (the live feed runs one list request per read).
It stops when the client goes away (the coroutine is cancelled), and it
follows the connection's flow control: C{writable} is false while the
socket's send buffer is full, and C{drained()} waits until it empties, so
a writer that waits keeps its memory bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from jsonsync.http import ApiResponse

_log = Logger()


class StreamingResponse(ApiResponse):
    """
    A response whose body C{run(stream)} writes after the request's
    transaction has ended. No C{Content-Length}: the body ends when C{run}
    returns (or fails, or the client goes away).
    """

    streaming = True

    def __init__(self, run: Callable[[Stream], Coroutine[Any, Any, Any]], status: int = 200, headers=None):
        super().__init__(b"", status, headers)
        self.run = run


class Stream:
    """
    The writing end of a streamed body, on one twisted.web request; it is
    the request's push producer, so twisted tells it when the socket's
    buffer is full (C{pauseProducing}) and empty again (C{resumeProducing}).
    """

    def __init__(self, request):
        self._request = request
        self.closed = False
        self.writable = True
        self._drained: list[Deferred] = []
        self._on_close: list[Callable[[], Any]] = []
        # Bytes written since the socket's buffer last filled up (what the
        # transport holds beyond its own limit): the caller's bound.
        self.unsent = 0

    # IPushProducer, called by twisted.web
    def pauseProducing(self):
        self.writable = False

    def resumeProducing(self):
        self.writable = True
        self.unsent = 0
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    def stopProducing(self):
        self.close()

    # for the writer
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.writable:
            self.unsent += len(data)
        self._request.write(data)

    def drained(self) -> Deferred:
        """Fires once the socket accepts more (at once when it does now)."""
        if self.writable or self.closed:
            d: Deferred = Deferred()
            d.callback(None)
            return d
        d = Deferred(lambda d: self._drained.remove(d) if d in self._drained else None)
        self._drained.append(d)
        return d

    def on_close(self, callback: Callable[[], Any]) -> None:
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.errback(CancelledError())
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _log.failure("stream close callback failed")


def _no_idle_timeout(request) -> None:
    channel = getattr(request, "channel", None)
    if channel is not None and hasattr(channel, "setTimeout"):
        channel.setTimeout(None)


def start(response: StreamingResponse, request) -> Deferred:
    """
    Run C{response}'s body on C{request} (whose status and headers are
    set): the request is finished when the writer returns, and the writer
    is cancelled when the client goes away first.
    """
    stream = Stream(request)
    request.registerProducer(stream, True)
    # A stream may stay quiet on the client's side for hours: twisted.web's
    # idle timeout (reset by what the client sends) must not cut it. A dead
    # peer shows when a write (a heartbeat) fails.
    _no_idle_timeout(request)
    running: Deferred[Any] = Deferred.fromCoroutine(response.run(stream))

    def gone(_):
        stream.close()
        if not running.called:
            running.cancel()

    request.notifyFinish().addBoth(gone)

    def done(result):
        if result is not None and hasattr(result, "check") and not result.check(CancelledError):
            _log.failure("streamed response on {uri} failed", result, uri=request.uri)
        stream.close()
        if not request.finished and not request._disconnected:
            request.unregisterProducer()
            request.finish()
        return None

    running.addBoth(done)
    return running
