"""
Concurrent writers on the PostgreSQL backend: the commit-ordered sync cursor,
shared transactions, and pool limits.
"""

from __future__ import annotations

import random
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from txpostgres.txpostgres import Connection

from jsonsync.errors import BackendUnavailable, InvalidParameters
from jsonsync.query import Filter, Op, Query, Sort
from tests.pg import SKIP, open_backend, scratch_schema, scratch_url

R = "record"
P = "/buckets/b/collections/concurrency"


class ConcurrentWritersTests(TestCase):
    skip = SKIP

    async def setUp(self):
        # Three pools stand for three server processes sharing the database.
        url = await scratch_url(self)
        self.nodes = [await open_backend(self, url, storage_pool_size=4) for _ in range(3)]
        self.storage = self.nodes[0][0]
        await self.storage.flush()
        self.addCleanup(self.storage.flush)

    async def test_reader_following_since_sees_every_change_once(self):
        """
        Many transactions create records in one list, each holding its lock a
        little before committing, while a reader polls C{last_modified > cursor}
        the way a syncing client does. The reader must see every record
        exactly once, and no two records may share a timestamp.
        """
        writers, per_txn = 60, 2
        rng = random.Random(1)
        created: list[dict] = []
        errors: list[BaseException] = []
        done = []

        async def writer(n):
            storage = self.nodes[n % len(self.nodes)][0]
            # Stagger the starts so that writers overlap in every phase.
            await deferLater(reactor, rng.random() * 0.05, lambda: None)
            txn = storage.transaction()
            try:
                made = []
                for i in range(per_txn):
                    made.append(await storage.create(txn, R, P, {"id": f"w{n}-{i}", "n": n}))
                # Keep the list lock a while: the window in which a reader
                # could see a later timestamp before this one commits.
                unit = await storage.unit(txn)
                await unit.execute("SELECT pg_sleep(%s)", (rng.random() * 0.01,))
            except BaseException as exc:
                await txn.rollback()
                errors.append(exc)
                raise
            await txn.commit()
            created.extend(made)

        seen: list[dict] = []
        cursor = 0

        async def poll_once():
            nonlocal cursor
            txn = self.storage.transaction()
            page = await self.storage.list(
                txn,
                R,
                P,
                Query(
                    filters=[Filter("last_modified", cursor, Op.GT)],
                    sorting=(Sort("last_modified", 1),),
                    include_deleted=True,
                ),
            )
            await txn.rollback()
            seen.extend(page)
            if page:
                cursor = page[-1]["last_modified"]
            return len(page)

        async def reader():
            polls = 0
            while not done:
                await poll_once()
                polls += 1
            await poll_once()
            return polls

        started = time.monotonic()
        reading = Deferred.fromCoroutine(reader())
        results = await DeferredList(
            [Deferred.fromCoroutine(writer(n)) for n in range(writers)], consumeErrors=True
        )
        elapsed = time.monotonic() - started
        done.append(True)
        polls = await reading

        self.assertEqual(errors, [])
        self.assertTrue(all(ok for ok, _ in results))
        self.assertEqual(len(created), writers * per_txn)
        seen_ids = [o["id"] for o in seen]
        self.assertEqual(len(seen_ids), len(set(seen_ids)), "a change was seen twice")
        self.assertEqual(set(seen_ids), {o["id"] for o in created}, "a change was missed")
        stamps = [o["last_modified"] for o in created]
        self.assertEqual(len(stamps), len(set(stamps)), "duplicate timestamps")
        self.assertEqual([o["last_modified"] for o in seen], sorted(stamps))
        print(
            f"\n  {writers} txns x {per_txn} creates on 3 pools: {elapsed:.2f}s,"
            f" {writers * per_txn / elapsed:.0f} writes/s, reader polled {polls} times"
        )

    async def test_writers_to_different_lists_do_not_wait_for_each_other(self):
        """The lock is per list: a writer holding one list does not block another list."""
        storage = self.storage
        slow = storage.transaction()
        await storage.create(slow, R, P + "-a", {"id": "x"})
        fast = storage.transaction()
        started = time.monotonic()
        await storage.create(fast, R, P + "-b", {"id": "y"})
        await fast.commit()
        self.assertLess(time.monotonic() - started, 1.0)
        await slow.commit()

    async def test_second_writer_of_a_list_waits_then_gets_a_later_timestamp(self):
        storage = self.storage
        first = storage.transaction()
        a = await storage.create(first, R, P, {"id": "a"})
        second = storage.transaction()
        pending = Deferred.fromCoroutine(storage.create(second, R, P, {"id": "b"}))
        await deferLater(reactor, 0.2, lambda: None)
        self.assertFalse(pending.called, "the second writer did not wait for the lock")
        await first.commit()
        b = await pending
        await second.commit()
        self.assertGreater(b["last_modified"], a["last_modified"])


