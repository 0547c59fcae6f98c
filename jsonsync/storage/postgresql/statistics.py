"""
Planner statistics kept fresh by jsonsync itself, so that a database filled
through the API is fast from the first request after the import.

Why: the PostgreSQL backend prepares its hot statements once per connection
with generic plans (C{plan_cache_mode=force_generic_plan}, set at connect).
A generic plan is made at the statement's first run and kept until the
statistics of a table it reads change. A server started on an empty
database prepares its statements while the tables are empty, and the
planner, which assumes a never-analysed table has 10 pages, then hashes the
whole C{objects} and C{access_control_entries} tables instead of looking the
keys up in their primary keys. Measured on 10,000 records imported through
C{/batch} (docs/benchmarks.md, "Fresh data"): 6-21 ms per look-up instead of
0.3-0.5 ms, and W2 at a third of its speed, until an ANALYZE (autovacuum's,
a minute or more later; never, where autovacuum is off). Plans made on a
table of that size without statistics are good, and so are custom plans:
only plans older than the table's growth are wrong.

What: after a request, at most once per L{CHECK_INTERVAL} seconds, one
catalog query compares each table's size on disk with its size at the last
ANALYZE (C{pg_class.relpages}, 0 when never analysed). A table that has
grown by L{GROWTH} times (and has at least L{MIN_PAGES} pages) is analysed.
The ANALYZE updates the statistics and invalidates, in every session of
every process, the plans that read the table, which the next execution
makes again from the new figures. Growth by doubling costs a few analyses
over a table's life (about 13 from empty to a million rows), each taking a
sample of at most 30,000 rows.

How it stays out of the way:
  - the size check borrows an idle pool connection, never waits for one,
    and is skipped when every connection is busy;
  - ANALYZE runs on a connection of its own, opened for it and closed after,
    so no request waits for a pool connection meanwhile; ANALYZE itself
    takes a lock that conflicts with neither reads nor writes;
  - processes sharing the database analyse one at a time: the one that gets
    C{pg_try_advisory_lock} does it, the others skip (they see the new
    sizes at their next check);
  - any failure is logged once and never reaches a request; a role that may
    not analyse the tables turns the keeper off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg2
import psycopg2.errors
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from txpostgres.txpostgres import Connection

from jsonsync.storage.postgresql import driver

if TYPE_CHECKING:  # pragma: no cover
    from jsonsync.storage.postgresql.pool import Pool

_log = Logger()

# Seconds between two size checks of one process (a check is one catalog
# query, only made after requests).
CHECK_INTERVAL = 1.0
# A table is analysed once it is this many times larger than at its last
# ANALYZE: plans made at half a table's size still suit it.
GROWTH = 2.0
# ... and once it has this many pages (128 KiB): below that, the planner's
# guess for a never-analysed table (10 pages) is close enough.
MIN_PAGES = 16
# pg_try_advisory_lock(int, int) key of the ANALYZE; the schema migrations
# use (0x6A73, 0x7363), the lists bigint keys.
LOCK = (0x6A73, 0x7374)
# The webhooks plugin's tables too: its claim, prepared while the event log
# was empty, scanned the whole log at every claim until autovacuum's ANALYZE
# (22 ms a claim in a 10 s benchmark, and deliveries falling behind).
TABLES = (
    "objects", "access_control_entries", "timestamps", "user_principals",
    "jsonsync_webhook_events", "jsonsync_webhook_cursors", "jsonsync_outbox", "jsonsync_outbox_attempts",
)

# Table names resolve through the session's search_path, as the storage's do.
_CHECK_SQL = (
    "SELECT c.relname, c.relpages, pg_relation_size(c.oid) / current_setting('block_size')::int"
    " FROM pg_class c WHERE c.oid = ANY(ARRAY["
    + ", ".join(f"to_regclass('{name}')" for name in TABLES)
    + "]::oid[])"
)


def grown(rows) -> list[str]:
    """The tables of C{(name, pages at last ANALYZE, pages now)} rows to analyse."""
    return sorted(
        name for name, analysed, now in rows if now >= MIN_PAGES and now > GROWTH * max(analysed, 0)
    )


class StatisticsKeeper:
    """Analyses the storage tables of one pool's database as they grow."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.running: Deferred | None = None
        self.enabled = True
        self.analysed = 0  # ANALYZE statements this process ran
        self._last = float("-inf")
        self._maintenance: Connection | None = None
        self._warned = False

    def poke(self) -> None:
        """Called after each request: start a check when one is due."""
        if not self.enabled or self.running is not None or self.pool.closed:
            return
        now = self.pool.reactor.seconds()
        if now - self._last < CHECK_INTERVAL:
            return
        self._last = now
        running = self.running = Deferred.fromCoroutine(self.check())

        def done(_):
            self.running = None

        running.addBoth(done)

    async def idle(self) -> None:
        """Wait for the check under way, if any (tests)."""
        while self.running is not None:
            finished: Deferred = Deferred()

            def passed_on(result, finished=finished):
                finished.callback(None)
                return result

            self.running.addBoth(passed_on)
            await finished

    async def check(self) -> None:
        """One size check, and the ANALYZE it calls for; never raises."""
        try:
            conn = self.pool.try_checkout()
            if conn is None:
                return  # every connection is serving requests: next time
            try:
                rows, _ = await driver.execute(conn, _CHECK_SQL)
            finally:
                self.pool.release(conn, poke=False)
            tables = grown(rows)
            if tables:
                await self._analyze(tables)
        except Exception as exc:
            self._failed(exc)

    async def _analyze(self, tables: list[str]) -> None:
        conn = self._maintenance = Connection(reactor=self.pool.reactor)
        try:
            await conn.connect(self.pool.url, application_name="jsonsync-statistics")
            if self.pool.closed:
                return
            rows = await conn.runQuery("SELECT pg_try_advisory_lock(%s, %s)", LOCK)
            if not rows[0][0]:
                return  # another process is analysing
            try:
                _log.info("analysing {tables} (grown since their last statistics)", tables=", ".join(tables))
                await conn.runOperation("ANALYZE " + ", ".join(tables))
                self.analysed += 1
            finally:
                await conn.runQuery("SELECT pg_advisory_unlock(%s, %s)", LOCK)
        finally:
            self._maintenance = None
            self._close(conn)

    def _failed(self, exc: BaseException) -> None:
        if self.pool.closed:
            return
        if isinstance(exc, psycopg2.errors.InsufficientPrivilege):
            self.enabled = False
            _log.warn(
                "not allowed to ANALYZE the storage tables ({error}); statistics are left to"
                " autovacuum", error=str(exc).strip(),
            )
        elif not self._warned:
            self._warned = True
            _log.warn("statistics check failed: {error}", error=str(exc).strip() or repr(exc))

    @staticmethod
    def _close(conn: Connection) -> None:
        try:
            if conn._connection is not None and not conn._connection.closed:
                conn.close()
        except (psycopg2.Error, AttributeError):
            pass

    def close(self) -> None:
        """Stop: the pool is closing (an ANALYZE under way is abandoned)."""
        self.enabled = False
        if self._maintenance is not None:
            self._close(self._maintenance)
