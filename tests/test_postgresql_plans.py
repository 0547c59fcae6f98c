"""
Plans of the hot statements on fresh data (issue #18): a database filled
through the API must not be served by plans made while it was empty.

The server prepares its hot statements once per connection, with generic
plans (C{plan_cache_mode=force_generic_plan}); made on empty tables, such a
plan scans the whole C{objects} table for each look-up, and lasts until the
tables' statistics change. These tests run the application on a real
PostgreSQL (a scratch schema: fresh tables that were never analysed), let it
prepare its statements on a young list, put 10,000 records and their ACEs
under it without any ANALYZE, send the hot requests again, and EXPLAIN the
statements exactly as the server sent them, as the prepared statements of
the server's own connection (a pool of one).
"""

from __future__ import annotations

import re

from twisted.trial.unittest import TestCase

from jsonsync import testclient
from jsonsync.storage.postgresql import driver, group, statistics
from jsonsync.storage.postgresql.statements import PLACEHOLDER, array_literal, pieces, prepared_form
from tests.pg import SKIP, open_backend, scratch_url, with_query

P = "/buckets/b/collections/c"
RECORDS = "/v1/buckets/b/collections/c/records"
N = 10_000

_FILL = (
    "INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data, body)"
    " SELECT 'record', %(parent)s, 'r' || lpad(i::text, 6, '0'), %(base)s + i, false, d, d::text"
    " FROM generate_series(1, %(n)s) AS i,"
    " LATERAL (SELECT jsonb_build_object('id', 'r' || lpad(i::text, 6, '0'), 'last_modified',"
    "  %(base)s + i, 'n', i, 'status', 'abcd'::text, 'payload', repeat('x', 160))) AS j(d);"
    " INSERT INTO access_control_entries (object_id, permission, principal)"
    " SELECT %(parent)s || '/records/r' || lpad(i::text, 6, '0'), 'write', %(owner)s"
    " FROM generate_series(1, %(n)s) AS i;"
    " UPDATE timestamps SET last_modified = %(base)s + %(n)s"
    " WHERE resource_name = 'record' AND parent_id = %(parent)s"
)


class _Capture:
    """The statements the storage sends (at L{driver.execute}) while installed."""

    def __init__(self, test: TestCase, table: str = "objects"):
        self.sent: list[tuple[str, object, bool]] = []
        real = driver.execute

        async def capturing(conn, sql, params=None, generation=None, prepare=False, prefix=""):
            if table in sql and "pg_class" not in sql:
                self.sent.append((sql, params, prepare))
            return await real(conn, sql, params, generation, prepare, prefix)

        test.patch(driver, "execute", capturing)


