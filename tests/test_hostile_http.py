"""
Hostile or clumsy clients at the HTTP layer, over a real socket: long
request lines and headers, what twisted.web cannot parse, bodies over the
limit. Each gets a JSON answer in Kinto's format, and the connection closes.
"""

from __future__ import annotations

import json
import socket

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel

from jsonsync.channel import LimitedChannel
from jsonsync.config import ConfigurationError, SettingsSchema, load
from jsonsync.service import make_site
from jsonsync.testclient import StubClient, basic, build_app

RECS = "/v1/buckets/b/collections/c/records"
AUTH = basic("alice")
# How long a test waits for an answer before calling it "no answer at all".
PATIENCE = 15


class RawClient(Protocol):
    """A TCP client that sends bytes as given and keeps every byte it is sent."""

    def __init__(self):
        self.data = b""
        self.closed: defer.Deferred = defer.Deferred()
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def dataReceived(self, data):
        self.data += data
        self._wake()

    def connectionLost(self, reason):
        for _, d in self._waiting:
            if not d.called:
                d.callback(None)
        self._waiting = []
        self.closed.callback(self.data)

    def _wake(self):
        count = len(parse_responses(self.data))
        ready = [d for n, d in self._waiting if count >= n]
        self._waiting = [(n, d) for n, d in self._waiting if count < n]
        for d in ready:
            if not d.called:
                d.callback(None)

    async def responses(self, count: int) -> list[tuple[int, dict, bytes]]:
        """The first C{count} complete responses (fewer if the server closed first)."""
        if len(parse_responses(self.data)) < count and not self.closed.called:
            d: defer.Deferred = defer.Deferred()
            self._waiting.append((count, d))
            await d.addTimeout(PATIENCE, reactor)
        return parse_responses(self.data)

    async def until_closed(self) -> bytes:
        """Everything received, once the server has closed the connection."""
        if not self.closed.called:
            await _bounded(self.closed)
        return self.data


async def _bounded(d: defer.Deferred):
    # A copy, so that a timeout does not cancel the shared Deferred.
    copy: defer.Deferred = defer.Deferred()
    d.addBoth(lambda r: (copy.called or copy.callback(r), r)[1])
    return await copy.addTimeout(PATIENCE, reactor)


def parse_responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    """The complete responses in C{data}: C{(status, lower-cased headers, body)}."""
    out = []
    while b"\r\n\r\n" in data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200:  # 100 Continue: no body
            out.append((status, headers, b""))
            data = rest
            continue
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            break
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


class _Served(TestCase):
    settings: dict = {}

    async def setUp(self):
        self.app = await build_app(self.settings)
        self.site = make_site(self.app, self.app.settings)
        self.site.access_log = False
        self.channels: list = []
        self.ended: list[defer.Deferred] = []
        build = self.site.buildProtocol

        def watched(addr):
            # Each server side, and a Deferred fired when it ends.
            channel = build(addr)
            self.channels.append(channel)
            self.ended.append(defer.Deferred())
            lost, ended = channel.connectionLost, self.ended[-1]
            channel.connectionLost = lambda reason: (lost(reason), ended.callback(None))
            return channel

        self.site.buildProtocol = watched
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self._all_ended)
        self.addCleanup(self.port.stopListening)

    async def _all_ended(self):
        # After the clients' cleanups: every server side has ended too.
        for ended in self.ended:
            await _bounded(ended)

    async def connect(self) -> RawClient:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        client = await connectProtocol(endpoint, RawClient())
        self.addCleanup(client.transport.abortConnection)
        return client

    async def send(self, payload: bytes) -> RawClient:
        client = await self.connect()
        client.transport.write(payload)
        return client

    async def refused(self, payload: bytes, status: int, errno: int) -> dict:
        """Send C{payload}: one JSON error with C{status}, then the server closes."""
        client = await self.send(payload)
        data = await client.until_closed()
        answers = parse_responses(data)
        self.assertEqual(len(answers), 1, data[:300])
        code, headers, body = answers[0]
        self.assertEqual(code, status, body)
        self.assertEqual(headers.get("content-type"), "application/json")
        self.assertEqual(headers.get("connection"), "close")
        error = json.loads(body)
        self.assertEqual((error["code"], error["errno"]), (status, errno), error)
        self.assertIsInstance(error["error"], str)
        self.assertIsInstance(error["message"], str)
        return error


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: localhost", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RequestHeadTests(_Served):
    """Point 6: a request line or a header over 16 KiB, too many headers."""

    async def test_in_id_with_ten_thousand_ids(self):
        alice = StubClient(self.app).as_user("alice")
        await alice.put("/v1/buckets/b")
        await alice.put("/v1/buckets/b/collections/c")
        wanted = [f"{i:036d}" for i in (7, 4242, 9999)]
        for rid in wanted + [f"{10000:036d}"]:
            r = await alice.put(f"{RECS}/{rid}", {"data": {"n": 1}})
            self.assertEqual(r.status, 201, r)
        ids = ",".join(f"{i:036d}" for i in range(10000))
        client = await self.send(get(f"{RECS}?in_id={ids}", f"Authorization: {AUTH}"))
        [(status, _, body)] = await client.responses(1)
        self.assertEqual(status, 200, body[:300])
        self.assertEqual(sorted(o["id"] for o in json.loads(body)["data"]), wanted)

    async def test_long_basic_authorization_header(self):
        password = "p" * 20000
        client = await self.send(get("/v1/", f"Authorization: {basic('alice', password)}"))
        [(status, _, body)] = await client.responses(1)
        self.assertEqual(status, 200, body[:300])
        self.assertIn("user", json.loads(body))

    async def test_request_line_over_the_limit_gets_414(self):
        error = await self.refused(get("/v1/?q=" + "a" * (600 * 1024)), 414, 113)
        self.assertIn("524288", error["message"])

    async def test_request_line_without_end_gets_414(self):
        # No CRLF at all: twisted.web's line limit (LineReceiver.MAX_LENGTH).
        await self.refused(b"GET /v1/?q=" + b"a" * (700 * 1024), 414, 113)

    async def test_one_huge_header_gets_431(self):
        await self.refused(get("/v1/", "X-Big: " + "a" * 100_000), 431, 113)

    async def test_header_section_over_the_limit_gets_431(self):
        headers = [f"X-H{i}: " + "a" * 9000 for i in range(8)]  # each fine, 72 KB together
        await self.refused(get("/v1/", *headers), 431, 113)

    async def test_too_many_headers_get_431(self):
        await self.refused(get("/v1/", *(f"X-H{i}: v" for i in range(501))), 431, 113)

    async def test_long_but_allowed_head_keeps_the_connection(self):
        client = await self.send(get("/v1/?q=" + "a" * 100_000, "X-Big: " + "a" * 40_000) + get("/v1/"))
        answers = await client.responses(2)
        self.assertEqual([a[0] for a in answers], [200, 200])


