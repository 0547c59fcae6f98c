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
C{Agent} path cost as much server CPU as the write it reported. This client
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

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred
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
        if self.state == "close" and self.status:
            first.d.callback(self.status)
        elif not first.received:
            first.d.errback(Unanswered("the receiver closed the connection without answering"))
        else:
            first.d.errback(ConnectionLostEarly("the connection was lost before the whole response"))
        for exchange in exchanges:
            if not exchange.d.called:
                exchange.d.errback(Unanswered("the connection ended before this request was answered"))


class _Factory(Factory):
    def __init__(self, pool: ConnectionPool, key: tuple):
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr):
        return _Connection(self.pool, self.key)


class ConnectionPool:
    """
    Connections per receiver (C{key}: scheme, address, port, host), reused.
    Requests go on an idle connection, up to C{depth} of them written
    together when it proved it keeps HTTP/1.1 connections open (pipelined:
    fewer system calls and wake-ups on both ends when a receiver gets
    many), or on a new connection.
    """

    def __init__(self, max_idle: int = 16, depth: int = 1):
        self.max_idle = max_idle
        self.depth = max(1, depth)
        self._idle_by_key: dict[tuple, list[_Connection]] = {}
        self._open: set[_Connection] = set()

    def _idle(self, conn: _Connection) -> None:
        idle = self._idle_by_key.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.ending = True
            self._open.discard(conn)
            conn.transport.loseConnection()
            return
        idle.append(conn)

    def _gone(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle_by_key.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _usable(self, conn: _Connection) -> bool:
        return not conn.ending and conn.transport is not None and conn.transport.connected

    def _room(self, key: tuple, depth: int) -> tuple[_Connection, int] | None:
        """A connection for more requests to C{key}, and how many it takes now."""
        idle = self._idle_by_key.get(key)
        while idle:
            conn = idle.pop()
            if self._usable(conn):
                return conn, (depth if conn.proven else 1)
        # (Never more on a connection with requests on their way: a receiver
        # that drops what followed the request it read would answer a later
        # one in the place of one it dropped.)
        return None

    def request(self, key: tuple, connect: Callable[[Factory], Deferred], data: bytes) -> Deferred:
        """
        Sends C{data} (a whole request) to the receiver C{key} on a
        connection it keeps open, or a new one made by C{connect(factory)};
        fires with the response's status. A request that a reused
        connection ended without answering (the receiver closed it
        meanwhile, or before reaching it in a pipeline) is sent once more,
        on a new connection. Cancelling the result aborts its connection.
        """
        return self.request_many(key, connect, [data])[0]

    def request_many(self, key: tuple, connect: Callable[[Factory], Deferred], requests: list[bytes],
                     depth: int | None = None) -> list[Deferred]:
        """L{request} for several requests to one receiver, written together where they can be."""
        depth = self.depth if depth is None else max(1, depth)
        results: list[Deferred] = []
        i = 0
        while i < len(requests):
            found = self._room(key, depth)
            if found is None:
                break
            conn, room = found
            batch = requests[i : i + room]
            i += len(batch)
            for d, data in zip(conn.send_many(batch), batch, strict=True):
                d.addErrback(self._unanswered, key, connect, data)
                results.append(d)
        # The rest, each on a new connection (which proves itself before it carries more).
        results += [Deferred.fromCoroutine(self._fresh(key, connect, data)) for data in requests[i:]]
        return results

    def _unanswered(self, failure, key: tuple, connect, data: bytes):
        if failure.check(Unanswered):
            return Deferred.fromCoroutine(self._fresh(key, connect, data))  # once more, on a new connection
        return failure

    async def _fresh(self, key: tuple, connect: Callable[[Factory], Deferred], data: bytes) -> int:
        conn = await connect(_Factory(self, key))
        self._open.add(conn)
        return await conn.send(data)

    def close(self) -> None:
        for conn in list(self._open):
            if conn.transport is not None:
                conn.ending = True
                conn.transport.abortConnection()
        self._idle_by_key.clear()
        self._open.clear()
