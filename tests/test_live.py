"""
The live change feed (the C{live} plugin) over real sockets: Server-Sent
Events read by a browser-like client (an SSE parser on a streamed body),
backlog then live with no gap and no duplicate, resume with
C{Last-Event-ID}, filters and C{_fields}, tombstones, permissions changed
mid-stream, back-pressure, the sync horizon (list and feed), and bad input
(Kinto errors, never a 5xx). Every test runs on memory and on PostgreSQL.
"""

from __future__ import annotations

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from jsonsync import jsonutil
from jsonsync.plugins.live import hub_of
from jsonsync.testclient import basic, basicauth_id, serve_over_tcp, with_postgresql_variants

RECORDS = "/v1/buckets/b/collections/c/records"
ALICE = basic("alice")
BOB = basic("bob")


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class SSEClient(Protocol):
    """What a browser's EventSource parses: events (id, event, data) separated by blank lines."""

    def __init__(self):
        self.buffer = b""
        self.events: list[dict] = []
        self.comments = 0
        self.closed: Deferred = Deferred()
        self.raw = 0

    def dataReceived(self, data: bytes) -> None:
        self.raw += len(data)
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            event: dict = {"event": "message"}
            data_lines = []
            for line in block.split(b"\n"):
                if line.startswith(b":"):
                    self.comments += 1
                    continue
                name, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if name == b"data":
                    data_lines.append(value)
                elif name in (b"id", b"event", b"retry"):
                    event[name.decode()] = value.decode()
            if data_lines:
                event["data"] = jsonutil.loads(b"\n".join(data_lines))
                self.events.append(event)

    def connectionLost(self, reason=None) -> None:
        if not self.closed.called:
            self.closed.callback(None)

    # -- for the tests
    def records(self) -> list[dict]:
        return [e for e in self.events if e["event"] == "message"]

    def close(self) -> None:
        self.transport.stopProducing()


