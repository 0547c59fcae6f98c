"""
The PostgreSQL storage and permission backends (txpostgres on psycopg2).

Layout of this module, top to bottom:
  - driver plumbing: a connection pool whose connections each carry their
    own reconnection detector (the plain txpostgres pool never heals after
    the server restarts), and the translation of driver exceptions into
    L{jsonsync.errors} exceptions;
  - the unit of work enlisted in a request's L{ITransaction}: one pooled
    connection, one SQL transaction, shared by storage and permissions
    when they use the same URL;
  - schema management: the versioned SQL files of C{schema/}, applied under
    an advisory lock;
  - the translation of a L{jsonsync.query.Query} into SQL over JSONB, with
    the same meaning as L{jsonsync.query.matches} and L{ordering_key};
  - L{PostgresStorage}, L{PostgresPermissions}, L{PostgresBackend}, and the
    C{migrate} command line.

The sync cursor: every write to a list takes C{pg_advisory_xact_lock} on a
hash of the list key before it reads the list timestamp, and holds it until
its transaction ends. Writers of one list are thus serialised in commit
order, so a reader following C{last_modified > x} can never see a later
timestamp committed before an earlier one.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from collections import deque
from collections.abc import Iterable
from importlib import resources
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ConnectionClosed
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres.reconnection import ConnectionDead, DeadConnectionDetector
from txpostgres.retrying import simpleBackoffIterator
from txpostgres.txpostgres import Connection, RollbackFailed
from zope.interface import alsoProvides, implementer

from jsonsync import jsonutil
from jsonsync.errors import (
    BackendUnavailable,
    JsonSyncError,
    ObjectExists,
    ObjectNotFound,
    UnexpectedError,
    ValueRefused,
    WriteConflict,
)
from jsonsync.interfaces import IPermissionStore, IRequestPrefetch, IStorage, IStorageBackend
from jsonsync.jsonutil import Encoded, EncodedPage
from jsonsync.query import MISSING, Filter, Op, Query, Sort, rank
from jsonsync.storage import Transaction, check_expected, next_timestamp, now_ms
from jsonsync.storage._statistics import StatisticsKeeper

_log = Logger()

# pg_advisory_xact_lock(int, int) key of schema migrations; the two-integer
# key space never overlaps the bigint one used by the per-list locks.
_SCHEMA_LOCK = (0x6A73, 0x7363)
_SCHEMA_TABLE = "jsonsync_migrations"
# The SQLSTATE that jsonsync_write_conflict() raises (schema 0003).
_CONFLICT_SQLSTATE = "JS409"


# ---------------------------------------------------------------------------
# JSON, errors


def _dumps(value: Any) -> str:
    return jsonutil.dumps(value).decode("utf-8")


def _head(obj: dict) -> str:
    """
    The JSON text of C{obj} up to its C{last_modified} value, which the
    database appends (with the closing brace) once it has chosen it.
    """
    text = _dumps(obj)
    return ('{"last_modified":' if text == "{}" else text[:-1] + ',"last_modified":')


# JSONB from the database: orjson where exact (jsonutil falls back to the
# standard library for integers beyond 64 bits).
_loads = jsonutil.loads


def _translate(exc: BaseException) -> BaseException:
    """
    The domain exception for a driver or pool failure (the caller raises it
    C{from} the original, so the cause is kept for the logs).
    """
    if isinstance(exc, (JsonSyncError, CancelledError)):
        return exc
    if isinstance(exc, (ConnectionDead, RollbackFailed, ConnectionClosed)):
        return BackendUnavailable()
    if getattr(exc, "pgcode", None) == _CONFLICT_SQLSTATE:
        # jsonsync_write_conflict(): a compare-and-swap write found its
        # object changed since the request read it.
        return WriteConflict()
    if isinstance(exc, psycopg2.extensions.TransactionRollbackError):
        # A deadlock PostgreSQL broke, or a serialization failure: nothing of
        # the transaction is left, and running the request again is safe.
        # List locks are taken in one order (_Unit.lock_statement), so this
        # only comes from row locks taken outside it (a cascading delete).
        return WriteConflict(deadlock=isinstance(exc, psycopg2.errors.DeadlockDetected))
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        # Lost connections, shutdowns, deadlocks, cancelled statements: all
        # worth a retry by the client.
        return BackendUnavailable()
    if isinstance(exc, psycopg2.errors.UniqueViolation):
        return ObjectExists()
    if isinstance(exc, psycopg2.DataError):
        # Values PostgreSQL refuses although they are valid JSON (a NUL in a
        # string, an integer beyond 64 bits in a timestamp).
        first_line = (exc.pgerror or str(exc)).strip().splitlines()[0:1]
        return ValueRefused(first_line[0] if first_line else "invalid value")
    return UnexpectedError()


def _is_connection_failure(failure: Failure) -> bool:
    """
    Whether C{failure} means the connection itself is gone. Unlike txpostgres'
    default checker, a deadlock or a cancelled statement (also
    C{OperationalError}s) does not throw a healthy connection away.
    """
    exc = failure.value
    if isinstance(exc, (psycopg2.InterfaceError, RollbackFailed, ConnectionClosed)):
        return True
    if isinstance(exc, psycopg2.OperationalError):
        code = exc.pgcode
        return code is None or code.startswith("08") or code in ("57P01", "57P02", "57P03")
    return False


# ---------------------------------------------------------------------------
# Connections and the pool


class _Detector(DeadConnectionDetector):
    """
    Reconnects one pooled connection after it died, retrying with a short
    capped backoff so that the pool heals within seconds of the database
    coming back, and stops cleanly when the pool closes.

    C{generation} changes each time the connection dies, so that a unit of
    work begun on the old connection can refuse to run its next statement
    on the new one (that statement would silently run outside the
    transaction).
    """

    def __init__(self, reactor, on_dead, on_recovered):
        super().__init__(
            deathChecker=_is_connection_failure,
            reconnectionIterator=lambda: simpleBackoffIterator(
                initialDelay=0.2, maxDelay=2.0, factor=2.0, maxRetries=0, now=True
            ),
            reactor=reactor,
        )
        self.generation = 0
        self.stopped = False
        self._on_dead = on_dead
        self._on_recovered = on_recovered
        self._delays = None
        self._call = None

    def checkForDeadConnection(self, f):
        if self.stopped:
            return f
        was_dead = self.connectionIsDead
        result = super().checkForDeadConnection(f)
        if self.connectionIsDead and not was_dead:
            self.generation += 1
            self._on_dead(f)
        return result

    def mark_dead(self, f: Failure) -> None:
        """Start reconnecting after any failure (used when the first connect fails)."""
        if self.stopped or self.connectionIsDead:
            return
        self.connectionIsDead = True
        self.generation += 1
        self._on_dead(f)
        self.startReconnecting(f)

    def startReconnecting(self, f):
        # Our own loop instead of txpostgres' RetryingCall: we need to cancel
        # the pending attempt when the pool closes (trial checks that no
        # delayed call is left behind, and a stopped server should not keep
        # dialling the database).
        self._delays = iter(self.reconnectionIterator())
        self._schedule()

    def _schedule(self):
        if self.stopped:
            return
        self._call = self.reactor.callLater(next(self._delays), self._attempt)

    def _attempt(self):
        self._call = None
        if self.stopped:
            return
        d = maybeDeferred(self.reconnect)

        def succeeded(_):
            if self.stopped:
                self.reconnectable.close()
                return
            self.connectionIsDead = False
            self._on_recovered()

        def failed(_):
            self._schedule()

        d.addCallbacks(succeeded, failed)

    def stop(self):
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _Connection(Connection):
    """A txpostgres connection that knows its pool state."""

    def __init__(self, reactor, pool: _Pool):
        self.detector: _Detector
        super().__init__(
            reactor=reactor,
            detector=_Detector(
                reactor, lambda f: pool._died(self, f), lambda: pool._recovered(self)
            ),
        )
        self.ready = False
        self.checked_out = False
        self.prepared = set()

    def connect(self, *args, **kwargs):
        self.prepared: set[str] = set()  # a new session has no prepared statements
        d = super().connect(*args, **kwargs)

        def registered(result):
            psycopg2.extras.register_default_jsonb(self._connection, loads=_loads)
            return result

        return d.addCallback(registered)

    def usable(self) -> bool:
        return (
            self.ready
            and not self.detector.connectionIsDead
            and self._connection is not None
            and not self._connection.closed
        )

    def doRead(self):
        # An idle connection whose backend was terminated becomes readable and
        # psycopg2's poll() raises. Left alone, that exception reaches the
        # reactor, which logs a traceback; instead hand it to the detector,
        # which starts reconnecting.
        try:
            super().doRead()
            if self._connection is not None and self._connection.closed:
                self.detector.mark_dead(Failure(ConnectionDead("connection closed")))
        except Exception:
            failure = Failure()
            self.reactor.removeReader(self)
            if self._connection is not None and self._connection.closed:
                self.detector.mark_dead(failure)
            else:
                self.detector.checkForDeadConnection(failure)
                if not self.detector.connectionIsDead:
                    _log.failure("unexpected error on an idle connection", failure)


class _Pool:
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
        self.connections = [_Connection(reactor, self) for _ in range(max(1, size))]
        self._idle: deque[_Connection] = deque()
        self._waiters: deque[tuple[Deferred, Any]] = deque()
        self.closed = False
        self.schema_ready = False
        self._schema_lock = DeferredLock()
        self._reachable: bool | None = None
        self._users = 0
        # Servers' pools keep the planner statistics of their tables fresh
        # (see _statistics); a migration's pool does not.
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
            # table's growth, hence the statistics keeper (_statistics.py),
            # whose ANALYZE of a grown table re-plans them everywhere.
            kwargs["options"] = (options + " -c plan_cache_mode=force_generic_plan").strip()
        for conn in self.connections:
            d = conn.connect(self.url, **kwargs)
            d.addCallbacks(
                lambda _, conn=conn: self._recovered(conn),
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
            if conn._connection is not None:
                try:
                    conn.close()
                except Exception:
                    pass

    # connection state changes, called by the detectors

    def _died(self, conn: _Connection, failure: Failure) -> None:
        conn.ready = False
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        if not self._alive() and self._reachable is not False:
            self._reachable = False
            _log.warn(
                "database {url} unreachable: {error}",
                url=_redact(self.url),
                error=str(failure.value).strip(),
            )
            waiters, self._waiters = self._waiters, deque()
            for d, timer in waiters:
                if timer.active():
                    timer.cancel()
                d.errback(BackendUnavailable("database unreachable"))

    def _recovered(self, conn: _Connection) -> None:
        if self.closed:
            return
        conn.ready = True
        if self._reachable is False:
            _log.info("database {url} reachable again", url=_redact(self.url))
        self._reachable = True
        if not conn.checked_out:
            self._hand_out(conn)

    def _alive(self) -> bool:
        return any(not c.detector.connectionIsDead for c in self.connections)

    # check-out and check-in

    def _checkout(self) -> Deferred:
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

        d = Deferred(cancel)

        def timed_out():
            for item in list(self._waiters):
                if item[0] is d:
                    self._waiters.remove(item)
            d.errback(BackendUnavailable(f"no free database connection after {self.timeout}s"))

        self._waiters.append((d, self.reactor.callLater(self.timeout, timed_out)))
        return d

    def _hand_out(self, conn: _Connection) -> None:
        while self._waiters:
            d, timer = self._waiters.popleft()
            if timer.active():
                timer.cancel()
            conn.checked_out = True
            d.callback(conn)
            return
        self._idle.append(conn)

    def try_checkout(self) -> _Connection | None:
        """An idle connection now, or C{None} (never waits; for background work)."""
        if self.closed or not self.schema_ready:
            return None
        while self._idle:
            conn = self._idle.popleft()
            if conn.usable():
                conn.checked_out = True
                return conn
        return None

    def release(self, conn: _Connection, poke: bool = True) -> None:
        conn.checked_out = False
        if self.closed:
            return
        # A dead connection comes back through _recovered once reconnected.
        if conn.usable():
            self._hand_out(conn)
        if poke and self.statistics is not None:
            # After each request (or statement outside one): tables that
            # grew get their statistics, in the background.
            self.statistics.poke()

    async def checkout(self) -> _Connection:
        if not self.schema_ready:
            await self.ensure_schema()
        return await self._checkout()

    async def ensure_schema(self) -> None:
        await self._schema_lock.acquire()
        try:
            if not self.schema_ready:
                conn = await self._checkout()
                try:
                    await _apply_schema(conn)
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
                return await _execute(conn, sql, params, prepare=prepare)
            except BackendUnavailable:
                if attempt == attempts - 1 or conn.detector.generation == generation:
                    raise
            finally:
                self.release(conn)
        raise AssertionError("unreachable")


def _redact(url: str) -> str:
    """The URL without its password, for the logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")
