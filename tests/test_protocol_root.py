"""
The site's root over a real socket: Klein's routes served with every
request freed by reference counting (no cyclic garbage left behind), and a
client that hangs up stops its request's work, which rolls back.
"""

import gc

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Request
from zope.interface import implementer

from jsonsync import jsonutil, testclient
from jsonsync.interfaces import IResourceListener
from jsonsync.service import make_site, settle_collector
from jsonsync.testclient import basic, build_app, with_postgresql_variants
from tests import pg


class _Served(TestCase):
    async def setUp(self):
        self.app = await build_app({})
        self.port = reactor.listenTCP(0, make_site(self.app, self.app.settings), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    async def call(self, method, path, body=None):
        kwargs = {"headers": {"Authorization": basic("alice")}, "pool": self.pool}
        if body is not None:
            kwargs["data"] = jsonutil.dumps(body)
            kwargs["headers"]["Content-Type"] = "application/json"
        response = await treq.request(method, self.base + path, **kwargs)
        return response.code, await response.content()


class NoCyclicGarbageTests(_Served):
    async def test_requests_are_freed_without_the_cycle_collector(self):
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        codes = [
            (await self.call("PUT", "/v1/buckets/b"))[0],
            (await self.call("PUT", "/v1/buckets/b/collections/c"))[0],
            (await self.call("POST", "/v1/buckets/b/collections/c/records", {"data": {"n": 1}}))[0],
            (await self.call("GET", "/v1/buckets/b/collections/c/records?_limit=5"))[0],
            (await self.call("HEAD", "/v1/buckets/b/collections/c/records"))[0],
            (await self.call("GET", "/v1/nowhere"))[0],
            (await self.call("PATCH", "/v1/"))[0],
            (await self.call("GET", "/v1/buckets/b/collections/c/records?_limit=abc"))[0],
        ]
        self.assertEqual(codes, [201, 201, 201, 200, 200, 404, 405, 400])
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            left = [o for o in gc.garbage if isinstance(o, Request)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        self.assertEqual(left, [], "requests were left to the cyclic garbage collector")


@implementer(IResourceListener)
class _Stall:
    """Holds every write before its commit until cancelled."""

    actions = resource_names = None

    def __init__(self):
        self.entered = defer.Deferred()
        self.cancelled = defer.Deferred()

    async def before_commit(self, event, txn):
        self.entered.callback(None)
        await defer.Deferred(lambda _: self.cancelled.callback(None))

    async def after_commit(self, event):
        pass


class HangUpTests(_Served):
    async def test_client_hanging_up_stops_and_rolls_back_the_request(self):
        self.assertEqual((await self.call("PUT", "/v1/buckets/b"))[0], 201)
        stall = _Stall()
        self.app.registry.add_listener(stall)
        client = await _send_put(self.port, b"/v1/buckets/b/collections/c")
        await stall.entered
        client.transport.loseConnection()
        await _within(stall.cancelled, 5)
        self.app.registry.listeners.remove(stall)
        code, content = await self.call("GET", "/v1/buckets/b/collections/c")
        self.assertEqual(code, 404, content)


async def _send_put(port, path: bytes):
    """Send alice's PUT of C{path} over a raw connection, and return the client (to hang up)."""
    body = b'{"data": {"title": "never"}}'
    raw = (
        b"PUT " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic("alice").encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol())
    client.transport.write(raw)
    return client


async def _within(d, seconds):
    timer = reactor.callLater(seconds, d.cancel)
    try:
        return await d
    finally:
        if timer.active():
            timer.cancel()


class SettleCollectorTests(TestCase):
    memory_only = True

    def test_startup_objects_leave_the_collectors_reach(self):
        self.addCleanup(gc.unfreeze)
        built = [object(), {"kept": [1, 2, 3]}]
        frozen = settle_collector()
        self.assertGreater(frozen, 1000)
        self.assertEqual(gc.get_freeze_count(), frozen)
        # What is frozen is in no generation the collector walks any more.
        self.assertFalse(any(o is built[1] for o in gc.get_objects()))





class LastResortTests(_Served):
    async def test_failing_error_answer_still_gets_a_json_500(self):
        def broken(*args, **kwargs):
            raise RuntimeError("the error answer itself fails")

        for path in ("/v1/", "/v1/nowhere"):
            # The endpoint's own answer, and the routing error's, both fail.
            self.patch(self.app, "_write", broken)
            self.patch(self.app, "crash", broken)
            code, content = await self.call("GET", path)
            self.assertEqual(code, 500, path)
            body = jsonutil.loads(content)
            self.assertEqual((body["code"], body["errno"], body["error"]), (500, 999, "Internal Server Error"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class AbsoluteFormTests(_Served):
    async def raw(self, target: bytes) -> bytes:
        received = []
        done = defer.Deferred()

        class Collect(Protocol):
            def dataReceived(self, data):
                received.append(data)

            def connectionLost(self, reason):
                done.callback(b"".join(received))

        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port), Collect())
        client.transport.write(b"GET " + target + b" HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n")
        return await _within(done, 5)

    async def test_absolute_form_target_is_routed_on_its_path(self):
        answer = await self.raw(b"http://jsonsync.example:8888/v1/?x=1")
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(jsonutil.loads(body)["url"], "http://jsonsync.example:8888/v1/")
        answer = await self.raw(b"HTTPS://jsonsync.example")
        self.assertTrue(answer.startswith(b"HTTP/1.1 307 "), answer[:200])
        self.assertIn(b"Location: http://jsonsync.example/v1/", answer)
        # user:password@ never becomes part of the host the answers name
        answer = await self.raw(b"http://user:secret@jsonsync.example/v1/")
        self.assertEqual(jsonutil.loads(answer.partition(b"\r\n\r\n")[2])["url"], "http://jsonsync.example/v1/")

    async def test_target_neither_path_nor_url_gets_a_json_400(self):
        for target in (b"jsonsync.example:443", b"ftp://h/v1/"):
            answer = await self.raw(target)
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 400 "), head)
            self.assertEqual(jsonutil.loads(body)["errno"], 107)


class FormBodyTests(_Served):
    async def test_form_or_multipart_post_gets_the_json_415(self):
        for ctype, body in (
            (b"multipart/form-data; boundary=zz", b"this is not multipart at all"),
            (b"application/x-www-form-urlencoded", b"data=1&x=2"),
        ):
            response = await treq.request(
                "POST", self.base + "/v1/buckets", data=body, pool=self.pool,
                headers={"Authorization": basic("alice"), "Content-Type": ctype},
            )
            content = await response.content()
            self.assertEqual(response.code, 415, content)
            self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["application/json"])
            self.assertEqual(jsonutil.loads(content)["code"], 415)


@implementer(IResourceListener)
class _Quiet:
    """A listener that does nothing: the request then keeps its own transaction to the end."""

    actions = resource_names = None

    async def before_commit(self, event, txn):
        pass

    async def after_commit(self, event):
        pass


class HangUpInQueryTests(TestCase):
    """A client hanging up while its statement waits inside PostgreSQL."""

    memory_only = True  # PostgreSQL itself, below

    async def setUp(self):
        pg.require(self)
        self.url = pg.URL
        self.app = await build_app({"storage_backend": "postgresql", "permission_backend": "postgresql",
                                    "storage_url": self.url, "storage_pool_size": "2"})
        # Like the OnPostgreSQL variants: flushed and closed after the test.
        self.addCleanup(testclient._close_apps)
        self.port = reactor.listenTCP(0, make_site(self.app, self.app.settings), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    call = _Served.call

    async def test_query_cancelled_and_rolled_back_quietly(self):
        import psycopg2

        self.assertEqual((await self.call("PUT", "/v1/buckets/b"))[0], 201)
        self.assertEqual((await self.call("PUT", "/v1/buckets/b/collections/c"))[0], 201)
        self.app.registry.add_listener(_Quiet())
        blocker = psycopg2.connect(self.url)
        self.addCleanup(blocker.close)
        blocker.cursor().execute("LOCK TABLE objects IN EXCLUSIVE MODE")  # writes now wait
        client = await _send_put(self.port, b"/v1/buckets/b/collections/c/records/r")
        watcher = psycopg2.connect(self.url)
        self.addCleanup(watcher.close)
        watcher.autocommit = True

        def waiting():
            cur = watcher.cursor()
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database() AND pid <> pg_backend_pid()")
            return cur.fetchone()[0]

        for _ in range(500):
            if waiting():
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(waiting(), 1, "the write never reached the lock")
        client.transport.loseConnection()
        for _ in range(500):  # PostgreSQL cancels the waiting statement
            if not waiting():
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(waiting(), 0, "the statement was not cancelled")
        blocker.rollback()
        code, content = await self.call("GET", "/v1/buckets/b/collections/c/records/r")
        self.assertEqual(code, 404, content)
        # The server still answers writes on every connection of its pool.
        for i in range(4):
            self.assertEqual((await self.call("PUT", f"/v1/buckets/b/collections/c/records/ok{i}", {"data": {}}))[0], 201)


with_postgresql_variants(globals())