class FreshDataPlanTests(TestCase):
    skip = SKIP
    timeout = 180

    async def setUp(self):
        # Every request may check the table sizes (the server checks at most
        # once a second): the test then needs no clock.
        self.patch(statistics, "CHECK_INTERVAL", 0)
        url = await scratch_url(self)
        self.app = await testclient.build_app(
            {
                "storage_backend": "postgresql",
                "permission_backend": "postgresql",
                "storage_url": url,
                # One connection: the one that prepared the statements is the
                # one whose plans are explained.
                "storage_pool_size": "1",
            }
        )
        self.addCleanup(testclient._close_apps)
        self.storage = self.app.registry.storage
        self.pool = self.storage.pool
        self.alice = testclient.StubClient(self.app).as_user("alice")

    async def ok(self, response, status=(200, 201)):
        r = await response
        self.assertIn(r.status, status if isinstance(status, tuple) else (status,), r)
        return r

    async def hot_requests(self, since: int, record: str) -> None:
        """One of each: get one, a list page, a _since page, a write."""
        await self.ok(self.alice.get(f"{RECORDS}/{record}"))
        await self.ok(self.alice.get(f"{RECORDS}?_limit=100"))
        await self.ok(self.alice.get(f"{RECORDS}?_since={since}&_limit=100"))
        await self.ok(self.alice.put(f"{RECORDS}/{record}", {"data": {"n": 1}}))

    async def explain(self, sql: str, params, prepare: bool) -> list[str]:
        """
        The plans of C{sql} as the server ran it: C{EXPLAIN EXECUTE} of the
        prepared statements of the pool's connection, or a plain C{EXPLAIN}.
        """
        plans = []
        positional = None if isinstance(params, dict) else list(params or ())
        conn = await self.pool.checkout()
        try:
            for piece in pieces(sql):
                if prepare:
                    name, _, order = prepared_form(piece)
                    if positional is None:
                        mine = [params[k] for k in order]
                    else:
                        mine, positional[: len(order)] = positional[: len(order)], []
                    values = [array_literal(v) if isinstance(v, (list, tuple)) else v for v in mine]
                    args = f" ({', '.join(['%s'] * len(values))})" if values else ""
                    rows, _ = await driver.execute(conn, f"EXPLAIN EXECUTE {name}{args}", values)
                else:
                    count = len(PLACEHOLDER.findall(piece))
                    if positional is None:
                        mine = params
                    else:
                        mine, positional[:count] = positional[:count], []
                    rows, _ = await driver.execute(conn, "EXPLAIN " + piece, mine)
                plans.append("\n".join(r[0] for r in rows))
        finally:
            self.pool.release(conn, poke=False)
        return plans

    async def test_hot_statements_use_the_indexes_on_fresh_data(self):
        await self.ok(self.alice.put("/v1/buckets/b"))
        await self.ok(self.alice.put("/v1/buckets/b/collections/c"))
        first = await self.ok(self.alice.put(f"{RECORDS}/first", {"data": {"n": 0}}))
        # The young list: the server prepares (and plans) its statements now.
        await self.hot_requests(first.data["last_modified"] - 1, "first")
        base = first.data["last_modified"] + 10
        await self.pool.run(
            _FILL, {"parent": P, "base": base, "n": N, "owner": f"account:{'alice'}"}
        )
        rows, _ = await self.pool.run("SELECT count(*) FROM objects")
        self.assertGreaterEqual(rows[0][0], N)
        # 10,000 rows, never analysed by anyone but jsonsync itself.
        capture = _Capture(self)
        await self.hot_requests(base + N - 50, "r000123")
        await self.pool.statistics.idle()  # an ANALYZE under way, if any
        kinds = {
            "get one": lambda s: "array_agg(o.data" in s and "string_agg" not in s,
            "list page": lambda s: "string_agg" in s and "last_modified >" not in s,
            "_since page": lambda s: "string_agg" in s and "last_modified >" in s,
            "write": lambda s: s == group.GROUP_WRITE,
        }
        seen = set()
        for sql, params, prepare in capture.sent:
            for plan in await self.explain(sql, params, prepare):
                for table in ("objects", "access_control_entries"):
                    self.assertNotIn(f"Seq Scan on {table}", plan, f"{sql}\n\n{plan}")
            seen.update(k for k, test in kinds.items() if test(sql))
        self.assertEqual(seen, set(kinds), [s for s, _, _ in capture.sent])


    async def webhooks_app(self):
        """The application again, with the webhooks plugin (no worker), a bucket and its webhook."""
        await self.app.registry.close()
        url = self.app.registry.settings["storage_url"]
        self.app = await testclient.build_app(
            {
                "storage_backend": "postgresql", "permission_backend": "postgresql", "storage_url": url,
                "storage_pool_size": "1", "includes": "webhooks", "webhooks.worker": "false",
                "webhooks.allow_private_targets": "true",
            }
        )
        self.pool = self.app.registry.storage.pool
        outbox = self.app.registry.storage.outbox
        alice = testclient.StubClient(self.app).as_user("alice")
        await self.ok(alice.put("/v1/buckets/b"))
        await self.ok(alice.put("/v1/buckets/b/webhooks/w", {"data": {"url": "http://127.0.0.1:9/hook"}}))
        return outbox, alice

    async def test_the_webhook_claim_uses_the_indexes_on_a_grown_log(self):
        # The worker prepares its claim while the event log is empty; the log
        # then grows by 20,000 events (a backlog), analysed only by jsonsync.
        outbox, alice = await self.webhooks_app()
        # Analysed while empty (by autovacuum, or an operator's ANALYZE).
        await self.pool.run("ANALYZE jsonsync_webhook_events, jsonsync_webhook_cursors")
        capture = _Capture(self, "jsonsync_webhook_events")
        await outbox.claim(80, 30, "w")
        # As if written by 5,000 transactions of four changes each (long committed).
        await self.pool.run(
            "INSERT INTO jsonsync_webhook_events (target, xid, body)"
            " SELECT '/buckets/b/webhooks/w', (3 + i / 4)::text::xid8, '{\"n\":' || i || '}'"
            " FROM generate_series(1, 20000) AS i"
        )
        await self.ok(alice.get("/v1/buckets/b"))  # a request: the keeper looks at the sizes after it
        await self.pool.statistics.idle()
        claims = [c for c in capture.sent if c[2] and "leased" in c[0]]
        self.assertTrue(claims)
        for plan in await self.explain(*claims[0]):
            self.assertNotIn("Seq Scan on jsonsync_webhook_events", plan, plan)
            # ... nor walks all of a webhook's events: every scan of the log
            # is bounded by an xid (a range, or one xid of a snapshot's list).
            lines = plan.splitlines()
            for i, line in enumerate(lines):
                if "Scan" in line and "on jsonsync_webhook_events" in line:
                    cond = next((x for x in lines[i + 1:] if "Index Cond" in x), "")
                    self.assertIn("xid", cond, plan)
        self.assertEqual(len(await outbox.claim(80, 30, "w")), 80)

    async def test_a_claim_reads_what_it_returns_in_a_large_transaction(self):
        # A backlog written by one transaction (an import: 30,000 events of one
        # xid), read 80 at a time: each claim enters the index where the
        # cursor's position is, not at the start of the window (which made
        # reading a window of n events cost n^2 / 80 index entries).
        outbox, _alice = await self.webhooks_app()
        await self.pool.run(
            "INSERT INTO jsonsync_webhook_events (target, xid, body)"
            " SELECT '/buckets/b/webhooks/w', '5'::xid8, '{\"n\":' || i || '}' FROM generate_series(1, 30000) AS i;"
            " ANALYZE jsonsync_webhook_events"
        )
        capture = _Capture(self, "jsonsync_webhook_events")
        claimed = await outbox.claim(80, 30, "w")
        self.assertEqual(len(claimed), 80)
        await outbox.complete_many([(m["id"], m["token"], {"status_code": 200}) for m in claimed])
        # The cursor now stands 80 events into its window; as if 29,000 were read:
        await self.pool.run("UPDATE jsonsync_webhook_cursors SET last_seq = last_seq + 29000")
        sql, params, prepare = [c for c in capture.sent if c[2] and "leased" in c[0]][0]
        (piece,) = pieces(sql)
        name, _, order = prepared_form(piece)
        values = [array_literal(v) if isinstance(v, (list, tuple)) else v for v in (params[k] for k in order)]
        conn = await self.pool.checkout()
        try:
            await driver.execute(conn, "BEGIN")
            rows, _ = await driver.execute(
                conn, f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE {name} ({', '.join(['%s'] * len(values))})", values
            )
            await driver.execute(conn, "ROLLBACK")
        finally:
            self.pool.release(conn, poke=False)
        plan = [r[0] for r in rows]
        read = 0
        for i, line in enumerate(plan):
            if "Scan" in line and "on jsonsync_webhook_events" in line and "never executed" not in line:
                buffers = next((x for x in plan[i + 1 :] if "Buffers:" in x), "")
                read += sum(int(n) for n in re.findall(r"=(\d+)", buffers))
        # 80 events (~3 index pages and their heap pages); entering at the
        # window's start would walk ~29,000 index entries first (~200 pages).
        self.assertLess(read, 40, "\n".join(plan))
        self.assertEqual(len(await outbox.claim(80, 30, "w")), 80)