_statements: dict[str, tuple[str, str, list]] = {}
_STATEMENTS_MAX = 500


def _prepared_form(sql: str) -> tuple[str, str, list]:
    """
    C{(name, text, order)}: a server-side prepared statement for C{sql}
    (psycopg2 placeholders turned into C{$n}), and the order in which to
    pass the parameters.
    """
    found = _statements.get(sql)
    if found is None:
        order: list = []

        def number(match):
            key = match.group(1)
            if key is None:
                order.append(None)
                return f"${len(order)}"
            if key not in order:
                order.append(key)
            return f"${order.index(key) + 1}"

        text = _PLACEHOLDER.sub(number, sql)
        name = "js_" + hashlib.sha1(sql.encode("utf-8")).hexdigest()[:20]
        found = (name, text, order)
        if len(_statements) < _STATEMENTS_MAX:
            _statements[sql] = found
    return found


class _ArrayLiteral:
    """A Python list sent as an untyped array literal, which PostgreSQL
    coerces to the parameter's declared type (text[], jsonb[], bigint[])."""

    def __init__(self, text: str):
        self.text = text
        self._quoted = psycopg2.extensions.QuotedString(text)

    def prepare(self, conn):
        self._quoted.prepare(conn)

    def getquoted(self):
        return self._quoted.getquoted()


psycopg2.extensions.register_adapter(_ArrayLiteral, lambda v: v)


def _array_literal(values) -> _ArrayLiteral:
    parts = []
    for v in values:
        if v is None:
            parts.append("NULL")
        else:
            text = v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return _ArrayLiteral("{" + ",".join(parts) + "}")


def _run_statement(conn: _Connection, sql: str, params, generation, prepare=False, prefix=""):
    detector = conn.detector
    if (
        detector.connectionIsDead
        or not conn.ready
        or (generation is not None and detector.generation != generation)
    ):
        return fail(ConnectionDead())
    missing: list[tuple[str, str]] = []
    if prepare and len(_statements) >= _STATEMENTS_MAX and any(p not in _statements for p in _pieces(sql)):
        # Past this many shapes (filters and sorts make new ones), plan as
        # we go: each connection would otherwise hold a plan for every one.
        prepare = False
    if prepare:
        # Hot statements are planned once per connection: parsing and
        # planning cost PostgreSQL more than running these index look-ups.
        # Several statements (separated by ";") become several EXECUTEs.
        calls, values = [], []
        positional = None if isinstance(params, dict) else list(params or ())
        for piece in _pieces(sql):
            name, text, order = _prepared_form(piece)
            if positional is None:
                mine = [params[k] for k in order]
            else:
                mine, positional[: len(order)] = positional[: len(order)], []
            values += [_array_literal(v) if isinstance(v, (list, tuple)) else v for v in mine]
            calls.append(f"EXECUTE {name}" + (f" ({', '.join(['%s'] * len(mine))})" if mine else ""))
            if name not in conn.prepared:
                missing.append((name, text))
        sql, params = "; ".join(calls), values
    if prefix:
        # Statements sent ahead in the same round trip, already rendered:
        # their % signs must survive the interpolation of C{params}.
        sql = (prefix.replace("%", "%%") if params is not None else prefix) + sql

    def run(_=None):
        cursor = conn.cursor()
        d = cursor.execute(sql, params)

        def fetch(_):
            try:
                rows = cursor.fetchall() if cursor.description is not None else None
                return rows, cursor.rowcount
            finally:
                cursor.close()

        return d.addCallback(fetch)

    if missing:
        # PREPARE in a round trip of its own: it outlives a rollback of the
        # transaction around it, so only a success says it exists.
        cursor = conn.cursor()
        d = cursor.execute("; ".join(f"PREPARE {name} AS {text}" for name, text in missing))

        def prepared(_):
            cursor.close()
            conn.prepared.update(name for name, _ in missing)

        d.addCallback(prepared)
        d.addCallback(run)
    else:
        d = run()
    d.addErrback(detector.checkForDeadConnection)
    return d


def _pieces(sql: str) -> list[str]:
    found = _split_cache.get(sql)
    if found is None:
        found = [piece.strip() for piece in sql.split(";") if piece.strip()]
        if len(_split_cache) < 1000:
            _split_cache[sql] = found
    return found


_split_cache: dict[str, list[str]] = {}


def _cancellable(conn: _Connection, running: Deferred) -> Deferred:
    """
    C{running} (a statement on C{conn}), cancellable the way txpostgres
    allows. Cancelling asks PostgreSQL to stop the statement; txpostgres'
    own canceller then raises while the statement winds down, which Twisted
    would pass to whoever cancelled (a request whose client hung up) instead
    of a CancelledError. The caller gets its CancelledError at once; the
    connection stays locked until the statement has ended, so the rollback
    that follows runs after it.
    """
    mine = Deferred(lambda _: conn.cancel(running))

    def settle(result):
        if not mine.called:
            if isinstance(result, Failure):
                mine.errback(result)
            else:
                mine.callback(result)
        # else: cancelled already; the statement's own end concerns nobody.

    running.addBoth(settle)
    return mine


async def _execute(conn: _Connection, sql: str, params=None, generation=None, prepare=False, prefix=""):
    """
    Run C{sql} on C{conn} and return C{(rows or None, rowcount)}. When
    C{generation} is given, refuse to run on a connection that was
    re-established since (the transaction it belonged to is lost). With
    C{prepare}, C{sql} (one statement) runs as a prepared statement.
    C{prefix}: rendered statements to run first, in the same round trip.
    """
    try:
        return await _cancellable(conn, conn.lock.run(_run_statement, conn, sql, params, generation, prepare, prefix))
    except Exception as exc:
        translated = _translate(exc)
        if translated is exc:
            raise
        raise translated from exc