class HeadDeadlineTests(_Served):
    """A head sent a byte at a time never holds its memory longer than the head deadline."""

    async def test_slow_head_gets_408(self):
        self.site.head_seconds = 0.3
        client = await self.send(b"GET /v1/?q=" + b"a" * 1000)  # and nothing more: no line end
        data = await client.until_closed()
        [(status, headers, body)] = parse_responses(data)
        self.assertEqual(status, 408, body)
        self.assertEqual(headers.get("content-type"), "application/json")
        self.assertEqual(json.loads(body)["code"], 408)

    async def test_deadline_restarts_for_each_request(self):
        self.site.head_seconds = 0.5
        client = await self.send(get("/v1/"))
        [(status, _, _)] = await client.responses(1)
        self.assertEqual(status, 200)
        await deferLater(reactor, 0.7, lambda: None)  # longer than a deadline, between requests
        client.transport.write(get("/v1/"))
        answers = await client.responses(2)
        self.assertEqual([a[0] for a in answers], [200, 200])


class LimitSettingsTests(_Served):
    settings = {"max_request_line_bytes": "1000", "max_header_bytes": "2000", "max_header_count": "5"}

    async def test_request_line_limit_is_exact(self):
        def line(size):
            start = "GET /v1/?q="
            return f"{start}{'a' * (size - len(start) - len(' HTTP/1.1'))} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

        client = await self.send(line(1000))
        self.assertEqual((await client.responses(1))[0][0], 200)
        await self.refused(line(1001), 414, 113)

    async def test_header_bytes_limit_is_exact(self):
        # Header lines count without their CRLF; "Host: localhost" is 15 bytes.
        client = await self.send(get("/v1/", "X-A: " + "a" * (2000 - 15 - 5)))
        self.assertEqual((await client.responses(1))[0][0], 200)
        await self.refused(get("/v1/", "X-A: " + "a" * (2000 - 15 - 4)), 431, 113)

    async def test_header_count_limit_is_exact(self):
        client = await self.send(get("/v1/", *(f"X-H{i}: v" for i in range(4))))  # + Host = 5
        self.assertEqual((await client.responses(1))[0][0], 200)
        await self.refused(get("/v1/", *(f"X-H{i}: v" for i in range(5))), 431, 113)

    def test_limits_must_be_positive(self):
        for name in ("max_request_line_bytes", "max_header_bytes", "max_header_count"):
            with self.assertRaises(ConfigurationError) as caught:
                load(SettingsSchema(), cli={name: "0"})
            self.assertIn(name, str(caught.exception))