class LiveCase(TestCase):
    settings: dict = {"includes": "live", "live.heartbeat_seconds": "0.2", "live.poll_seconds": "60"}

    async def setUp(self) -> None:  # type: ignore[override]
        self.app, self.base, self.pool = await serve_over_tcp(self, dict(self.settings))
        self.agent = Agent(reactor, pool=self.pool)
        await self.call("PUT", "/v1/buckets/b", {"permissions": {"read": []}})
        await self.call("PUT", "/v1/buckets/b/collections/c", {})

    async def call(self, method, path, body=None, auth=ALICE, headers=None, status=(200, 201)):
        sent = {"Authorization": [auth]} if auth else {}
        if body is not None:
            sent["Content-Type"] = ["application/json"]
        for k, v in (headers or {}).items():
            sent[k] = [v]
        r = await treq.request(method, self.base + path, headers=sent, pool=self.pool,
                               data=jsonutil.dumps(body) if body is not None else None)
        raw = await r.content()
        result = (r.code, jsonutil.loads(raw) if raw else None, r)
        if status is not None:
            self.assertIn(r.code, status if isinstance(status, tuple) else (status,), raw)
        return result

    async def write(self, rid, data, auth=ALICE):
        _, body, _ = await self.call("PUT", f"{RECORDS}/{rid}", {"data": data}, auth=auth)
        return body["data"]

    async def open(self, query="", auth=ALICE, last_id=None, expect=200) -> SSEClient:
        headers = Headers({"Accept": ["text/event-stream"]})
        if auth:
            headers.addRawHeader("Authorization", auth)
        if last_id is not None:
            headers.addRawHeader("Last-Event-ID", str(last_id))
        response = await self.agent.request(b"GET", (self.base + RECORDS + query).encode(), headers)
        client = SSEClient()
        if response.code != 200:
            client.status = response.code  # type: ignore[attr-defined]
            client.body = jsonutil.loads(await treq.content(response))  # type: ignore[attr-defined]
            self.assertEqual(response.code, expect, client.body)  # type: ignore[attr-defined]
            return client
        self.assertEqual(expect, 200)
        self.assertTrue(response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/event-stream"))
        response.deliverBody(client)
        self.addCleanup(self._close, client)
        return client

    async def _close(self, client: SSEClient) -> None:
        if not client.closed.called:
            client.close()
        await client.closed
        await sleep(0.01)

    async def until(self, check, timeout=5.0):
        for _ in range(int(timeout / 0.01)):
            if check():
                return
            await sleep(0.01)
        self.fail("condition not met in time")

    async def ready(self, client):
        await self.until(lambda: any(e["event"] == "ready" for e in client.events))



class LiveTests(LiveCase):
    async def test_backlog_then_live_in_commit_order_with_tombstones(self):
        r1 = await self.write("r1", {"n": 1})
        await self.write("r2", {"n": 2})
        client = await self.open(f"?_since={r1['last_modified'] - 1}")
        await self.ready(client)
        self.assertEqual([e["data"]["id"] for e in client.records()], ["r1", "r2"])
        r3 = await self.write("r3", {"n": 3})
        await self.call("DELETE", f"{RECORDS}/r1")
        await self.until(lambda: len(client.records()) == 4)
        events = client.records()
        self.assertEqual(events[2]["data"], r3)
        self.assertEqual(events[2]["id"], str(r3["last_modified"]))
        self.assertEqual(events[3]["data"]["id"], "r1")
        self.assertTrue(events[3]["data"]["deleted"])
        ids = [int(e["id"]) for e in events]
        self.assertEqual(ids, sorted(ids))
        # Each event is what the _since listing shows.
        _, listed, _ = await self.call("GET", f"{RECORDS}?_since={r1['last_modified'] - 1}&_sort=last_modified")
        self.assertEqual([e["data"] for e in events[1:]], listed["data"])

    async def test_heartbeats(self):
        client = await self.open()
        await self.ready(client)
        await self.until(lambda: client.comments >= 2)

    async def test_without_cursor_starts_now(self):
        await self.write("old", {})
        client = await self.open()
        await self.ready(client)
        await self.write("new", {})
        await self.until(lambda: len(client.records()) == 1)
        self.assertEqual(client.records()[0]["data"]["id"], "new")

    async def test_resume_with_last_event_id_no_gap_no_duplicate(self):
        client = await self.open()
        await self.ready(client)
        written = [await self.write(f"r{i}", {"i": i}) for i in range(5)]
        await self.until(lambda: len(client.records()) == 5)
        last = client.records()[2]["id"]
        client.close()
        await client.closed
        written += [await self.write(f"s{i}", {"i": i}) for i in range(3)]
        again = await self.open(last_id=last)
        await self.until(lambda: len(again.records()) == 5)
        await sleep(0.1)
        self.assertEqual([e["data"] for e in again.records()], written[3:])

    async def test_writes_racing_the_backlog_are_neither_lost_nor_repeated(self):
        first = await self.write("a0", {})
        for i in range(1, 30):
            await self.write(f"a{i}", {})
        await self.make_small_pages()
        client = await self.open(f"?_since={first['last_modified'] - 1}")
        writes = [await self.write(f"b{i}", {}) for i in range(20)]
        await self.until(lambda: len(client.records()) == 50)
        await sleep(0.2)
        ids = [e["data"]["id"] for e in client.records()]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(ids[-20:], [w["id"] for w in writes])

    async def make_small_pages(self):
        for _name, value in (("live.page_size", 7),):
            hub = hub_of(self.app.registry)
            assert hub is not None
            hub.page = value

    async def test_filters_and_fields_apply(self):
        client = await self.open("?status=done&_fields=title")
        await self.ready(client)
        await self.write("x", {"status": "todo", "title": "no"})
        y = await self.write("y", {"status": "done", "title": "yes", "other": 1})
        await self.until(lambda: len(client.records()) == 1)
        await sleep(0.1)
        self.assertEqual(client.records()[0]["data"], {"id": "y", "last_modified": y["last_modified"], "title": "yes"})

    async def test_shared_later_appears_revoked_ends(self):
        # Bob reads one record of the collection through its own ACL.
        await self.call("PUT", f"{RECORDS}/mine", {"data": {}, "permissions": {"read": [basicauth_id("bob")]}})
        client = await self.open(auth=BOB)
        await self.ready(client)
        await self.write("hidden", {"secret": 1})
        await self.write("later", {"v": 1})
        r = await self.call("PATCH", f"{RECORDS}/later", {"permissions": {"read": [basicauth_id("bob")]}})
        await self.until(lambda: any(e["data"]["id"] == "later" for e in client.records()))
        self.assertNotIn("hidden", [e["data"]["id"] for e in client.records()])
        self.assertEqual(client.records()[-1]["data"], r[1]["data"])
        # Collection-wide read, then taken away: the feed ends with Kinto's 403.
        await self.call("PATCH", "/v1/buckets/b/collections/c", {"permissions": {"read": [basicauth_id("bob")]}})
        await self.write("visible", {})
        await self.until(lambda: any(e["data"]["id"] == "visible" for e in client.records()))
        await self.call("DELETE", f"{RECORDS}/mine")
        await self.call("DELETE", f"{RECORDS}/later")
        await self.call("PUT", "/v1/buckets/b/collections/c", {"data": {}, "permissions": {"read": []}})
        await client.closed
        end = [e for e in client.events if e["event"] == "end"]
        self.assertEqual(len(end), 1, client.events)
        self.assertEqual(end[0]["data"]["code"], 403)
        self.assertEqual(end[0]["data"]["errno"], 121)
        self.assertIn("message", end[0]["data"])

    async def test_each_read_sees_one_state(self):
        """A feed's permission check and page come from one snapshot (PostgreSQL: REPEATABLE READ)."""
        from jsonsync.storage.postgresql import driver

        if self.app.settings["storage_backend"] != "postgresql":
            self.assertFalse(self.app.registry.storage.transaction().snapshot)
            return
        await self.call("PUT", f"{RECORDS}/mine", {"data": {}, "permissions": {"read": [basicauth_id("bob")]}})
        client = await self.open(auth=BOB)
        await self.ready(client)
        sent: list[str] = []
        original = driver.execute

        async def spy(conn, sql, params=None, generation=None, prepare=False, prefix=""):
            sent.append(prefix + sql)
            return await original(conn, sql, params, generation, prepare, prefix)

        self.patch(driver, "execute", spy)
        await self.call("PATCH", f"{RECORDS}/mine", {"data": {"v": 2}})
        await self.until(lambda: len(client.records()) == 1)
        snapshots = [s for s in sent if "ISOLATION LEVEL REPEATABLE READ" in s]
        self.assertTrue(snapshots, sent)

    async def test_collection_deleted_ends_with_404(self):
        client = await self.open()
        await self.ready(client)
        await self.call("DELETE", "/v1/buckets/b/collections/c")
        await client.closed
        end = [e for e in client.events if e["event"] == "end"]
        self.assertEqual(end[0]["data"]["code"], 404)

    async def test_bad_input_is_a_kinto_error(self):
        bad = await self.open(last_id="not-a-number", expect=400)
        self.assertEqual(bad.body["errno"], 107)  # type: ignore[attr-defined]
        self.assertEqual(bad.body["details"][0]["name"], "Last-Event-ID")  # type: ignore[attr-defined]
        bad = await self.open("?_sort=title", expect=400)
        self.assertEqual(bad.body["details"][0]["name"], "_sort")  # type: ignore[attr-defined]
        bad = await self.open("?_since=abc", expect=400)
        self.assertEqual(bad.body["errno"], 107)  # type: ignore[attr-defined]
        bad = await self.open(auth=BOB, expect=403)
        self.assertEqual(bad.body["errno"], 121)  # type: ignore[attr-defined]
        code, body, _ = await self.call(
            "GET", "/v1/buckets/b/collections/nope/records", headers={"Accept": "text/event-stream"}, status=None
        )
        self.assertIn(code, (403, 404))
        self.assertIn("errno", body)
        # Plain JSON reads are unchanged.
        code, body, r = await self.call("GET", RECORDS, headers={"Accept": "application/json"})
        self.assertEqual(body, {"data": []})

    async def test_slow_consumer_ends_with_a_resumable_error(self):
        hub = hub_of(self.app.registry)
        assert hub is not None
        hub.buffer_bytes = 20_000
        client = await self.open()
        await self.ready(client)
        client.transport.pauseProducing()  # the client stops reading its socket
        big = "x" * 100_000
        for i in range(80):
            await self.write(f"big{i}", {"blob": big})
        client.transport.resumeProducing()
        await client.closed
        end = [e for e in client.events if e["event"] == "end"]
        self.assertEqual(end[0]["data"]["code"], 429)
        self.assertEqual(end[0]["data"]["errno"], 117)
        got = client.records()
        self.assertLess(len(got), 80)
        # Resumes from the last id it got, missing nothing.
        again = await self.open(last_id=got[-1]["id"] if got else None)
        if not got:
            return
        await self.until(lambda: len(again.records()) == 80 - len(got), timeout=20)
        self.assertEqual([e["data"]["id"] for e in got + again.records()], [f"big{i}" for i in range(80)])

    async def test_sync_horizon_refuses_an_old_since(self):
        old = await self.write("gone", {})
        await self.call("DELETE", f"{RECORDS}/gone")
        keep = await self.write("keep", {})
        storage = self.app.registry.storage
        if hasattr(storage, "purge_tombstones"):
            await storage.purge_tombstones(keep["last_modified"])
        else:
            await purge_on_postgresql(self.app, keep["last_modified"])
        code, body, _ = await self.call("GET", f"{RECORDS}?_since={old['last_modified']}", status=410)
        self.assertEqual(body["errno"], 107)
        self.assertEqual(body["details"][0]["name"], "_since")
        self.assertIn("from scratch", body["message"])
        refused = await self.open(f"?_since={old['last_modified']}", expect=410)
        self.assertEqual(refused.body["code"], 410)  # type: ignore[attr-defined]
        refused = await self.open(last_id=old["last_modified"], expect=410)
        # At or above the horizon, and without _since, all is as before.
        _, body, r = await self.call("GET", RECORDS)
        etag = r.headers.getRawHeaders("ETag")[0].strip('"')
        await self.call("GET", f"{RECORDS}?_since={etag}")
        client = await self.open(f"?_since={etag}")
        await self.ready(client)

    async def test_hello_advertises_the_feed(self):
        _, body, _ = await self.call("GET", "/v1/")
        live = body["capabilities"]["live"]
        self.assertTrue(live["sse"])
        self.assertIn("tombstones_retention_days", live)
        self.assertTrue(live["sync_horizon"])
        self.assertEqual(live["websocket"], "/v1/live")


class WSClient(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.factory.messages.append(jsonutil.loads(payload))

    def onClose(self, wasClean, code, reason):
        if not self.factory.closed.called:
            self.factory.closed.callback(None)


class WebSocketTests(LiveCase):
    async def connect(self, auth=ALICE):
        url = self.base.replace("http", "ws") + "/v1/live"
        headers = {"Authorization": auth} if auth else {}
        factory = WebSocketClientFactory(url, headers=headers)
        factory.protocol = WSClient
        factory.messages = []
        factory.opened = Deferred()
        factory.closed = Deferred()
        connector = reactor.connectTCP("127.0.0.1", int(self.base.rsplit(":", 1)[1]), factory)
        client = await factory.opened

        async def close():
            if not factory.closed.called:
                client.sendClose()
                await factory.closed
            connector.disconnect()
            await sleep(0.01)

        self.addCleanup(close)
        client.messages = factory.messages
        return client

    def send(self, client, message):
        client.sendMessage(jsonutil.dumps(message), isBinary=False)

    def of(self, client, sid, kind):
        return [m for m in client.messages if m.get("id") == sid and m["type"] == kind]

    def data(self, client, sid):
        return [obj for m in self.of(client, sid, "changes") for obj in m["data"]]

    async def test_many_collections_each_with_its_cursor_and_filters(self):
        await self.call("PUT", "/v1/buckets/b/collections/d", {})
        a1 = await self.write("a1", {"k": 1})
        await self.write("a2", {"k": 2})
        client = await self.connect()
        self.send(client, {"type": "subscribe", "id": "c", "bucket": "b", "collection": "c", "since": a1["last_modified"]})
        self.send(client, {"type": "subscribe", "id": "d", "bucket": "b", "collection": "d",
                           "filters": {"k": 5}, "fields": ["k"]})
        await self.until(lambda: self.of(client, "c", "ready") and self.of(client, "d", "ready"))
        self.assertEqual([o["id"] for o in self.data(client, "c")], ["a2"])
        self.assertEqual(self.data(client, "d"), [])
        await self.call("PUT", "/v1/buckets/b/collections/d/records/x", {"data": {"k": 4, "z": 1}})
        y = (await self.call("PUT", "/v1/buckets/b/collections/d/records/y", {"data": {"k": 5, "z": 1}}))[1]["data"]
        a3 = await self.write("a3", {"k": 3})
        await self.until(lambda: len(self.data(client, "d")) == 1 and len(self.data(client, "c")) == 2)
        self.assertEqual(self.data(client, "d"), [{"id": "y", "last_modified": y["last_modified"], "k": 5}])
        self.assertEqual(self.data(client, "c")[-1], a3)
        self.send(client, {"type": "unsubscribe", "id": "c"})
        await self.until(lambda: self.of(client, "c", "unsubscribed"))
        await self.write("a4", {})
        await self.call("PUT", "/v1/buckets/b/collections/d/records/w", {"data": {"k": 5}})
        await self.until(lambda: len(self.data(client, "d")) == 2)
        self.assertEqual(len(self.data(client, "c")), 2)

    async def test_bad_messages_get_kinto_errors(self):
        client = await self.connect()
        for bad in (b"not json", b"[1]", b'{"type":"nope"}', b'{"type":"subscribe"}',
                    b'{"type":"subscribe","id":"x","bucket":"b","collection":"c","since":"yesterday"}',
                    b'{"type":"subscribe","id":"x","bucket":"b/../c","collection":"c"}'):
            client.sendMessage(bad, isBinary=False)
        await self.until(lambda: len(client.messages) == 6)
        for message in client.messages:
            self.assertEqual(message["type"], "error")
            self.assertEqual(message["error"]["code"], 400)
            self.assertEqual(message["error"]["errno"], 107)
        self.send(client, {"type": "subscribe", "id": "u", "bucket": "b", "collection": "unknown"})
        self.send(client, {"type": "subscribe", "id": "s", "bucket": "b", "collection": "c", "filters": {"_sort": "x"}})
        await self.until(lambda: self.of(client, "u", "end") and (self.of(client, "s", "end") or len(client.messages) > 7))
        self.assertIn(self.of(client, "u", "end")[0]["error"]["code"], (403, 404))

    async def test_permission_from_an_auth_message_and_revocation(self):
        client = await self.connect(auth=None)
        self.send(client, {"type": "subscribe", "id": "c", "bucket": "b", "collection": "c"})
        await self.until(lambda: self.of(client, "c", "end"))
        self.assertEqual(self.of(client, "c", "end")[0]["error"]["code"], 401)
        await self.call("PATCH", "/v1/buckets/b/collections/c", {"permissions": {"read": [basicauth_id("bob")]}})
        self.send(client, {"type": "auth", "authorization": BOB})
        self.send(client, {"type": "subscribe", "id": "c2", "bucket": "b", "collection": "c"})
        await self.until(lambda: self.of(client, "c2", "ready"))
        await self.write("r", {})
        await self.until(lambda: len(self.data(client, "c2")) == 1)
        await self.call("PATCH", "/v1/buckets/b/collections/c", {"permissions": {"read": []}})
        await self.until(lambda: self.of(client, "c2", "end"))
        self.assertEqual(self.of(client, "c2", "end")[0]["error"]["code"], 403)

    async def test_slow_reader_gets_a_resumable_end(self):
        hub = hub_of(self.app.registry)
        assert hub is not None
        hub.buffer_bytes = 20_000
        client = await self.connect()
        self.send(client, {"type": "subscribe", "id": "c", "bucket": "b", "collection": "c"})
        await self.until(lambda: self.of(client, "c", "ready"))
        client.transport.pauseProducing()
        big = "x" * 100_000
        for i in range(80):
            await self.write(f"big{i}", {"blob": big})
        client.transport.resumeProducing()
        await self.until(lambda: self.of(client, "c", "end"), timeout=20)
        end = self.of(client, "c", "end")[0]["error"]
        self.assertEqual((end["code"], end["errno"]), (429, 117))
        got = self.data(client, "c")
        self.assertLess(len(got), 80)
        # Subscribing again from the last cursor gives the rest, once.
        since = self.of(client, "c", "changes")[-1]["cursor"] if got else self.of(client, "c", "ready")[0]["cursor"]
        self.send(client, {"type": "subscribe", "id": "again", "bucket": "b", "collection": "c", "since": since})
        await self.until(lambda: self.of(client, "again", "ready"), timeout=20)
        ids = [o["id"] for o in got + self.data(client, "again")]
        self.assertEqual(ids, [f"big{i}" for i in range(80)])

    async def test_plain_get_is_told_to_upgrade(self):
        code, body, _ = await self.call("GET", "/v1/live", status=426)
        self.assertEqual(body["errno"], 107)


async def purge_on_postgresql(app, before: int) -> None:
    """What `jsonsync purge-deleted` does, on the test database, without its wait."""
    from twisted.internet.threads import deferToThread

    from jsonsync import cli
    from jsonsync.testclient import TEST_POSTGRESQL_URL

    await deferToThread(cli.purge_tombstones, TEST_POSTGRESQL_URL, before, 0)
    app.registry.storage._horizon_read = None  # (the servers' refresh, without waiting for it)


with_postgresql_variants(globals())