class _Unit:
    """
    One connection and one SQL transaction, enlisted in a request's
    L{ITransaction}. Round trips are what a request waits for, and what a
    list's writers wait for while one of them holds its lock, so:
      - C{BEGIN} travels with the first statement;
      - writes whose outcome nobody waits for (L{defer}) travel with the
        next statement, or with the commit;
      - the transaction's last write may carry the commit (L{finish}): sent
        before anything began, the statements form one implicit transaction
        (PostgreSQL runs a multi-statement query that way), so a list lock
        taken there is held for that one round trip only.
    """

    def __init__(self, pool: _Pool, conn: _Connection):
        self.pool = pool
        self.conn = conn
        self.generation = conn.detector.generation
        self._begun = False
        self._done = False
        self._pending: list[str] = []
        # The lists whose lock this transaction holds (until it ends), those
        # it holds in shared mode (L{PostgresStorage.guard}), and the
        # statements taking those asked for up front, not yet sent.
        self.lists: set[tuple[str, str]] = set()
        self.shared: set[tuple[str, str]] = set()
        self._ahead = ""

    @property
    def begun(self) -> bool:
        return self._begun

    async def lock_statement(self, key: tuple[str, str], shared: bool = False) -> str:
        """
        The statement that takes list C{key}'s lock (C{shared}: in shared
        mode), to send ahead of the statement that needs it (C{""} when this
        transaction holds it already, or has just taken it).

        One canonical order makes deadlocks between list locks impossible:
        a transaction only ever I{waits} for a lock whose key is greater
        than every key it holds. A lock out of that order (a batch writing
        list B after list A, where B's key is smaller), or the upgrade of a
        shared lock it holds, is only tried: when another transaction holds
        it, waiting could close a cycle, so this raises L{WriteConflict}
        naming every list involved, and the request runs again with all of
        them locked up front, in order.
        """
        if key in self.lists or (shared and key in self.shared):
            return ""
        mode = "_shared" if shared else ""
        lock = _list_lock_key(*key)
        held = [_list_lock_key(*k) for k in self.lists | self.shared]
        out_of_order = bool(held) and (lock < max(held) or key in self.shared)
        if out_of_order:
            rows, _ = await self.execute(f"SELECT pg_try_advisory_xact_lock{mode}(%s)", (lock,))
            if not rows[0][0]:
                raise WriteConflict(
                    self.lists | (set() if shared else {key}), shared=self.shared | ({key} if shared else set())
                )
        (self.shared if shared else self.lists).add(key)
        return "" if out_of_order else f"SELECT pg_advisory_xact_lock{mode}({lock}::bigint); "

    def defer(self, sql: str, params=None) -> None:
        """Queue a write to run, in this transaction, before the next statement."""
        if self._done:
            raise RuntimeError("transaction already finished")
        cursor = self.conn.cursor()
        rendered = cursor.mogrify(sql, params) if params is not None else sql.encode("utf-8")
        self._pending.append(rendered.decode("utf-8") + "; ")

    async def locks(self, wanted) -> str:
        """L{lock_statement} for several C{(key, shared)} locks, taken in the canonical order."""
        out = ""
        for key, shared in sorted(wanted, key=lambda w: _list_lock_key(*w[0])):
            out += await self.lock_statement(key, shared)
        return out

    def lock_ahead(self, keys, shared=()) -> None:
        """Take the locks of lists C{keys} (and C{shared}, in shared mode) first thing, in the canonical order."""
        wanted = [(k, False) for k in keys] + [(k, True) for k in shared if k not in keys]
        wanted = [(k, m) for k, m in wanted if k not in self.lists and not (m and k in self.shared)]
        for key, mode in wanted:
            (self.shared if mode else self.lists).add(key)
        self._ahead += _lock_sql(wanted)

    async def require(self, keys, shared=()) -> None:
        """Lock lists C{keys} (C{shared} in shared mode) too, ahead of the next statement (in order)."""
        self._ahead += await self.locks([(k, False) for k in keys] + [(k, True) for k in shared])

    def _take_pending(self, lock: str = "") -> str:
        """What goes ahead of the next statement: locks, then deferred writes."""
        prefix = self._ahead + lock + "".join(self._pending)
        self._pending = []
        self._ahead = ""
        return prefix

    async def execute(self, sql: str, params=None, prepare=False, lock: str = ""):
        """
        Run C{sql} in the transaction (opening it on the first call).
        C{lock}: a rendered lock statement (L{lock_statement}) to run first,
        ahead of the deferred writes, so that those (an object's ACL) are
        written under its list's lock too.
        """
        if self._done:
            raise RuntimeError("transaction already finished")
        prefix = self._take_pending(lock)
        if self._begun:
            return await _execute(self.conn, sql, params, self.generation, prepare, prefix)
        self._begun = True
        prefix = "BEGIN; " + prefix
        # When this first statement finds its connection dead (the server
        # restarted while it sat idle in the pool), nothing can have been
        # committed inside the BEGIN it carried: start over on another
        # connection. Each retry follows a death, so they are bounded by
        # the pool size.
        for _ in range(len(self.pool.connections)):
            try:
                return await _execute(self.conn, sql, params, self.generation, prepare, prefix)
            except BackendUnavailable:
                if self.conn.detector.generation == self.generation:
                    raise
            await self._swap()
        return await _execute(self.conn, sql, params, self.generation, prepare, prefix)

    async def _swap(self) -> None:
        self.pool.release(self.conn)
        self.conn = await self.pool.checkout()
        self.generation = self.conn.detector.generation

    async def finish(self, sql: str, params=None, rows: bool = True, prepare: bool = False, lock: str = ""):
        """
        Run C{sql} as the transaction's last statement and commit with it;
        return its C{(rows, rowcount)}. One round trip when nothing began
        (or when C{rows} is false: C{COMMIT} then follows C{sql} in the
        same query), two otherwise.
        """
        if self._done:
            raise RuntimeError("transaction already finished")
        if self._begun and rows:
            result = await self.execute(sql, params, prepare, lock)
            await self.commit()
            return result
        if not self._begun:
            # Unlike a BEGIN, this can commit: never send it twice. A
            # connection already known dead is swapped before sending.
            for _ in range(len(self.pool.connections)):
                if self.conn.usable() and self.conn.detector.generation == self.generation:
                    break
                await self._swap()
        explicit = self._begun
        prefix = self._take_pending(lock)
        self._begun = True
        if explicit:
            sql += "; COMMIT"  # (not a statement one can prepare)
            prepare = False
        try:
            result = await _execute(self.conn, sql, params, self.generation, prepare, prefix)
        except BaseException:
            # The server rolled an implicit transaction back; an explicit
            # one is left for rollback() to end.
            if not explicit:
                self._finish()
            raise
        self._finish()
        return result

    async def commit(self):
        if self._done:
            return
        try:
            prefix = self._take_pending()
            if self._begun:
                await _execute(self.conn, "COMMIT", None, self.generation, False, prefix)
            elif prefix:
                # Only deferred writes: one implicit transaction.
                await _execute(self.conn, "SELECT 1", None, self.generation, False, prefix)
        finally:
            self._finish()

    async def rollback(self):
        if self._done:
            return
        self._pending = []
        self._ahead = ""
        try:
            if self._begun and self.conn.detector.generation == self.generation:
                await _execute(self.conn, "ROLLBACK", None, self.generation)
        except JsonSyncError:
            # The connection is gone, and the server rolled back with it.
            pass
        finally:
            self._finish()

    def _finish(self):
        if not self._done:
            self._done = True
            self.pool.release(self.conn)


# ---------------------------------------------------------------------------
# Schema


def _schema_scripts() -> list[tuple[int, str, str]]:
    """C{(version, name, sql)} of every file in C{schema/}, oldest first."""
    scripts = []
    folder = resources.files("jsonsync.storage").joinpath("schema")
    for entry in folder.iterdir():
        match = re.match(r"^(\d+)_.*\.sql$", entry.name)
        if match:
            scripts.append((int(match.group(1)), entry.name, entry.read_text("utf-8")))
    scripts.sort()
    return scripts


async def _apply_schema(conn: _Connection, scripts=None, target: int | None = None) -> int:
    """
    Bring the schema to the latest version (or C{target}) in one SQL
    transaction on C{conn}, under an advisory lock so that processes
    starting together apply each script once. Returns the version reached.
    """
    scripts = _schema_scripts() if scripts is None else scripts
    try:
        rows, _ = await _execute(
            conn,
            "BEGIN;"
            " SELECT pg_advisory_xact_lock(%s, %s);"
            f" CREATE TABLE IF NOT EXISTS {_SCHEMA_TABLE} ("
            "  version INTEGER PRIMARY KEY,"
            "  name TEXT NOT NULL,"
            "  applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
            f" SELECT coalesce(max(version), 0) FROM {_SCHEMA_TABLE}",
            _SCHEMA_LOCK,
        )
        current = rows[0][0]
        for version, name, sql in scripts:
            if version <= current or (target is not None and version > target):
                continue
            _log.info("applying schema {name}", name=name)
            await _execute(conn, sql)
            await _execute(
                conn,
                f"INSERT INTO {_SCHEMA_TABLE} (version, name) VALUES (%s, %s)",
                (version, name),
            )
            current = version
        await _execute(conn, "COMMIT")
        return current
    except BaseException:
        try:
            await _execute(conn, "ROLLBACK")
        except Exception:
            pass
        raise


async def migrate(url: str, reactor, scripts=None, target: int | None = None) -> int:
    """
    Apply the schema to the database at C{url} without starting a server;
    returns the schema version reached.
    @raise BackendUnavailable: the database cannot be reached.
    """
    pool = _Pool(reactor, url, 1, 30)
    pool.start()
    try:
        conn = await pool._checkout()
        try:
            return await _apply_schema(conn, scripts, target)
        finally:
            pool.release(conn)
    finally:
        pool.close()


# ---------------------------------------------------------------------------
# Queries: jsonsync.query in SQL

_RANK_SQL = (
    "(CASE jsonb_typeof({v}) WHEN 'null' THEN 0 WHEN 'string' THEN 1 WHEN 'number' THEN 2"
    " WHEN 'boolean' THEN 3 WHEN 'array' THEN 4 WHEN 'object' THEN 5 ELSE 6 END)"
)
_STRICT = {Op.LT: "<", Op.MAX: "<", Op.GT: ">", Op.MIN: ">"}
_SQL_OP = {Op.LT: "<", Op.MAX: "<=", Op.GT: ">", Op.MIN: ">="}
_COLUMNS = {"id": ("o.id", 1), "last_modified": ("o.last_modified", 2)}
# Keys with dots are reachable (as in query.resolve) by trying every way to
# split the path; past this many parts only the two extreme splits are tried.
_MAX_SPLIT_PARTS = 5


def _splits(path: str) -> list[list[str]]:
    """The ways C{query.resolve} tries to read C{path}, in its order."""
    result = [[path]]
    if "." in path:
        parts = path.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:cut])
            for rest in _splits(".".join(parts[cut:])):
                result.append([head, *rest])
    return result


def _path_candidates(path: str) -> list[list[str]]:
    if path.count(".") + 1 > _MAX_SPLIT_PARTS:
        return [[path], path.split(".")]
    return _splits(path)


def _like(value: str) -> str:
    """The ILIKE pattern of Kinto's C{like_} filter (C{*} is the wildcard)."""
    if "*" not in value:
        value = f"*{value}*"
    escaped = (
        part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        for part in value.split("*")
    )
    return "%".join(escaped)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (list, dict))


def _integral(value: Any) -> bool:
    return rank(value) == 2 and (isinstance(value, int) or float(value).is_integer())


