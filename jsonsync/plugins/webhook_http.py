"""
The HTTP client of webhook deliveries: persistent HTTP/1.1 connections per
receiver, a request written as one buffer, and a response read only as far
as its status and its end (the body is discarded). To a receiver that
answers quickly, several requests go at once on one connection, written
together (HTTP/1.1 pipelining: one send and one wake-up on each side for
several deliveries, instead of one each); the responses come back in order.

Twisted's C{Agent} (and treq on top of it) is general: body producers,
response objects, redirects, a connection pool keyed by URI. A delivery needs
none of that and happens once per change: profiled under write load, the
C{Agent} path cost as much server CPU as the write it reported, and
C{bench/webhook_client_cost.py} (20,000 signed POSTs to a C receiver, 16 at
once, one process) measures 251-293 us of CPU per request through treq with
one client and a persistent pool, against 38-39 us through this client one
request at a time per connection and 21 us pipelined. This client
keeps to what a delivery needs and is driven by the delivery worker
(L{jsonsync.plugins.webhooks.Worker}), which bounds the requests in flight,
chooses how deep to pipeline for each receiver, checks the address it
connects to, and puts a timeout on each request (cancelling the
L{Deferred} aborts its connection).

Pipelining is only used on a connection that has answered a request as a
persistent HTTP/1.1 connection. When a connection ends before a request on
it was answered at all (the receiver closed it, after a "Connection: close"
or without one, or another request on it was cancelled), that request is
sent once more on a new connection: it may have reached the receiver, which
at-least-once delivery allows (the event id is there to deduplicate).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet import error, tcp
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.protocol import Factory, Protocol

MAX_HEAD = 64 * 1024


class ResponseError(Exception):
    """The receiver answered something that is not HTTP/1.x."""


class ConnectionLostEarly(Exception):
    """The connection closed before a complete response."""


def _write(transport: Any, data: bytes) -> None:
    """
    Writes C{data} on a TCP transport: straight to its socket when nothing
    is waiting in the transport's buffer (the common case: a request on an
    idle connection), else through the transport. Twisted's C{write} only
    buffers and asks the reactor to watch the socket for writing: two more
    C{epoll_ctl} calls and a reactor event per delivery, which cost about
    as much as the send itself. Whatever the socket does not take at once
    (or a TLS transport, or a Twisted without these attributes) goes the
    usual way, in order.
    """
    try:
        sock = transport.socket
        direct = (
            isinstance(transport, tcp.Connection)  # plain TCP: a TLS transport encrypts what it is given
            and not transport.TLS
            and transport.connected
            and not transport.disconnecting
            and not transport._aborting  # (connected until its connectionLost, a reactor turn later)
            and not transport._writeDisconnected
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
        )
    except AttributeError:
        direct = False
    if direct:
        try:
            sent = sock.send(data)
        except OSError:
            sent = 0  # full (EAGAIN), or broken: the transport's own write finds out
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class Unanswered(ConnectionLostEarly):
    """The connection ended before any byte of this request's response: it may be sent again."""


class _Exchange:
    """A request written on a connection, and what came of its response so far."""

    __slots__ = ("d", "received")

    def __init__(self, d: Deferred):
        self.d = d
        self.received = False