class SharedTransactionTests(TestCase):
    skip = SKIP

    async def setUp(self):
        self.storage, self.permissions = await open_backend(self, storage_pool_size=2)
        await self.storage.flush()
        await self.permissions.flush()
        self.addCleanup(self.permissions.flush)
        self.addCleanup(self.storage.flush)

    async def test_storage_and_permissions_share_one_connection(self):
        txn = self.storage.transaction()
        await self.storage.create(txn, R, P, {"id": "a"})
        await self.permissions.replace_object_permissions(txn, P + "/records/a", {"read": ["u"]})
        self.assertIs(self.storage.pool, self.permissions.pool)
        self.assertEqual(len(txn._order), 1)
        # Reads after a write in the transaction see that write.
        self.assertIsNotNone(await self.storage.get(txn, R, P, "a"))
        self.assertEqual(
            await self.permissions.get_object_permissions(txn, P + "/records/a"), {"read": {"u"}}
        )
        # Outside, nothing yet.
        other = self.storage.transaction()
        self.assertIsNone(await self.storage.get(other, R, P, "a"))
        await other.rollback()
        await txn.rollback()
        check = self.storage.transaction()
        self.assertIsNone(await self.storage.get(check, R, P, "a"))
        self.assertEqual(await self.permissions.get_object_permissions(check, P + "/records/a"), {})
        await check.rollback()

    async def test_rollback_returns_the_connection(self):
        for i in range(10):
            txn = self.storage.transaction()
            await self.storage.create(txn, R, P, {"id": f"r{i}"})
            await txn.rollback()
        self.assertEqual(self.storage.pool.idle_count(), 2)
        txn = self.storage.transaction()
        self.assertEqual(await self.storage.count(txn, R, P, Query()), 0)
        await txn.rollback()

    async def test_failed_statement_rolls_back_and_frees_the_connection(self):
        txn = self.storage.transaction()
        await self.storage.create(txn, R, P, {"id": "a"})
        with self.assertRaises(InvalidParameters):
            # NUL is valid JSON but PostgreSQL's JSONB refuses it.
            await self.storage.create(txn, R, P, {"id": "b", "bad": "\u0000"})
        await txn.rollback()
        self.assertEqual(self.storage.pool.idle_count(), 2)
        check = self.storage.transaction()
        self.assertIsNone(await self.storage.get(check, R, P, "a"))
        await check.rollback()

    async def test_pool_exhaustion_times_out_with_backend_unavailable(self):
        storage, _ = await open_backend(self, storage_pool_size=1, storage_pool_timeout=0.3)
        holder = storage.transaction()
        await storage.create(holder, R, P, {"id": "a"})
        waiting = storage.transaction()
        with self.assertRaises(BackendUnavailable):
            await storage.create(waiting, R, P, {"id": "b"})
        await waiting.rollback()
        await holder.rollback()


class FlushDeadlockTests(TestCase):
    """
    A flush's TRUNCATE locks its tables one after the other: a transaction
    that holds one of the later ones and then waits for an earlier one
    deadlocks with it. PostgreSQL breaks the deadlock by failing one side;
    when that is the flush, it runs again.
    """

    skip = SKIP

    async def test_a_flush_chosen_to_break_a_deadlock_runs_again(self):
        scratch = await scratch_schema(self)
        try:
            await scratch.admin.runOperation("SET deadlock_timeout = '60s'")
        except Exception:
            raise SkipTest("deadlock_timeout can only be set by a superuser") from None
        # The flush's side looks for the deadlock 3 s after it began to wait:
        # time enough for the other transaction to wait too, on a busy machine.
        storage, _ = await open_backend(self, scratch.url + "%20-cdeadlock_timeout%3D3s")
        txn = storage.transaction()
        await storage.create(txn, R, P, {"id": "kept-until-the-flush"})
        await txn.commit()
        other = Connection(reactor)
        await other.connect(scratch.url)
        self.addCleanup(other.close)
        # Only the flush's side looks for the deadlock.
        await other.runOperation("SET deadlock_timeout = '60s'")
        await other.runOperation("BEGIN")
        await other.runOperation("LOCK TABLE jsonsync_webhook_cursors IN ACCESS SHARE MODE")
        flushing = Deferred.fromCoroutine(storage.flush())
        waiting = (
            "SELECT count(*) FROM pg_locks"
            f" WHERE NOT granted AND relation = '{scratch.schema}.jsonsync_webhook_cursors'::regclass"
        )
        for _ in range(500):
            if (await scratch.admin.runQuery(waiting))[0][0]:
                break
            await deferLater(reactor, 0.01, lambda: None)
        else:
            self.fail("the flush never waited for the table the other transaction holds")
        # The other transaction now waits for the table the flush holds: a deadlock.
        rows = await other.runQuery("SELECT count(*) FROM objects")
        self.assertEqual(rows[0][0], 1)  # the flush gave way (its TRUNCATE failed), nothing truncated yet
        await other.runOperation("COMMIT")
        await flushing  # ran again, and went through
        self.assertEqual((await scratch.admin.runQuery(f"SELECT count(*) FROM {scratch.schema}.objects"))[0][0], 0)