class SessionSettingsTests(TestCase):
    """The settings of the server's sessions, and an operator's own in the URL."""

    skip = SKIP

    async def settings(self, url: str) -> tuple[str, str]:
        storage, _ = await open_backend(self, url)
        rows, _ = await storage.pool.run("SELECT current_setting('jit'), current_setting('plan_cache_mode')")
        return rows[0]

    async def test_generic_plans_and_no_jit_compilation(self):
        # A generic plan whose estimated cost crosses jit_above_cost would be
        # compiled again at every execution.
        self.assertEqual(await self.settings(await scratch_url(self)), ("off", "force_generic_plan"))

    async def test_the_operator_options_win(self):
        url = with_query(await scratch_url(self), options="-c%20jit%3Don")
        self.assertEqual(await self.settings(url), ("on", "force_generic_plan"))


class StatisticsKeeperTests(TestCase):
    """The keeper analyses grown tables only, one process at a time."""

    skip = SKIP

    async def setUp(self):
        url = await scratch_url(self)
        self.app = await testclient.build_app(
            {"storage_backend": "postgresql", "permission_backend": "postgresql", "storage_url": url}
        )
        self.addCleanup(testclient._close_apps)
        self.pool = self.app.registry.storage.pool
        self.keeper = self.pool.statistics
        await self.keeper.idle()
        # Checks run when the test says, not after each statement.
        self.patch(self.keeper, "poke", lambda: None)

    async def analysed(self) -> dict[str, int]:
        rows, _ = await self.pool.run(
            "SELECT relname, analyze_count FROM pg_stat_user_tables"
            " WHERE relid = ANY(ARRAY[to_regclass('objects'), to_regclass('access_control_entries')]::oid[])"
        )
        return dict(rows)

    async def fill(self, n: int) -> None:
        await self.pool.run(_FILL, {"parent": P, "base": 1, "n": n, "owner": "x"})

    def test_growth_rule(self):
        rows = [("small", 0, 15), ("new", 0, 16), ("same", 100, 150), ("doubled", 100, 201), ("never", -1, 40)]
        self.assertEqual(statistics.grown(rows), ["doubled", "never", "new"])

    async def test_small_tables_are_left_alone(self):
        await self.fill(20)
        await self.keeper.check()
        self.assertEqual(self.keeper.analysed, 0)

    async def test_grown_table_is_analysed_once(self):
        await self.fill(N)
        await self.keeper.check()
        self.assertEqual(self.keeper.analysed, 1)
        rows, _ = await self.pool.run("SELECT reltuples FROM pg_class WHERE oid = to_regclass('objects')")
        self.assertEqual(rows[0][0], N)
        await self.keeper.check()  # statistics are current: nothing to do
        self.assertEqual(self.keeper.analysed, 1)

    async def test_another_process_analysing_is_not_waited_for(self):
        await self.fill(N)
        # Another process holds the lock (session-level, on a connection of
        # our own, as a second server's keeper would).
        from twisted.internet import reactor
        from txpostgres.txpostgres import Connection

        other = Connection(reactor)
        await other.connect(self.pool.url)
        self.addCleanup(other.close)
        await other.runQuery("SELECT pg_advisory_lock(%s, %s)", statistics.LOCK)
        await self.keeper.check()
        self.assertEqual(self.keeper.analysed, 0)
        await other.runQuery("SELECT pg_advisory_unlock(%s, %s)", statistics.LOCK)
        await self.keeper.check()
        self.assertEqual(self.keeper.analysed, 1)