class _SqlQuery:
    """
    Builds the C{FROM ... WHERE ... ORDER BY} part of a list query. JSON
    fields are read once each, in a C{LATERAL} sub-select, and compared with
    explicit type ranks so that the results match L{jsonsync.query} exactly
    (JSONB's own order puts an empty array before null and compares strings
    with the database collation).
    """

    def __init__(self):
        self.params: list[Any] = []
        self._fields: dict[str, str] = {}
        self._field_sql: list[str] = []
        self._field_params: list[Any] = []

    # fields

    def field(self, path: str) -> str:
        alias = self._fields.get(path)
        if alias is None:
            alias = f"f.f{len(self._fields)}"
            self._fields[path] = alias
            candidates = []
            for segments in _path_candidates(path):
                candidates.append("o.data" + " -> %s::text" * len(segments))
                self._field_params.extend(segments)
            expr = candidates[0] if len(candidates) == 1 else f"COALESCE({', '.join(candidates)})"
            self._field_sql.append(f"{expr} AS {alias[2:]}")
        return alias

    def from_clause(self) -> tuple[str, list[Any]]:
        if not self._fields:
            return "objects o", []
        lateral = ", ".join(self._field_sql)
        return f"objects o CROSS JOIN LATERAL (SELECT {lateral}) f", list(self._field_params)

    def param(self, value: Any) -> str:
        self.params.append(value)
        return "%s"

    def json(self, value: Any) -> str:
        self.params.append(_dumps(value))
        return "%s::jsonb"

    # filters

    def condition(self, flt: Filter) -> str:
        column = _COLUMNS.get(flt.field)
        if column is not None:
            return self._column_condition(column[0], column[1], flt)
        return self._json_condition(self.field(flt.field), flt)

    def conjunction(self, filters: Iterable[Filter]) -> str:
        parts = [self.condition(f) for f in filters]
        return " AND ".join(parts) if parts else "TRUE"

    def _json_condition(self, v: str, flt: Filter) -> str:
        op, value = flt.op, flt.value
        rank_v = _RANK_SQL.format(v=v)
        if op is Op.EQ or op is Op.NOT:
            test = f"{v} IS NULL" if value is MISSING else f"({v} = {self.json(value)})"
            return test if op is Op.EQ else f"({test}) IS NOT TRUE"
        if op is Op.IN or op is Op.EXCLUDE:
            values = list(value)
            tests = []
            present = [_dumps(x) for x in values if x is not MISSING]
            if present:
                tests.append(f"{v} = ANY({self.param(present)}::jsonb[])")
            if len(present) < len(values):
                tests.append(f"{v} IS NULL")
            test = f"({' OR '.join(tests)})" if tests else "FALSE"
            return test if op is Op.IN else f"({test}) IS NOT TRUE"
        if op is Op.HAS:
            return f"{v} IS NOT NULL" if value else f"{v} IS NULL"
        if op is Op.LIKE:
            return f"(jsonb_typeof({v}) = 'string' AND ({v} #>> '{{}}') ILIKE {self.param(_like(value))})"
        if op is Op.CONTAINS or op is Op.CONTAINS_ANY:
            wanted = list(value)
            tests = []
            scalars = [x for x in wanted if _is_scalar(x)]
            if op is Op.CONTAINS and scalars:
                tests.append(f"{v} @> {self.json(scalars)}")
            else:
                tests.extend(f"{v} @> {self.json([x])}" for x in scalars)
            tests.extend(
                f"EXISTS (SELECT 1 FROM jsonb_array_elements({v}) e WHERE e = {self.json(x)})"
                for x in wanted
                if not _is_scalar(x)
            )
            if op is Op.CONTAINS:
                inner = " AND ".join(tests) if tests else "TRUE"
            else:
                inner = " OR ".join(tests) if tests else "FALSE"
            return f"(jsonb_typeof({v}) = 'array' AND ({inner}))"
        # LT, MAX, GT, MIN: by type rank first, then within the type.
        r = rank(value)
        strict, sql_op = _STRICT[op], _SQL_OP[op]
        if r == 6:
            return {
                Op.LT: f"{v} IS NOT NULL",
                Op.MAX: "TRUE",
                Op.GT: "FALSE",
                Op.MIN: f"{v} IS NULL",
            }[op]
        if r == 0:
            same = "TRUE" if op in (Op.MAX, Op.MIN) else "FALSE"
        elif r == 1:
            same = f"({v} #>> '{{}}') COLLATE \"C\" {sql_op} {self.param(value)}"
        elif r == 2:
            same = f"({v})::numeric {sql_op} {self.param(value)}"
        elif r == 3:
            same = f"({v})::boolean {sql_op} {self.param(value)}"
        else:
            same = f"{v} {sql_op} {self.json(value)}"
        return f"(CASE WHEN {rank_v} = {r} THEN {same} ELSE {rank_v} {strict} {r} END)"

    def _column_condition(self, col: str, col_rank: int, flt: Filter) -> str:
        """
        Filters on C{id} (always a string) and C{last_modified} (always an
        integer) use the columns, so that the indexes serve them.
        """
        op, value = flt.op, flt.value

        def fits(x):
            return isinstance(x, str) if col_rank == 1 else _integral(x)

        def norm(x):
            return x if col_rank == 1 else int(x)

        if op is Op.EQ:
            return f"{col} = {self.param(norm(value))}" if fits(value) else "FALSE"
        if op is Op.NOT:
            return f"{col} <> {self.param(norm(value))}" if fits(value) else "TRUE"
        if op is Op.IN or op is Op.EXCLUDE:
            values = sorted({norm(x) for x in value if fits(x)})
            test = f"{col} = ANY({self.param(values)})" if values else "FALSE"
            return test if op is Op.IN else f"NOT ({test})"
        if op is Op.HAS:
            return "TRUE" if value else "FALSE"
        if op is Op.LIKE:
            if col_rank != 1:
                return "FALSE"
            return f"{col} ILIKE {self.param(_like(value))}"
        if op is Op.CONTAINS or op is Op.CONTAINS_ANY:
            return "FALSE"
        r = rank(value)
        if r != col_rank:
            strict = _STRICT[op]
            return "TRUE" if (col_rank < r if strict == "<" else col_rank > r) else "FALSE"
        if col_rank == 2 and not _integral(value):
            # A bigint column against a fractional bound: round the bound so
            # the comparison stays on integers (and on the index).
            if op is Op.GT or op is Op.MAX:
                value = math.floor(value)
            else:
                value = math.ceil(value)
        return f"{col} {_SQL_OP[op]} {self.param(norm(value))}"

    # sorting

    def order_by(self, sorting: tuple[Sort, ...]) -> str:
        terms = []
        for sort in sorting:
            d = "ASC" if sort.direction > 0 else "DESC"
            column = _COLUMNS.get(sort.field)
            if column is not None:
                terms.append(f"{column[0]} {d}")
                continue
            v = self.field(sort.field)
            terms.extend(
                [
                    f"{_RANK_SQL.format(v=v)} {d}",
                    f"(CASE WHEN jsonb_typeof({v}) = 'string' THEN {v} #>> '{{}}' END)"
                    f' COLLATE "C" {d}',
                    f"(CASE WHEN jsonb_typeof({v}) = 'number' THEN ({v})::numeric END) {d}",
                    f"(CASE WHEN jsonb_typeof({v}) = 'boolean' THEN ({v})::boolean END) {d}",
                    f"(CASE WHEN jsonb_typeof({v}) IN ('array', 'object') THEN {v} END) {d}",
                ]
            )
        # Ties (client-forced timestamps, equal sort values) are broken as the
        # memory backend's timestamp index does: by id, in the direction of
        # a last_modified-only sort.
        fields = [s.field for s in sorting]
        if "id" not in fields:
            d = "DESC" if fields == ["last_modified"] and sorting[0].direction < 0 else "ASC"
            terms.append(f"o.id {d}")
        return ", ".join(terms)


def _acl(entries) -> dict[str, set[str]]:
    """An ACL from C{"permission principal"} strings (C{array_agg} of both)."""
    acl: dict[str, set[str]] = {}
    for entry in entries or ():
        permission, _, principal = entry.partition(" ")
        acl.setdefault(permission, set()).add(principal)
    return acl


def _build_select(
    what: str, resource_name: str, parent_id: str, query: Query, *, listing: bool,
    extra_where: str | None = None,
) -> tuple[str, list[Any]]:
    q = _SqlQuery()
    where = [
        f"o.resource_name = {q.param(resource_name)}",
        f"o.parent_id = {q.param(parent_id)}",
    ]
    if extra_where:
        where.append(extra_where)
    if not (listing and query.include_deleted):
        where.append("NOT o.deleted")
    if query.ids is not None:
        where.append(f"o.id = ANY({q.param(sorted(query.ids))})")
    for flt in query.filters:
        where.append(q.condition(flt))
    order = ""
    limit = ""
    if listing:
        if query.pagination:
            rules = " OR ".join(f"({q.conjunction(rule)})" for rule in query.pagination)
            where.append(f"({rules})")
        order = f" ORDER BY {q.order_by(tuple(query.sorting) or (Sort('last_modified', -1),))}"
        if query.limit is not None:
            limit = f" LIMIT {q.param(int(query.limit))}"
    source, source_params = q.from_clause()
    sql = f"SELECT {what} FROM {source} WHERE {' AND '.join(where)}{order}{limit}"
    return sql, source_params + q.params


