"""
The connection pool: a fixed number of self-healing connections, check-out
with a timeout (at once a 503 while the database is unreachable), the
schema brought up to date before the first connection is handed out, and
autocommit statements retried on another connection after a dead one.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import psycopg2.extensions
from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from jsonsync.errors import BackendUnavailable
from jsonsync.storage.postgresql import driver
from jsonsync.storage.postgresql.driver import PooledConnection
from jsonsync.storage.postgresql.schema import apply_schema, redact

if TYPE_CHECKING:  # pragma: no cover
    from jsonsync.storage.postgresql.statistics import StatisticsKeeper

_log = Logger()


class Pool:
    """
    A fixed number of connections, each healing by itself; check-out waits
    (up to C{timeout} seconds) for a free one, but fails at once while no
    connection is alive, so requests get a quick 503 during an outage.

    The pool also makes sure the schema is up to date before it hands out
    its first connection, so a server started while the database was down
    sets the schema up when the database returns.
    """

    def __init__(self, reactor, url: str, size: int, timeout: float):
        self.reactor = reactor
        self.url = url
        self.timeout = timeout
        # The enlist key: storage and permissions on one URL share one pool,
        # hence one connection and one SQL transaction per request.
        self.key = ("postgresql", url)
        self.connections = [PooledConnection(reactor, self) for _ in range(max(1, size))]
        self._idle: deque[PooledConnection] = deque()
        self._waiters: deque[tuple[Deferred, Any]] = deque()
        self.closed = False
        self.schema_ready = False
        self._schema_lock = DeferredLock()
        self._reachable: bool | None = None
        # Servers' pools keep the planner statistics of their tables fresh
        # (see statistics.py); a migration's pool does not.
        self.statistics: StatisticsKeeper | None = None

    def start(self) -> None:
        kwargs = {}
        if "application_name" not in psycopg2.extensions.parse_dsn(self.url):
            # Lets operators tell our sessions apart in pg_stat_activity.
            kwargs["application_name"] = "jsonsync"
        options = psycopg2.extensions.parse_dsn(self.url).get("options", "")
        if "plan_cache_mode" not in options:
            # One plan per prepared statement: every statement we prepare
            # leads with equality on an index prefix, so a generic plan is as
            # good as a custom one, and re-planning each call is the cost.
            # A generic plan lasts until the statistics of its tables change:
            # one made while a table was nearly empty would outlive the
            # table's growth, hence the statistics keeper (statistics.py),
            # whose ANALYZE of a grown table re-plans them everywhere.
            options += " -c plan_cache_mode=force_generic_plan"
        if "jit" not in options:
            # No JIT compilation: it pays off on scans of millions of rows,
            # not on our short statements, and a generic plan whose estimated
            # cost crosses jit_above_cost compiles again at every execution
            # (the webhook claim on a grown event log: 20 ms of compiling for
            # 1 ms of work, each call).
            options += " -c jit=off"
        kwargs["options"] = options.strip()
        for conn in self.connections:
            d = conn.connect(self.url, **kwargs)
            d.addCallbacks(
                lambda _, conn=conn: self.connection_recovered(conn),
                lambda f, conn=conn: conn.detector.mark_dead(f),
            )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.statistics is not None:
            self.statistics.close()
        waiters, self._waiters = self._waiters, deque()
        for d, timer in waiters:
            if timer.active():
                timer.cancel()
            d.errback(BackendUnavailable("database pool closed"))
        self._idle.clear()
        for conn in self.connections:
            conn.detector.stop()
            conn.close_quietly()

    # connection state changes, called by the detectors

    def connection_died(self, conn: PooledConnection, failure: Failure) -> None:
        conn.ready = False
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        if not self._alive() and self._reachable is not False:
            self._reachable = False
            _log.warn(
                "database {url} unreachable: {error}",
                url=redact(self.url),
                error=str(failure.value).strip(),
            )
            waiters, self._waiters = self._waiters, deque()
            for d, timer in waiters:
                if timer.active():
                    timer.cancel()
                d.errback(BackendUnavailable("database unreachable"))

    def connection_recovered(self, conn: PooledConnection) -> None:
        if self.closed:
            return
        conn.ready = True
        if self._reachable is False:
            _log.info("database {url} reachable again", url=redact(self.url))
        self._reachable = True
        if not conn.checked_out:
            self._hand_out(conn)

    def idle_count(self) -> int:
        """Connections waiting in the pool (metrics)."""
        return len(self._idle)

    def waiting_count(self) -> int:
        """Check-outs waiting for a connection (metrics)."""
        return len(self._waiters)

    def _alive(self) -> bool:
        return any(not c.detector.connectionIsDead for c in self.connections)

    # check-out and check-in

    def checkout_now(self) -> Deferred:
        """
        A connection as soon as one is free, without making sure of the
        schema first (the schema work itself, and migrations).
        """
        if self.closed:
            return fail(BackendUnavailable("database pool closed"))
        while self._idle:
            conn = self._idle.popleft()
            if conn.usable():
                conn.checked_out = True
                return succeed(conn)
        if not self._alive():
            return fail(BackendUnavailable("database unreachable"))

        def cancel(d):
            for item in list(self._waiters):
                if item[0] is d:
                    self._waiters.remove(item)
                    if item[1].active():
                        item[1].cancel()

        d: Deferred = Deferred(cancel)

        def timed_out():
            for item in list(self._waiters):
                if item[0] is d:
                    self._waiters.remove(item)
            d.errback(BackendUnavailable(f"no free database connection after {self.timeout}s"))

        self._waiters.append((d, self.reactor.callLater(self.timeout, timed_out)))
        return d

    def _hand_out(self, conn: PooledConnection) -> None:
        while self._waiters:
            d, timer = self._waiters.popleft()
            if timer.active():
                timer.cancel()
            conn.checked_out = True
            d.callback(conn)
            return
        self._idle.append(conn)

    def try_checkout(self) -> PooledConnection | None:
        """An idle connection now, or C{None} (never waits; for background work)."""
        if self.closed or not self.schema_ready:
            return None
        while self._idle:
            conn = self._idle.popleft()
            if conn.usable():
                conn.checked_out = True
                return conn
        return None

    def release(self, conn: PooledConnection, poke: bool = True) -> None:
        conn.checked_out = False
        if self.closed:
            return
        # A dead connection comes back through connection_recovered once reconnected.
        if conn.usable():
            self._hand_out(conn)
        if poke and self.statistics is not None:
            # After each request (or statement outside one): tables that
            # grew get their statistics, in the background.
            self.statistics.poke()

    async def checkout(self) -> PooledConnection:
        if not self.schema_ready:
            await self.ensure_schema()
        return await self.checkout_now()

    async def ensure_schema(self) -> None:
        await self._schema_lock.acquire()
        try:
            if not self.schema_ready:
                conn = await self.checkout_now()
                try:
                    await apply_schema(conn)
                finally:
                    self.release(conn)
                self.schema_ready = True
        finally:
            self._schema_lock.release()

    async def run(self, sql: str, params=None, prepare=False):
        """
        One statement (or several, sent at once) in autocommit mode. Every
        caller sends idempotent statements (reads, C{TRUNCATE}, inserts
        that ignore conflicts), so a statement that met a connection found
        dead (the server restarted while it sat idle) is retried on
        another one instead of failing the request.
        """
        attempts = len(self.connections) + 1
        for attempt in range(attempts):
            conn = await self.checkout()
            generation = conn.detector.generation
            try:
                return await driver.execute(conn, sql, params, prepare=prepare)
            except BackendUnavailable:
                if attempt == attempts - 1 or conn.detector.generation == generation:
                    raise
            finally:
                self.release(conn)
        raise AssertionError("unreachable")

