"""
The webhook deliveries' HTTP client (jsonsync/plugins/webhook_http.py)
against a raw TCP server that answers scripted bytes: every way an HTTP/1.x
response can end, connections reused or not, and answers that are not HTTP.
"""

from __future__ import annotations

import collections

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from jsonsync.plugins.webhook_http import (
    ConnectionLostEarly,
    ConnectionPool,
    NotSent,
    ResponseError,
)

REQUEST = b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


class Scripted(Protocol):
    """Answers each complete request with the next scripted answer (bytes, or None: close at once)."""

    def connectionMade(self):
        self.factory.connections += 1
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while REQUEST in self.buffer:
            self.buffer = self.buffer.replace(REQUEST, b"", 1)
            self.factory.requests += 1
            answer = self.factory.answers.pop(0)
            if answer is None:
                self.transport.loseConnection()
                return
            for piece in answer if isinstance(answer, list) else [answer]:
                self.transport.write(piece)
            if self.factory.close_after:
                self.transport.loseConnection()


class Server(Factory):
    protocol = Scripted

    def __init__(self, answers, close_after=False):
        self.answers = list(answers)
        self.close_after = close_after
        self.connections = 0
        self.requests = 0


class ClientTests(TestCase):
    def serve(self, answers, close_after=False):
        server = Server(answers, close_after)
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = ConnectionPool()
        self.addCleanup(pool.close)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        key = ("http", "127.0.0.1", port.getHost().port, "x")

        async def send():
            return await pool.request(key, endpoint.connect, REQUEST)

        return server, send

    async def test_lengths_chunks_and_interim_answers_on_one_connection(self):
        server, send = self.serve([
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            # in pieces, chunked, with an extension and a trailer
            [b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nab", b"c\r\n0\r\nX-T: 1\r\n\r\n"],
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
        ])
        self.assertEqual([await send() for _ in range(4)], [200, 201, 204, 500])
        self.assertEqual(server.connections, 1)  # kept alive throughout

    async def test_a_body_that_ends_with_the_connection(self):
        server, send = self.serve([b"HTTP/1.0 202 Accepted\r\n\r\nsome body", b"HTTP/1.1 200 OK\r\n\r\n"],
                                  close_after=True)
        self.assertEqual(await send(), 202)
        self.assertEqual(await send(), 200)
        self.assertEqual(server.connections, 2)

    async def test_connection_close_is_honoured(self):
        server, send = self.serve([
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ])
        self.assertEqual(await send(), 200)
        self.assertEqual(await send(), 200)
        self.assertEqual(server.connections, 2)

    async def test_an_idle_connection_closed_by_the_receiver_is_replaced(self):
        server, send = self.serve([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", None,
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
        self.assertEqual(await send(), 200)
        # The receiver drops the kept-alive connection when the next request arrives, unanswered:
        # the request goes again on a new connection.
        self.assertEqual(await send(), 200)
        self.assertEqual(server.connections, 2)

    async def test_answers_that_are_not_http(self):
        for answer in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc Bad\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                       b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
            _, send = self.serve([answer])
            with self.assertRaises(ResponseError, msg=answer):
                await send()

    async def test_a_response_cut_short(self):
        _, send = self.serve([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], close_after=True)
        with self.assertRaises(ConnectionLostEarly):
            await send()


class Counting(Protocol):
    """Reads requests by Content-Length (slowly, at first: reading paused) and answers 204 to each."""

    def connectionMade(self):
        self.buffer = b""
        self.factory.protocols.append(self)
        if self.factory.pause:
            self.transport.pauseProducing()
            reactor.callLater(self.factory.pause, self.transport.resumeProducing)

    def dataReceived(self, data):
        bodies, self.buffer = split_requests(self.buffer + data)
        for body in bodies:
            self.factory.bodies.append(body)
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


class DirectWriteTests(TestCase):
    """Requests go straight to the socket when the transport holds nothing; the rest, in order."""

    def serve(self, pause=0.0):
        server = Factory.forProtocol(Counting)
        server.protocols, server.bodies, server.pause = [], [], pause
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = ConnectionPool()
        self.addCleanup(pool.close)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        return server, pool, ("http", "127.0.0.1", port.getHost().port, "x"), endpoint.connect

    @staticmethod
    def request(body: bytes) -> bytes:
        return b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def test_a_small_request_leaves_at_once(self):
        server, pool, key, connect = self.serve()
        self.assertEqual(await pool.request(key, connect, self.request(b"{}")), 204)
        # On the now idle connection, the next request is in the socket before request() returns.
        d = pool.request(key, connect, self.request(b'{"n":2}'))
        (conn,) = pool._open
        self.assertEqual((conn.transport._tempDataLen, conn.transport.dataBuffer), (0, b""))
        self.assertEqual(await d, 204)
        self.assertEqual(server.bodies, [b"{}", b'{"n":2}'])

    async def test_a_connection_dropped_for_unasked_bytes_takes_no_more_requests(self):
        # Bytes arrive on an idle connection (nobody asked for them): it is aborted, which
        # Twisted completes a reactor turn later. A request made before then must go on a new
        # connection, and reach the receiver once (sent on the dying one, then again after its
        # loss, it arrived twice).
        server, pool, key, connect = self.serve()
        self.assertEqual(await pool.request(key, connect, self.request(b"{}")), 204)
        (conn,) = pool._open
        conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(await pool.request(key, connect, self.request(b'{"n":2}')), 204)
        await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(server.bodies, [b"{}", b'{"n":2}'])
        self.assertEqual(len(server.protocols), 2)

    async def test_a_request_larger_than_the_socket_takes_arrives_whole(self):
        # The receiver does not read for a while: the socket takes part, the transport the rest.
        server, pool, key, connect = self.serve(pause=0.3)
        big = bytes(range(256)) * (16 * 1024 * 1024 // 256)
        self.assertEqual(await pool.request(key, connect, self.request(big)), 204)
        self.assertEqual(await pool.request(key, connect, self.request(b"after")), 204)
        self.assertEqual(len(server.protocols), 1)
        self.assertEqual([len(b) for b in server.bodies], [len(big), 5])
        self.assertEqual(server.bodies[0], big)

    async def test_tls_goes_through_the_tls_transport(self):
        # A TLS connection's transport wraps the TCP one: a request must be encrypted, never
        # written to the socket beneath it.
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        server = Factory.forProtocol(Counting)
        server.protocols, server.bodies, server.pause = [], [], 0.0
        port = reactor.listenSSL(0, server, PrivateCertificate.loadPEM(cert_pem + key_pem).options(),
                                 interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = ConnectionPool()
        self.addCleanup(pool.close)
        endpoint = wrapClientTLS(
            optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert_pem)),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        key_ = ("https", "127.0.0.1", port.getHost().port, "localhost")
        for body in (b"{}", b'{"n":2}'):
            self.assertEqual(await pool.request(key_, endpoint.connect, self.request(body)), 204)
        self.assertEqual(server.bodies, [b"{}", b'{"n":2}'])


class Pipelined(Protocol):
    """
    Reads requests by Content-Length and answers each with C{factory.answer(body)}: bytes; or
    C{None}: the connection is closed there (after what was written before), the requests read
    with it left unanswered; or C{b""}: no answer, and none to the requests after it on this
    connection; or C{(bytes,)}: those bytes, then likewise nothing more. Notes how many requests
    each read brought.
    """

    def connectionMade(self):
        self.buffer = b""
        self.stuck = False
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.buffer += data
        brought = 0
        while b"\r\n\r\n" in self.buffer and not self.stuck:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if len(rest) < length:
                break
            body, self.buffer = rest[:length], rest[length:]
            brought += 1
            self.factory.bodies.append(body)
            answer = self.factory.answer(body)
            if answer is None:
                self.transport.loseConnection()
                self.stuck = True
                break
            if isinstance(answer, tuple):
                self.transport.write(answer[0])
                answer = b""
            if not answer:
                self.stuck = True
                break
            self.transport.write(answer)
            if b"connection: close" in answer.lower():
                self.transport.loseConnection()
                break
        if brought:
            self.factory.reads.append(brought)


def ok(status: int = 200, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return version + b" %d OK\r\n%sContent-Length: 0\r\n\r\n" % (status, extra)


class PipeliningTests(TestCase):
    """Several requests on one connection at once, written together, answered in order."""

    def serve(self, answer, depth=8):
        server = Factory.forProtocol(Pipelined)
        server.connections, server.bodies, server.reads, server.answer = [], [], [], answer
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = ConnectionPool(depth=depth)
        self.addCleanup(pool.close)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        key = ("http", "127.0.0.1", port.getHost().port, "x")

        def send(bodies, depth=None):
            requests = [DirectWriteTests.request(b) for b in bodies]
            return defer.gatherResults(pool.request_many(key, endpoint.connect, requests, depth), consumeErrors=True)

        return server, pool, send

    @staticmethod
    def numbered(body: bytes) -> int:
        return int(body.split(b":")[1].rstrip(b"}"))

    async def test_requests_go_together_on_a_proven_connection_and_are_matched_in_order(self):
        server, pool, send = self.serve(lambda body: ok(200 + self.numbered(body)))
        self.assertEqual(await send([b'{"n":0}']), [200])  # proves the connection
        statuses = await send([b'{"n":%d}' % n for n in range(1, 7)])
        self.assertEqual(statuses, [201, 202, 203, 204, 205, 206])
        self.assertEqual(len(server.connections), 1)
        self.assertEqual(server.reads, [1, 6])  # the six in one write, read at once

    async def test_no_more_than_the_depth_on_one_connection(self):
        server, pool, send = self.serve(lambda body: ok(), depth=2)
        await send([b'{"n":0}'])
        self.assertEqual(await send([b'{"n":%d}' % n for n in range(1, 6)]), [200] * 5)
        # Two on the proven connection, each of the other three on a new one (the receiver
        # answered a new connection already: up to four may open at once now).
        self.assertEqual(len(server.connections), 4)
        self.assertEqual(sorted(server.reads), [1, 1, 1, 1, 2])

    async def test_depth_one_sends_one_at_a_time(self):
        server, pool, send = self.serve(lambda body: ok())
        await send([b'{"n":0}'])
        self.assertEqual(await send([b'{"n":%d}' % n for n in range(1, 4)], depth=1), [200] * 3)
        self.assertEqual(len(server.connections), 3)
        self.assertEqual(server.reads, [1, 1, 1, 1])

    async def test_a_connection_that_is_not_http11_is_not_pipelined(self):
        server, pool, send = self.serve(lambda body: ok(extra=b"Connection: keep-alive\r\n", version=b"HTTP/1.0"))
        await send([b'{"n":0}'])
        self.assertEqual(await send([b'{"n":%d}' % n for n in range(1, 4)]), [200] * 3)
        self.assertEqual(server.reads, [1, 1, 1, 1])
        self.assertEqual(len(server.connections), 3)  # the kept one took one, two new ones the rest

    async def test_requests_left_unanswered_by_a_closing_receiver_go_again(self):
        # It answers the second request of the pipeline with "Connection: close": the three behind
        # it were never answered there, and go again, each once, on new connections.
        def answer(body):
            return ok(extra=b"Connection: close\r\n") if self.numbered(body) == 2 else ok()

        server, pool, send = self.serve(answer)
        await send([b'{"n":0}'])
        self.assertEqual(await send([b'{"n":%d}' % n for n in range(1, 6)]), [200] * 5)
        answered = [self.numbered(b) for b in server.bodies]
        self.assertEqual(sorted(answered), [0, 1, 2, 3, 4, 5])  # the dropped ones were not read there

    async def test_a_receiver_dropping_the_connection_mid_pipeline(self):
        # The receiver closes the connection when the third request arrives (unanswered, and no
        # "Connection: close" before): it and those behind it go again on new connections; those
        # answered before are not sent twice.
        seen = collections.Counter()

        def answer(body):
            n = self.numbered(body)
            seen[n] += 1
            return None if n == 3 and seen[n] == 1 else ok(200 + n)

        server, pool, send = self.serve(answer)
        await send([b'{"n":0}'])
        self.assertEqual(await send([b'{"n":%d}' % n for n in range(1, 6)]), [201, 202, 203, 204, 205])
        self.assertEqual(seen, {0: 1, 1: 1, 2: 1, 3: 2, 4: 1, 5: 1})

    async def test_a_response_cut_short_in_a_pipeline_is_an_error_for_that_request_only(self):
        def answer(body):
            n = self.numbered(body)
            return (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",) if n == 2 else ok()

        server, pool, send = self.serve(answer)
        await send([b'{"n":0}'])
        key = ("http", "127.0.0.1", server.connections[0].transport.getHost().port, "x")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", key[2])
        ds = pool.request_many(key, endpoint.connect, [DirectWriteTests.request(b'{"n":%d}' % n) for n in (1, 2, 3)])
        self.assertEqual(await ds[0], 200)
        # Request 2's response is incomplete when request 3 is cancelled (the connection goes).
        await deferLater(reactor, 0.05, lambda: None)
        ds[2].cancel()
        with self.assertRaises(ConnectionLostEarly):
            await ds[1]
        with self.assertRaises(defer.CancelledError):
            await ds[2]

    async def test_cancelling_a_stuck_request_sends_those_behind_it_again(self):
        stuck = {"once": True}

        def answer(body):
            if self.numbered(body) == 2 and stuck["once"]:
                stuck["once"] = False
                return b""  # the receiver never answers it, nor anything after it on that connection
            return ok(200 + self.numbered(body))

        server, pool, send = self.serve(answer)
        await send([b'{"n":0}'])
        key = ("http", "127.0.0.1", server.connections[0].transport.getHost().port, "x")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", key[2])
        ds = pool.request_many(key, endpoint.connect, [DirectWriteTests.request(b'{"n":%d}' % n) for n in (1, 2, 3, 4)])
        self.assertEqual(await ds[0], 201)
        await deferLater(reactor, 0.05, lambda: None)
        ds[1].cancel()  # (the worker's timeout)
        with self.assertRaises(defer.CancelledError):
            await ds[1]
        self.assertEqual([await ds[2], await ds[3]], [203, 204])
        self.assertEqual(len(server.connections), 3)

    async def test_nothing_more_goes_on_a_connection_with_requests_on_their_way(self):
        # A receiver that drops what follows the request it read would otherwise answer a later
        # request in the place of a dropped one: the next requests take new connections.
        server, pool, send = self.serve(lambda body: ok() if self.numbered(body) != 2 else b"")
        await send([b'{"n":0}'])
        key = ("http", "127.0.0.1", server.connections[0].transport.getHost().port, "x")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", key[2])
        first = pool.request_many(key, endpoint.connect, [DirectWriteTests.request(b'{"n":%d}' % n) for n in (1, 2)])
        self.assertEqual(await first[0], 200)
        self.assertEqual(await send([b'{"n":3}']), [200])
        self.assertEqual(len(server.connections), 2)
        first[1].cancel()
        with self.assertRaises(defer.CancelledError):
            await first[1]

    async def test_a_cancelled_request_does_not_pass_its_status_to_the_next(self):
        # Its response head came (no length: the body would end with the connection), then it was
        # cancelled: the request behind it is not taken as answered with that status.
        def answer(body):
            return (b"HTTP/1.1 200 OK\r\n\r\npartial",) if self.numbered(body) == 1 else ok(201)

        server, pool, send = self.serve(answer)
        await send([b'{"n":0}'])
        key = ("http", "127.0.0.1", server.connections[0].transport.getHost().port, "x")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", key[2])
        ds = pool.request_many(key, endpoint.connect, [DirectWriteTests.request(b'{"n":%d}' % n) for n in (1, 2)])
        await deferLater(reactor, 0.05, lambda: None)
        ds[0].cancel()
        with self.assertRaises(defer.CancelledError):
            await ds[0]
        self.assertEqual(await ds[1], 201)  # sent again, and answered there


def split_requests(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The bodies of the whole requests at the start of C{buffer} (read by Content-Length), and the rest."""
    bodies = []
    while b"\r\n\r\n" in buffer:
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        if len(rest) < length:
            break
        bodies.append(rest[:length])
        buffer = rest[length:]
    return bodies, buffer


class Counted(Protocol):
    """A receiver that counts its open connections (C{factory.open}, the most at once C{factory.most})
    and hands each request's body to C{received}."""

    def connectionMade(self):
        self.buffer = b""
        self.factory.open += 1
        self.factory.most = max(self.factory.most, self.factory.open)

    def connectionLost(self, reason=None):
        self.factory.open -= 1

    def dataReceived(self, data):
        bodies, self.buffer = split_requests(self.buffer + data)
        for body in bodies:
            self.received(body)

    def received(self, body: bytes) -> None:
        raise NotImplementedError


class Held(Counted):
    """Keeps every request unanswered: the test answers them (C{factory.held})."""

    def received(self, body):
        self.factory.held.append((self.transport, body))


class PerReceiverTests(TestCase):
    """At most C{per_receiver} connections to one receiver; the requests beyond wait for one."""

    def serve(self, per_receiver, **kwargs):
        server = Factory.forProtocol(Held)
        server.open = server.most = 0
        server.held = []
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = ConnectionPool(depth=4, per_receiver=per_receiver, **kwargs)
        self.addCleanup(pool.close)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        key = ("http", "127.0.0.1", port.getHost().port, "x")

        def send(bodies):
            return pool.request_many(key, endpoint.connect, [DirectWriteTests.request(b) for b in bodies])

        return server, pool, send

    async def settle(self, server, count):
        """Waits until the receiver holds C{count} requests."""
        for _ in range(200):
            if len(server.held) >= count:
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail(f"the receiver holds {len(server.held)} requests, not {count}")

    @staticmethod
    def answer_all(server):
        held, server.held[:] = list(server.held), []
        for transport, _ in held:
            transport.write(ok())
        return [body for _, body in held]

    async def test_a_burst_opens_no_more_connections_than_allowed(self):
        server, pool, send = self.serve(per_receiver=3)
        ds = send([b'{"n":%d}' % n for n in range(10)])
        # New connections open two at a time (one more once one of them answered).
        await self.settle(server, 2)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(server.held), 2)
        answered = self.answer_first(server)
        # That connection, proven, takes four of those waiting (pipelined, written together),
        # and a third connection opens: 1 + 4 + 1 held, three left waiting for a connection.
        await self.settle(server, 6)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(server.held), 6)
        while len(answered) < 10:
            await self.settle(server, 1)
            answered += self.answer_all(server)
        self.assertEqual(await defer.gatherResults(ds), [200] * 10)
        self.assertEqual(sorted(answered), sorted(b'{"n":%d}' % n for n in range(10)))  # each once
        self.assertEqual(server.most, 3)

    @staticmethod
    def answer_first(server):
        transport, body = server.held.pop(0)
        transport.write(ok())
        return [body]

    async def test_a_receiver_that_closes_each_connection_still_gets_them_side_by_side(self):
        # Each answer says "Connection: close" (Python's http.server, HTTP/1.0): every request
        # takes a new connection, never answered before its only request is. The first two
        # answers open the way to all eight connections at once.
        server, pool, send = self.serve(per_receiver=8)
        ds = send([b'{"n":%d}' % n for n in range(20)])
        held_at_once = []
        answered = 0
        while answered < 20:
            await self.settle(server, 1)
            await deferLater(reactor, 0.05, lambda: None)
            held_at_once.append(len(server.held))
            for transport, _ in server.held:
                transport.write(ok(extra=b"Connection: close\r\n"))
                transport.loseConnection()
            answered += len(server.held)
            server.held[:] = []
        self.assertEqual(await defer.gatherResults(ds), [200] * 20)
        self.assertEqual(held_at_once[0], 2)
        self.assertEqual(max(held_at_once), 8, held_at_once)

    async def test_a_request_cancelled_while_it_waits_never_reaches_the_receiver(self):
        server, pool, send = self.serve(per_receiver=1)
        first, second = send([b'{"n":1}', b'{"n":2}'])
        await self.settle(server, 1)
        second.cancel()
        with self.assertRaises(NotSent):
            await second
        self.assertEqual(self.answer_all(server), [b'{"n":1}'])
        self.assertEqual(await first, 200)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(server.held, [])  # the cancelled one was not sent
        third = send([b'{"n":3}'])[0]  # and the pool goes on
        await self.settle(server, 1)
        self.assertEqual(self.answer_all(server), [b'{"n":3}'])
        self.assertEqual(await third, 200)

    async def test_answer_times_run_from_the_write_not_from_the_wait(self):
        now = [0.0]
        times = []
        server, pool, send = self.serve(per_receiver=1, clock=lambda: now[0], on_answer=lambda key, s: times.append(s))
        ds = send([b'{"n":1}', b'{"n":2}'])
        await self.settle(server, 1)
        now[0] = 5.0
        self.answer_all(server)  # the first took 5 s; the second waited those 5 s, then went
        self.assertEqual(await ds[0], 200)
        await self.settle(server, 1)
        now[0] = 6.0
        self.answer_all(server)
        self.assertEqual(await ds[1], 200)
        self.assertEqual(times, [5.0, 1.0])


class FailureReasonTests(TestCase):
    async def test_a_failed_tls_handshake_says_why(self):
        # An https webhook whose receiver speaks plain HTTP: the delivery log says what ended the
        # connection (the TLS error), not only that it ended unanswered.
        from twisted.internet import ssl
        from twisted.internet.endpoints import wrapClientTLS

        server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"] * 4)
        server.protocol = PlainTalker
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = ConnectionPool()
        self.addCleanup(pool.close)
        endpoint = wrapClientTLS(ssl.optionsForClientTLS("localhost"),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port))
        key = ("https", "127.0.0.1", port.getHost().port, "localhost")
        with self.assertRaises(ConnectionLostEarly) as caught:
            await pool.request(key, endpoint.connect, REQUEST)
        self.assertRegex(str(caught.exception).lower(), "ssl|tls|handshake|record|version|wrong")


class PlainTalker(Protocol):
    """Answers whatever comes with a plain HTTP response (to a TLS client: not a TLS record)."""

    def dataReceived(self, data):
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()


class SynchronousConnectTests(TestCase):
    def test_cancelling_after_a_connect_that_fired_at_once_aborts_the_connection(self):
        # A connect whose Deferred has already fired (a test double, a cached connection): the
        # request's exchange is what a cancel reaches, and its connection is aborted and freed.
        from twisted.internet.testing import StringTransport

        transports = []

        def connect(factory):
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            transport.connected = True
            transports.append(transport)
            protocol.makeConnection(transport)
            return defer.succeed(protocol)

        pool = ConnectionPool(per_receiver=1)
        key = ("http", "127.0.0.1", 1, "x")
        first = pool.request(key, connect, REQUEST)
        self.assertEqual(transports[0].value(), REQUEST)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        self.assertTrue(transports[0].disconnecting)
        # Its place is free: the next request gets a connection of its own.
        pool.request(key, connect, REQUEST)
        self.assertEqual(len(transports), 2)


class HoldingTests(TestCase):
    """Cancels under the pool's hold (the worker's sweep, its stop) start no connection for what they cancel next."""

    def setUp(self):
        from twisted.internet.testing import StringTransport

        self.transports = []

        def connect(factory):
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            transport.connected = True
            self.transports.append(transport)
            protocol.makeConnection(transport)
            return defer.succeed(protocol)

        self.connect = connect
        self.pool = ConnectionPool(per_receiver=1)
        self.key = ("http", "127.0.0.1", 1, "x")

    def test_a_place_freed_by_a_cancel_goes_to_no_request_cancelled_next(self):
        first, second = self.pool.request_many(self.key, self.connect, [REQUEST, REQUEST])
        self.assertEqual(len(self.transports), 1)  # the second waits for the only connection
        with self.pool.holding():
            first.cancel()
            second.cancel()
        self.failureResultOf(first, defer.CancelledError)
        # It never left: it failed as a request that waited, not as one on a connection.
        self.failureResultOf(second, NotSent)
        self.assertEqual(len(self.transports), 1)
        self.pool.request(self.key, self.connect, REQUEST)  # the place is free for what comes next
        self.assertEqual(len(self.transports), 2)

    def test_the_places_freed_are_filled_when_the_hold_ends(self):
        first, second, third = self.pool.request_many(self.key, self.connect, [REQUEST] * 3)
        with self.pool.holding():
            first.cancel()
            self.assertEqual(len(self.transports), 1)
        self.failureResultOf(first, defer.CancelledError)
        self.assertEqual(len(self.transports), 2)  # the second goes out, the third waits
        self.assertEqual(self.transports[1].value(), REQUEST)
        self.assertNoResult(second)
        self.assertNoResult(third)

    def test_closing_cancels_the_connects_in_progress(self):
        cancelled = []

        def connect(factory):
            return defer.Deferred(lambda d: cancelled.append(d))

        d = self.pool.request(self.key, connect, REQUEST)
        self.pool.close()
        self.assertEqual(len(cancelled), 1)
        self.failureResultOf(d, defer.CancelledError)

    def test_a_connection_free_again_within_a_hold_takes_what_waits_when_it_ends(self):
        protocols = []

        def connect(factory):
            d = self.connect(factory)
            d.addCallback(lambda protocol: protocols.append(protocol) or protocol)
            return d

        answer = b"HTTP/1.1 204 No Content\r\n\r\n"
        opening = self.pool.request(self.key, connect, REQUEST)
        protocols[0].dataReceived(answer)  # (a connection answered before: reused, not a new one)
        self.assertEqual(self.successResultOf(opening), 204)
        first, second = self.pool.request_many(self.key, connect, [b"FIRST", b"SECOND"], depth=1)
        with self.pool.holding():
            protocols[0].dataReceived(answer)  # the first answered: its connection is free
            self.assertEqual(self.successResultOf(first), 204)
            self.assertEqual(self.transports[0].value(), REQUEST + b"FIRST")
        # The second goes on that connection once the hold ends (no new one).
        self.assertEqual(self.transports[0].value(), REQUEST + b"FIRST" + b"SECOND")
        self.assertEqual(len(self.transports), 1)
        self.assertNoResult(second)


class ClosedPoolTests(TestCase):
    """After close(), nothing is sent and every request ends."""

    async def test_requests_on_connections_fail_and_none_go_again(self):
        server = Factory.forProtocol(Held)
        server.open = server.most = 0
        server.held = []
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = ConnectionPool(per_receiver=2)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        key = ("http", "127.0.0.1", port.getHost().port, "x")
        ds = pool.request_many(key, endpoint.connect, [DirectWriteTests.request(b"{}")] * 3)
        await PerReceiverTests.settle(self, server, 2)
        pool.close()
        results = await defer.DeferredList(ds, consumeErrors=True)
        # Two were on connections (unanswered when these were aborted), one waited: all failed, none sent again.
        self.assertEqual([ok for ok, _ in results], [False, False, False])
        self.assertTrue(results[2][1].check(NotSent))
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((server.open, len(server.held)), (0, 2))
        self.failureResultOf(pool.request(key, endpoint.connect, DirectWriteTests.request(b"{}")), NotSent)
