"""
The driver: a txpostgres connection that reconnects by itself, the one
function every statement goes through (L{execute}), and the translation of
driver failures into L{jsonsync.errors} exceptions.

L{execute} is the hook point for tests: the other modules of this package
call it as C{driver.execute}, looked up at each call, so a test that
replaces it (C{self.patch(driver, "execute", counting)}) sees every
statement the backend sends, with nothing to pay when nobody does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionClosed
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres.reconnection import ConnectionDead, DeadConnectionDetector
from txpostgres.retrying import simpleBackoffIterator
from txpostgres.txpostgres import Connection, RollbackFailed

from jsonsync.errors import (
    BackendUnavailable,
    JsonSyncError,
    ObjectExists,
    UnexpectedError,
    ValueRefused,
    WriteConflict,
)
from jsonsync.storage.postgresql.statements import loads, render_prepared

if TYPE_CHECKING:  # pragma: no cover
    from jsonsync.storage.postgresql.pool import Pool

_log = Logger()

# The SQLSTATE that jsonsync_write_conflict() raises (schema 0003).
CONFLICT_SQLSTATE = "JS409"


def _translate(exc: BaseException) -> BaseException:
    """
    The domain exception for a driver or pool failure (the caller raises it
    C{from} the original, so the cause is kept for the logs).
    """
    if isinstance(exc, (JsonSyncError, CancelledError)):
        return exc
    if isinstance(exc, (ConnectionDead, RollbackFailed, ConnectionClosed)):
        return BackendUnavailable()
    if getattr(exc, "pgcode", None) == CONFLICT_SQLSTATE:
        # jsonsync_write_conflict(): a compare-and-swap write found its
        # object changed since the request read it.
        return WriteConflict()
    if isinstance(exc, psycopg2.extensions.TransactionRollbackError):
        # A deadlock PostgreSQL broke, or a serialization failure: nothing of
        # the transaction is left, and running the request again is safe.
        # List locks are taken in one order (Unit.lock_statement), so this
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

    connectionIsDead: bool

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
        self._delays: Iterator[float] = iter(())
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


class PooledConnection(Connection):
    """A txpostgres connection that knows its pool state."""

    def __init__(self, reactor, pool: Pool):
        self.detector: _Detector
        super().__init__(
            reactor=reactor,
            detector=_Detector(
                reactor, lambda f: pool.connection_died(self, f), lambda: pool.connection_recovered(self)
            ),
        )
        self.ready = False
        self.checked_out = False
        # The names of the statements prepared in this session.
        self.prepared: set[str] = set()

    def connect(self, *args, **kwargs):
        self.prepared = set()  # a new session has no prepared statements
        d = super().connect(*args, **kwargs)

        def registered(result):
            psycopg2.extras.register_default_jsonb(self._connection, loads=loads)
            return result

        return d.addCallback(registered)

    def usable(self) -> bool:
        return (
            self.ready
            and not self.detector.connectionIsDead
            and self._connection is not None
            and not self._connection.closed
        )

    def close_quietly(self) -> None:
        """Close the session if one is open, ignoring failures (the pool is closing)."""
        if self._connection is not None:
            try:
                self.close()
            except Exception:
                pass

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



def _run_statement(conn: PooledConnection, sql: str, params, generation, prepare=False, prefix=""):
    detector = conn.detector
    if (
        detector.connectionIsDead
        or not conn.ready
        or (generation is not None and detector.generation != generation)
    ):
        return fail(ConnectionDead())
    missing: list[tuple[str, str]] = []
    if prepare:
        # Hot statements are planned once per connection: parsing and
        # planning cost PostgreSQL more than running these index look-ups.
        # Several statements (separated by ";") become several EXECUTEs.
        rendered = render_prepared(sql, params, conn.prepared)
        if rendered is not None:
            sql, params, missing = rendered
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




def _cancellable(conn: PooledConnection, running: Deferred) -> Deferred:
    """
    C{running} (a statement on C{conn}), cancellable the way txpostgres
    allows. Cancelling asks PostgreSQL to stop the statement; txpostgres'
    own canceller then raises while the statement winds down, which Twisted
    would pass to whoever cancelled (a request whose client hung up) instead
    of a CancelledError. The caller gets its CancelledError at once; the
    connection stays locked until the statement has ended, so the rollback
    that follows runs after it.
    """
    mine: Deferred = Deferred(lambda _: conn.cancel(running))

    def settle(result):
        if not mine.called:
            if isinstance(result, Failure):
                mine.errback(result)
            else:
                mine.callback(result)
        # else: cancelled already; the statement's own end concerns nobody.

    running.addBoth(settle)
    return mine


async def execute(conn: PooledConnection, sql: str, params=None, generation=None, prepare=False, prefix=""):
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
