"""
The HTTP client of webhook deliveries: persistent HTTP/1.1 connections per
receiver, a request written as one buffer, and a response read only as far
as its status and its end (the body is discarded).

Twisted's C{Agent} (and treq on top of it) is general: body producers,
response objects, redirects, a connection pool keyed by URI. A delivery needs
none of that and happens once per change: profiled under write load, the
C{Agent} path cost as much server CPU as the write it reported. This client
keeps to what a delivery needs and is driven by the delivery worker
(L{jsonsync.plugins.webhooks.Worker}), which bounds the requests in flight,
checks the address it connects to, and puts a timeout on each request
(cancelling the L{Deferred} aborts its connection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
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


class _Connection(Protocol):
    """One connection, one exchange at a time; reused while the receiver keeps it open."""

    # A TCP (or TLS) transport: ITransport and ITCPTransport's abortConnection, and `connected`.
    transport: Any

    def __init__(self, pool: ConnectionPool, key: tuple):
        self.pool = pool
        self.key = key
        self.waiting: Deferred | None = None
        self.received_any = False
        self._reset()

    def _reset(self) -> None:
        self.buffer = b""
        self.state = "head"
        self.status = 0
        self.keep_alive = True
        self.left = 0  # body bytes to skip (length or current chunk)
        self.chunked = False

    # -- exchange ------------------------------------------------------------------------
    def send(self, data: bytes) -> Deferred:
        self._reset()
        self.received_any = False
        d: Deferred = Deferred(self._cancel)
        self.waiting = d
        _write(self.transport, data)
        return d

    def _cancel(self, d: Deferred) -> None:
        self.waiting = None
        self.transport.abortConnection()

    def _finish(self) -> None:
        d, self.waiting = self.waiting, None
        status = self.status
        if self.keep_alive:
            self._reset()
            self.pool._idle(self)
        else:
            self.transport.loseConnection()
        if d is not None:
            d.callback(status)

    def _fail(self, exc: Exception) -> None:
        d, self.waiting = self.waiting, None
        self.transport.abortConnection()
        if d is not None:
            d.errback(exc)

    # -- parsing ---------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self.waiting is None:
            # Bytes nobody asked for (on an idle connection): it cannot be reused, from now on.
            self.pool._gone(self)
            self.transport.abortConnection()
            return
        self.received_any = True
        self.buffer += data
        try:
            self._parse()
        except ResponseError as exc:
            self._fail(exc)

    def _parse(self) -> None:
        while self.waiting is not None:
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
                return
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
                    return
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
        self.keep_alive = parts[0] != b"HTTP/1.0"
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
        self.pool._gone(self)
        d, self.waiting = self.waiting, None
        if d is None:
            return
        if self.state == "close" and self.status:
            d.callback(self.status)
        elif reason is not None and reason.check(ConnectionDone) and not self.received_any:
            d.errback(ConnectionLostEarly("the receiver closed the connection without answering"))
        else:
            d.errback(ConnectionLostEarly("the connection was lost before the whole response"))


class _Factory(Factory):
    def __init__(self, pool: ConnectionPool, key: tuple):
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr):
        return _Connection(self.pool, self.key)


class ConnectionPool:
    """Idle connections per receiver (C{key}: scheme, address, port, host), reused in turn."""

    def __init__(self, max_idle: int = 16):
        self.max_idle = max_idle
        self._idle_by_key: dict[tuple, list[_Connection]] = {}
        self._open: set[_Connection] = set()

    def _idle(self, conn: _Connection) -> None:
        idle = self._idle_by_key.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.transport.loseConnection()
            return
        idle.append(conn)

    def _gone(self, conn: _Connection) -> None:
        self._open.discard(conn)
        idle = self._idle_by_key.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def request(self, key: tuple, connect: Callable[[Factory], Deferred], data: bytes) -> Deferred:
        """
        Sends C{data} (a whole request) to the receiver C{key} on an idle
        connection, or a new one made by C{connect(factory)}; fires with the
        response's status. A reused connection that the receiver closed
        meanwhile (it answered nothing) is replaced once. Cancelling the
        result aborts the connection.
        """
        idle = self._idle_by_key.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and conn.transport.connected:
                d = conn.send(data)
                d.addErrback(self._closed_while_idle, conn, key, connect, data)
                return d
        return Deferred.fromCoroutine(self._fresh(key, connect, data))

    def _closed_while_idle(self, failure, conn: _Connection, key: tuple, connect, data: bytes):
        if failure.check(ConnectionLostEarly) and not conn.received_any:
            return Deferred.fromCoroutine(self._fresh(key, connect, data))  # once more, on a new connection
        return failure

    async def _fresh(self, key: tuple, connect: Callable[[Factory], Deferred], data: bytes) -> int:
        conn = await connect(_Factory(self, key))
        self._open.add(conn)
        return await conn.send(data)

    def close(self) -> None:
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.abortConnection()
        self._idle_by_key.clear()
        self._open.clear()

