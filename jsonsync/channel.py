"""
The connection side of the HTTP server: a twisted.web request that stops
buffering a body past its limit, and a channel that bounds the request
head (line, header count and size, time) and answers what it refuses with
Kinto's JSON error, before any view runs.
"""

from __future__ import annotations

import fnmatch
from io import BytesIO
from typing import Any, cast

from twisted.internet.interfaces import IConsumer, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from jsonsync import jsonutil
from jsonsync.errors import (
    HeaderFieldsTooLarge,
    InvalidParameters,
    JsonSyncError,
    RequestHeadTimeout,
    RequestLineTooLong,
    RequestTooLarge,
)
from jsonsync.http import error_body

_log = Logger()

# --- the network request ------------------------------------------------------

class LimitedRequest(Request):
    """
    A twisted.web request that stops buffering a body larger than the
    site's C{max_body} (the view then answers 413), so a hostile upload
    cannot fill the memory.
    """

    too_large = False
    _received = 0
    # What the application keeps on the network request (jsonsync.app), read
    # by the request summary (jsonsync.logs) and the metrics once it is done:
    jsonsync: Any = None  # the ApiRequest made of it
    jsonsync_path: str | None = None  # the path, percent-decoded once
    jsonsync_started: float | None = None  # time.monotonic() at its start
    jsonsync_request_id: str | None = None
    jsonsync_client: str | None = None  # the client's address (trusted proxies)
    jsonsync_forwarded: tuple = (None, None)  # scheme and host a trusted proxy sent

    def __init__(self, channel, *args, **kwargs):
        # No form parsing: the API takes JSON only, and twisted.web parsed a
        # POST's Content-Type through email.headerregistry, which builds two
        # classes per call (a quarter of a memory-backend create's garbage),
        # and answered a malformed multipart body with a plain-text 400.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        if channel is not None and not getattr(channel, "_jsonsync_memo", False):
            # A connection's local address and TLS state never change: ask
            # the socket once per connection instead of on every request
            # (twisted.web and Klein each ask several times).
            host, secure = channel.getHost(), channel.isSecure()
            channel.getHost = lambda: host
            channel.isSecure = lambda: secure
            channel._jsonsync_memo = True
        super().__init__(channel, *args, **kwargs)

    _limit_value: int | None = None

    def _limit(self) -> int:
        # Read while the body arrives, when only the channel knows the target.
        if self._limit_value is None:
            site = getattr(self.channel, "site", None)
            self._limit_value = body_limit(site, getattr(self.channel, "_path", b""))
        return self._limit_value

    def requestReceived(self, command, path, version):
        # The absolute form of the target (GET http://host/v1/ HTTP/1.1, what
        # a client talking through a proxy sends) must be accepted (RFC 9112,
        # 3.2.2): route on its path, and its authority wins over Host.
        if path[:8].lower().startswith((b"http://", b"https://")):
            rest = path.split(b"//", 1)[1].partition(b"#")[0]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
            authority, path = rest[:cut].rpartition(b"@")[2], rest[cut:]  # no user:password@
            if not path.startswith(b"/"):
                path = b"/" + path
            if authority:
                self.requestHeaders.setRawHeaders(b"host", [authority])
        super().requestReceived(command, path, version)

    def gotLength(self, length):
        # A LimitedChannel has already answered 413 for a declared length over
        # the limit; this keeps the limit on any other channel.
        if length is not None and length > self._limit():
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self._limit():
            self.too_large = True
            self.content = BytesIO()
            # A chunked body has no declared length: refuse it the moment it
            # crosses the limit instead of reading the rest.
            refuse = getattr(self.channel, "refuse", None)
            if refuse is not None:
                refuse(RequestTooLarge())
            return
        super().handleContentChunk(data)