class _Connection(Protocol):
    """
    One connection to a receiver, reused while the receiver keeps it open.
    Its requests are answered in the order they were written: once it has
    answered one as a persistent HTTP/1.1 connection, several may be on
    their way at once (pipelined), written together.
    """

    # A TCP (or TLS) transport: ITransport and ITCPTransport's abortConnection, and `connected`.
    transport: Any

    def __init__(self, pool: ConnectionPool, key: tuple):
        self.pool = pool
        self.key = key
        self.exchanges: deque[_Exchange] = deque()
        # It answered a request as a persistent HTTP/1.1 connection: it may carry several at once.
        self.proven = False
        self.ending = False  # aborted or closing: it takes no more requests
        self._reset()

    def _reset(self) -> None:
        self.buffer = b""
        self.state = "head"
        self.status = 0
        self.keep_alive = True
        self.http11 = False
        self.left = 0  # body bytes to skip (length or current chunk)
        self.chunked = False

    # -- exchange ------------------------------------------------------------------------
    def send_many(self, requests: list[bytes]) -> list[Deferred]:
        """Writes C{requests} (whole requests) in one go; a Deferred for each response's status."""
        ds = []
        for _ in requests:
            d: Deferred = Deferred(self._cancel)
            self.exchanges.append(_Exchange(d))
            ds.append(d)
        _write(self.transport, requests[0] if len(requests) == 1 else b"".join(requests))
        return ds

    def send(self, data: bytes) -> Deferred:
        return self.send_many([data])[0]

    def _cancel(self, d: Deferred) -> None:
        # The connection goes (what follows it on the connection cannot be
        # told apart from its response): the other requests on it are
        # unanswered, and sent again.
        for i, exchange in enumerate(self.exchanges):
            if exchange.d is d:
                del self.exchanges[i]
                if i == 0:
                    self._reset()  # its response, part read, is nobody else's
                break
        if not self.ending:
            self._end_abruptly()

    def _end_abruptly(self) -> None:
        self.ending = True
        self.pool._gone(self)
        self.transport.abortConnection()

    def _finish(self) -> None:
        exchange = self.exchanges.popleft()
        status = self.status
        if self.keep_alive:
            self.proven = self.proven or self.http11
            buffer = self.buffer  # (what follows belongs to the next request's response)
            self._reset()
            self.buffer = buffer
            if self.exchanges:
                pass
            elif buffer:
                self._end_abruptly()  # more than was asked for: it cannot be reused
            else:
                self.pool._idle(self)
        else:
            # The receiver closes it: the requests written after this one are not answered.
            self.ending = True
            self.pool._gone(self)
            self.transport.loseConnection()
        exchange.d.callback(status)

    def _fail(self, exc: Exception) -> None:
        exchange = self.exchanges.popleft() if self.exchanges else None
        self._end_abruptly()
        if exchange is not None:
            exchange.d.errback(exc)

    # -- parsing ---------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self.ending:
            return  # it is going: nothing more is read from it
        if not self.exchanges:
            # Bytes nobody asked for (on an idle connection): it cannot be reused, from now on.
            self._end_abruptly()
            return
        self.buffer += data
        try:
            self._parse()
        except ResponseError as exc:
            self._fail(exc)

    def _parse(self) -> None:
        while self.exchanges and not self.ending:
            if self.buffer:
                self.exchanges[0].received = True
            if self.state == "head":
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        raise ResponseError("response head too large")
                    return
                head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
                if not self._head(head):
                    continue  # an interim (1xx) response: the real one follows
            elif self.state == "length":
                take = min(self.left, len(self.buffer))
                self.left -= take
                self.buffer = self.buffer[take:]
                if self.left:
                    return
                self._finish()
            elif self.state == "chunk-size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    if len(self.buffer) > 1024:
                        raise ResponseError("bad chunk size")
                    return
                line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                try:
                    self.left = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ResponseError("bad chunk size") from None
                if self.left:
                    self.left += 2  # the data, then its CRLF
                    self.state = "chunk"
                else:
                    self.state = "trailer"
            elif self.state == "chunk":
                take = min(self.left, len(self.buffer))
                self.left -= take
                self.buffer = self.buffer[take:]
                if self.left:
                    return
                self.state = "chunk-size"
            elif self.state == "trailer":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        raise ResponseError("trailer too large")
                    return
                line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                if not line:
                    self._finish()
            else:  # "close": the body ends with the connection
                self.buffer = b""
                return

    def _head(self, head: bytes) -> bool:
        """Reads a response head; returns False for an interim response."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise ResponseError("not an HTTP/1.x response")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            return False
        self.status = status
        self.http11 = parts[0] == b"HTTP/1.1"
        self.keep_alive = self.http11
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit():
                    raise ResponseError("bad Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = value.lower().endswith(b"chunked")
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    self.keep_alive = False
                elif b"keep-alive" in tokens:
                    self.keep_alive = True
        if status in (204, 304):
            self.state = "length"
            self.left = 0
        elif self.chunked:
            self.state = "chunk-size"
        elif length is not None:
            self.state = "length"
            self.left = length
        else:
            self.state = "close"
            self.keep_alive = False
        return True

    def connectionLost(self, reason=None) -> None:
        self.ending = True
        self.pool._gone(self)
        exchanges, self.exchanges = self.exchanges, deque()
        if not exchanges:
            return
        first = exchanges.popleft()
        why = _why(reason)
        if self.state == "close" and self.status:
            first.d.callback(self.status)
        elif not first.received:
            first.d.errback(Unanswered(f"the connection ended without an answer{why}"))
        else:
            first.d.errback(ConnectionLostEarly(f"the connection was lost before the whole response{why}"))
        for exchange in exchanges:
            if not exchange.d.called:
                exchange.d.errback(Unanswered(f"the connection ended before this request was answered{why}"))


def _why(reason) -> str:
    """What ended a connection, for the delivery log (a TLS failure, a reset), or nothing for a plain close."""
    value = getattr(reason, "value", None)
    if value is None or isinstance(value, error.ConnectionDone):
        return ""
    text = str(value).strip() or type(value).__name__
    return f" ({text[:300]})"


def decrement(counts: dict, key) -> None:
    """One fewer C{key} in C{counts} (a count that reaches zero leaves the mapping)."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class _Factory(Factory):
    def __init__(self, pool: ConnectionPool, key: tuple):
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr):
        return _Connection(self.pool, self.key)


