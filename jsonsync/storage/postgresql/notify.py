"""
Change notices across processes (L{jsonsync.interfaces.IChangeNotifier})
through PostgreSQL C{LISTEN}/C{NOTIFY}: one dedicated connection per
process, opened when the first subscriber comes, both listens and sends.

A notice says only "list L moved to timestamp T" (C{pg_notify} payloads are
small and may be dropped when a listener falls far behind); subscribers read
the changes from storage with their cursor. Notices of this process are also
handed to its subscribers at once, without waiting for the round trip.
Notices published while the connection is down are lost, and so may be
those sent while it reconnects: after each (re)connection the subscribers
are told that anything may have moved (C{callback(None, None, None)}).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsonsync import jsonutil
from jsonsync.interfaces import IChangeNotifier
from jsonsync.storage.notify import LocalNotifier
from jsonsync.storage.postgresql import driver
from jsonsync.storage.postgresql.driver import PooledConnection
from jsonsync.storage.postgresql.pool import Pool

_log = Logger()

CHANNEL = "jsonsync_changes"
# Notices sent in one statement at most (each is a call of pg_notify).
_BATCH = 200


class _ListenPool(Pool):
    """A pool of one connection that is never handed out: the notifier's."""

    def __init__(self, notifier: PostgresNotifier, reactor, url: str):
        super().__init__(reactor, url, 1, 30)
        self.notifier = notifier

    def connection_recovered(self, conn: PooledConnection) -> None:
        if self.closed:
            return
        conn.ready = True
        self._reachable = True
        self.notifier.connected(conn)


@implementer(IChangeNotifier)
class PostgresNotifier(LocalNotifier):
    def __init__(self, reactor, url: str):
        super().__init__()
        self.reactor = reactor
        self.url = url
        self._pool: _ListenPool | None = None
        self._conn: PooledConnection | None = None
        self._pending: dict[tuple[str, str], int] = {}
        self._flush_call = None
        self._sending: Deferred | None = None

    def subscribe(self, callback):
        if self._pool is None:
            self._pool = _ListenPool(self, self.reactor, self.url)
            self._pool.start()
        return super().subscribe(callback)

    # -- the connection ------------------------------------------------------
    def connected(self, conn: PooledConnection) -> None:
        conn.addNotifyObserver(self._received)
        d = Deferred.fromCoroutine(driver.execute(conn, f"LISTEN {CHANNEL}"))

        def listening(_):
            self._conn = conn
            # Whatever was sent while nobody listened: read again everywhere.
            self.dispatch(None, None, None)
            self._schedule()

        def failed(f):
            _log.warn("LISTEN {channel} failed: {error}", channel=CHANNEL, error=f.getErrorMessage())

        d.addCallbacks(listening, failed)

    def _received(self, notify) -> None:
        if notify.channel != CHANNEL:
            return
        try:
            resource_name, parent_id, timestamp = jsonutil.loads(notify.payload)
        except (ValueError, TypeError):
            return
        self.dispatch(resource_name, parent_id, timestamp)

    # -- sending -------------------------------------------------------------
    def publish(self, resource_name, parent_id, timestamp):
        self.dispatch(resource_name, parent_id, timestamp)
        if self._pool is None:
            return  # nobody listens in this process: other processes' subscribers poll
        key = (resource_name, parent_id)
        if timestamp > self._pending.get(key, -1):
            self._pending[key] = timestamp
        self._schedule()

    def _schedule(self) -> None:
        if self._pending and self._flush_call is None and self._sending is None and self._conn is not None:
            # Notices of one reactor turn travel together.
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        conn = self._conn
        if conn is None or not conn.usable() or not self._pending:
            return
        items = list(self._pending.items())[:_BATCH]
        for key, _ in items:
            del self._pending[key]
        sql = "SELECT " + ", ".join(["pg_notify(%s, %s)"] * len(items))
        params: list = []
        for (resource_name, parent_id), timestamp in items:
            params += [CHANNEL, jsonutil.dumps([resource_name, parent_id, timestamp]).decode()]
        self._sending = Deferred.fromCoroutine(driver.execute(conn, sql, params))

        def sent(result):
            self._sending = None
            if isinstance(result, Failure):
                _log.warn("NOTIFY failed: {error}", error=result.getErrorMessage())
            self._schedule()

        self._sending.addBoth(sent)

    def close(self):
        super().close()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        self._pending.clear()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._conn = None
