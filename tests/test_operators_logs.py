"""
Logs an operator can use (issue 15): a real C{twist jsonsync} whose stdout
is not a terminal writes one plain JSON object per line, with a summary of
each request (request id from X-Request-Id, echoed); C{log_format = text}
writes readable lines; C{access_log = false} writes no request line.
"""

import json
import os
import re
import sys

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from jsonsync.service import make_site
from jsonsync.testclient import basic, basicauth_id, build_app


class _Collect(ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.ended = Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.out += data

    def processEnded(self, reason):
        self.ended.callback(None)


class TwistProcessTests(TestCase):
    """A real C{twist jsonsync}, its stdout a pipe."""

    async def start(self, *settings):
        proto = _Collect()
        args = [sys.executable, "-m", "twisted", "jsonsync", "--listen", "tcp:0:interface=127.0.0.1"]
        for s in settings:
            args += ["-s", s]
        env = {k: v for k, v in os.environ.items() if not k.startswith("JSONSYNC_")}
        transport = reactor.spawnProcess(proto, sys.executable, args, env=env)

        async def stop():
            if proto.ended.called:
                return
            transport.signalProcess("TERM")
            await proto.ended

        self.addCleanup(stop)
        for _ in range(200):
            found = re.search(rb"listening on 127\.0\.0\.1:(\d+)", proto.out)
            if found:
                break
            if proto.ended.called:
                self.fail(f"the server ended: {proto.out!r}")
            await deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail(f"the server did not start: {proto.out!r}")
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return proto, f"http://127.0.0.1:{int(found.group(1))}", pool, stop

    async def test_json_lines_with_a_request_summary(self):
        proto, base, pool, stop = await self.start()
        response = await treq.get(
            base + "/v1/buckets?_limit=5&secret=x",
            headers={"Authorization": basic("alice"), "X-Request-Id": "req-42"}, pool=pool,
        )
        await response.content()
        self.assertEqual(response.headers.getRawHeaders("X-Request-Id"), ["req-42"])
        missing = await treq.get(base + "/v1/nowhere", pool=pool)
        await missing.content()
        generated = missing.headers.getRawHeaders("X-Request-Id")[0]
        await stop()
        lines = proto.out.decode().splitlines()
        records = [json.loads(line) for line in lines]  # every line, one object
        self.assertTrue(all(isinstance(r, dict) and "message" in r and "time" in r for r in records))
        summaries = [r for r in records if r.get("namespace") == "jsonsync.request"]
        self.assertEqual(len(summaries), 2, lines)
        ok, not_found = summaries
        self.assertEqual(
            {k: ok[k] for k in ("method", "path", "status", "errno", "user_id", "request_id", "route")},
            {
                "method": "GET", "path": "/v1/buckets", "status": 200, "errno": None,
                "user_id": basicauth_id("alice"), "request_id": "req-42", "route": "bucket-plural",
            },
        )
        self.assertIsInstance(ok["duration_ms"], float)
        self.assertGreater(ok["bytes"], 0)
        self.assertEqual((not_found["status"], not_found["errno"], not_found["request_id"]), (404, 111, generated))
        # Neither credentials nor the query string reach the log.
        self.assertNotIn(basic("alice").split()[1], proto.out.decode())
        self.assertNotIn("secret=x", proto.out.decode())

    async def test_text_format_and_no_access_log(self):
        proto, base, pool, stop = await self.start("log_format=text", "access_log=false")
        response = await treq.get(base + "/v1/", pool=pool)
        await response.content()
        await stop()
        out = proto.out.decode()
        self.assertIn("jsonsync listening on", out)
        self.assertFalse(any(line.startswith("{") for line in out.splitlines()), out)
        self.assertNotIn("GET /v1/", out)

    async def test_bad_log_format_stops_the_start(self):
        proto = _Collect()
        args = [sys.executable, "-m", "twisted", "jsonsync", "--listen", "tcp:0:interface=127.0.0.1",
                "-s", "log_format=xml"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("JSONSYNC_")}
        reactor.spawnProcess(proto, sys.executable, args, env=env)
        await proto.ended
        self.assertIn(b"bad value for log_format", proto.out)


class RequestIdTests(TestCase):
    """The request id, through a real socket: a sane one is kept, anything else replaced."""

    async def setUp(self):
        self.app = await build_app({})
        self.site = make_site(self.app, self.app.settings)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.events = []

        def observe(event):
            if event.get("log_namespace") == "jsonsync.request":
                self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def get(self, request_id):
        headers = {} if request_id is None else {"X-Request-Id": request_id}
        response = await treq.get(self.base + "/v1/", headers=headers, pool=self.pool)
        await response.content()
        return response.headers.getRawHeaders("X-Request-Id")

    async def test_sane_ids_are_echoed_others_replaced(self):
        self.assertEqual(await self.get("abc-DEF_1.2:3"), ["abc-DEF_1.2:3"])
        for bad in ("x" * 200, "a b", "<script>", "é"):
            echoed = await self.get(bad)
            self.assertEqual(len(echoed), 1)
            self.assertNotEqual(echoed[0], bad)
            self.assertRegex(echoed[0], r"^[0-9a-f]{24}$")
        first, second = await self.get(None), await self.get(None)
        self.assertNotEqual(first, second)
        self.assertEqual([e["request_id"] for e in self.events][-1], second[0])

    async def test_access_log_false_writes_no_summary(self):
        await self.get("loud")
        self.assertEqual([e["request_id"] for e in self.events], ["loud"])
        self.site.access_log = False
        await self.get("quiet")
        self.assertEqual([e["request_id"] for e in self.events], ["loud"])

    async def test_preflight_allows_the_clients_headers(self):
        wanted = "authorization,if-match,if-none-match,content-type,response-behavior,cache-control,x-request-id"
        response = await treq.request(
            "OPTIONS", self.base + "/v1/buckets/b/collections/c/records",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
                     "Access-Control-Request-Headers": wanted},
            pool=self.pool,
        )
        await response.content()
        self.assertEqual(response.code, 200)
        allowed = {h.strip().lower() for h in response.headers.getRawHeaders("Access-Control-Allow-Headers")[0].split(",")}
        self.assertLessEqual(set(wanted.split(",")) | {"pragma"}, allowed)
        exposed = response.headers.getRawHeaders("Access-Control-Expose-Headers")[0]
        self.assertIn("X-Request-Id", exposed)