class ParseErrorTests(_Served):
    """Point 6: what twisted.web cannot parse got an empty plain-text 400."""

    async def check(self, payload: bytes, location: str, name: str | None = None):
        error = await self.refused(payload, 400, 107)
        self.assertEqual(error["error"], "Invalid parameters")
        [detail] = error["details"]
        self.assertEqual(detail["location"], location, error)
        self.assertEqual(detail["name"], name, error)

    async def test_control_characters_of_a_bad_header_name_are_escaped(self):
        # The name comes back in the answer and goes to the log: never raw.
        await self.check(b"GET /v1/ HTTP/1.1\r\nHost: x\r\nX\x1b[31mred: 1\r\n\r\n", "header", "X\\x1b[31mred")

    async def test_malformed_request_line(self):
        await self.check(b"GARBAGE\r\n\r\n", "path")
        await self.check(b"GET /v1/ HTTP/2.0\r\n\r\n", "path")
        await self.check(b"GET  /v1/ HTTP/1.1\r\nHost: x\r\n\r\n", "path")
        await self.check(b"\r\n\r\n", "path")  # a second empty line where a request belongs

    async def test_bad_header_line(self):
        await self.check(b"GET /v1/ HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", "header")
        await self.check(b"GET /v1/ HTTP/1.1\r\nBad Name: x\r\n\r\n", "header", "Bad Name")
        await self.check(b"GET /v1/ HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", "header", "X-A")

    async def test_bad_content_length(self):
        for value in (b"abc", b"-1", b"1, 1"):
            await self.check(b"PUT /v1/buckets/b HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\n",
                             "header", "Content-Length")

    async def test_body_length_given_twice(self):
        await self.check(b"PUT /v1/buckets/b HTTP/1.1\r\nContent-Length: 2\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n{}", "header", "Transfer-Encoding")
        await self.check(b"PUT /v1/buckets/b HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                         "header", "Transfer-Encoding")
        await self.check(b"PUT /v1/buckets/b HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
                         "header", "Content-Length")

    async def test_bad_chunked_encoding(self):
        await self.check(b"PUT /v1/buckets/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "body")
        await self.check(b"PUT /v1/buckets/b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX", "body")

    async def test_error_after_a_good_pipelined_request(self):
        client = await self.send(get("/v1/") + b"GARBAGE\r\n\r\n")
        data = await client.until_closed()
        answers = parse_responses(data)
        self.assertEqual([a[0] for a in answers], [200, 400])
        self.assertEqual(json.loads(answers[1][2])["errno"], 107)


class EarlyRefusalTests(_Served):
    """Point 7: a body over the limit is refused before it is read."""

    settings = {"max_request_body_bytes": "1000"}

    def put(self, *headers: str) -> bytes:
        lines = ["PUT /v1/buckets/b HTTP/1.1", "Host: x", f"Authorization: {AUTH}",
                 "Content-Type: application/json", *headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def test_declared_length_over_the_limit(self):
        # Only the head is sent: the answer cannot wait for a gigabyte.
        await self.refused(self.put(f"Content-Length: {1 << 30}"), 413, 113)

    async def test_expect_continue_over_the_limit_gets_no_100(self):
        client = await self.send(self.put(f"Content-Length: {1 << 30}", "Expect: 100-continue"))
        data = await client.until_closed()
        self.assertNotIn(b"100 Continue", data)
        self.assertEqual([a[0] for a in parse_responses(data)], [413])

    async def test_expect_continue_within_the_limit_still_continues(self):
        body = b'{"data": {"x": 1}}'
        client = await self.send(self.put(f"Content-Length: {len(body)}", "Expect: 100-continue"))
        [(status, _, _)] = await client.responses(1)
        self.assertEqual(status, 100)
        client.transport.write(body)
        answers = await client.responses(2)
        self.assertEqual(answers[1][0], 201, answers[1][2])

    async def test_chunked_body_refused_when_it_crosses_the_limit(self):
        client = await self.send(self.put("Transfer-Encoding: chunked"))
        chunk = b"%x\r\n%s\r\n" % (600, b"a" * 600)
        client.transport.write(chunk)
        client.transport.write(chunk)  # 1200 bytes: over; the body has no end yet
        data = await client.until_closed()
        [(status, _, body)] = parse_responses(data)
        self.assertEqual(status, 413, body)
        self.assertEqual(json.loads(body)["errno"], 113)
        self.assertEqual((await StubClient(self.app).as_user("alice").get("/v1/buckets/b")).status, 403)

    async def test_client_sending_the_whole_body_reads_the_413(self):
        # Most clients (http.client, requests) write their whole body before
        # they read: they must see the 413, not a reset from a socket closed
        # on unread input.
        payload = self.put("Content-Length: 7500000") + b"a" * 7_500_000
        port = self.port.getHost().port

        def blocking_client():
            with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as sock:
                sock.sendall(payload)
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data

        data = await deferToThread(blocking_client)
        self.assertEqual([a[0] for a in parse_responses(data)], [413])

    async def test_the_rest_of_a_huge_body_is_not_read(self):
        client = await self.send(self.put(f"Content-Length: {1 << 30}"))
        sent = 0
        while not client.closed.called and sent < 64 << 20:
            client.transport.write(b"a" * (1 << 20))
            sent += 1 << 20
            await deferLater(reactor, 0, lambda: None)
        await client.until_closed()
        self.assertEqual([a[0] for a in parse_responses(client.data)], [413])
        [server] = self.channels
        self.assertLessEqual(server._drained, LimitedChannel.linger_bytes + (1 << 20))

    async def test_body_within_the_limit_still_served(self):
        body = b'{"data": {"x": "' + b"a" * 900 + b'"}}'  # 919 bytes
        client = await self.send(self.put(f"Content-Length: {len(body)}") + body)
        [(status, _, content)] = await client.responses(1)
        self.assertEqual(status, 201, content)


class ConnectionTests(_Served):
    """What holds today must keep holding: keep-alive, pipelining, slow clients."""

    async def test_keep_alive_and_pipelining(self):
        client = await self.send(get("/v1/") + get("/v1/__heartbeat__") + get("/v1/nowhere"))
        answers = await client.responses(3)
        self.assertEqual([a[0] for a in answers], [200, 200, 404])
        client.transport.write(get("/v1/"))
        answers = await client.responses(4)
        self.assertEqual(answers[3][0], 200)
        self.assertFalse(client.closed.called)

    async def test_head_split_anywhere(self):
        # Lines whose CRLF arrives in two reads, and a request line in pieces.
        pieces = [b"GET /v1/?q=", b"a" * 1000, b" HTTP/1.1\r", b"\nHost: x\r", b"\n", b"X-A: b\r\n\r", b"\n"]
        client = await self.connect()
        for piece in pieces:
            client.transport.write(piece)
            await deferLater(reactor, 0.02, lambda: None)  # separate reads on the server
        [(status, _, body)] = await client.responses(1)
        self.assertEqual(status, 200, body)

    async def test_slow_long_request_line(self):
        # A long line sent in many small pieces, while another client is served.
        client = await self.connect()
        path = "/v1/?q=" + "a" * 200_000
        head = get(path)
        for i in range(0, len(head), 20_000):
            client.transport.write(head[i:i + 20_000])
            other = await self.send(get("/v1/__heartbeat__"))
            self.assertEqual((await other.responses(1))[0][0], 200)
        [(status, _, _)] = await client.responses(1)
        self.assertEqual(status, 200)


class TwistedBehaviourTests(SynchronousTestCase):
    """
    What LimitedChannel relies on in twisted.web's HTTPChannel. If one of
    these fails after a Twisted upgrade, LimitedChannel needs another look.
    """

    def bad_request_calls(self, payload: bytes) -> int:
        channel = HTTPChannel()
        calls = []
        original = channel._respondToBadRequestAndDisconnect
        channel._respondToBadRequestAndDisconnect = lambda: (calls.append(1), original())
        channel.makeConnection(StringTransport())
        channel.dataReceived(payload)
        channel.connectionLost(Failure(ConnectionDone()))
        return len(calls)

    def test_every_parse_error_goes_through_one_method(self):
        for payload in (
            b"GARBAGE\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(HTTPChannel.maxHeaders + 1)) + b"\r\n",
        ):
            self.assertTrue(self.bad_request_calls(payload), payload[:60])

    def test_limits_are_attributes_and_a_long_line_calls_line_length_exceeded(self):
        self.assertIsInstance(HTTPChannel.totalHeadersSize, int)
        self.assertIsInstance(HTTPChannel.maxHeaders, int)
        self.assertIsInstance(HTTPChannel.MAX_LENGTH, int)
        channel = HTTPChannel()
        exceeded = []
        channel.lineLengthExceeded = exceeded.append
        channel.makeConnection(StringTransport())
        self.assertTrue(channel.line_mode)  # LimitedChannel holds back line-mode input
        channel.dataReceived(b"G" * (HTTPChannel.MAX_LENGTH + 10))
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(exceeded)
        channel.setRawMode()
        self.assertFalse(channel.line_mode)

    def test_length_known_before_all_headers_received_and_before_100_continue(self):
        channel = HTTPChannel()
        seen = []
        original = channel.allHeadersReceived

        def all_headers():
            seen.append((channel.length, channel.transport.value()))
            original()

        channel.allHeadersReceived = all_headers
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"PUT / HTTP/1.1\r\nContent-Length: 99\r\nExpect: 100-continue\r\n\r\n")
        self.assertEqual(seen, [(99, b"")])
        self.assertIn(b"100 Continue", transport.value())
        channel.connectionLost(Failure(ConnectionDone()))
