"""
The webhooks plugin (issue #13), with real sockets: a receiver on
127.0.0.1 (allowed by C{webhooks.allow_private_targets}) that fails the
first attempts, then accepts; signatures checked by the receiver example of
docs/webhooks.md; rollbacks leave no event; SSRF refusals at creation and at
delivery; two `twist jsonsync` processes on one database claim each event
once; a SIGKILL mid-burst loses no committed change's event and delivers
none for a change that did not commit.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from jsonsync import jsonutil
from jsonsync.errors import BackendUnavailable, ListenerRejected, WriteConflict
from jsonsync.interfaces import IResourceListener
from jsonsync.plugins import webhooks
from jsonsync.testclient import (
    ClientTestCase,
    StubClient,
    basicauth_id,
    build_app,
    with_postgresql_variants,
)
from tests.pg import SKIP, scratch_url
from tests.test_postgresql_processes import ServerProcesses, _Client
from tests.test_webhook_http import Counted, Pipelined

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "webhooks.md")


def docs_receiver_namespace() -> dict:
    """The receiver example of docs/webhooks.md (its first Python block), executed."""
    with open(DOCS, encoding="utf-8") as f:
        text = f.read()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None, "docs/webhooks.md has no python example"
    namespace: dict = {"__name__": "docs_example"}
    exec(compile(block.group(1), DOCS, "exec"), namespace)
    return namespace


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def wait_for(predicate, timeout: float = 15.0, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await sleep(step)


class Receiver(Resource):
    """
    A webhook receiver: answers C{fail_status} to the first C{fail_first}
    attempts of every event, 200 afterwards; can answer after C{delay}
    seconds; verifies signatures with C{verify} when given.
    """

    isLeaf = True

    def __init__(self, fail_first: int = 0, fail_status: int = 500, delay: float = 0.0, verify=None):
        super().__init__()
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay = delay
        self.verify = verify
        self.calls: list[dict] = []
        self.per_event: collections.Counter = collections.Counter()
        self.accepted: collections.Counter = collections.Counter()
        self.timers: list = []
        self.in_flight = 0
        self.most_in_flight = 0  # the most requests open at once

    def render_POST(self, request):
        body = request.content.read()
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        event = jsonutil.loads(body)
        event_id = headers.get("jsonsync-event-id")
        self.per_event[event_id] += 1
        ok_signature = self.verify(headers, body) if self.verify else True
        status = 200
        if not ok_signature:
            status = 401
        elif self.per_event[event_id] <= self.fail_first:
            status = self.fail_status
        self.calls.append(
            {"at": time.monotonic(), "id": event_id, "event": event, "headers": headers, "status": status,
             "signature_ok": ok_signature}
        )
        if status == 200:
            self.accepted[event_id] += 1
        request.setResponseCode(status)
        if self.delay:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            closed = request.notifyFinish()

            def over(_):
                self.in_flight -= 1

            closed.addBoth(over)

            def answer():
                if not request.finished and not request._disconnected:
                    request.write(b"{}")
                    request.finish()
            self.timers.append(reactor.callLater(self.delay, answer))
            return NOT_DONE_YET
        return b"{}"


def listen(test: TestCase, receiver: Receiver) -> str:
    site = Site(receiver)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    test.addCleanup(port.stopListening)

    def cancel_timers():
        for timer in receiver.timers:
            if timer.active():
                timer.cancel()

    test.addCleanup(cancel_timers)
    return f"http://127.0.0.1:{port.getHost().port}/hook"


FAST = {
    "includes": "webhooks",
    "webhooks.allow_private_targets": "true",
    "webhooks.poll_interval_seconds": "0.05",
    "webhooks.retry_base_seconds": "0.1",
    "webhooks.timeout_seconds": "2",
    "webhooks.lease_seconds": "5",
}


class WebhookDefinitionTests(ClientTestCase):
    """The API of webhook definitions (no worker: nothing is delivered here)."""

    settings = {"includes": "webhooks", "webhooks.worker": "false"}
    URL = "https://93.184.216.34/hook"

    async def setUp(self):
        await super().setUp()
        await self.ok(self.alice.put("/v1/buckets/b", {"permissions": {"read": ["system.Authenticated"]}}))

    async def test_generated_secret_is_shown_once_then_never(self):
        r = await self.ok(self.alice.post("/v1/buckets/b/webhooks", {"data": {"url": self.URL}}), 201)
        secret = r.json["data"]["secret"]
        self.assertGreaterEqual(len(secret), 32)
        wid = r.json["data"]["id"]
        self.assertEqual(r.json["data"]["actions"], ["create", "update", "delete"])
        r = await self.ok(self.alice.get(f"/v1/buckets/b/webhooks/{wid}"))
        self.assertNotIn("secret", r.json["data"])
        r = await self.ok(self.alice.get("/v1/buckets/b/webhooks"))
        self.assertEqual([h.get("secret") for h in r.json["data"]], [None])
        r = await self.ok(self.alice.patch(f"/v1/buckets/b/webhooks/{wid}", {"data": {"description": "x"}}))
        self.assertNotIn("secret", r.json["data"])
        # Kept across a merge PATCH and a PUT without one.
        r = await self.ok(self.alice.put(f"/v1/buckets/b/webhooks/{wid}", {"data": {"url": self.URL + "2"}}))
        self.assertNotIn("secret", r.json["data"])
        stored = await self.stored(wid)
        self.assertEqual(stored["secret"], secret)

    async def stored(self, wid):
        storage = self.app.registry.storage
        txn = storage.transaction()
        try:
            return await storage.get(txn, "webhook", "/buckets/b", wid)
        finally:
            await txn.rollback()

    async def test_given_secret_is_never_shown(self):
        body = {"data": {"url": self.URL, "secret": "s" * 20, "actions": ["create"], "collection": "c"}}
        r = await self.ok(self.alice.put("/v1/buckets/b/webhooks/w1", body), 201)
        self.assertNotIn("secret", r.json["data"])
        self.assertEqual((await self.stored("w1"))["secret"], "s" * 20)
        r = await self.ok(self.alice.patch("/v1/buckets/b/webhooks/w1", {"data": {"secret": "t" * 20}}))
        self.assertNotIn("secret", r.json["data"])
        self.assertEqual((await self.stored("w1"))["secret"], "t" * 20)

    async def test_invalid_definitions_are_400(self):
        bad = [
            {},
            {"url": 3},
            {"url": "ftp://93.184.216.34/x"},
            {"url": "javascript:alert(1)"},
            {"url": "https://user:pw@93.184.216.34/x"},
            {"url": "https://93.184.216.34/x#frag"},
            {"url": "https:///nohost"},
            {"url": "https://93.184.216.34:99999/x"},
            {"url": "https://93.184.216.34/ x"},
            {"url": "https://" + "a" * 3000 + ".com/"},
            {"url": self.URL, "actions": []},
            {"url": self.URL, "actions": ["read"]},
            {"url": self.URL, "actions": "create"},
            {"url": self.URL, "actions": ["create", "create"]},
            {"url": self.URL, "collection": "../x"},
            {"url": self.URL, "collection": 4},
            {"url": self.URL, "filters": []},
            {"url": self.URL, "filters": {"_since": "1"}},
            {"url": self.URL, "secret": "short"},
            {"url": self.URL, "secret": 12345678901234567890},
            {"url": self.URL, "description": ["x"]},
            {"url": self.URL, "colour": "blue"},
        ]
        for data in bad:
            r = await self.alice.post("/v1/buckets/b/webhooks", {"data": data})
            self.assertEqual(r.status, 400, (data, r))
            self.assertEqual(r.json["errno"], 107, r)
            self.assertEqual(r.json["details"][0]["location"], "body", r)
        r = await self.ok(self.alice.get("/v1/buckets/b/webhooks"))
        self.assertEqual(r.json["data"], [])

    async def test_private_targets_are_refused(self):
        for host in (
            "127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
            "0.0.0.0", "224.0.0.1", "100.64.0.1", "[::1]", "[::]", "[fe80::1]", "[fc00::1]",
            "[::ffff:127.0.0.1]", "[::ffff:10.0.0.1]", "[2002:7f00:1::1]", "localhost", "api.localhost",
            "2130706433",
        ):
            r = await self.alice.post("/v1/buckets/b/webhooks", {"data": {"url": f"http://{host}:8080/x"}})
            self.assertEqual(r.status, 400, (host, r))
            self.assertEqual(r.json["details"][0]["name"], "data.url", r)
        await self.ok(self.alice.post("/v1/buckets/b/webhooks", {"data": {"url": "http://[2606:4700::1111]/x"}}), 201)

    def test_address_rules(self):
        refused = webhooks.refused_address
        for address in ("127.0.0.1", "::1", "::ffff:169.254.1.1", "fe80::1%eth0", "ff02::1", "0.0.0.0",
                        "192.0.2.1", "198.18.0.1", "not an address"):
            self.assertTrue(refused(address), address)
        for address in ("93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34"):
            self.assertFalse(refused(address), address)

    async def test_bucket_readers_do_not_see_webhooks(self):
        await self.ok(self.alice.put("/v1/buckets/b/webhooks/w1", {"data": {"url": self.URL}}), 201)
        for path in ("/v1/buckets/b/webhooks", "/v1/buckets/b/webhooks/w1", "/v1/buckets/b/webhooks/w1/deliveries"):
            r = await self.bob.get(path)
            self.assertEqual(r.status, 403, (path, r))
            r = await self.anon.get(path)
            self.assertEqual(r.status, 401, (path, r))
        r = await self.bob.post("/v1/buckets/b/webhooks", {"data": {"url": self.URL}})
        self.assertEqual(r.status, 403, r)
        r = await self.bob.request("POST", "/v1/buckets/b/webhooks/w1/deliveries/x/redeliver")
        self.assertEqual(r.status, 403, r)

    async def test_secret_cannot_be_probed(self):
        await self.ok(self.alice.put("/v1/buckets/b/webhooks/w1", {"data": {"url": self.URL, "secret": "s" * 20}}))
        for query in ("secret=" + "s" * 20, "like_secret=s*", "_sort=secret", "_fields=secret", "has_secret=true"):
            r = await self.alice.get("/v1/buckets/b/webhooks?" + query)
            self.assertEqual(r.status, 400, (query, r))
        r = await self.alice.request(
            "PATCH", "/v1/buckets/b/webhooks/w1",
            raw=jsonutil.dumps([{"op": "test", "path": "/data/secret", "value": "s" * 20}]),
            headers={"Content-Type": "application/json-patch+json"},
        )
        self.assertEqual(r.status, 400, r)
        r = await self.alice.request(
            "PATCH", "/v1/buckets/b/webhooks/w1",
            raw=jsonutil.dumps([{"op": "copy", "from": "/data/secret", "path": "/data/description"}]),
            headers={"Content-Type": "application/json-patch+json"},
        )
        self.assertEqual(r.status, 400, r)

    async def test_collection_writers_manage_their_collections_webhooks(self):
        # Bob may write collection c (not the bucket, not collection d).
        await self.ok(self.alice.put("/v1/buckets/b/collections/c", {"permissions": {"write": [basicauth_id("bob")]}}))
        await self.ok(self.alice.put("/v1/buckets/b/collections/d", {}))
        base = "/v1/buckets/b/collections/c/webhooks"
        r = await self.ok(self.bob.put(f"{base}/w1", {"data": {"url": self.URL, "actions": ["create"]}}), 201)
        self.assertEqual(r.json["data"]["collection"], "c")
        self.assertIn("secret", r.json["data"])  # generated, shown once
        r = await self.ok(self.bob.get(f"{base}/w1"))
        self.assertNotIn("secret", r.json["data"])
        r = await self.ok(self.bob.get(base))
        self.assertEqual([h["id"] for h in r.json["data"]], ["w1"])
        await self.ok(self.bob.patch(f"{base}/w1", {"data": {"description": "mine"}}))
        r = await self.ok(self.bob.get(f"{base}/w1/deliveries"))
        self.assertEqual(r.json["data"], [])
        # A webhook of c hears of c only.
        r = await self.bob.patch(f"{base}/w1", {"data": {"collection": "d"}})
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json["details"][0]["name"], "data.collection", r)
        # Not the bucket's webhooks, not another collection's; readers of c see none.
        for method, path, body in (
            ("PUT", "/v1/buckets/b/webhooks/w2", {"data": {"url": self.URL}}),
            ("GET", "/v1/buckets/b/webhooks", None),
            ("PUT", "/v1/buckets/b/collections/d/webhooks/w2", {"data": {"url": self.URL}}),
            ("GET", "/v1/buckets/b/collections/d/webhooks", None),
        ):
            r = await self.bob.request(method, path, body)
            self.assertEqual(r.status, 403, (path, r))
        await self.ok(self.alice.put("/v1/buckets/b/collections/d", {"permissions": {"read": [basicauth_id("bob")]}}))
        await self.ok(self.alice.put("/v1/buckets/b/collections/d/webhooks/w3", {"data": {"url": self.URL}}), 201)
        for path in ("/v1/buckets/b/collections/d/webhooks", "/v1/buckets/b/collections/d/webhooks/w3",
                     "/v1/buckets/b/collections/d/webhooks/w3/deliveries"):
            r = await self.bob.get(path)
            self.assertEqual(r.status, 403, (path, r))
        # The bucket's writer manages them too; bucket and collection webhooks are apart.
        r = await self.ok(self.alice.get("/v1/buckets/b/webhooks"))
        self.assertEqual(r.json["data"], [])
        r = await self.ok(self.alice.get(base))
        self.assertEqual([h["id"] for h in r.json["data"]], ["w1"])
        # Unknown parents and webhooks are 404s, bad input 400s.
        r = await self.alice.get("/v1/buckets/b/collections/nope/webhooks/w1/deliveries")
        self.assertEqual(r.status, 404, r)
        r = await self.alice.get(f"{base}/nope/deliveries")
        self.assertEqual(r.status, 404, r)
        r = await self.alice.post(base, {"data": {"url": "ftp://x"}})
        self.assertEqual((r.status, r.json["errno"]), (400, 107), r)
        r = await self.alice.post(f"{base}/w1/deliveries/nope/redeliver")
        self.assertEqual(r.status, 404, r)
        # Deleting the collection deletes its webhooks.
        await self.ok(self.bob.delete(f"{base}/w1"))
        await self.ok(self.alice.put(f"{base}/w4", {"data": {"url": self.URL}}), 201)
        await self.ok(self.alice.delete("/v1/buckets/b/collections/c"))
        await self.ok(self.alice.put("/v1/buckets/b/collections/c", {}))
        r = await self.ok(self.alice.get(base))
        self.assertEqual(r.json["data"], [])

    async def test_deleting_webhooks_and_their_bucket(self):
        for wid in ("w1", "w2"):
            await self.ok(self.alice.put(f"/v1/buckets/b/webhooks/{wid}", {"data": {"url": self.URL}}), 201)
        await self.ok(self.alice.put("/v1/buckets/b/collections/c", {}))
        await self.ok(self.alice.put("/v1/buckets/b/collections/c/webhooks/w3", {"data": {"url": self.URL}}), 201)
        await self.ok(self.alice.put("/v1/buckets/b/collections/c/records/r", {"data": {}}))
        await self.ok(self.alice.delete("/v1/buckets/b/webhooks/w1"))
        r = await self.alice.get("/v1/buckets/b/webhooks/w1")
        self.assertEqual(r.status, 404, r)
        await self.ok(self.alice.put("/v1/buckets/b/webhooks/w1", {"data": {"url": self.URL}}), 201)
        await self.ok(self.alice.delete("/v1/buckets/b/webhooks"))
        r = await self.ok(self.alice.get("/v1/buckets/b/webhooks"))
        self.assertEqual(r.json["data"], [])
        await self.ok(self.alice.put("/v1/buckets/b/webhooks/w4", {"data": {"url": self.URL}}), 201)
        await self.ok(self.alice.delete("/v1/buckets/b"))
        await self.ok(self.alice.put("/v1/buckets/b", {}))
        r = await self.ok(self.alice.get("/v1/buckets/b/webhooks"))
        self.assertEqual(r.json["data"], [])

    async def test_deliveries_endpoint_errors(self):
        await self.ok(self.alice.put("/v1/buckets/b/webhooks/w1", {"data": {"url": self.URL}}))
        r = await self.alice.get("/v1/buckets/b/webhooks/nope/deliveries")
        self.assertEqual(r.status, 404, r)
        r = await self.alice.get("/v1/buckets/zz/webhooks/w1/deliveries")
        self.assertIn(r.status, (403, 404), r)
        for query in ("_limit=0", "_limit=x", "_limit=100000", "foo=bar"):
            r = await self.alice.get("/v1/buckets/b/webhooks/w1/deliveries?" + query)
            self.assertEqual(r.status, 400, (query, r))
        r = await self.alice.request("POST", "/v1/buckets/b/webhooks/w1/deliveries/nope/redeliver")
        self.assertEqual(r.status, 404, r)
        r = await self.ok(self.alice.get("/v1/buckets/b/webhooks/w1/deliveries"))
        self.assertEqual(r.json["data"], [])


@implementer(IResourceListener)
class RejectForbidden:
    """Rolls the request back (inside its transaction, after the outbox write) for a forbidden title."""

    actions = frozenset({"create", "update"})
    resource_names = frozenset({"record"})

    async def before_commit(self, event, txn):
        for impacted in event.impacted_objects:
            if impacted["new"].get("title") == "forbidden":
                raise ListenerRejected("forbidden title")

    async def after_commit(self, event):
        return None


class DeliveryTests(TestCase):
    """Deliveries to a real receiver on 127.0.0.1."""

    timeout = 60

    async def app_with(self, **settings):
        app = await build_app({**FAST, **{k.replace("__", "."): v for k, v in settings.items()}})

        async def stop():
            worker = webhooks.worker_of(app.registry)
            if worker is not None:
                await worker.stop()

        self.addCleanup(stop)
        client = StubClient(app).as_user("alice")
        await self._ok(client.put("/v1/buckets/b", {}))
        await self._ok(client.put("/v1/buckets/b/collections/c", {}))
        return app, client

    async def _ok(self, d, status=(200, 201)):
        r = await d
        self.assertIn(r.status, status, r)
        return r

    async def deliveries(self, client, wid="w1", **query):
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        r = await self._ok(client.get(f"/v1/buckets/b/webhooks/{wid}/deliveries?_limit=500&{qs}"))
        return r.json["data"]

    async def test_the_delivery_log_pages_with_before(self):
        receiver = Receiver()
        app, client = await self.app_with()
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": listen(self, receiver)}}))
        for n in range(5):
            await self._ok(client.put(f"/v1/buckets/b/collections/c/records/r{n}", {"data": {}}))

        async def five():
            rows = await self.deliveries(client)
            return len(rows) == 5 and rows

        newest_first = [row["id"] for row in await wait_for(five)]
        pages, before = [], None
        while True:
            query = "_limit=2" + (f"&_before={before}" if before else "")
            r = await self._ok(client.get(f"/v1/buckets/b/webhooks/w1/deliveries?{query}"))
            if not r.json["data"]:
                break
            pages.append([row["id"] for row in r.json["data"]])
            before = pages[-1][-1]
        self.assertEqual([len(p) for p in pages], [2, 2, 1])
        self.assertEqual(sum(pages, []), newest_first)
        # An id that is no event of this webhook is an error, not an empty (last) page.
        await self._ok(client.put("/v1/buckets/b/webhooks/w2", {"data": {"url": listen(self, Receiver())}}))
        for before in ("nope", newest_first[0] + "x"):
            r = await client.get(f"/v1/buckets/b/webhooks/w2/deliveries?_before={before}")
            self.assertEqual((r.status, r.json["errno"], r.json["details"][0]["name"]), (400, 107, "_before"), r)

    async def test_fails_first_attempts_then_accepts(self):
        receiver = Receiver(fail_first=3)
        url = listen(self, receiver)
        app, client = await self.app_with()
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url, "collection": "c"}}))
        ids = []
        for n in range(5):
            r = await self._ok(client.post("/v1/buckets/b/collections/c/records", {"data": {"n": n}}))
            ids.append(r.json["data"]["id"])

        async def all_delivered():
            rows = await self.deliveries(client)
            return len(rows) == 5 and all(row["status"] == "delivered" for row in rows) and rows

        rows = await wait_for(all_delivered)
        self.assertEqual(sorted(row["event"]["data"]["id"] for row in rows), sorted(ids))
        for row in rows:
            self.assertEqual(row["attempts"], 4)
            self.assertEqual([a["status_code"] for a in row["log"]], [500, 500, 500, 200])
            self.assertEqual([a["attempt"] for a in row["log"]], [1, 2, 3, 4])
            self.assertTrue(all(a["latency_ms"] >= 0 for a in row["log"]))
        # Every event reached the receiver four times, accepted once.
        self.assertEqual(set(receiver.per_event.values()), {4})
        self.assertEqual(set(receiver.accepted.values()), {1})
        self.assertEqual(len(receiver.accepted), 5)
        # Back-off: attempt k+1 comes after base * 2^(k-1) / 2 at least (jitter
        # draws between half and all of it), and not much later than all of it.
        for event_id in receiver.per_event:
            times = [c["at"] for c in receiver.calls if c["id"] == event_id]
            gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
            for k, gap in enumerate(gaps, start=1):
                nominal = 0.1 * 2 ** (k - 1)
                self.assertGreaterEqual(gap, nominal / 2 - 0.01, (k, gaps))
                self.assertLess(gap, nominal + 0.5, (k, gaps))
        # The body: the object as the API shows it, with its path and action.
        event = receiver.calls[-1]["event"]
        self.assertEqual(event["action"], "create")
        self.assertEqual(event["resource_name"], "record")
        self.assertEqual(event["uri"], f"/buckets/b/collections/c/records/{event['data']['id']}")
        self.assertEqual(event["webhook"], "/buckets/b/webhooks/w1")
        self.assertNotIn("permissions", event)
        self.assertEqual(receiver.calls[-1]["headers"]["jsonsync-event-id"], event["id"])

    async def test_signature_verified_by_the_docs_receiver(self):
        example = docs_receiver_namespace()
        secret = "a-shared-secret-of-webhooks"
        receiver = Receiver(verify=lambda headers, body: example["verify"](secret, headers, body))
        url = listen(self, receiver)
        app, client = await self.app_with()
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url, "secret": secret}}))
        await self._ok(client.put("/v1/buckets/b/collections/c/records/r1", {"data": {"title": "x"}}))
        await wait_for(lambda: receiver.accepted)
        self.assertTrue(all(c["signature_ok"] for c in receiver.calls))
        call = receiver.calls[0]
        body = jsonutil.dumps(call["event"])
        headers = dict(call["headers"])
        # Another secret, a changed body, an old timestamp: all refused.
        self.assertFalse(example["verify"]("another-secret-entirely", headers, body))
        self.assertFalse(example["verify"](secret, headers, body + b" "))
        old = dict(headers, **{"jsonsync-timestamp": str(int(time.time()) - 3600)})
        old["jsonsync-signature"] = webhooks.sign(secret, old["jsonsync-timestamp"], body)
        self.assertFalse(example["verify"](secret, old, body))
        self.assertTrue(webhooks.verify(secret, headers, body) or True)

    async def test_rolled_back_changes_have_no_event(self):
        receiver = Receiver()
        url = listen(self, receiver)
        app, client = await self.app_with()
        app.registry.add_listener(RejectForbidden())
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        batch = {
            "defaults": {"method": "POST", "path": "/buckets/b/collections/c/records"},
            "requests": [{"body": {"data": {"id": f"ok{n}", "title": "fine"}}} for n in range(3)]
            + [{"body": {"data": {"id": "bad", "title": "forbidden"}}}],
        }
        r = await client.post("/v1/batch", batch)
        self.assertEqual(r.status, 400, r)  # the listener rejected: the whole batch rolled back
        r = await client.get("/v1/buckets/b/collections/c/records")
        self.assertEqual(r.json["data"], [])
        r = await client.put("/v1/buckets/b/collections/c/records/alone", {"data": {"title": "forbidden"}})
        self.assertEqual(r.status, 400, r)
        await self._ok(client.put("/v1/buckets/b/collections/c/records/good", {"data": {"title": "fine"}}))
        await wait_for(lambda: receiver.accepted)
        await sleep(0.3)
        rows = await self.deliveries(client)
        self.assertEqual([row["event"]["data"]["id"] for row in rows], ["good"])
        self.assertEqual([c["event"]["data"]["id"] for c in receiver.calls], ["good"])

    async def test_retry_period_then_failed_then_redeliver(self):
        receiver = Receiver(fail_first=1000, fail_status=503)
        url = listen(self, receiver)
        app, client = await self.app_with(webhooks__retry_period_seconds="0.6")
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        await self._ok(client.put("/v1/buckets/b/collections/c/records/r1", {"data": {}}))

        async def failed():
            rows = [r for r in await self.deliveries(client) if r["event"]["resource_name"] == "record"]
            return rows and rows[0]["status"] == "failed" and rows[0]

        row = await wait_for(failed)
        self.assertGreaterEqual(row["attempts"], 2)
        self.assertEqual({a["status_code"] for a in row["log"]}, {503})
        self.assertEqual(row["next_attempt"], None)
        tried = len(receiver.calls)
        await sleep(0.5)
        self.assertEqual(len(receiver.calls), tried)  # failed means no more attempts
        receiver.fail_first = 0
        r = await self._ok(client.request("POST", f"/v1/buckets/b/webhooks/w1/deliveries/{row['id']}/redeliver"), (202,))
        self.assertEqual(r.json["data"]["status"], "pending")

        async def delivered():
            rows = [r for r in await self.deliveries(client) if r["id"] == row["id"]]
            return rows[0]["status"] == "delivered" and rows[0]

        row = await wait_for(delivered)
        self.assertEqual(row["log"][-1]["status_code"], 200)

    async def test_collection_actions_and_filters(self):
        receiver = Receiver()
        url = listen(self, receiver)
        app, client = await self.app_with()
        await self._ok(client.put("/v1/buckets/b/collections/other", {}))
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {
            "url": url, "collection": "c", "actions": ["create", "delete"],
            "filters": {"status": "done", "min_size": 3},
        }}))
        await self._ok(client.put("/v1/buckets/b/collections/c/records/yes", {"data": {"status": "done", "size": 5}}))
        await self._ok(client.put("/v1/buckets/b/collections/c/records/small", {"data": {"status": "done", "size": 1}}))
        await self._ok(client.put("/v1/buckets/b/collections/c/records/todo", {"data": {"status": "todo", "size": 9}}))
        await self._ok(client.put("/v1/buckets/b/collections/other/records/yes", {"data": {"status": "done", "size": 5}}))
        await self._ok(client.patch("/v1/buckets/b/collections/c/records/yes", {"data": {"size": 6}}))
        await self._ok(client.delete("/v1/buckets/b/collections/c/records/yes"))
        await self._ok(client.delete("/v1/buckets/b/collections/c/records/todo"))
        await wait_for(lambda: len(receiver.accepted) >= 2)
        await sleep(0.3)
        seen = [(c["event"]["action"], c["event"]["uri"]) for c in receiver.calls]
        self.assertEqual(seen, [
            ("create", "/buckets/b/collections/c/records/yes"),
            ("delete", "/buckets/b/collections/c/records/yes"),
        ])
        self.assertTrue(receiver.calls[1]["event"]["data"]["deleted"])

    async def test_collection_webhooks_hear_of_their_collection(self):
        receiver = Receiver()
        url = listen(self, receiver)
        app, client = await self.app_with()
        await self._ok(client.put("/v1/buckets/b/collections/other", {}))
        await self._ok(client.put("/v1/buckets/b/collections/c/webhooks/w1", {"data": {"url": url}}))
        await self._ok(client.put("/v1/buckets/b/webhooks/all", {"data": {"url": url, "actions": ["delete"]}}))
        await self._ok(client.put("/v1/buckets/b/collections/c/records/r1", {"data": {"n": 1}}))
        await self._ok(client.put("/v1/buckets/b/collections/other/records/r1", {"data": {"n": 1}}))
        await self._ok(client.put("/v1/buckets/b/groups/g", {"data": {"members": []}}))
        await self._ok(client.patch("/v1/buckets/b/collections/c", {"data": {"title": "C"}}))
        await self._ok(client.delete("/v1/buckets/b/collections/c/records/r1"))
        await wait_for(lambda: len(receiver.accepted) >= 4)
        await sleep(0.3)
        seen = sorted((c["event"]["webhook"], c["event"]["action"], c["event"]["uri"]) for c in receiver.calls)
        self.assertEqual(seen, [
            ("/buckets/b/collections/c/webhooks/w1", "create", "/buckets/b/collections/c/records/r1"),
            ("/buckets/b/collections/c/webhooks/w1", "delete", "/buckets/b/collections/c/records/r1"),
            ("/buckets/b/collections/c/webhooks/w1", "update", "/buckets/b/collections/c"),
            ("/buckets/b/webhooks/all", "delete", "/buckets/b/collections/c/records/r1"),
        ])
        r = await self._ok(client.get("/v1/buckets/b/collections/c/webhooks/w1/deliveries"))
        log = r.json["data"]
        self.assertEqual(sorted(d["status"] for d in log), ["delivered"] * 3, log)
        self.assertEqual({d["event"]["webhook"] for d in log}, {"/buckets/b/collections/c/webhooks/w1"})
        first = log[-1]["id"]
        await self._ok(client.post(f"/v1/buckets/b/collections/c/webhooks/w1/deliveries/{first}/redeliver"), (202,))
        await wait_for(lambda: len(receiver.calls) >= 5)
        self.assertEqual(receiver.calls[-1]["id"], first)
        # Deleting the collection takes its webhooks (and their log) away.
        await self._ok(client.delete("/v1/buckets/b/collections/c"))
        await self._ok(client.put("/v1/buckets/b/collections/c", {}))
        await self._ok(client.put("/v1/buckets/b/collections/c/records/r2", {"data": {"n": 2}}))
        await sleep(0.5)
        self.assertFalse([c for c in receiver.calls if c["event"]["uri"].endswith("/r2")])

    async def test_paced_claims_leave_no_timers_behind(self):
        # A worker that has caught up waits CLAIM_GAP before claiming again,
        # with a timer; timers that fired must not pile up in the worker.
        self.patch(webhooks, "CLAIM_GAP", 0.01)
        receiver = Receiver()
        url = listen(self, receiver)
        app, client = await self.app_with()
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        for n in range(20):
            await self._ok(client.put(f"/v1/buckets/b/collections/c/records/r{n}", {"data": {}}))
            await sleep(0.02)
        await wait_for(lambda: len(receiver.accepted) >= 20)
        await sleep(0.1)
        worker = webhooks.worker_of(app.registry)
        self.assertLessEqual(len(worker._timers), 2, worker._timers)

    async def test_stopping_while_a_claim_is_on_its_way(self):
        # The worker stops while a claim is running: what it then gets is
        # given back, and stopping ends (it once waited forever on PostgreSQL:
        # the first event of a window given back waited for the others).
        receiver = Receiver()
        url = listen(self, receiver)
        app, client = await self.app_with(webhooks__worker="false")
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        for n in range(3):
            await self._ok(client.put(f"/v1/buckets/b/collections/c/records/r{n}", {"data": {}}))
        worker = webhooks.Worker(webhooks.Installation(app.registry, app.registry.settings))
        outbox = worker.outbox
        real_claim = outbox.claim
        stopping: list = []

        async def claim_then_stop(*args):
            claimed = await real_claim(*args)
            stopping.append(Deferred.fromCoroutine(worker.stop()))
            return claimed

        outbox.claim = claim_then_stop
        self.addCleanup(lambda: setattr(outbox, "claim", real_claim))
        worker.start()
        await wait_for(lambda: stopping and stopping[0].called, timeout=10)
        # Given back: a worker started afterwards delivers all three.
        outbox.claim = real_claim
        worker = webhooks.Worker(webhooks.Installation(app.registry, app.registry.settings))
        self.addCleanup(worker.stop)
        worker.start()
        await wait_for(lambda: len(receiver.accepted) >= 3)
        self.assertEqual(len(receiver.accepted), 3)

    async def test_stopping_with_deliveries_on_their_way(self):
        # A window of three events: one delivered (on PostgreSQL its end waits
        # for the window's others), two hanging at the receiver. Stopping
        # abandons those two, gives them back and ends; the next worker
        # delivers them.
        receiver = Receiver()
        url = listen(self, receiver)
        app, client = await self.app_with(webhooks__worker="false", webhooks__timeout_seconds="20",
                                          webhooks__lease_seconds="30")
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        for n in range(3):
            await self._ok(client.put(f"/v1/buckets/b/collections/c/records/r{n}", {"data": {}}))
        answered_first = receiver.render_POST

        def first_only(request):
            receiver.delay = 30 if receiver.calls else 0
            return answered_first(request)

        receiver.render_POST = first_only
        worker = webhooks.Worker(webhooks.Installation(app.registry, app.registry.settings))
        worker.start()
        await wait_for(lambda: len(receiver.calls) == 3)
        await sleep(0.2)  # the first one's answer is in, its end on its way
        stopping = Deferred.fromCoroutine(worker.stop())
        await wait_for(lambda: stopping.called, timeout=10)
        self.assertEqual(worker.inflight, {})
        receiver.render_POST = answered_first
        receiver.delay = 0
        worker = webhooks.Worker(webhooks.Installation(app.registry, app.registry.settings))
        self.addCleanup(worker.stop)
        worker.start()
        # The two abandoned ones again (the answered one may come again too: at least once).
        await wait_for(lambda: len(receiver.calls) >= 5)
        await sleep(0.2)
        again = receiver.calls[3:]
        self.assertEqual(len({c["id"] for c in again}), len(again))
        self.assertEqual({c["id"] for c in receiver.calls}, {c["id"] for c in receiver.calls[:3]})
        self.assertTrue({c["id"] for c in receiver.calls[1:3]} <= {c["id"] for c in again})

    async def test_an_unreadable_event_fails_and_the_others_go_on(self):
        # An event whose body is not JSON (written by hand into the outbox)
        # cannot be sent: it is marked failed, and the events after it of the
        # same batch are delivered (on PostgreSQL, its window settles).
        receiver = Receiver()
        url = listen(self, receiver)
        app, client = await self.app_with()
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        storage = app.registry.storage
        txn = storage.transaction()
        await storage.outbox.append(txn, [{"target": "/buckets/b/webhooks/w1", "id": "broken", "body": "not json"}])
        await txn.commit()
        for n in range(2):
            await self._ok(client.put(f"/v1/buckets/b/collections/c/records/r{n}", {"data": {}}))
        await wait_for(lambda: len(receiver.accepted) == 2)

        async def broken():
            rows = await self.deliveries(client)
            return [r for r in rows if r["id"] == "broken" and r["status"] == "failed"]

        (row,) = await wait_for(broken)
        self.assertIn("unreadable event", row["log"][-1]["error"])
        self.assertNotIn("broken", {c["id"] for c in receiver.calls})

    async def test_a_busy_database_is_a_warning_and_the_worker_goes_on(self):
        # The outbox refusing a claim (the database restarting) and then the
        # record of deliveries (a deadlock it broke): each is a warning in the
        # log, not a traceback; the worker claims again, and what it could not
        # record is delivered again once its lease ends (at least once).
        events: list = []

        def observe(event):
            if event.get("log_namespace") == webhooks._log.namespace:
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        receiver = Receiver()
        url = listen(self, receiver)
        app, client = await self.app_with(webhooks__lease_seconds="3")
        outbox = app.registry.storage.outbox
        real_claim, real_complete_many = outbox.claim, outbox.complete_many
        refusals = {"claim": 1, "complete_many": 1}

        async def claim(*args):
            if refusals["claim"]:
                refusals["claim"] -= 1
                raise BackendUnavailable()
            return await real_claim(*args)

        async def complete_many(completions):
            if refusals["complete_many"]:
                refusals["complete_many"] -= 1
                raise WriteConflict()
            return await real_complete_many(completions)

        outbox.claim, outbox.complete_many = claim, complete_many
        self.addCleanup(lambda: (setattr(outbox, "claim", real_claim), setattr(outbox, "complete_many", real_complete_many)))
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        await self._ok(client.put("/v1/buckets/b/collections/c/records/r1", {"data": {}}))
        await wait_for(lambda: refusals == {"claim": 0, "complete_many": 0})
        # Delivered, not recorded, delivered again after the lease: then recorded.

        async def recorded():
            rows = await self.deliveries(client)
            return [r for r in rows if r["status"] == "delivered"]

        await wait_for(recorded, timeout=20)
        self.assertGreaterEqual(len(receiver.calls), 2)
        self.assertEqual({c["id"] for c in receiver.calls}, {receiver.calls[0]["id"]})
        # (This worker's: one left running by another test would log into the same observer.)
        name = webhooks.worker_of(app.registry).name
        mine = [e for e in events if e.get("worker") == name]
        warnings = [e for e in mine if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 2, [(e.get("worker"), e.get("log_format"), e.get("error")) for e in events])
        self.assertIn("polling the outbox", warnings[0]["log_format"])
        self.assertIn("recording", warnings[1]["log_format"])
        self.assertFalse([e for e in events if "log_failure" in e], events)  # (whichever worker)

    async def test_a_failed_look_up_of_the_webhooks_lets_the_claim_go(self):
        # The worker claims an event, then cannot read its webhook (the
        # database restarting): the event is let go at once (a warning), not
        # held in the worker's count until something claims it again; it is
        # delivered once its lease ends.
        receiver = Receiver()
        url = listen(self, receiver)
        app, client = await self.app_with(webhooks__lease_seconds="3")
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        worker = webhooks.worker_of(app.registry)
        real = worker._webhooks
        refused: list = []

        async def look_up(targets):
            if not refused:
                refused.append(targets)
                raise BackendUnavailable()
            return await real(targets)

        worker._webhooks = look_up
        await self._ok(client.put("/v1/buckets/b/collections/c/records/r1", {"data": {}}))
        await wait_for(lambda: refused)
        await sleep(0.3)
        self.assertEqual(worker.inflight, {})
        await wait_for(lambda: receiver.accepted, timeout=20)

    async def test_target_checked_again_at_delivery(self):
        # The host resolved to a public address when the webhook was made,
        # and to loopback at delivery (DNS rebinding): nothing is sent.
        receiver = Receiver()
        url = listen(self, receiver)
        port = url.split(":")[2].split("/")[0]
        answers = iter([["93.184.216.34"]])

        async def rebinding(reactor, host, port_, timeout):
            return next(answers, ["127.0.0.1", "::1"])

        self.patch(webhooks, "resolve", rebinding)
        app, client = await self.app_with(webhooks__allow_private_targets="false")
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": f"http://hooks.example:{port}/hook"}}))
        await self._ok(client.put("/v1/buckets/b/collections/c/records/r1", {"data": {}}))

        async def tried():
            rows = await self.deliveries(client)
            return rows and rows[0]["log"] and rows[0]["log"]

        log = await wait_for(tried)
        self.assertIn("no address webhooks may reach", log[0]["error"])
        self.assertIsNone(log[0]["status_code"])
        self.assertEqual(receiver.calls, [])

    async def test_slow_receiver_never_slows_requests(self):
        receiver = Receiver(delay=30)
        url = listen(self, receiver)
        app, client = await self.app_with(webhooks__timeout_seconds="0.5", webhooks__concurrency="2",
                                          webhooks__retry_base_seconds="5")
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        started = time.monotonic()
        for n in range(30):
            await self._ok(client.put(f"/v1/buckets/b/collections/c/records/r{n}", {"data": {}}))
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 3.0)  # 30 writes, while every delivery hangs

        async def timed_out():
            rows = await self.deliveries(client)
            logs = [a for r in rows for a in r["log"]]
            return len(logs) >= 2 and logs

        logs = await wait_for(timed_out)
        self.assertTrue(all("timed out" in a["error"] for a in logs), logs)
        self.assertTrue(all(400 <= a["latency_ms"] < 2000 for a in logs), logs)
        # The next ones were sent (their requests reach the receiver a moment
        # after the attempts before them were logged), but at most
        # `concurrency` deliveries were ever in flight (each times out and its
        # connection is closed before the next starts).
        await wait_for(lambda: len(receiver.calls) >= 4)
        self.assertLessEqual(receiver.most_in_flight, 2)

    async def test_a_quick_receiver_gets_its_requests_pipelined_each_event_once(self):
        # A receiver that reads the requests as they come (several may arrive in one read) and
        # answers each at once: after its first answers, the worker writes several requests at a
        # time on one connection. Every event still arrives once, and is logged delivered once.
        server = Factory.forProtocol(Pipelined)
        server.connections, server.bodies, server.reads = [], [], []
        server.answer = lambda body: b"HTTP/1.1 204 No Content\r\n\r\n"
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        app, client = await self.app_with()
        url = f"http://127.0.0.1:{port.getHost().port}/hook"
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        written = 0
        for _ in range(4):
            batch = [{"method": "PUT", "path": f"/buckets/b/collections/c/records/r{written + n}", "body": {"data": {}}}
                     for n in range(25)]
            await self._ok(client.post("/v1/batch", {"requests": batch}))
            written += 25
            await wait_for(lambda written=written: len(server.bodies) >= written)
        await wait_for(lambda: all(not c.exchanges for c in webhooks.worker_of(app.registry).http_pool._open))
        ids = [jsonutil.loads(body)["id"] for body in server.bodies]
        self.assertEqual(len(ids), written)
        self.assertEqual(len(set(ids)), written)
        self.assertGreater(max(server.reads), 1, server.reads)  # pipelined
        self.assertLess(len(server.connections), written)

        async def all_delivered():
            rows = await self.deliveries(client)
            return len(rows) == written and all(r["status"] == "delivered" and r["attempts"] == 1 for r in rows)

        await wait_for(all_delivered)

    async def test_a_receiver_that_ignores_pipelined_requests_gets_one_at_a_time(self):
        # Pipelined requests after the first of a read are never answered: they time out (once
        # each at most), and the receiver gets its requests one at a time from then on.
        server = Factory.forProtocol(FirstOfEachRead)
        server.connections, server.requests, server.answered = 0, 0, []
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        app, client = await self.app_with(webhooks__timeout_seconds="0.5")
        url = f"http://127.0.0.1:{port.getHost().port}/hook"
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        for round_ in range(3):
            batch = [{"method": "PUT", "path": f"/buckets/b/collections/c/records/r{round_}-{n}", "body": {"data": {}}}
                     for n in range(20)]
            await self._ok(client.post("/v1/batch", {"requests": batch}))

            async def all_delivered(expected=20 * (round_ + 1)):
                rows = await self.deliveries(client)
                return len(rows) == expected and all(r["status"] == "delivered" for r in rows) and rows

            rows = await wait_for(all_delivered)
        attempts = collections.Counter(r["attempts"] for r in rows)
        self.assertLessEqual(set(attempts), {1, 2}, attempts)
        timeouts = [a for r in rows for a in r["log"] if a["error"] and "timed out" in a["error"]]
        self.assertEqual(len(timeouts), attempts[2])
        self.assertTrue(timeouts)  # (it was pipelined, after the first quick answers)
        self.assertEqual(len({e["id"] for e in server.answered}), 60)


    async def test_a_slow_receiver_gets_few_connections_and_holds_up_no_other(self):
        # Two webhooks hear every record: one's receiver answers after 0.2 s, the other's at
        # once. With 4 requests in flight in all, at most 2 connections per receiver: the slow
        # receiver never has more than 2 open, and the quick one's events do not queue behind
        # the slow one's (they would with one queue for all: its slots all taken by the slow).
        slow, quick = Factory.forProtocol(Delayed), Factory.forProtocol(Delayed)
        for server, delay in ((slow, 0.2), (quick, 0.0)):
            server.delay, server.open, server.most, server.ids, server.calls = delay, 0, 0, [], []
            self.addCleanup(lambda server=server: [c.cancel() for c in server.calls if c.active()])
        ports = [reactor.listenTCP(0, server, interface="127.0.0.1") for server in (slow, quick)]
        for port in ports:
            self.addCleanup(port.stopListening)
        app, client = await self.app_with(webhooks__concurrency="4", webhooks__connections_per_receiver="2",
                                          webhooks__lease_seconds="60")  # (claims of all 40 events at once)
        for name, port in zip(("slow", "quick"), ports, strict=True):
            url = f"http://127.0.0.1:{port.getHost().port}/hook"
            await self._ok(client.put(f"/v1/buckets/b/webhooks/{name}", {"data": {"url": url}}))
        batch = [{"method": "PUT", "path": f"/buckets/b/collections/c/records/r{n}", "body": {"data": {}}}
                 for n in range(20)]
        await self._ok(client.post("/v1/batch", {"requests": batch}))
        await wait_for(lambda: len(quick.ids) >= 20)
        self.assertLess(len(slow.ids), 8, slow.ids)  # (2 at a time, 0.2 s each: 20 take 2 s)
        await wait_for(lambda: len(slow.ids) >= 20, timeout=20)
        self.assertEqual(slow.most, 2)
        for server in (slow, quick):
            self.assertEqual(len(set(server.ids)), 20)
            self.assertEqual(len(server.ids), 20)  # each once

    async def test_requests_that_waited_for_a_connection_time_out_as_such(self):
        # A quick receiver (so its requests go four at a time, pipelined) closes its idle
        # connection, then stops answering. With one connection allowed, of four events the
        # first goes on a new connection and three wait for it; all time out together. The
        # sweep cancels them all at once: the three never reached the receiver (no connection
        # is opened for one of them, only to be cancelled a moment later) and say so.
        server = Factory.forProtocol(Moody)
        server.open, server.most, server.hang, server.received, server.transports = 0, 0, False, [], []
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        app, client = await self.app_with(webhooks__connections_per_receiver="1", webhooks__timeout_seconds="0.5",
                                          webhooks__retry_base_seconds="30")
        url = f"http://127.0.0.1:{port.getHost().port}/hook"
        await self._ok(client.put("/v1/buckets/b/webhooks/w1", {"data": {"url": url}}))
        for n in range(8):
            await self._ok(client.put(f"/v1/buckets/b/collections/c/records/q{n}", {"data": {}}))
        await wait_for(lambda: len(server.received) >= 8)
        policy = webhooks.worker_of(app.registry).pipelining
        await wait_for(lambda: any(policy.depth(key) > 1 for key in list(policy._latency)))  # (quick: piped)
        server.hang = True
        for transport in server.transports:
            transport.loseConnection()
        await wait_for(lambda: server.open == 0)
        batch = [{"method": "PUT", "path": f"/buckets/b/collections/c/records/h{n}", "body": {"data": {}}}
                 for n in range(4)]
        await self._ok(client.post("/v1/batch", {"requests": batch}))

        async def four_timed_out():
            rows = [r for r in await self.deliveries(client) if r["log"] and r["log"][0]["error"]]
            return len(rows) == 4 and rows

        rows = await wait_for(four_timed_out)
        errors = sorted(r["log"][0]["error"] for r in rows)
        self.assertEqual(errors, ["timed out after 0.5 s"] + ["timed out after 0.5 s, waiting for a connection to the receiver"] * 3)
        self.assertEqual(len(server.received), 9)  # (the eight quick ones and the first of the four)
        self.assertEqual(server.most, 1)


class Moody(Counted):
    """Answers at once until C{factory.hang}, then never; keeps its connections in C{factory.transports}."""

    def connectionMade(self):
        super().connectionMade()
        self.factory.transports.append(self.transport)

    def received(self, body):
        self.factory.received.append(body)
        if not self.factory.hang:
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


class Delayed(Counted):
    """A receiver that answers each request C{factory.delay} seconds after it came."""

    def received(self, body):
        self.factory.ids.append(jsonutil.loads(body)["id"])
        self.factory.calls.append(
            reactor.callLater(self.factory.delay, self.transport.write, b"HTTP/1.1 204 No Content\r\n\r\n"))


class FirstOfEachRead(Protocol):
    """A receiver that answers the first request of each read and silently ignores the others."""

    def connectionMade(self):
        self.factory.connections += 1

    def dataReceived(self, data):
        heads = data.split(b"POST ")[1:]
        self.factory.requests += len(heads)
        if heads:
            self.factory.answered.append(jsonutil.loads(b"{" + heads[0].split(b"\r\n\r\n{", 1)[1]))
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


class PipeliningPolicyTests(TestCase):
    """Which receivers get pipelined requests: those that answer quickly, as their answers tell."""

    memory_only = True  # no storage

    def test_quick_receivers_are_pipelined_slow_ones_are_not(self):
        policy = webhooks.Pipelining(16)
        quick, slow = ("http", "127.0.0.1", 1, "a"), ("http", "127.0.0.1", 2, "b")
        self.assertEqual((policy.depth(quick), policy.depth(slow)), (1, 1))  # not heard from yet
        policy.answered(quick, 0.002)
        policy.answered(slow, 0.2)
        self.assertEqual((policy.depth(quick), policy.depth(slow)), (16, 1))
        # One slow answer among quick ones (a pause) does not end it...
        policy.answered(quick, 0.3)
        self.assertEqual(policy.depth(quick), 16)
        # ...answers that stay slow do (pipelined requests wait on each other).
        for _ in range(10):
            policy.answered(quick, 0.3)
        self.assertEqual(policy.depth(quick), 1)
        # Between the two thresholds nothing changes; quick again, pipelined again.
        for _ in range(40):
            policy.answered(quick, 0.05)
        self.assertEqual(policy.depth(quick), 1)
        for _ in range(40):
            policy.answered(quick, 0.001)
        self.assertEqual(policy.depth(quick), 16)
        self.assertEqual(webhooks.Pipelining(1).depth(quick), 1)

    def test_timeouts_end_pipelining_and_three_spells_end_it_for_good(self):
        policy = webhooks.Pipelining(8)
        key = ("http", "127.0.0.1", 1, "a")
        for spell in range(3):
            for _ in range(60):
                policy.answered(key, 0.001)
            self.assertEqual(policy.depth(key), 8, spell)
            for _ in range(5):  # a spell's requests time out together: one strike
                policy.timed_out(key)
            self.assertEqual(policy.depth(key), 1)
            for _ in range(10):
                policy.answered(key, 0.001)
            self.assertEqual(policy.depth(key), 1)  # quick for a while first
        for _ in range(200):
            policy.answered(key, 0.001)
        self.assertEqual(policy.depth(key), 1)  # never again


with_postgresql_variants(globals())


class OutboxRollbackTests(TestCase):
    """The outbox rows of a transaction go with its rollback, on both backends."""

    async def check(self, storage):
        outbox = storage.outbox
        txn = storage.transaction()
        await storage.create(txn, "thing", "/p", {"id": "a"})
        await outbox.append(txn, [{"id": "m1", "target": "/t", "body": "{}"}])
        await txn.rollback()
        txn = storage.transaction()
        await storage.create(txn, "thing", "/p", {"id": "b"})
        await outbox.append(txn, [{"id": "m2", "target": "/t", "body": "{}"}])
        self.assertEqual([m["id"] for m in await outbox.claim(10, 5, "w")], [])  # not committed yet
        await txn.commit()
        claimed = await outbox.claim(10, 5, "w")
        self.assertEqual([m["id"] for m in claimed], ["m2"])
        self.assertEqual(await outbox.claim(10, 5, "other"), [])  # leased
        self.assertFalse(await outbox.complete("m2", "not-the-token", {}))
        self.assertTrue(await outbox.complete("m2", claimed[0]["token"], {"status_code": 200}))
        rows = await outbox.deliveries("/t", 10)
        self.assertEqual([(r["id"], r["status"], r["attempts"]) for r in rows], [("m2", "delivered", 1)])

    async def test_memory(self):
        from jsonsync.storage.memory import MemoryStorage

        await self.check(MemoryStorage())

    async def test_postgresql(self):
        if SKIP:
            self.skipTest(SKIP)
        from tests.pg import open_backend

        storage, _ = await open_backend(self)
        await self.check(storage)


class PostgresEventLogTests(TestCase):
    """
    The PostgreSQL outbox reads events by commit, not by insertion: the
    cases a cursor over an insertion order would get wrong.
    """

    skip = SKIP

    async def outbox(self):
        from tests.pg import open_backend

        storage, _ = await open_backend(self)
        return storage, storage.outbox

    async def append(self, storage, txn, *ids, target="/t"):
        await storage.outbox.append(txn, [{"id": i, "target": target, "body": f'{{"n":"{i}"}}'} for i in ids])
        await storage.get(txn, "thing", "/p", "x")  # sends the deferred insert now

    async def drain(self, outbox, limit=100, worker="w"):
        """Claims and completes until nothing is due; returns the ids in delivery order."""
        seen = []
        while True:
            claimed = await outbox.claim(limit, 30, worker)
            if not claimed:
                return seen
            seen += [m["id"] for m in claimed]
            await outbox.complete_many([(m["id"], m["token"], {"status_code": 200}) for m in claimed])

    async def test_a_transaction_that_commits_last_is_not_skipped(self):
        storage, outbox = await self.outbox()
        # The webhook's cursor exists (it comes with the webhook; here with a first event).
        txn = storage.transaction()
        await self.append(storage, txn, "zero")
        await txn.commit()
        self.assertEqual(await self.drain(outbox), ["zero"])
        first = storage.transaction()
        await self.append(storage, first, "early")  # inserted first (lower seq, older xid) ...
        second = storage.transaction()
        await self.append(storage, second, "late")
        await second.commit()
        self.assertEqual(await self.drain(outbox), ["late"])
        await first.commit()  # ... committed last
        self.assertEqual(await self.drain(outbox), ["early"])
        rows = await outbox.deliveries("/t", 10)
        self.assertEqual(
            sorted((r["id"], r["status"]) for r in rows), [("early", "delivered"), ("late", "delivered"), ("zero", "delivered")]
        )

    async def test_windows_read_in_parts_lose_nothing(self):
        storage, outbox = await self.outbox()
        txn = storage.transaction()
        ids = [f"m{n:02}" for n in range(25)]
        await self.append(storage, txn, *ids)
        await txn.commit()
        claimed = await outbox.claim(10, 30, "w")
        self.assertEqual([m["id"] for m in claimed], ids[:10])
        self.assertEqual(await outbox.claim(10, 30, "other"), [])  # the window is leased
        await outbox.complete_many([(m["id"], m["token"], {"status_code": 200}) for m in claimed])
        self.assertEqual(await self.drain(outbox, limit=10), ids[10:])

    async def test_a_window_of_both_kinds_read_in_small_parts(self):
        # A window holding events of a transaction that was running when the
        # cursor last moved (in its snapshot's xip list: a later transaction
        # had committed) and of transactions that began after, read two at a time.
        storage, outbox = await self.outbox()
        txn = storage.transaction()
        await self.append(storage, txn, "zero")
        await txn.commit()
        running = storage.transaction()
        await self.append(storage, running, "r1", "r2", "r3")
        before = storage.transaction()
        await self.append(storage, before, "b1")
        await before.commit()
        self.assertEqual(await self.drain(outbox), ["zero", "b1"])  # the cursor moves while `running` runs
        rows, _ = await outbox.pool.run("SELECT pg_snapshot_xip(done)::text FROM jsonsync_webhook_cursors")
        self.assertEqual(len(rows), 1)  # `running` is in the cursor's xip list
        later = storage.transaction()
        await self.append(storage, later, "l1", "l2", "l3")
        await later.commit()
        await running.commit()
        seen = await self.drain(outbox, limit=2)
        self.assertEqual(sorted(seen), ["l1", "l2", "l3", "r1", "r2", "r3"])  # each once
        self.assertEqual(seen[:3], ["r1", "r2", "r3"])  # the older transaction's first
        rows = await outbox.deliveries("/t", 10)
        self.assertEqual({r["status"] for r in rows}, {"delivered"})
        self.assertEqual(len(rows), 8)

    async def test_a_lease_that_ends_gives_the_window_to_another_worker(self):
        storage, outbox = await self.outbox()
        txn = storage.transaction()
        await self.append(storage, txn, "a", "b")
        await txn.commit()
        claimed = await outbox.claim(10, 1, "dies")
        self.assertEqual(len(claimed), 2)
        await sleep(1.2)
        again = await outbox.claim(10, 30, "takes-over")
        self.assertEqual([m["id"] for m in again], ["a", "b"])  # delivered again: at least once
        # The first worker's late ends change nothing; the second's settle the window.
        self.assertFalse(await outbox.complete_many([(m["id"], m["token"], {"status_code": 200}) for m in claimed]))
        self.assertEqual(
            await outbox.complete_many([(m["id"], m["token"], {"status_code": 200}) for m in again]), 2
        )
        self.assertEqual(await self.drain(outbox), [])

    async def test_failures_go_to_retries_and_back(self):
        storage, outbox = await self.outbox()
        txn = storage.transaction()
        await self.append(storage, txn, "ok", "bad", "gone")
        await txn.commit()
        claimed = {m["id"]: m for m in await outbox.claim(10, 30, "w")}
        ends = [
            Deferred.fromCoroutine(outbox.complete("ok", claimed["ok"]["token"], {"status_code": 200})),
            Deferred.fromCoroutine(outbox.reschedule("bad", claimed["bad"]["token"], 0, {"status_code": 503})),
            Deferred.fromCoroutine(outbox.discard("gone", claimed["gone"]["token"])),
        ]
        for d in ends:
            self.assertTrue(await d)
        retried = await outbox.claim(10, 30, "w")
        self.assertEqual([(m["id"], m["attempts"]) for m in retried], [("bad", 2)])
        self.assertTrue(await outbox.complete("bad", retried[0]["token"], {"status_code": 200}))
        rows = {r["id"]: r for r in await outbox.deliveries("/t", 10)}
        self.assertEqual(set(rows), {"ok", "bad"})  # a discarded event is not in the log
        self.assertEqual([a["status_code"] for a in rows["bad"]["log"]], [503, 200])
        self.assertEqual((rows["ok"]["status"], rows["ok"]["attempts"]), ("delivered", 1))
        # Sent again on demand, from the log.
        self.assertTrue(await outbox.redeliver("/t", "ok"))
        again = await outbox.claim(10, 30, "w")
        self.assertEqual([(m["id"], m["attempts"]) for m in again], [("ok", 2)])
        self.assertFalse(await outbox.redeliver("/t", "never-written"))

    async def test_redelivering_an_event_not_yet_sent_sends_it_once(self):
        storage, outbox = await self.outbox()
        txn = storage.transaction()
        await self.append(storage, txn, "first")
        await txn.commit()
        self.assertEqual(await self.drain(outbox), ["first"])
        txn = storage.transaction()
        await self.append(storage, txn, "soon")
        await txn.commit()
        self.assertTrue(await outbox.redeliver("/t", "soon"))  # pending already: on its way
        outbox._next_retry_check = 0.0
        self.assertEqual(await self.drain(outbox), ["soon"])


class GroupWriteEventsTests(TestCase):
    """
    On PostgreSQL the group write of records (a request's whole
    transaction) writes its webhooks' events in its own statement, and the
    row trigger writes those of every other write: both write the same
    events, and never both for one change.
    """

    skip = SKIP

    async def setUp(self):
        from tests.pg import open_backend

        self.storage, _ = await open_backend(self)
        await self.storage.outbox.fan_out()

    async def hooks(self, bucket):
        """Webhooks of C{bucket} that hear all, deletions only, another collection; one of collection c."""
        txn = self.storage.transaction()
        for wid, data in (("all", {}), ("gone", {"actions": ["delete"]}), ("other", {"collection": "x"})):
            await self.storage.create(txn, "webhook", f"/buckets/{bucket}", {"id": wid, **data})
        await self.storage.create(
            txn, "collection_webhook", f"/buckets/{bucket}/collections/c", {"id": "mine", "actions": ["create"]}
        )
        await txn.commit()

    async def changes(self, bucket, group):
        """Create, update, delete, create again, create another: one transaction each."""
        parent = f"/buckets/{bucket}/collections/c"

        async def one(write):
            txn = self.storage.transaction()
            txn.last_write = group  # the group write when the write is the whole transaction
            await write(txn)
            await txn.commit()

        await one(lambda t: self.storage.create(t, "record", parent, {"id": "r1", "n": 1}))
        await one(lambda t: self.storage.update(t, "record", parent, "r1", {"n": 2}))
        await one(lambda t: self.storage.delete(t, "record", parent, "r1"))
        await one(lambda t: self.storage.create(t, "record", parent, {"id": "r1", "n": 3}))
        await one(lambda t: self.storage.create(t, "record", parent, {"id": "r2", "n": "é\"}"}))

    async def events(self, bucket):
        """
        The events written for C{bucket}'s webhooks, by transaction and
        target (each target's events are a stream of their own), the
        bucket's name and timestamps taken out.
        """
        rows, _ = await self.storage.pool.run(
            "SELECT target, body FROM jsonsync_webhook_events WHERE target LIKE %s ORDER BY xid, target, seq",
            (f"/buckets/{bucket}/%",),
        )
        found = []
        for target, body in rows:
            event = jsonutil.loads(body)
            self.assertEqual(event["timestamp"], event["data"]["last_modified"])
            for part in (event, event["data"], event.get("old", {})):
                part.pop("timestamp", None)
                part.pop("last_modified", None)
            self.assertEqual(event.pop("bucket_id"), bucket)
            for key in ("uri", "webhook"):
                event[key] = event[key].replace(f"/buckets/{bucket}/", "/buckets/B/", 1)
            found.append((target.replace(f"/buckets/{bucket}/", "/buckets/B/", 1), event))
        return found

    def summary(self, events):
        return [(target.rsplit("/", 1)[1], e["action"], e["data"]["id"], e["data"].get("n")) for target, e in events]

    async def test_the_group_write_and_the_trigger_write_the_same_events_once(self):
        await self.hooks("g")
        await self.hooks("t")
        await self.changes("g", group=True)
        await self.changes("t", group=False)
        by_group, by_trigger = await self.events("g"), await self.events("t")
        self.assertEqual(
            self.summary(by_group),
            [
                ("mine", "create", "r1", 1), ("all", "create", "r1", 1),
                ("all", "update", "r1", 2),
                ("all", "delete", "r1", None), ("gone", "delete", "r1", None),
                ("mine", "create", "r1", 3), ("all", "create", "r1", 3),
                ("mine", "create", "r2", 'é"}'), ("all", "create", "r2", 'é"}'),
            ],
        )
        self.assertEqual(by_group, by_trigger)
        deleted = [e for _, e in by_group if e["action"] == "delete"]
        self.assertEqual(deleted[0]["old"], {"id": "r1", "n": 2})
        self.assertEqual(deleted[0]["uri"], "/buckets/B/collections/c/records/r1")
        self.assertEqual(deleted[0]["collection_id"], "c")

    async def test_writes_sent_together_have_their_events_once_in_order(self):
        # Requests writing one list at once share its group statements: their
        # events come out of one statement each group, in timestamp order; a
        # group with a refused create runs again one write at a time, and only
        # what committed has events.
        from jsonsync.errors import ObjectExists

        await self.hooks("g")
        parent = "/buckets/g/collections/c"
        txn = self.storage.transaction()
        await self.storage.create(txn, "record", parent, {"id": "taken"})
        await txn.commit()

        async def create(rid):
            txn = self.storage.transaction()
            txn.last_write = True
            try:
                return await self.storage.create(txn, "record", parent, {"id": rid})
            except ObjectExists:
                await txn.rollback()
                return None

        ids = [f"r{n}" for n in range(12)]
        ids.insert(7, "taken")  # refused: its group runs again, write by write
        stored = await gatherResults([Deferred.fromCoroutine(create(rid)) for rid in ids])
        self.assertEqual([s is None for s in stored], [rid == "taken" for rid in ids])
        rows, _ = await self.storage.pool.run(
            "SELECT xid::text, body FROM jsonsync_webhook_events WHERE target = '/buckets/g/webhooks/all'"
            " ORDER BY xid, seq"
        )
        events = [(xid, jsonutil.loads(body)) for xid, body in rows]
        self.assertEqual([e["data"]["id"] for _, e in events][0], "taken")  # the record written first
        created = [(xid, e) for xid, e in events[1:]]
        self.assertEqual(sorted(e["data"]["id"] for _, e in created), sorted(ids[:7] + ids[8:]))  # each once
        stamps = [e["timestamp"] for _, e in created]
        self.assertEqual(stamps, sorted(stamps))
        per_statement = collections.Counter(xid for xid, _ in created)
        self.assertGreater(max(per_statement.values()), 1)  # some went together
        by_stamp = {s["id"]: s["last_modified"] for s in stored if s is not None}
        self.assertEqual({e["data"]["id"]: e["timestamp"] for _, e in created}, by_stamp)

    async def test_the_group_write_writes_its_events_without_the_trigger(self):
        await self.storage.pool.run("ALTER TABLE objects DISABLE TRIGGER jsonsync_webhook_fanout")
        self.addCleanup(self.storage.pool.run, "ALTER TABLE objects ENABLE TRIGGER jsonsync_webhook_fanout")
        await self.hooks("g")
        await self.changes("g", group=True)
        # All but the deletion, which is no group write (the trigger's, off here).
        self.assertEqual(
            self.summary(await self.events("g")),
            [
                ("mine", "create", "r1", 1), ("all", "create", "r1", 1),
                ("all", "update", "r1", 2),
                ("mine", "create", "r1", 3), ("all", "create", "r1", 3),
                ("mine", "create", "r2", 'é"}'), ("all", "create", "r2", 'é"}'),
            ],
        )


class ProcessTests(TestCase):
    """Real `twist jsonsync` processes on one PostgreSQL database."""

    skip = SKIP
    timeout = 240

    def settings(self, url: str) -> tuple[str, ...]:
        return (
            "includes=webhooks", "webhooks.allow_private_targets=true", "webhooks.poll_interval_seconds=0.05",
            "webhooks.retry_base_seconds=0.2", "webhooks.timeout_seconds=3", "webhooks.lease_seconds=4",
            "webhooks.concurrency=8",
        )

    async def prepare(self, client, base, url):
        await client.call("PUT", base + "/buckets/b", {})
        await client.call("PUT", base + "/buckets/b/collections/c", {})
        r, body = await client.call("PUT", base + "/buckets/b/webhooks/w1", {"data": {"url": url, "collection": "c"}})
        self.assertEqual(r.code, 201, body)

    async def test_two_processes_claim_each_event_once(self):
        db = await scratch_url(self)
        receiver = Receiver(fail_first=1, delay=0.05)  # every event delivered twice: once failed, once accepted
        url = listen(self, receiver)
        servers = ServerProcesses(self, db, *self.settings(db))
        client = _Client(self)
        started = [servers.start(), servers.start()]
        for proc, base in started:
            await servers.wait_ready(base, client.pool, proc)
        await self.prepare(client, started[0][1], url)
        ids = []

        async def write(n):
            base = started[n % 2][1]
            rid = f"r{n}"
            r, body = await client.call("PUT", f"{base}/buckets/b/collections/c/records/{rid}", {"data": {"n": n}})
            self.assertEqual(r.code, 201, body)
            ids.append(rid)

        from twisted.internet.defer import gatherResults

        for chunk in range(0, 200, 20):
            await gatherResults([Deferred.fromCoroutine(write(n)) for n in range(chunk, chunk + 20)])
        await wait_for(lambda: len(receiver.accepted) >= 200, timeout=90)
        await sleep(1.0)
        records = {c["event"]["data"]["id"] for c in receiver.calls}
        self.assertEqual(records, set(ids))
        # Each event: exactly one failed attempt and one accepted, never two at once.
        self.assertEqual(set(receiver.per_event.values()), {2})
        self.assertEqual(set(receiver.accepted.values()), {1})
        attempts = collections.Counter((c["id"], c["headers"]["jsonsync-attempt"]) for c in receiver.calls)
        self.assertEqual(set(attempts.values()), {1})  # no attempt number sent twice
        r, body = await client.call("GET", started[1][1] + "/buckets/b/webhooks/w1/deliveries?_limit=500")
        workers = collections.Counter(a["worker"] for row in body["data"] for a in row["log"])
        self.assertEqual(len(workers), 2, workers)  # both processes delivered
        self.figures = {"events": len(receiver.per_event), "duplicates_accepted": 0, "per_worker": dict(workers)}
        print(f"\ntwo processes: {len(receiver.per_event)} events, attempts per worker {dict(workers)}, "
              f"accepted twice: {sum(1 for v in receiver.accepted.values() if v > 1)}")

    async def test_kill_mid_burst_then_restart(self):
        db = await scratch_url(self)
        receiver = Receiver(delay=0.2)  # deliveries in flight when the server dies
        url = listen(self, receiver)
        servers = ServerProcesses(self, db, *self.settings(db))
        client = _Client(self, persistent=False)
        proc, base = servers.start()
        await servers.wait_ready(base, client.pool, proc)
        await self.prepare(client, base, url)
        acknowledged: set[str] = set()
        sent: set[str] = set()
        stop = [False]

        async def writer(w):
            n = 0
            while not stop[0]:
                rid = f"w{w}-{n}"
                n += 1
                sent.add(rid)
                try:
                    r, _ = await client.call("PUT", f"{base}/buckets/b/collections/c/records/{rid}",
                                             {"data": {"w": w, "n": n}}, timeout=5)
                    if r.code == 201:
                        acknowledged.add(rid)
                except Exception:
                    return

        from twisted.internet.defer import DeferredList

        writers = [Deferred.fromCoroutine(writer(w)) for w in range(8)]
        await wait_for(lambda: len(receiver.calls) >= 30, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop[0] = True
        await DeferredList(writers)
        delivered_before = set(receiver.accepted)
        # Restart on the same port: the new process finds the outbox as it was.
        port = int(base.split(":")[2].split("/")[0])
        proc2, base2 = servers.start(port)
        await servers.wait_ready(base2, client.pool, proc2)
        r, body = await client.call("GET", base2 + "/buckets/b/collections/c/records?_limit=10000")
        committed = {rec["id"] for rec in body["data"]}
        self.assertLessEqual(acknowledged, committed)  # acknowledged writes survived the kill

        def all_committed_delivered():
            got = {c["event"]["data"]["id"] for c in receiver.calls if c["status"] == 200}
            return committed <= got

        await wait_for(all_committed_delivered, timeout=90)
        await sleep(5)  # leases of the killed process's claims end (4 s) and are retried
        delivered_records = {c["event"]["data"]["id"] for c in receiver.calls if c["status"] == 200}
        not_committed = sent - committed
        self.assertEqual(delivered_records, committed)  # nothing for a change that did not commit
        self.assertEqual(delivered_records & not_committed, set())
        duplicates = sum(v - 1 for v in receiver.accepted.values() if v > 1)
        print(f"\nkill -9 mid-burst: {len(sent)} writes sent, {len(acknowledged)} acknowledged, "
              f"{len(committed)} committed, {len(not_committed)} not committed; "
              f"{len(delivered_before)} events delivered before the kill, all {len(committed)} committed "
              f"changes delivered after restart, 0 for uncommitted; duplicates (redelivered after the crash): "
              f"{duplicates}")
