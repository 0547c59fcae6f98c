"""
Round trips on the PostgreSQL backend, on a real server: what a request's
writes cost in messages to the database, and that sending less never
commits less (or more) than the request meant.

  - a write nobody waits for (an ACL change) travels with the next
    statement or with the commit;
  - a request's last write carries the commit, so the list lock it takes
    is held for that one round trip;
  - a refused create that carried other writes commits none of them.

Round trips are counted at L{jsonsync.storage.postgresql.driver.execute}, the
one place every statement goes through (its documented hook point); the database itself is real.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, DeferredList
from twisted.trial.unittest import TestCase

from jsonsync.errors import ObjectExists
from jsonsync.query import Query
from jsonsync.storage.postgresql import driver
from jsonsync.testclient import ClientTestCase, basicauth_id
from tests.pg import SKIP, open_backend

R, P = "record", "/buckets/b/collections/c"


class _Counting:
    """Counts the statements sent to PostgreSQL while installed."""

    def install(self, test: TestCase) -> list[str]:
        sent: list[str] = []
        real = driver.execute

        async def counting(conn, sql, *args, **kwargs):
            sent.append(sql)
            return await real(conn, sql, *args, **kwargs)

        test.patch(driver, "execute", counting)
        return sent


class _Fixture(TestCase):
    """A scratch schema holding one record, and a count of the statements sent."""

    skip = SKIP

    async def setUp(self):
        self.storage, self.permissions = await open_backend(self)
        await self.committed(lambda txn: self.storage.create(txn, R, P, {"id": "existing"}))
        self.sent = _Counting().install(self)

    async def committed(self, work):
        txn = self.storage.transaction()
        try:
            result = await work(txn)
        except BaseException:
            await txn.rollback()
            raise
        await txn.commit()
        return result

    async def acl(self, uri):
        return await self.committed(lambda txn: self.permissions.get_object_permissions(txn, uri))


class UnitRoundTripTests(_Fixture):
    async def test_deferred_acl_write_goes_with_the_commit(self):
        txn = self.storage.transaction()
        await self.permissions.replace_object_permissions(txn, "/x", {"write": {"alice"}})
        self.assertEqual(self.sent, [])  # nothing sent yet
        await txn.commit()
        self.assertEqual(len(self.sent), 1)
        self.assertEqual(await self.acl("/x"), {"write": {"alice"}})

    async def test_deferred_write_is_seen_by_the_next_read_of_the_transaction(self):
        txn = self.storage.transaction()
        await self.storage.create(txn, R, P, {"id": "a"})
        await self.permissions.replace_object_permissions(txn, "/a", {"read": {"bob"}})
        self.assertEqual(await self.permissions.get_object_permissions(txn, "/a"), {"read": {"bob"}})
        await txn.rollback()
        self.assertEqual(await self.acl("/a"), {})
        self.assertIsNone(await self.committed(lambda t: self.storage.get(t, R, P, "a")))

    async def test_rollback_drops_deferred_writes(self):
        txn = self.storage.transaction()
        await self.permissions.replace_object_permissions(txn, "/x", {"write": {"alice"}})
        await txn.rollback()
        self.assertEqual(self.sent, [])
        self.assertEqual(await self.acl("/x"), {})

    async def test_last_write_commits_in_the_same_round_trip(self):
        txn = self.storage.transaction()
        calls = []
        txn.after_commit(lambda: calls.append("after"))
        await self.permissions.replace_object_permissions(txn, "/a", {"write": {"alice"}})
        txn.last_write = True
        created = await self.storage.create(txn, R, P, {"id": "a", "v": 1})
        self.assertEqual(len(self.sent), 1)
        self.assertFalse(txn.last_write)
        # Committed already: another connection sees the object and its ACL.
        other = await self.committed(lambda t: self.storage.get(t, R, P, "a"))
        self.assertEqual(other, created)
        self.assertEqual(await self.acl("/a"), {"write": {"alice"}})
        sent = len(self.sent)
        await txn.commit()
        self.assertEqual(len(self.sent), sent)  # nothing left to send
        self.assertEqual(calls, ["after"])
        # And the list timestamp moved with it.
        stamp = await self.committed(lambda t: self.storage.list_timestamp(t, R, P))
        self.assertEqual(stamp, created["last_modified"])

    async def test_refused_create_commits_none_of_what_it_carried(self):
        txn = self.storage.transaction()
        await self.permissions.replace_object_permissions(
            txn, "/existing", {"write": {"mallory"}}
        )
        txn.last_write = True
        with self.assertRaises(ObjectExists):
            await self.storage.create(txn, R, P, {"id": "existing", "evil": True})
        await txn.rollback()
        self.assertEqual(await self.acl("/existing"), {})
        stored = await self.committed(lambda t: self.storage.get(t, R, P, "existing"))
        self.assertNotIn("evil", stored)
        # The connection went back to the pool in a usable state.
        listed = await self.committed(lambda t: self.storage.list(t, R, P, Query()))
        self.assertEqual([o["id"] for o in listed], ["existing"])

    async def test_refused_create_without_last_write_keeps_the_transaction(self):
        # In a batch, one refused create must not spoil its siblings.
        txn = self.storage.transaction()
        await self.storage.create(txn, R, P, {"id": "first"})
        with self.assertRaises(ObjectExists):
            await self.storage.create(txn, R, P, {"id": "existing"})
        await self.storage.create(txn, R, P, {"id": "second"})
        await txn.commit()
        listed = await self.committed(lambda t: self.storage.list(t, R, P, Query()))
        self.assertEqual(sorted(o["id"] for o in listed), ["existing", "first", "second"])

    async def test_last_write_after_earlier_writes_still_commits_everything(self):
        txn = self.storage.transaction()
        await self.storage.create(txn, R, P, {"id": "a"})
        txn.last_write = True
        await self.storage.update(txn, R, P, "existing", {"v": 2})
        await txn.commit()
        self.assertIsNotNone(await self.committed(lambda t: self.storage.get(t, R, P, "a")))
        got = await self.committed(lambda t: self.storage.get(t, R, P, "existing"))
        self.assertEqual(got["v"], 2)

    async def test_client_timestamped_last_write_carries_the_commit(self):
        txn = self.storage.transaction()
        txn.last_write = True
        await self.storage.update(txn, R, P, "existing", {"v": 3, "last_modified": 4_000_000_000_000})
        # The lock-and-read statement, then the write with COMMIT appended.
        self.assertEqual(len(self.sent), 2)
        self.assertIn("COMMIT", self.sent[-1])
        await txn.commit()
        self.assertEqual(len(self.sent), 2)
        got = await self.committed(lambda t: self.storage.get(t, R, P, "existing"))
        self.assertEqual(got["last_modified"], 4_000_000_000_000)


class GroupCommitTests(_Fixture):
    """
    Last writes to one list arriving while another is on its way leave
    together: one statement, one lock, one commit, each request with its
    own outcome.
    """

    async def last_writes(self, writes):
        """Start every C{(uri, acl, write)} at once; return their outcomes in order."""

        async def one(uri, acl, write):
            txn = self.storage.transaction()
            await self.permissions.replace_object_permissions(txn, uri, acl)
            txn.last_write = True
            try:
                result = await write(txn)
            except Exception as exc:
                await txn.rollback()
                return exc
            await txn.commit()
            return result

        calls = [Deferred.fromCoroutine(one(*w)) for w in writes]
        return [outcome for _, outcome in await DeferredList(calls)]

    async def test_concurrent_creates_share_a_statement(self):
        ids = ["g1", "g2", "g3", "g4"]
        outcomes = await self.last_writes(
            [(f"/{i}", {"write": {i}}, lambda txn, i=i: self.storage.create(txn, R, P, {"id": i})) for i in ids]
        )
        # The first leaves alone; the three that queued behind it, together.
        self.assertEqual(len(self.sent), 2, self.sent)
        stamps = [o["last_modified"] for o in outcomes]
        self.assertEqual(stamps, sorted(set(stamps)))
        listed = await self.committed(lambda t: self.storage.list(t, R, P, Query()))
        self.assertEqual({o["id"] for o in listed}, {"existing", *ids})
        for i in ids:
            self.assertEqual(await self.acl(f"/{i}"), {"write": {i}})
        stamp = await self.committed(lambda t: self.storage.list_timestamp(t, R, P))
        self.assertEqual(stamp, stamps[-1])

    async def test_a_refused_create_fails_alone(self):
        outcomes = await self.last_writes([
            ("/a", {"write": {"a"}}, lambda txn: self.storage.create(txn, R, P, {"id": "a"})),
            ("/b", {"write": {"b"}}, lambda txn: self.storage.create(txn, R, P, {"id": "b"})),
            ("/existing", {"write": {"mallory"}},
             lambda txn: self.storage.create(txn, R, P, {"id": "existing", "evil": True})),
            ("/c", {"write": {"c"}}, lambda txn: self.storage.update(txn, R, P, "c", {"v": 1})),
        ])
        self.assertIsInstance(outcomes[2], ObjectExists)
        self.assertEqual([o["id"] for i, o in enumerate(outcomes) if i != 2], ["a", "b", "c"])
        self.assertEqual(await self.acl("/existing"), {})
        self.assertEqual(await self.acl("/b"), {"write": {"b"}})
        self.assertEqual(await self.acl("/c"), {"write": {"c"}})
        stored = await self.committed(lambda t: self.storage.get(t, R, P, "existing"))
        self.assertNotIn("evil", stored)

    async def test_the_same_id_twice_is_written_in_order(self):
        outcomes = await self.last_writes([
            ("/x", {"read": {"x"}}, lambda txn: self.storage.update(txn, R, P, "existing", {"v": 1})),
            ("/y", {"read": {"y"}}, lambda txn: self.storage.update(txn, R, P, "existing", {"v": 2})),
            ("/z", {"read": {"z"}}, lambda txn: self.storage.update(txn, R, P, "existing", {"v": 3})),
        ])
        self.assertEqual([o["v"] for o in outcomes], [1, 2, 3])
        stamps = [o["last_modified"] for o in outcomes]
        self.assertEqual(stamps, sorted(set(stamps)))
        got = await self.committed(lambda t: self.storage.get(t, R, P, "existing"))
        self.assertEqual((got["v"], got["last_modified"]), (3, stamps[-1]))


class RequestRoundTripTests(ClientTestCase):
    """Whole requests, through the application, on PostgreSQL only."""

    async def setUp(self):
        if SKIP:
            raise self.skipTest(SKIP)
        from jsonsync import testclient

        testclient._current["backend"] = "postgresql"
        self.addCleanup(testclient._close_apps)
        await super().setUp()
        await self.app.registry.storage.flush()
        await self.app.registry.permissions.flush()
        await self.ok(self.alice.put("/v1/buckets/b"))
        await self.ok(self.alice.put("/v1/buckets/b/collections/c"))
        self.sent = _Counting().install(self)

    async def test_create_costs_the_checks_and_one_write(self):
        r = await self.ok(self.alice.post("/v1/buckets/b/collections/c/records", {"data": {"x": 1}}), 201)
        self.assertEqual(len(self.sent), 2, self.sent)
        rid = r.data["id"]
        await self.ok(self.bob.get(f"/v1/buckets/b/collections/c/records/{rid}"), 403)
        mine = await self.ok(self.alice.get(f"/v1/buckets/b/collections/c/records/{rid}"))
        self.assertEqual(mine.data["x"], 1)
        self.assertIn(basicauth_id("alice"), mine.json["permissions"]["write"])

    async def test_batch_creations_skip_repeated_checks(self):
        r = await self.ok(self.alice.post("/v1/batch", {"requests": [
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {"n": i}}}
            for i in range(5)
        ]}))
        self.assertEqual([o["status"] for o in r.json["responses"]], [201] * 5)
        # The first creation's checks, then one write per creation, then COMMIT.
        self.assertEqual(len(self.sent), 1 + 5 + 1, self.sent)

    async def test_patch_costs_the_checks_and_one_write(self):
        r = await self.ok(self.alice.put("/v1/buckets/b/collections/c/records/r", {"data": {"x": 1}}), 201)
        del self.sent[:]
        p = await self.ok(self.alice.patch("/v1/buckets/b/collections/c/records/r", {"data": {"y": 2}}))
        self.assertEqual(len(self.sent), 2, self.sent)
        self.assertGreater(p.data["last_modified"], r.data["last_modified"])
        listed = await self.ok(self.alice.get("/v1/buckets/b/collections/c/records"))
        self.assertEqual(listed.data, [{"id": "r", "x": 1, "y": 2, "last_modified": p.data["last_modified"]}])
        self.assertEqual(listed.header("ETag"), f'"{p.data["last_modified"]}"')

    async def test_list_costs_one_statement(self):
        for i in range(5):
            await self.ok(self.alice.put(f"/v1/buckets/b/collections/c/records/r{i}", {"data": {"i": i, "s": "a\x1eb,\"c"}}))
        del self.sent[:]
        r = await self.ok(self.alice.get("/v1/buckets/b/collections/c/records?_limit=2&_sort=i"))
        self.assertEqual(len(self.sent), 1, self.sent)
        seen = [o["i"] for o in r.data]
        self.assertEqual(r.data[0]["s"], "a\x1eb,\"c")
        while r.header("Next-Page"):
            r = await self.ok(self.alice.get(r.header("Next-Page")))
            seen += [o["i"] for o in r.data]
        self.assertEqual(seen, [0, 1, 2, 3, 4])

    async def test_racing_create_of_a_taken_id_leaves_the_owner_alone(self):
        # Bob's create of an id alice holds gets past the checks only in a
        # race; here the check is skipped by writing under the storage.
        await self.ok(self.alice.put("/v1/buckets/b/collections/c/records/r", {"data": {"mine": True}}), 201)
        await self.ok(
            self.alice.patch("/v1/buckets/b/collections/c", {"permissions": {"record:create": ["system.Everyone"]}})
        )
        r = await self.bob.post("/v1/buckets/b/collections/c/records", {"data": {"id": "r", "mine": False}})
        self.assertEqual(r.status, 403)  # caught by the checks: bob may not read it
        # And below the checks: the storage refuses and nothing is committed.
        txn = self.app.registry.storage.transaction()
        await self.app.registry.permissions.replace_object_permissions(
            txn, "/buckets/b/collections/c/records/r", {"write": {"bob"}}
        )
        txn.last_write = True
        with self.assertRaises(ObjectExists):
            await self.app.registry.storage.create(txn, R, P, {"id": "r", "mine": False})
        await txn.rollback()
        denied = await self.bob.patch("/v1/buckets/b/collections/c/records/r", {"data": {"mine": False}})
        self.assertEqual(denied.status, 403)
        mine = await self.ok(self.alice.get("/v1/buckets/b/collections/c/records/r"))
        self.assertTrue(mine.data["mine"])




class FirstWriteRaceTests(_Fixture):
    """
    A list read while its first write commits: the read's snapshot has no
    timestamp for the list yet, the timestamp it then settles is the
    writer's. Answering that timestamp with the empty page would make a
    client syncing with C{_since} skip the first write for good.
    """

    async def test_page_and_timestamp_stay_together(self):
        other = "/buckets/b/collections/fresh"
        real = self.storage.list_timestamp
        written = []

        async def first_write_lands_now(txn, resource_name, parent_id):
            if not written:
                obj = await self.committed(lambda t: self.storage.create(t, R, other, {"id": "first"}))
                written.append(obj)
            return await real(txn, resource_name, parent_id)

        self.patch(self.storage, "list_timestamp", first_write_lands_now)
        for encoded in (False, True):
            del written[:]
            await self.committed(lambda t: self.storage.purge(t, "/buckets/b/collections"))
            timestamp, page = await self.committed(
                lambda t, e=encoded: self.storage.list_snapshot(t, R, other, Query(), encoded=e)
            )
            self.assertEqual(len(written), 1)
            ids = [(o.decode() if encoded else o)["id"] for o in page]
            self.assertEqual((timestamp, ids), (written[0]["last_modified"], ["first"]))


class ObjectBodyTests(_Fixture):
    """Lists read each object's stored JSON text (schema version 2)."""

    async def listed(self):
        _, page = await self.committed(lambda t: self.storage.list_snapshot(t, R, P, Query(), encoded=True))
        return [o.decode() for o in page]

    async def test_body_matches_the_object(self):
        made = await self.committed(
            lambda t: self.storage.create(t, R, P, {"id": "a", "big": 2**80, "s": "é\"\\", "n": [1.5, None]})
        )
        await self.committed(lambda t: self.storage.update(t, R, P, "b", {"x": {"y": True}}))
        forced = await self.committed(
            lambda t: self.storage.update(t, R, P, "c", {"z": 1, "last_modified": 5_000_000_000_000})
        )
        await self.committed(lambda t: self.storage.create(t, R, P, {"id": "d"}))
        await self.committed(lambda t: self.storage.delete(t, R, P, "d"))
        rows, _ = await self.storage.pool.run("SELECT id, body FROM objects")
        self.assertEqual({oid for oid, body in rows if body is None}, set())  # every writer fills it
        listed = {o["id"]: o for o in await self.listed()}
        self.assertEqual(listed["a"], made)
        self.assertEqual(listed["c"], forced)
        for oid in ("a", "b", "c", "existing"):
            stored = await self.committed(lambda t, oid=oid: self.storage.get(t, R, P, oid))
            self.assertEqual(listed[oid], stored)

    async def test_rows_written_before_version_2_are_read_from_jsonb(self):
        await self.committed(lambda t: self.storage.create(t, R, P, {"id": "old", "v": 1}))
        await self.storage.pool.run("UPDATE objects SET body = NULL WHERE id = 'old'")
        listed = {o["id"]: o for o in await self.listed()}
        self.assertEqual(listed["old"]["v"], 1)
        self.assertIn("last_modified", listed["old"])
