"""
Opening live feeds at scale, over real sockets: feeds of one list with the
same credentials, filters and cursor share their opening read, and each
still gets exactly what its own credentials may read; opening reads wait
in a bounded queue (past it: a quick Kinto 503 with Retry-After, while
plain API requests go on); a feed that leaves while queued frees its
place; a feed joins its group without a read unless a notice came since
its own read. Every test runs on memory and on PostgreSQL.

The opening reads are held back by taking every opening slot of the hub
(L{Hub.open_limit}) in the test, so that the feeds queue deterministically.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from jsonsync.plugins.live import hub_of
from jsonsync.testclient import basicauth_id, with_postgresql_variants
from tests.test_live import ALICE, BOB, RECORDS, LiveCase


class OpeningTests(LiveCase):
    def hub(self):
        hub = hub_of(self.app.registry)
        assert hub is not None
        return hub

    async def hold_slots(self) -> list:
        """Take every opening slot: feeds opened now wait in the queue."""
        hub = self.hub()
        for _ in range(hub.open_limit):
            await hub._slots.acquire()
        released: list = []

        def release():
            if not released:
                released.append(True)
                for _ in range(hub.open_limit):
                    hub._slots.release()

        self.addCleanup(release)
        return [release]

    def opening(self, query="", auth=ALICE) -> Deferred:
        return Deferred.fromCoroutine(self.open(query, auth=auth))

    async def test_past_the_queue_a_quick_503_with_retry_after(self):
        hub = self.hub()
        hub.open_queue = 1
        [release] = await self.hold_slots()
        first = self.opening()
        same = self.opening()  # same list, credentials, filters, cursor: joins the queued read
        await self.until(lambda: hub.stats["opens"] == 2)
        self.assertEqual(len(hub.queued), 1)
        # Another feed (other filters): the queue is full. It is answered
        # now, while every slot is still taken: it did not wait for one.
        code, body, r = await self.call(
            "GET", RECORDS + "?_fields=id", headers={"Accept": "text/event-stream"}, status=503)
        self.assertEqual(body["code"], 503)
        self.assertEqual(body["errno"], 201)
        self.assertEqual(body["error"], "Service Unavailable")
        self.assertIn("Retry-After", body["message"])
        self.assertEqual(r.headers.getRawHeaders("Retry-After"), [str(self.app.settings["retry_after_seconds"])])
        self.assertEqual(hub.stats["refused"], 1)
        # Plain API requests are not held up by the feeds waiting.
        await self.write("r1", {"v": 1})
        _, listed, _ = await self.call("GET", RECORDS)
        self.assertEqual([o["id"] for o in listed["data"]], ["r1"])
        self.assertFalse(first.called or same.called)
        release()
        a, b = await first, await same
        await self.ready(a)
        await self.ready(b)
        self.assertEqual(hub.stats["opening_reads"], 1)
        # Both are live.
        await self.write("r2", {})
        await self.until(lambda: [e["data"]["id"] for e in a.records()] == ["r2"])
        await self.until(lambda: [e["data"]["id"] for e in b.records()] == ["r2"])
        # With room in the queue again, the other feed opens.
        other = await self.open("?_fields=id")
        await self.ready(other)

    async def test_a_feed_leaving_while_queued_frees_its_place(self):
        hub = self.hub()
        hub.open_queue = 1
        [release] = await self.hold_slots()
        leaving = self.opening()
        await self.until(lambda: len(hub.queued) == 1)
        leaving.cancel()  # the client closes its connection before any answer
        self.failureResultOf(leaving)
        await self.until(lambda: not hub.queued)
        waiting = self.opening("?_fields=id")
        await self.until(lambda: len(hub.queued) == 1)
        release()
        client = await waiting
        await self.ready(client)
        self.assertEqual(hub.stats["opening_reads"], 1)

    async def test_a_shared_opening_read_gives_each_feed_what_it_may_read(self):
        hub = self.hub()
        # Alice owns the collection; Bob may read one record of it only.
        await self.write("a1", {"v": 1})
        await self.call("PUT", f"{RECORDS}/mine", {"data": {"v": 2}, "permissions": {"read": [basicauth_id("bob")]}})
        await self.write("a2", {"v": 3})
        [release] = await self.hold_slots()
        pending = [self.opening("?_since=0", auth=auth) for auth in (ALICE, BOB, ALICE, BOB)]
        await self.until(lambda: hub.stats["opens"] == 4)
        release()
        alice1, bob1, alice2, bob2 = [await d for d in pending]
        for client in (alice1, bob1, alice2, bob2):
            await self.ready(client)
        # One read per credentials, not per feed.
        self.assertEqual(hub.stats["opening_reads"], 2)

        def ids(client):
            return [e["data"]["id"] for e in client.records()]

        self.assertEqual(ids(alice1), ["a1", "mine", "a2"])
        self.assertEqual(ids(alice2), ["a1", "mine", "a2"])
        self.assertEqual(ids(bob1), ["mine"])
        self.assertEqual(ids(bob2), ["mine"])
        # Live, each still gets only its own view.
        await self.write("hidden", {})
        await self.call("PATCH", f"{RECORDS}/mine", {"data": {"v": 4}})
        await self.until(lambda: ids(bob1) == ["mine", "mine"] and ids(bob2) == ["mine", "mine"])
        await self.until(lambda: ids(alice1)[3:] == ["hidden", "mine"] and ids(alice2)[3:] == ["hidden", "mine"])
        self.assertNotIn("hidden", ids(bob1) + ids(bob2))

    async def test_a_feed_joins_without_a_read_unless_its_list_moved(self):
        hub = self.hub()
        await self.write("before", {})
        quiet = await self.open()
        await self.ready(quiet)
        self.assertEqual(hub.stats["join_reads"], 0)
        # A write lands after the opening read of a feed, before it joins
        # its group: the join reads, and the write reaches it.
        real_join = hub.join
        held: list = []
        self.patch(hub, "join", held.append)
        late = await self.open(auth=ALICE)
        await self.ready(late)
        await self.until(lambda: len(held) == 1)
        await self.write("between", {})
        real_join(held[0])
        self.assertEqual(hub.stats["join_reads"], 1)
        await self.until(lambda: [e["data"]["id"] for e in late.records()] == ["between"])
        self.assertEqual([e["data"]["id"] for e in quiet.records()], ["between"])

    async def test_a_lost_notice_costs_latency_not_an_event(self):
        hub = self.hub()
        hub.poll_seconds = 0.2
        client = await self.open()
        await self.ready(client)
        # From now on no notice reaches the feed's group (as if lost): the
        # poll, a slice of the groups at a time, still finds the write.
        hub.watchers.clear()
        hub._stop_timers()
        hub._start_timers()
        await self.write("unannounced", {})
        await self.until(lambda: [e["data"]["id"] for e in client.records()] == ["unannounced"])

    async def test_a_database_busy_read_does_not_end_the_feed(self):
        from jsonsync.errors import BackendUnavailable
        from jsonsync.plugins import live

        self.patch(live, "_READ_AGAIN_SECONDS", 0.05)
        client = await self.open()
        await self.ready(client)
        original = live.Reader.read_raw
        failed: list = []

        async def busy_once(reader, since):
            if not failed:
                failed.append(since)
                raise BackendUnavailable("no free database connection after 30.0s")
            return await original(reader, since)

        self.patch(live.Reader, "read_raw", busy_once)
        await self.write("r1", {})
        await self.until(lambda: [e["data"]["id"] for e in client.records()] == ["r1"])
        self.assertEqual(len(failed), 1)
        self.assertEqual([e for e in client.events if e["event"] == "end"], [])
        self.assertFalse(client.closed.called)


with_postgresql_variants(globals())