def body_limit(site, target: bytes) -> int:
    """
    The largest body the site takes for a request target: C{site.max_body},
    or more for a path matching one of C{site.body_limits} (C{(compiled
    bytes pattern, limit)} pairs: the attachment plugin's uploads).
    """
    limit = getattr(site, "max_body", 1 << 20)
    limits = getattr(site, "body_limits", ())
    if limits and target:
        path = target.partition(b"?")[0]
        if path[:8].lower().startswith((b"http://", b"https://")):
            rest = path.split(b"//", 1)[1]
            path = rest[rest.find(b"/"):] if b"/" in rest else b"/"
        for pattern, larger in limits:
            if pattern.match(path):
                return max(limit, larger)
    return limit


def read_body(request) -> bytes:
    """
    The body of a L{LimitedRequest}. Its limit was applied while the body
    arrived (L{LimitedRequest.handleContentChunk}, and the channel refused a
    declared length over it): here only the verdict is read.
    """
    if getattr(request, "too_large", False):
        raise RequestTooLarge()
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    return content.read()


# --- the connection -----------------------------------------------------------

# What twisted.web's parser was doing when it gave up, for the 400's details.
_REQUEST_LINE, _HEADER, _BODY = "request line", "header", "body"
_CSP = b"default-src 'none'; frame-ancestors 'none'; base-uri 'none';"
_EXPOSED = b"Backoff, Retry-After, Alert, Content-Length, Content-Type"