def _list_lock_key(resource_name: str, parent_id: str) -> int:
    """
    The advisory lock key of one list: a stable 64-bit hash (the same in
    every process, unlike Python's C{hash}). A collision only makes two
    lists share a lock.
    """
    digest = hashlib.blake2b(
        f"{resource_name}\x00{parent_id}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def _subtree(resource_name: str, parent_id: str, object_id: str) -> tuple[str, str]:
    """
    The lock of everything below one object, as a pseudo list key (no
    resource is named with a NUL): its deletion takes it exclusively, every
    write beneath it takes it shared (L{IStorage.create}'s C{within}).
    """
    return ("\x00", f"{resource_name}\x00{parent_id}\x00{object_id}")


def _lock_sql(wanted) -> str:
    """Statements taking C{(key, shared)} locks, in the canonical order, for a transaction holding none."""
    out = []
    for key, shared in sorted(wanted, key=lambda w: _list_lock_key(*w[0])):
        out.append(f"SELECT pg_advisory_xact_lock{'_shared' if shared else ''}({_list_lock_key(*key)}::bigint); ")
    return "".join(out)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# ---------------------------------------------------------------------------
# Storage and permissions


class _PostgresBase:
    # Whether this provider takes the list locks a transaction asks for up
    # front (lock_lists): the storage does; a permission store on another
    # database must not lock the same keys there too (two databases' locks
    # could wait on each other unseen).
    takes_list_locks = False

    def __init__(self, pool: _Pool, owns_pool: bool):
        self._pool = pool
        self._owns_pool = owns_pool

    def transaction(self):
        return Transaction()

    async def _unit(self, txn) -> _Unit:
        pool = self._pool

        async def open_unit():
            unit = _Unit(pool, await pool.checkout())
            # A request run again after a write conflict locks the lists it
            # writes before its first read, in the canonical order (see
            # _Unit.lock_statement): what it reads then stays true to its
            # commit, so this attempt cannot conflict on them again.
            if self.takes_list_locks:
                unit.lock_ahead(getattr(txn, "lock_lists", ()), getattr(txn, "lock_shared", ()))
            return unit

        return await txn.enlist(pool.key, open_unit)

    def _enlisted(self, txn) -> _Unit | None:
        enlisted = getattr(txn, "enlisted", None)
        return enlisted(self._pool.key) if enlisted is not None else None

    async def _write(self, txn, sql: str, params=None):
        unit = await self._unit(txn)
        return await unit.execute(sql, params)

    async def _defer(self, txn, sql: str, params=None) -> None:
        """A write whose outcome nothing waits for: it travels with the next statement."""
        unit = await self._unit(txn)
        unit.defer(sql, params)

    def _closing(self, txn) -> bool:
        """
        Whether the coming write may carry the commit: the request said it
        is its transaction's last (C{txn.last_write}) and nothing else is
        enlisted. Answers yes once.
        """
        if getattr(txn, "last_write", False) and txn.only(self._pool.key):
            txn.last_write = False
            return True
        return False

    async def _last(self, txn, sql: str, params=None, rows: bool = True, prepare: bool = False,
                    closing: bool | None = None, lock: str = ""):
        """A write that commits with it when L{_closing} (L{_Unit.finish}), runs as usual otherwise."""
        unit = await self._unit(txn)
        if closing is None:
            closing = self._closing(txn)
        if closing:
            return await unit.finish(sql, params, rows, prepare, lock)
        return await unit.execute(sql, params, prepare, lock)

    async def _read(self, txn, sql: str, params=None):
        """
        Reads go through the request's connection once it has written (to
        see its own writes), straight to the pool otherwise (autocommit, no
        BEGIN/COMMIT round trips).
        """
        enlisted = getattr(txn, "enlisted", None)
        unit = enlisted(self._pool.key) if enlisted is not None else None
        locks = getattr(txn, "lock_lists", ()) if self.takes_list_locks else ()
        shared = getattr(txn, "lock_shared", ()) if self.takes_list_locks else ()
        if unit is None and (enlisted is None or locks or shared):
            unit = await self._unit(txn)
        elif (locks or shared) and unit is not None and not (
            unit.lists.issuperset(locks) and (unit.lists | unit.shared).issuperset(shared)
        ):
            await unit.require(locks, shared)  # asked for after the transaction began
        prepare = ";" not in sql
        if unit is not None:
            return await unit.execute(sql, params, prepare)
        return await self._pool.run(sql, params, prepare)

    async def close(self) -> None:
        """Close the connections (when this provider opened them)."""
        if self._owns_pool:
            self._pool.close()

    async def heartbeat(self, timeout: float = 2.0) -> bool:
        result: Deferred = Deferred()

        async def ping():
            try:
                rows, _ = await self._pool.run("SELECT 1")
                return rows == [(1,)]
            except Exception:
                return False

        def settle(value):
            if not result.called:
                result.callback(value)

        # Rather than cancelling the query (psycopg2's cancel() blocks, and
        # an unreachable host would block the reactor), stop waiting for it.
        timer = self._pool.reactor.callLater(timeout, settle, False)
        ping_d = Deferred.fromCoroutine(ping())
        ping_d.addCallback(settle)
        answer = await result
        if timer.active():
            timer.cancel()
        return answer


# The list's lock is taken by a statement sent ahead of this one (see
# _Unit.lock_statement): this statement's snapshot then follows the lock, so
# it sees what the previous holder committed.
_GROUP_WRITE = (
    "WITH input AS ("
    "  SELECT i.id, i.head, i.deleted, i.only_tomb, i.expect, i.n"
    "  FROM unnest(%(ids)s::text[], %(heads)s::text[], %(deleted)s::boolean[], %(tombs)s::boolean[],"
    "   %(expect)s::bigint[])"
    "  WITH ORDINALITY AS i(id, head, deleted, only_tomb, expect, n)),"
    # ok: every object the list lives under (within) is live; their
    # deletion waits for this statement's transaction, or it sees them gone.
    " base AS ("
    "  SELECT GREATEST(%(now)s::bigint, COALESCE(("
    "   SELECT last_modified FROM timestamps"
    "   WHERE resource_name = %(res)s::text AND parent_id = %(parent)s::text), 0) + 1) AS v,"
    "  (SELECT count(*) FROM unnest(%(a_res)s::text[], %(a_parent)s::text[], %(a_id)s::text[]) AS a(r, p, i)"
    "   JOIN objects o ON o.resource_name = a.r AND o.parent_id = a.p AND o.id = a.i AND NOT o.deleted)"
    "   = cardinality(%(a_id)s::text[]) AS ok),"
    " created AS ("
    "  INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data, body)"
    "  SELECT %(res)s::text, %(parent)s::text, i.id, b.v + i.n - 1, i.deleted,"
    "   (i.head || (b.v + i.n - 1) || '}')::jsonb, i.head || (b.v + i.n - 1) || '}'"
    "  FROM input i, base b WHERE i.only_tomb AND b.ok"
    "  ON CONFLICT (resource_name, parent_id, id) DO UPDATE SET"
    "   last_modified = EXCLUDED.last_modified, deleted = EXCLUDED.deleted, data = EXCLUDED.data,"
    "   body = EXCLUDED.body"
    "   WHERE objects.deleted"
    "  RETURNING id, last_modified),"
    # Compare-and-swap: a write that names the version it decided on
    # (expect) happens only while that live version is the stored one.
    " updated AS ("
    "  INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data, body)"
    "  SELECT %(res)s::text, %(parent)s::text, i.id, b.v + i.n - 1, i.deleted,"
    "   (i.head || (b.v + i.n - 1) || '}')::jsonb, i.head || (b.v + i.n - 1) || '}'"
    "  FROM input i, base b WHERE NOT i.only_tomb AND b.ok AND (i.expect IS NULL OR EXISTS ("
    "   SELECT 1 FROM objects x WHERE x.resource_name = %(res)s::text AND x.parent_id = %(parent)s::text"
    "   AND x.id = i.id AND NOT x.deleted AND x.last_modified = i.expect))"
    "  ON CONFLICT (resource_name, parent_id, id) DO UPDATE SET"
    "   last_modified = EXCLUDED.last_modified, deleted = EXCLUDED.deleted, data = EXCLUDED.data,"
    "   body = EXCLUDED.body"
    "  RETURNING id, last_modified),"
    # With strict, a refused create (a live object holds the id) fails the
    # whole statement, or what was sent with it (the new object's ACL) would
    # commit alone: inserting the id again is a certain unique violation
    # (ObjectExists). Without, the refused create just returns no row.
    " clash AS ("
    "  INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data)"
    "  SELECT %(res)s::text, %(parent)s::text, i.id, 0, false, '{}'::jsonb FROM input i, base b"
    "  WHERE %(strict)s::boolean AND b.ok AND i.only_tomb AND i.id NOT IN (SELECT id FROM created)),"
    " moved AS ("
    "  INSERT INTO timestamps (resource_name, parent_id, last_modified)"
    "  SELECT %(res)s::text, %(parent)s::text, max(w.last_modified)"
    "  FROM (SELECT last_modified FROM created UNION ALL SELECT last_modified FROM updated) w"
    "  HAVING count(*) > 0"
    "  ON CONFLICT (resource_name, parent_id) DO UPDATE SET last_modified = EXCLUDED.last_modified"
    "  RETURNING 1)"
    " SELECT id, last_modified FROM created UNION ALL SELECT id, last_modified FROM updated"
    # Likewise a refused compare-and-swap, or a write beneath a deleted
    # object, with strict, fails the statement (SQLSTATE JS409, a
    # WriteConflict); without, it returns no row.
    " UNION ALL SELECT i.id, jsonsync_write_conflict(i.id) FROM input i, base b"
    "  WHERE %(strict)s::boolean AND (NOT b.ok OR (NOT i.only_tomb AND i.id NOT IN (SELECT id FROM updated)))"
)

# At most this many writes share one statement (and one commit).
_GROUP_MAX = 64


def _group_params(resource_name: str, parent_id: str, items, strict: bool, within=()) -> dict:
    """The parameters of L{_GROUP_WRITE} for C{(id, head, deleted, only_tomb, expect)} items."""
    return {
        "a_res": [a[0] for a in within],
        "a_parent": [a[1] for a in within],
        "a_id": [a[2] for a in within],
        "ids": [item[0] for item in items],
        "heads": [item[1] for item in items],
        "deleted": [item[2] for item in items],
        "tombs": [item[3] for item in items],
        "expect": [item[4] for item in items],
        "strict": strict,
        "now": now_ms(),
        "res": resource_name,
        "parent": parent_id,
    }


class _GroupItem:
    __slots__ = ("unit", "prefix", "id", "write", "done")

    def __init__(self, unit: _Unit, write: tuple[str, str, bool, bool, int | None]):
        self.unit = unit
        self.prefix = unit._take_pending()
        self.id = write[0]
        self.write = write
        self.done: Deferred = Deferred()


class _ListWriter:
    """
    Group commit for the writes of one list that carry their requests'
    commits. Such a write is its request's whole transaction (the writes
    deferred before it, then the object), so several can share one
    statement, one list lock and one commit: while a group is on its way to
    the server, the writes that arrive queue, and leave together as the
    next group. Each request still gets only its own outcome: when a group
    fails, nothing of it was committed, and its writes run again one by
    one, so that the one at fault fails alone.
    """

    def __init__(self, storage: PostgresStorage, key: tuple[str, str]):
        self.storage = storage
        self.key = key
        self.queue: deque[_GroupItem] = deque()
        self.running = False

    def submit(self, item: _GroupItem) -> Deferred:
        self.queue.append(item)
        if not self.running:
            self.running = True
            Deferred.fromCoroutine(self._run())
        return item.done

    def _next_group(self) -> list[_GroupItem]:
        group: list[_GroupItem] = []
        ids: set[str] = set()
        later: list[_GroupItem] = []
        while self.queue and len(group) < _GROUP_MAX:
            item = self.queue.popleft()
            if item.id in ids:  # the same id twice: the second waits for the next group
                later.append(item)
            else:
                ids.add(item.id)
                group.append(item)
        self.queue.extendleft(reversed(later))
        return group

    async def _run(self) -> None:
        try:
            while self.queue:
                group = self._next_group()
                try:
                    outcomes = await self._send(group)
                except BackendUnavailable as exc:
                    # Whether it committed is unknown: never send it again.
                    outcomes = [Failure(exc)] * len(group)
                except JsonSyncError as exc:
                    if len(group) == 1:
                        outcomes = [Failure(exc)]
                    else:
                        outcomes = []
                        for item in group:
                            try:
                                outcomes.extend(await self._send([item]))
                            except JsonSyncError as one:
                                outcomes.append(Failure(one))
                            except Exception:
                                _log.failure("write failed")
                                outcomes.append(Failure(UnexpectedError()))
                except Exception:
                    _log.failure("group write failed")
                    outcomes = [Failure(UnexpectedError())] * len(group)
                for item, outcome in zip(group, outcomes, strict=True):
                    item.unit._begun = True
                    item.unit._finish()
                    item.done.callback(outcome) if not isinstance(outcome, Failure) else item.done.errback(outcome)
        finally:
            self.running = False

    async def _send(self, group: list[_GroupItem]) -> list:
        sender = group[0].unit
        for _ in range(len(sender.pool.connections)):
            if sender.conn.usable() and sender.conn.detector.generation == sender.generation:
                break
            await sender._swap()
        # The locks first (the list's, and those of what it lives under, in
        # shared mode), then each request's deferred writes (its objects'
        # ACLs), then the objects: everything of the list under its lock.
        resource_name, parent_id, within = self.key
        lock = _lock_sql([((resource_name, parent_id), False)] + [(_subtree(*a), True) for a in within])
        rows, _ = await _execute(
            sender.conn,
            _GROUP_WRITE,
            _group_params(resource_name, parent_id, [item.write for item in group], strict=True, within=within),
            sender.generation,
            True,
            lock + "".join(item.prefix for item in group),
        )
        stamps = dict(rows)
        return [stamps[item.id] for item in group]


@implementer(IStorage)
class PostgresStorage(_PostgresBase):
    """
    Objects in one C{objects} table (the whole object as JSONB, plus the
    columns that key and order it) and list timestamps in C{timestamps}.
    """

    takes_list_locks = True

    def __init__(self, pool: _Pool, owns_pool: bool):
        super().__init__(pool, owns_pool)
        self._writers: dict[tuple[str, str], _ListWriter] = {}

    def _writer(self, key: tuple) -> _ListWriter:
        writer = self._writers.get(key)
        if writer is None:
            if len(self._writers) > 1000:  # forget idle lists
                for k in [k for k, w in self._writers.items() if not w.running]:
                    del self._writers[k]
            writer = self._writers[key] = _ListWriter(self, key)
        return writer

    async def flush(self):
        await self._pool.run("TRUNCATE objects, timestamps")

    async def prefetch(self, txn, keys, principals, checks, members=None, acl_uri=None, page=None):
        """L{IRequestPrefetch}: objects, grant checks, groups, one ACL (and a page) in one statement."""
        keys = list(keys)
        page_sql, page_params = self._page_columns(page) if page is not None else ("", {})
        uris, perms, index = [], [], []
        for i, grants in enumerate(checks):
            for uri, perm in grants:
                uris.append(uri)
                perms.append(perm)
                index.append(i)
        rows, _ = await self._read(
            txn,
            "SELECT"
            " (SELECT array_agg(k.n ORDER BY k.n) FROM unnest(%(kr)s::text[], %(kp)s::text[], %(ki)s::text[])"
            "   WITH ORDINALITY AS k(r, p, i, n)"
            "   JOIN objects o ON o.resource_name = k.r AND o.parent_id = k.p AND o.id = k.i AND NOT o.deleted),"
            " (SELECT array_agg(o.data ORDER BY k.n) FROM unnest(%(kr)s::text[], %(kp)s::text[], %(ki)s::text[])"
            "   WITH ORDINALITY AS k(r, p, i, n)"
            "   JOIN objects o ON o.resource_name = k.r AND o.parent_id = k.p AND o.id = k.i AND NOT o.deleted),"
            " (SELECT array_agg(DISTINCT g.c) FROM unnest(%(uris)s::text[], %(perms)s::text[], %(idx)s::int[])"
            "   AS g(uri, perm, c)"
            "   JOIN access_control_entries a ON a.object_id = g.uri AND a.permission = g.perm"
            "   WHERE a.principal = ANY(%(principals)s::text[])"
            "   OR (%(has_members)s AND a.principal IN ("
            "    SELECT principal FROM user_principals WHERE member = ANY(%(members)s::text[])))),"
            " (SELECT array_agg(DISTINCT principal) FROM user_principals"
            "   WHERE %(has_members)s AND member = ANY(%(members)s::text[])),"
            " (SELECT array_agg(permission || ' ' || principal) FROM access_control_entries"
            "   WHERE %(has_acl)s AND object_id = %(acl_uri)s)" + page_sql,
            {
                "kr": [k[0] for k in keys],
                "kp": [k[1] for k in keys],
                "ki": [k[2] for k in keys],
                "uris": uris,
                "perms": perms,
                "idx": index,
                "principals": sorted(set(principals)),
                "has_members": members is not None,
                "members": list(members or ()),
                "has_acl": acl_uri is not None,
                "acl_uri": acl_uri or "",
                **page_params,
            },
        )
        numbers, datas, satisfied, group_list, entries = rows[0][:5]
        found: list = [None] * len(keys)
        for n, data in zip(numbers or (), datas or (), strict=True):
            found[n - 1] = data
        satisfied = set(satisfied or ())
        allowed = [i in satisfied for i in range(len(checks))]
        groups = set(group_list or ()) if members is not None else None
        result = found, allowed, groups, _acl(entries) if acl_uri is not None else None
        if page is None:
            return result
        timestamp, joined = rows[0][5:]
        if timestamp is None:
            # No timestamp yet in this snapshot: list_snapshot settles one.
            return (*result, None)
        size = page[2].limit - 1  # the query asks one more, to know whether a page follows
        if size < 1:
            return (*result, None)
        # The query asked one object more than the page: when it came, it
        # is the last text, and the page's own last object precedes it.
        count = joined.count("\x1e") + 1 if joined else 0
        head, last = joined or "", None
        if count > size:
            head = head.rpartition("\x1e")[0]
            last = head.rpartition("\x1e")[2]
        return (*result, (timestamp, EncodedPage(head.replace("\x1e", ","), count, last)))

    @staticmethod
    def _page_columns(page) -> tuple[str, dict]:
        """
        A page and the list timestamp it is consistent with, as two more
        columns of L{prefetch}: the timestamp, and the JSON texts of the
        page's objects in one string, in order (an aggregate keeps the order
        of a sorted sub-select), separated by the ASCII record separator,
        which JSON text never holds unescaped. One text value: no array for
        PostgreSQL to escape and for Python to parse.
        """
        resource_name, parent_id, query = page
        inner, params = _build_select(
            "COALESCE(o.body, o.data::text) AS data", resource_name, parent_id, query, listing=True,
            extra_where="o.last_modified <= (SELECT last_modified FROM timestamps"
            " WHERE resource_name = %(page_res)s AND parent_id = %(page_parent)s)",
        )
        counter = iter(range(len(params)))
        inner = re.sub(r"(?<!%)%s", lambda _: f"%(page_{next(counter)})s", inner)
        named: dict[str, Any] = {f"page_{i}": v for i, v in enumerate(params)}
        named.update(page_res=resource_name, page_parent=parent_id)
        columns = (
            ", (SELECT last_modified FROM timestamps"
            "   WHERE resource_name = %(page_res)s AND parent_id = %(page_parent)s),"
            f" (SELECT string_agg(p.data, chr(30)) FROM ({inner}) p)"
        )
        return columns, named

    async def get_many(self, txn, keys):
        keys = list(keys)
        if not keys:
            return []
        rows, _ = await self._read(
            txn,
            "SELECT k.n, o.data FROM unnest(%s::text[], %s::text[], %s::text[])"
            " WITH ORDINALITY AS k(resource_name, parent_id, id, n)"
            " JOIN objects o ON o.resource_name = k.resource_name AND o.parent_id = k.parent_id"
            " AND o.id = k.id AND NOT o.deleted",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
        )
        found: list = [None] * len(keys)
        for n, data in rows:
            found[n - 1] = data
        return found

    async def get(self, txn, resource_name, parent_id, object_id):
        rows, _ = await self._read(
            txn,
            "SELECT data FROM objects WHERE resource_name = %s AND parent_id = %s"
            " AND id = %s AND NOT deleted",
            (resource_name, parent_id, object_id),
        )
        return rows[0][0] if rows else None

    async def list_timestamp(self, txn, resource_name, parent_id):
        key = (resource_name, parent_id)
        rows, _ = await self._read(
            txn,
            "SELECT last_modified FROM timestamps WHERE resource_name = %s AND parent_id = %s",
            key,
        )
        if rows:
            return rows[0][0]
        # A list never written gets "now", which must then stay. Take the
        # list's lock so that the value cannot land between a writer's read
        # of the timestamp and its commit; the statements sent together run
        # in one transaction and the last SELECT sees whichever row won.
        settle = (
            "INSERT INTO timestamps (resource_name, parent_id, last_modified)"
            " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING;"
            " SELECT last_modified FROM timestamps WHERE resource_name = %s AND parent_id = %s"
        )
        params = (*key, now_ms(), *key)
        unit = self._enlisted(txn)
        if unit is not None:
            # Inside a transaction, the lock is held to its end: in order.
            rows, _ = await unit.execute(settle, params, lock=await unit.lock_statement(key))
        else:
            rows, _ = await self._pool.run(
                f"SELECT pg_advisory_xact_lock({_list_lock_key(*key)}::bigint); " + settle, params
            )
        return rows[0][0]

    async def _store(self, txn, resource_name, parent_id, obj, decide, within=()):
        """
        Write C{obj} under the list's lock: C{decide(existing)} gets the
        stored C{(deleted, last_modified)} of that id (or C{None}) and returns
        the client-wanted timestamp (or C{None}), raising to refuse the write.
        A tombstone also takes the lock of what lies below the object
        exclusively (writes beneath it wait, or see it deleted).
        """
        unit = await self._unit(txn)
        object_id = obj["id"]
        key = (resource_name, parent_id)
        wanted = [(key, False)] + [(_subtree(*a), True) for a in within]
        if obj.get("deleted"):
            wanted.append((_subtree(resource_name, parent_id, object_id), False))
        try:
            lock = await unit.locks(wanted)
        except WriteConflict as conflict:
            raise WriteConflict(conflict.lists | {key}, shared=conflict.shared) from None
        rows, _ = await unit.execute(
            # After the lock: this statement's snapshot then sees the
            # timestamp the previous holder committed.
            "SELECT t.last_modified, x.deleted, x.last_modified, ("
            "  SELECT count(*) FROM unnest(%s::text[], %s::text[], %s::text[]) AS a(r, p, i)"
            "  JOIN objects o ON o.resource_name = a.r AND o.parent_id = a.p AND o.id = a.i AND NOT o.deleted)"
            " FROM (SELECT 1) AS one"
            " LEFT JOIN timestamps t ON t.resource_name = %s AND t.parent_id = %s"
            " LEFT JOIN objects x ON x.resource_name = %s AND x.parent_id = %s AND x.id = %s",
            (
                [a[0] for a in within], [a[1] for a in within], [a[2] for a in within],
                resource_name, parent_id, resource_name, parent_id, object_id,
            ),
            lock=lock,
        )
        list_ts, old_deleted, old_ts, live_above = rows[0]
        if live_above != len(within):
            raise WriteConflict([key], shared={_subtree(*a) for a in within})
        existing = None if old_ts is None else (old_deleted, old_ts)
        wanted = decide(existing)
        current = list_ts if list_ts is not None else 0
        stamp, new_list_ts = next_timestamp(current, wanted)
        stored = dict(obj)
        stored["last_modified"] = stamp
        body = _dumps(stored)
        await self._last(
            txn,
            "INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data, body)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s)"
            " ON CONFLICT (resource_name, parent_id, id) DO UPDATE SET"
            " last_modified = EXCLUDED.last_modified, deleted = EXCLUDED.deleted,"
            " data = EXCLUDED.data, body = EXCLUDED.body;"
            " INSERT INTO timestamps (resource_name, parent_id, last_modified)"
            " VALUES (%s, %s, %s) ON CONFLICT (resource_name, parent_id)"
            " DO UPDATE SET last_modified = EXCLUDED.last_modified",
            (
                resource_name,
                parent_id,
                object_id,
                stamp,
                bool(stored.get("deleted")),
                body,
                body,
                resource_name,
                parent_id,
                new_list_ts,
            ),
            rows=False,
        )
        return stored

    async def _store_now(self, txn, resource_name, parent_id, obj, only_over_tombstone: bool,
                         expected: int | None = None, within=()):
        """
        The common write (no client-supplied timestamp) in one round trip:
        take the list's lock, then, in a statement whose snapshot follows
        the lock, stamp the object with C{max(now, list timestamp + 1)},
        store it and move the list timestamp. Returns the stored object, or
        C{None} when the write was refused: C{only_over_tombstone} and a
        live object holds the id, or C{expected} is not the stored live
        version (when the write carries the commit, a refusal raises
        instead, failing everything sent with it).
        """
        closing = self._closing(txn)
        unit = await self._unit(txn)
        key = (resource_name, parent_id)
        write = (obj["id"], _head(obj), bool(obj.get("deleted")), only_over_tombstone, expected)
        try:
            if closing and not unit.begun and not unit.lists and not unit.shared:
                # The request's whole transaction: it joins its list's group.
                stamp = await self._writer((resource_name, parent_id, within)).submit(_GroupItem(unit, write))
            else:
                # Ancestors whose subtree lock this transaction holds already
                # were found live under it: nobody else can delete them
                # meanwhile (and its own deletion of one is seen by the next
                # request's look-up), so a batch checks them once per list.
                held = unit.lists | unit.shared
                check = () if all(_subtree(*a) in held for a in within) else within
                rows, _ = await self._last(
                    txn,
                    _GROUP_WRITE,
                    _group_params(resource_name, parent_id, [write], strict=closing, within=check),
                    prepare=True,
                    closing=closing,
                    lock=await unit.locks([(key, False)] + [(_subtree(*a), True) for a in within]),
                )
                stamp = rows[0][1] if rows else None
        except WriteConflict as conflict:
            # Name the locks, so that the request's next attempt takes them first.
            raise WriteConflict(
                conflict.lists | {key}, deadlock=conflict.deadlock,
                shared=conflict.shared | {_subtree(*a) for a in within},
            ) from None
        if stamp is None:
            if within and not await self._all_live(txn, within):
                raise WriteConflict([key], shared={_subtree(*a) for a in within})
            return None
        stored = dict(obj)
        stored["last_modified"] = stamp
        return stored

    async def _all_live(self, txn, keys) -> bool:
        return all(found is not None for found in await self.get_many(txn, keys))

    async def guard(self, txn, resource_name, parent_id, object_id, expected):
        """
        L{IStorage.guard}: the object's list lock in shared mode, held to the
        end of the transaction (its writers take it exclusively, so they
        wait), then the version checked in a statement that follows the lock.
        Costs one round trip; only transactions that need it pay.
        """
        unit = await self._unit(txn)
        key = (resource_name, parent_id)
        rows, _ = await unit.execute(
            "SELECT EXISTS (SELECT 1 FROM objects WHERE resource_name = %s AND parent_id = %s"
            " AND id = %s AND NOT deleted AND last_modified = %s)",
            (resource_name, parent_id, object_id, expected),
            lock=await unit.lock_statement(key, shared=True),
        )
        if not rows[0][0]:
            raise WriteConflict(shared=[key])

    async def create(self, txn, resource_name, parent_id, obj, within=()):
        obj = dict(obj)
        wanted = obj.pop("last_modified", None)
        within = tuple(within)
        if wanted is None:
            stored = await self._store_now(
                txn, resource_name, parent_id, obj, only_over_tombstone=True, within=within
            )
            if stored is None:
                raise ObjectExists()
            return stored

        def decide(existing):
            if existing is not None and not existing[0]:
                raise ObjectExists()
            return wanted

        return await self._store(txn, resource_name, parent_id, obj, decide, within)

    async def update(self, txn, resource_name, parent_id, object_id, obj, expected=None, within=()):
        obj = dict(obj)
        obj["id"] = object_id
        obj.pop("deleted", None)
        wanted = obj.pop("last_modified", None)
        within = tuple(within)
        if wanted is None:
            stored = await self._store_now(
                txn, resource_name, parent_id, obj, only_over_tombstone=False, expected=expected,
                within=within,
            )
            if stored is None:
                raise WriteConflict([(resource_name, parent_id)])
            return stored

        def decide(existing):
            live = existing is not None and not existing[0]
            check_expected(expected, live, existing and existing[1], (resource_name, parent_id))
            # An older client timestamp cannot move a live object back.
            if live and isinstance(wanted, int) and wanted <= existing[1]:
                return None
            return wanted

        return await self._store(txn, resource_name, parent_id, obj, decide, within)

    async def delete(self, txn, resource_name, parent_id, object_id, last_modified=None, expected=None,
                     within=()):
        def decide(existing):
            live = existing is not None and not existing[0]
            check_expected(expected, live, existing and existing[1], (resource_name, parent_id))
            if not live:
                raise ObjectNotFound(resource_name, object_id)
            if not isinstance(last_modified, int) or last_modified <= existing[1]:
                return None
            return last_modified

        tombstone = {"id": object_id, "deleted": True}
        return await self._store(txn, resource_name, parent_id, tombstone, decide, tuple(within))

    async def purge(self, txn, parent_prefix):
        below = _escape_like(parent_prefix) + "/%"
        await self._write(
            txn,
            # Every list that ever held an object has a timestamps row: find
            # the lists there, then delete through the objects primary key.
            "DELETE FROM objects o USING timestamps t"
            " WHERE (t.parent_id = %s OR t.parent_id LIKE %s)"
            " AND o.resource_name = t.resource_name AND o.parent_id = t.parent_id;"
            " DELETE FROM timestamps WHERE parent_id = %s OR parent_id LIKE %s",
            (parent_prefix, below, parent_prefix, below),
        )

    async def list(self, txn, resource_name, parent_id, query):
        if query.ids is not None and not query.ids:
            return []
        if query.limit is not None and query.limit <= 0:
            return []
        sql, params = _build_select("o.data", resource_name, parent_id, query, listing=True)
        rows, _ = await self._read(txn, sql, params)
        return [row[0] for row in rows]

    async def list_snapshot(self, txn, resource_name, parent_id, query, encoded=False, _again=True):
        # The list timestamp and the page as of it, in one statement (one
        # snapshot): nothing committed after the timestamp shows up.
        if (query.ids is not None and not query.ids) or (query.limit is not None and query.limit <= 0):
            return await self.list_timestamp(txn, resource_name, parent_id), []
        inner, params = _build_select(
            # Encoded: the JSONB as text, which goes out without being parsed
            # and serialised again in Python.
            "COALESCE(o.body, o.data::text) AS data" if encoded else "o.data", resource_name, parent_id, query,
            listing=True, extra_where="o.last_modified <= ts.t",
        )
        rows, _ = await self._read(
            txn,
            "WITH ts AS (SELECT last_modified AS t FROM timestamps"
            " WHERE resource_name = %s AND parent_id = %s)"
            f" SELECT ts.t, page.data FROM ts LEFT JOIN LATERAL ({inner}) page ON true",
            [resource_name, parent_id, *params],
        )
        if not rows:
            # No timestamp in this snapshot: the list was never written, or
            # its first writer committed since. Settle the timestamp (a list
            # never written gets "now"), then read again: answering here with
            # the newer timestamp and the empty page would hide that first
            # write from a client syncing with _since.
            timestamp = await self.list_timestamp(txn, resource_name, parent_id)
            if _again:
                return await self.list_snapshot(txn, resource_name, parent_id, query, encoded, _again=False)
            return timestamp, []
        if encoded:
            return rows[0][0], [Encoded(row[1]) for row in rows if row[1] is not None]
        return rows[0][0], [row[1] for row in rows if row[1] is not None]

    async def count(self, txn, resource_name, parent_id, query):
        if query.ids is not None and not query.ids:
            return 0
        sql, params = _build_select("count(*)", resource_name, parent_id, query, listing=False)
        rows, _ = await self._read(txn, sql, params)
        return rows[0][0]


@implementer(IPermissionStore)
class PostgresPermissions(_PostgresBase):
    """ACEs in C{access_control_entries}, group membership in C{user_principals}."""

    async def flush(self):
        await self._pool.run("TRUNCATE access_control_entries, user_principals")

    async def get_object_permissions(self, txn, object_uri):
        rows, _ = await self._read(
            txn,
            "SELECT permission, principal FROM access_control_entries WHERE object_id = %s",
            (object_uri,),
        )
        result: dict[str, set[str]] = {}
        for permission, principal in rows:
            result.setdefault(permission, set()).add(principal)
        return result

    async def replace_object_permissions(self, txn, object_uri, permissions):
        names = sorted(permissions)
        if not names:
            return
        pairs = [(name, p) for name in names for p in sorted(set(permissions[name] or ()))]
        await self._defer(
            txn,
            "DELETE FROM access_control_entries WHERE object_id = %s AND permission = ANY(%s);"
            " INSERT INTO access_control_entries (object_id, permission, principal)"
            " SELECT %s, p, pr FROM unnest(%s::text[], %s::text[]) AS t(p, pr)"
            " ON CONFLICT DO NOTHING",
            (object_uri, names, object_uri, [p[0] for p in pairs], [p[1] for p in pairs]),
        )

    async def delete_object_permissions(self, txn, uri_prefix):
        await self._defer(
            txn,
            "DELETE FROM access_control_entries WHERE object_id = %s OR object_id LIKE %s",
            (uri_prefix, _escape_like(uri_prefix) + "/%"),
        )

    async def check(self, txn, principals, grants):
        grants = list(grants)
        principals = sorted(set(principals))
        if not grants or not principals:
            return False
        rows, _ = await self._read(
            txn,
            "SELECT EXISTS (SELECT 1 FROM access_control_entries a"
            " JOIN unnest(%s::text[], %s::text[]) AS g(uri, perm)"
            " ON a.object_id = g.uri AND a.permission = g.perm"
            " WHERE a.principal = ANY(%s::text[]))",
            ([g[0] for g in grants], [g[1] for g in grants], principals),
        )
        return bool(rows[0][0])

    async def authorize(self, txn, principals, grants, members=None, acl_uri=None):
        # Group membership, the grant check and the object's ACL in one round
        # trip: the first thing nearly every request needs.
        grants = list(grants)
        rows, _ = await self._read(
            txn,
            "WITH groups AS ("
            "  SELECT DISTINCT principal FROM user_principals"
            "  WHERE %(has_members)s AND member = ANY(%(members)s::text[])),"
            " everyone AS ("
            "  SELECT unnest(%(principals)s::text[]) AS principal"
            "  UNION SELECT principal FROM groups)"
            " SELECT"
            "  (SELECT array_agg(principal) FROM groups),"
            "  EXISTS (SELECT 1 FROM access_control_entries a"
            "   JOIN unnest(%(uris)s::text[], %(perms)s::text[]) AS g(uri, perm)"
            "   ON a.object_id = g.uri AND a.permission = g.perm"
            "   WHERE a.principal IN (SELECT principal FROM everyone)),"
            "  (SELECT array_agg(permission || ' ' || principal) FROM access_control_entries"
            "   WHERE %(has_acl)s AND object_id = %(acl_uri)s)",
            {
                "has_members": members is not None,
                "members": list(members or ()),
                "principals": sorted(set(principals)),
                "uris": [g[0] for g in grants],
                "perms": [g[1] for g in grants],
                "has_acl": acl_uri is not None,
                "acl_uri": acl_uri or "",
            },
        )
        group_list, allowed, entries = rows[0]
        groups = set(group_list or ()) if members is not None else None
        return bool(allowed), groups, _acl(entries) if acl_uri is not None else None

    async def accessible_children(self, txn, principals, uri_prefix, permissions):
        principals = sorted(set(principals))
        permissions = sorted(set(permissions))
        if not principals or not permissions:
            return set()
        rows, _ = await self._read(
            txn,
            "SELECT DISTINCT substr(object_id, %s) FROM access_control_entries"
            " WHERE principal = ANY(%s::text[]) AND permission = ANY(%s::text[])"
            " AND object_id LIKE %s AND strpos(substr(object_id, %s), '/') = 0",
            (
                len(uri_prefix) + 1,
                principals,
                permissions,
                _escape_like(uri_prefix) + "_%",
                len(uri_prefix) + 1,
            ),
        )
        return {row[0] for row in rows}

    async def accessible_objects(self, txn, principals):
        principals = sorted(set(principals))
        if not principals:
            return {}
        rows, _ = await self._read(
            txn,
            "SELECT DISTINCT object_id, permission FROM access_control_entries"
            " WHERE principal = ANY(%s::text[])",
            (principals,),
        )
        result: dict[str, set[str]] = {}
        for uri, permission in rows:
            result.setdefault(uri, set()).add(permission)
        return result

    async def user_principals(self, txn, members):
        members = sorted(set(members))
        if not members:
            return set()
        rows, _ = await self._read(
            txn,
            "SELECT DISTINCT principal FROM user_principals WHERE member = ANY(%s::text[])",
            (members,),
        )
        return {row[0] for row in rows}

    async def add_user_principal(self, txn, member, principal):
        await self._write(
            txn,
            "INSERT INTO user_principals (member, principal) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (member, principal),
        )

    async def remove_user_principal(self, txn, member, principal):
        await self._write(
            txn,
            "DELETE FROM user_principals WHERE member = %s AND principal = %s",
            (member, principal),
        )

    async def remove_principal(self, txn, principal):
        await self._write(
            txn,
            "DELETE FROM user_principals WHERE principal = %s;"
            " DELETE FROM access_control_entries WHERE principal = %s",
            (principal, principal),
        )

    async def remove_principal_prefix(self, txn, prefix):
        await self._write(
            txn,
            "DELETE FROM user_principals WHERE principal LIKE %s",
            (_escape_like(prefix) + "%",),
        )


@implementer(IStorageBackend)
class PostgresBackend:
    """
    Builds the PostgreSQL storage and permission store. When both use the
    same URL they share one pool, hence one connection and one SQL
    transaction per request.
    """

    name = "postgresql"
    settings: dict[str, Any] = {
        "storage_url": "postgresql://postgres@localhost:5432/postgres",
        "permission_url": None,
        "storage_pool_size": 10,
        "storage_pool_timeout": 30,
    }

    def _setting(self, settings, name):
        value = settings.get(name) if hasattr(settings, "get") else None
        return self.settings[name] if value is None else value

    async def _open_pool(self, url, settings, reactor) -> _Pool:
        _check_url(url)
        pool = _Pool(
            reactor,
            url,
            int(self._setting(settings, "storage_pool_size")),
            float(self._setting(settings, "storage_pool_timeout")),
        )
        pool.start()
        pool.statistics = StatisticsKeeper(pool)
        try:
            await pool.ensure_schema()
        except BackendUnavailable:
            # Start anyway: queries answer 503 until the database is back,
            # and the first one after that sets the schema up.
            _log.warn("database {url} unavailable at start; will retry", url=_redact(url))
        except BaseException:
            pool.close()
            raise
        return pool

    async def open_storage(self, settings, reactor):
        url = self._setting(settings, "storage_url")
        return PostgresStorage(await self._open_pool(url, settings, reactor), True)

    async def open_permissions(self, settings, reactor, storage):
        url = self._setting(settings, "permission_url") or self._setting(settings, "storage_url")
        if isinstance(storage, PostgresStorage) and storage._pool.url == url:
            # Same database: the storage can answer object and ACL look-ups together.
            alsoProvides(storage, IRequestPrefetch)
            return PostgresPermissions(storage._pool, False)
        return PostgresPermissions(await self._open_pool(url, settings, reactor), True)


def _check_url(url: str) -> None:
    if not isinstance(url, str) or not re.match(r"^postgres(ql)?://", url):
        raise ValueError(f"not a PostgreSQL URL (postgresql://user@host:port/db): {url!r}")
    try:
        psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as exc:
        raise ValueError(f"invalid PostgreSQL URL {_redact(url)!r}: {exc}") from exc


# ---------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    """C{python -m jsonsync.storage.postgresql migrate --url postgresql://...}"""
    parser = argparse.ArgumentParser(prog="python -m jsonsync.storage.postgresql")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("migrate", help="create or upgrade the schema, then exit")
    cmd.add_argument("--url", required=True, help="postgresql://user@host:port/db")
    args = parser.parse_args(argv)

    from twisted.internet.task import react

    async def run(reactor):
        _check_url(args.url)
        try:
            version = await migrate(args.url, reactor)
        except BackendUnavailable as exc:
            print(f"error: database unreachable: {exc.__cause__ or exc}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"schema at version {version}")

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