class NotSent(CancelledError):
    """The request was cancelled while it waited for a connection: it never reached the receiver."""


class _Job:
    """A request for a receiver, from the moment it is asked for to its answer (or failure)."""

    __slots__ = ("key", "connect", "data", "d", "wire", "sent", "resent", "opening")

    def __init__(self, pool: ConnectionPool, key: tuple, connect: Callable[[Factory], Deferred], data: bytes):
        self.key = key
        self.connect = connect
        self.data = data
        self.d: Deferred = Deferred(lambda _: pool._cancel_job(self))
        self.wire: Deferred | None = None  # its exchange, once it is on a connection (or being connected)
        self.sent = 0.0  # when it went on a connection
        self.resent = False
        self.opening = False  # it is the first request of a new connection, not answered yet


class ConnectionPool:
    """
    Connections per receiver (C{key}: scheme, address, port, host), reused,
    at most C{per_receiver} of them open (or being made) at once: the
    requests beyond wait for one to be free. A free connection takes the
    requests waiting for its receiver, up to C{depth} of them written
    together when it proved it keeps HTTP/1.1 connections open (pipelined:
    fewer system calls and wake-ups on both ends when a receiver gets
    many). New connections not answered yet are few at first (C{OPENING}),
    their number doubling with each answer a new connection brings, up to
    C{per_receiver}: a receiver that accepts connections slowly (a listen
    queue of 5, Python's http.server) would drop the SYNs of a burst of
    connections (retried by TCP a second later), while one that closes
    each connection after its answer still gets C{per_receiver} at once.
    C{on_answer(key, seconds)} hears how long each answer took from
    the moment its request was written.
    """

    OPENING = 2  # new connections to a receiver not heard from, not answered yet, at most

    def __init__(self, max_idle: int = 16, depth: int = 1, per_receiver: int = 8,
                 on_answer: Callable[[tuple, float], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.max_idle = max_idle
        self.depth = max(1, depth)
        self.per_receiver = max(1, per_receiver)
        self.on_answer = on_answer
        self.clock = clock
        self._idle_by_key: dict[tuple, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._count: dict[tuple, int] = {}  # connections open or being made, per receiver
        self._opening: dict[tuple, int] = {}  # of those, the new ones that have not answered yet
        self._ramp: dict[tuple, int] = {}  # how many of those there may be, per receiver
        self._waiting: dict[tuple, deque[_Job]] = {}
        self._depth: dict[tuple, int] = {}
        self._connecting: set[_Job] = set()  # requests whose new connection is being made
        self._held: set[tuple] | None = None  # receivers whose freed places wait for the hold's end
        self._closed = False

    @contextmanager
    def holding(self) -> Iterator[None]:
        """
        Within it, places freed (a request cancelled, its connection
        aborted) are not filled: a sweep cancelling many late requests does
        not open a connection for one it is about to cancel. They are
        filled at its end.
        """
        if self._held is not None:
            yield
            return
        self._held = set()
        try:
            yield
        finally:
            keys, self._held = self._held, None
            for key in keys:
                if self._waiting.get(key):
                    self._pump(key)

    # -- connections -----------------------------------------------------------------------
    def _idle(self, conn: _Connection) -> None:
        if self._waiting.get(conn.key) and not self._closed:
            if self._held is None:
                self._dispatch(conn)
                return
            self._held.add(conn.key)  # (it takes them when the hold ends)
            self._idle_by_key.setdefault(conn.key, []).append(conn)
            return
        idle = self._idle_by_key.setdefault(conn.key, [])
        if len(idle) >= self.max_idle or self._closed:
            conn.ending = True
            self._gone(conn)
            conn.transport.loseConnection()
            return
        idle.append(conn)

    def _gone(self, conn: _Connection) -> None:
        idle = self._idle_by_key.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        if conn in self._open:
            self._open.discard(conn)
            self._release(conn.key)

    def _release(self, key: tuple) -> None:
        decrement(self._count, key)
        if self._waiting.get(key):
            self._pump(key)

    def _usable(self, conn: _Connection) -> bool:
        return not conn.ending and conn.transport is not None and conn.transport.connected

    def _free(self, key: tuple) -> _Connection | None:
        """An idle connection to C{key}."""
        idle = self._idle_by_key.get(key)
        while idle:
            conn = idle.pop()
            if self._usable(conn):
                return conn
        # (Never more on a connection with requests on their way: a receiver
        # that drops what followed the request it read would answer a later
        # one in the place of one it dropped.)
        return None

    # -- requests --------------------------------------------------------------------------
    def request(self, key: tuple, connect: Callable[[Factory], Deferred], data: bytes) -> Deferred:
        """
        Sends C{data} (a whole request) to the receiver C{key} on a
        connection it keeps open, or a new one made by C{connect(factory)};
        fires with the response's status. A request that a reused
        connection ended without answering (the receiver closed it
        meanwhile, or before reaching it in a pipeline) is sent once more,
        on a new connection. Cancelling the result aborts its connection,
        or, while it waits for one, fails it with L{NotSent}.
        """
        return self.request_many(key, connect, [data])[0]

    def request_many(self, key: tuple, connect: Callable[[Factory], Deferred], requests: list[bytes],
                     depth: int | None = None) -> list[Deferred]:
        """L{request} for several requests to one receiver, written together where they can be."""
        if self._closed:
            return [fail(NotSent("the connection pool is closed")) for _ in requests]
        self._depth[key] = self.depth if depth is None else max(1, depth)
        jobs = [_Job(self, key, connect, data) for data in requests]
        self._waiting.setdefault(key, deque()).extend(jobs)
        self._pump(key)
        return [job.d for job in jobs]

    def _pump(self, key: tuple) -> None:
        """Puts what waits for C{key} on its idle connections, then on new ones while there is room."""
        if self._held is not None:
            self._held.add(key)
            return
        if self._closed:
            return
        waiting = self._waiting.get(key)
        while waiting:
            conn = self._free(key)
            if conn is None:
                break
            self._dispatch(conn)
        opening = self._ramp.get(key, self.OPENING)
        while waiting and self._count.get(key, 0) < self.per_receiver and self._opening.get(key, 0) < opening:
            self._fresh(waiting.popleft())
        if waiting is not None and not waiting and self._waiting.get(key) is waiting:
            del self._waiting[key]

    def _dispatch(self, conn: _Connection) -> None:
        """Writes on C{conn} (idle) the requests waiting for its receiver that it may take at once."""
        waiting = self._waiting[conn.key]
        room = self._depth.get(conn.key, self.depth) if conn.proven else 1
        jobs = [waiting.popleft() for _ in range(min(room, len(waiting)))]
        now = self.clock()
        for job, wire in zip(jobs, conn.send_many([job.data for job in jobs]), strict=True):
            self._track(job, wire, now)

    def _fresh(self, job: _Job) -> None:
        """Sends C{job} on a new connection (counted from now: being made is being open)."""
        key = job.key
        self._count[key] = self._count.get(key, 0) + 1
        self._opening[key] = self._opening.get(key, 0) + 1
        job.opening = True
        job.wire = None
        connecting = Deferred.fromCoroutine(self._connect_and_send(job))
        if job.wire is None:  # (a connect that fired at once has put the request's exchange there)
            job.wire = connecting

    async def _connect_and_send(self, job: _Job) -> None:
        self._connecting.add(job)
        try:
            conn = await job.connect(_Factory(self, job.key))
        except BaseException as e:
            self._connecting.discard(job)
            self._opened(job)
            self._release(job.key)
            if not job.d.called:
                job.d.errback(e)
            return
        self._connecting.discard(job)
        if job.d.called:  # cancelled while it connected
            self._opened(job)
            self._open.add(conn)
            conn.ending = True
            self._gone(conn)
            conn.transport.abortConnection()
            return
        self._open.add(conn)
        self._track(job, conn.send(job.data), self.clock())

    def _track(self, job: _Job, wire: Deferred, sent: float) -> None:
        job.wire = wire
        job.sent = sent
        wire.addCallbacks(self._answered, self._failed, callbackArgs=(job,), errbackArgs=(job,))

    def _opened(self, job: _Job, answered: bool = False) -> None:
        """C{job}'s new connection answered it, or failed: another may be opened (two more, if it answered)."""
        if job.opening and answered:
            self._ramp[job.key] = min(self.per_receiver, 2 * self._ramp.get(job.key, self.OPENING))
        if job.opening:
            job.opening = False
            decrement(self._opening, job.key)
            if self._waiting.get(job.key):
                self._pump(job.key)

    def _answered(self, status: int, job: _Job) -> None:
        self._opened(job, answered=True)
        if job.d.called:
            return
        if self.on_answer is not None:
            self.on_answer(job.key, self.clock() - job.sent)
        job.d.callback(status)

    def _failed(self, failure, job: _Job) -> None:
        self._opened(job)
        if job.d.called:
            return None
        if failure.check(Unanswered) and not job.resent and not self._closed:
            # Once more, on a new connection: it may go past per_receiver
            # for a moment (a receiver that closed a connection with
            # pipelined requests on it has that many fewer).
            job.resent = True
            self._fresh(job)
            return None
        job.d.errback(failure)
        return None

    def _cancel_job(self, job: _Job) -> None:
        if job.wire is not None:
            job.wire.cancel()  # aborts its connection (or its connect)
            return
        waiting = self._waiting.get(job.key)
        if waiting is not None and job in waiting:
            waiting.remove(job)
            if not waiting:
                del self._waiting[job.key]
        job.d.errback(NotSent("cancelled while it waited for a connection to the receiver"))

    def close(self) -> None:
        """
        Fails what waits with L{NotSent}, cancels the connects in progress,
        aborts every connection (its requests fail as their connections
        go); requests made afterwards fail with L{NotSent}.
        """
        self._closed = True
        waiting, self._waiting = self._waiting, {}
        for jobs in waiting.values():
            for job in jobs:
                if not job.d.called:
                    job.d.errback(NotSent("the connection pool closed"))
        for job in list(self._connecting):
            if not job.d.called:
                job.d.cancel()
        for conn in list(self._open):
            if conn.transport is not None:
                conn.ending = True
                conn.transport.abortConnection()
        self._idle_by_key.clear()
        self._open.clear()
        self._count.clear()
        self._opening.clear()
        self._ramp.clear()
        self._connecting.clear()