class LimitedChannel(HTTPChannel):
    """
    An HTTP/1.1 connection with documented limits on the request head, that
    answers every request it refuses with a JSON error in Kinto's format
    and then closes.

    twisted.web drops a connection without a word when a line is longer than
    16 KiB (a records list with C{?in_id=} and a few hundred ids), and
    answers other parse errors with an empty plain-text 400. This channel
    takes request lines up to C{max_request_line} bytes and header sections
    up to C{max_header_bytes} bytes in C{max_header_count} lines, answers 414
    or 431 beyond them, 413 as soon as a body is known to be over
    C{max_body} (a declared C{Content-Length}, before any C{100 Continue},
    or a chunked body when it crosses the limit) and 400 for what does not
    parse.

    The limits are read from the site (C{Site.max_request_line} and the
    others) when the connection opens; the class attributes are defaults.
    """

    max_request_line = 512 * 1024
    max_header_bytes = 64 * 1024
    max_header_count = 100
    max_body = 1 << 20
    cors_origins: tuple[str, ...] = ("*",)
    # After a refusal the connection is half-closed and what the client still
    # sends is read and thrown away, for at most this long and this much: a
    # socket closed with unread input sends a reset, which can destroy the
    # answer before the client reads it (a client still writing its body
    # would see "connection reset" instead of the 413).
    linger_seconds = 5
    linger_bytes = 8 << 20
    # The whole head must arrive within this many seconds of its first byte:
    # the idle timeout restarts with every byte, so without it a client
    # sending a byte a minute held up to a head's worth of memory forever.
    head_seconds = 30
    _head_timer = None

    refused: JsonSyncError | None = None
    _in_head = False
    _head_bytes = 0
    _head_count = 0
    _stage = _REQUEST_LINE
    _header_line = b""
    _drained = 0
    # Line-mode input held back until it can end a line (see dataReceived).
    _held: list[bytes] | None = None
    _held_size = 0
    _tail = b""

    def connectionMade(self):
        site = getattr(self, "site", None)
        for name in ("max_request_line", "max_header_bytes", "max_header_count", "max_body",
                     "cors_origins", "head_seconds"):
            value = getattr(site, name, None)
            if value is not None:
                setattr(self, name, value)
        # twisted.web's own limits, set so that they never fire before ours:
        # the longest line LineReceiver keeps, the request line and header
        # lines together, the header count.
        self.MAX_LENGTH = max(self.max_request_line, self.max_header_bytes)
        self.totalHeadersSize = self.max_request_line + self.max_header_bytes
        self.maxHeaders = self.max_header_count
        super().connectionMade()

    # -- input -------------------------------------------------------------------
    def dataReceived(self, data):
        if self.refused is not None:
            return self._drain(len(data))
        if self.line_mode:
            if self._head_timer is None:
                self._head_timer = self.callLater(self.head_seconds, self._head_too_slow)
            # LineReceiver copies and searches its whole buffer on every read:
            # fed a long line a few bytes at a time, that grows with the square
            # of the line. Hand it only input that can end a line, or a
            # sizeable piece, so each byte is searched a bounded number of times.
            ends_line = b"\r\n" in data or (data[:1] == b"\n" and self._tail == b"\r")
            self._tail = data[-1:]
            if not ends_line and self._held_size + len(data) < _HOLD:
                if self._held is None:
                    self._held = []
                self._held.append(data)
                self._held_size += len(data)
                self.resetTimeout()
                return None
            if self._held:
                self._held.append(data)
                data = b"".join(self._held)
                self._held = None
                self._held_size = 0
        return super().dataReceived(data)

    def lineReceived(self, line):
        # Called for every line of every head: kept to one call, without
        # super() (headerReceived is not overridden for the same reason).
        if self.refused is not None:
            return None
        if self._in_head:
            if line:
                self._head_bytes += len(line)
                if self._head_bytes > self.max_header_bytes:
                    return self._too_large_head()
                if line[0] not in b" \t":  # not the continuation of a folded header
                    self._head_count += 1
                    if self._head_count > self.max_header_count:
                        return self._too_large_head()
                    # twisted.web reads a header when the next line comes:
                    # while it reads this line, the header it checks is the
                    # one before (for the 400's details).
                    self._feed(line)
                    self._header_line = line
                    return None
        else:
            self._stage = _REQUEST_LINE
            if line:
                if len(line) > self.max_request_line:
                    return self._too_long_line()
                self._in_head = True
                self._head_bytes = 0
                self._head_count = 0
                self._feed(line)
                self._stage = _HEADER
                return None
        return self._feed(line)

    def _feed(self, line):
        """
        twisted.web's own line handling. Whatever it fails on that it does
        not answer itself (a Content-Length of thousands of digits makes
        its int() raise) is answered here, in JSON, instead of a dropped
        connection and an unhandled error in the log.
        """
        try:
            return _http_line_received(self, line)
        except Exception:
            _log.debug("unparsable request head", log_failure=Failure())
            self.refuse(InvalidParameters("header", None, "The request head could not be parsed"))
            return None

    def lineLengthExceeded(self, line):
        # LineReceiver's limit (MAX_LENGTH): a line with no end in sight.
        if self._in_head:
            self._too_large_head()
        else:
            self._too_long_line()

    def _head_too_slow(self):
        self._head_timer = None
        if self.requests:
            # A request is being answered (what arrived is a pipelined
            # head, held): its head has all the time that answer takes.
            self._head_timer = self.callLater(self.head_seconds, self._head_too_slow)
            return
        self.refuse(RequestHeadTimeout())

    def _stop_head_timer(self):
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_head_timer()
        super().connectionLost(reason)

    def allHeadersReceived(self):
        self._stop_head_timer()
        self._in_head = False
        self._stage = _BODY
        site = getattr(self, "site", None)
        limit = self.max_body if site is None else body_limit(site, self._path)
        if self.length is not None and self.length > limit:
            # Before twisted.web answers "Expect: 100-continue": the client
            # must not be invited to send a body that will be refused.
            self.refuse(RequestTooLarge())
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data):
        if self.refused is not None:
            return self._drain(len(data))
        super().rawDataReceived(data)

    def allContentReceived(self):
        # A chunked body refused in the middle of a read may still end in it.
        if self.refused is None:
            super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self):
        # twisted.web's one exit for what it cannot parse (request line,
        # header line, Content-Length, Transfer-Encoding, chunked body, too
        # many headers); it wrote an empty plain-text 400.
        where: tuple[str, str | None, str]
        if self._stage is _REQUEST_LINE:
            where = ("path", None, "malformed request line: expected METHOD target HTTP/1.x")
        elif self._stage is _HEADER:
            where = _describe_header(self._header_line)
        else:
            where = ("body", None, "malformed chunked transfer encoding")
        self.refuse(InvalidParameters(*where))

    def _too_long_line(self):
        self.refuse(RequestLineTooLong(
            f"Request line too long: the limit is {self.max_request_line} bytes."))

    def _too_large_head(self):
        self.refuse(HeaderFieldsTooLarge(
            f"Request header fields too large: the limit is {self.max_header_bytes} bytes"
            f" in {self.max_header_count} fields."))

    # -- the answer ----------------------------------------------------------------
    def refuse(self, exc: JsonSyncError):
        """
        Answer the request being read with C{exc} as a JSON error, then close
        the connection without reading the rest of the request.
        """
        transport = self.transport
        if self.refused is not None or transport is None:
            return
        self.refused = exc
        self._held = None
        status, body = error_body(exc)
        payload = jsonutil.dumps(body)
        head = [
            b"HTTP/1.1 %d %s" % (status, body["error"].encode("latin-1")),
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(payload),
            b"X-Content-Type-Options: nosniff",
            b"Content-Security-Policy: " + _CSP,
            b"Connection: close",
        ]
        allow = self._allowed_origin()
        if allow:
            head.append(b"Access-Control-Allow-Origin: " + allow)
            head.append(b"Access-Control-Expose-Headers: " + _EXPOSED)
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + payload)
        _log.info(
            "refused a request from {peer}: {status} {message}",
            peer=str(transport.getPeer()), status=status, message=exc.message,
        )
        # Stop reading into a request, stop sending, and let the client read
        # the answer (see linger_seconds). The channel registered itself as
        # the transport's producer (HTTPChannel.connectionMade): a transport
        # a channel runs on is a consumer as well.
        cast(IConsumer, transport).unregisterProducer()
        self.setTimeout(self.linger_seconds)
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            transport.loseConnection()
        else:
            half_close()

    def _allowed_origin(self) -> bytes | None:
        """What Access-Control-Allow-Origin the app would send, so a browser shows the error."""
        origins = self.cors_origins
        if "*" in origins:
            return b"*"
        sent = self.requests[-1].requestHeaders.getRawHeaders(b"origin") if self.requests else None
        if sent:
            origin = sent[-1].decode("latin-1")
            if any(fnmatch.fnmatchcase(origin, pattern) for pattern in origins):
                return sent[-1]
        return None

    def _drain(self, size: int):
        self._drained += size
        if self._drained > self.linger_bytes:
            self._abort()

    def timeoutConnection(self):
        if self.refused is not None:
            # The linger is over: whatever the client still sends is refused.
            self._abort()
        else:
            super().timeoutConnection()

    def _abort(self) -> None:
        # Called while connected (reading, or the timeout that
        # connectionLost cancels), over TCP or TLS: both can abort.
        cast(ITCPTransport, self.transport).abortConnection()


# LimitedChannel hands line-mode input to LineReceiver at least this often.
_HOLD = 64 * 1024
_http_line_received = HTTPChannel.lineReceived


def _describe_header(line: bytes) -> tuple[str, str | None, str]:
    name, colon, _ = line.partition(b":")
    if not colon:
        return ("header", None, "malformed header line: no colon")
    # The name is the client's bytes: control characters are escaped, so
    # that they reach neither the answer nor a text log as such.
    text = name[:100].decode("latin-1")
    if not text.isprintable():
        text = repr(text)[1:-1]
    low = text.lower()
    if low == "content-length":
        return ("header", "Content-Length", "Content-Length must be one non-negative integer")
    if low == "transfer-encoding":
        return ("header", "Transfer-Encoding",
                "Transfer-Encoding must be chunked, and the body length given once")
    return ("header", text, "invalid header name or value")
