"""
The PostgreSQL backend through database outages: killed sessions, a server
that goes away and comes back, a server that is down when jsonsync starts,
and one that accepts connections but never answers.

Outages are made with a TCP proxy in front of the real server (stopping the
shared server itself would disturb anything else using it), and killed
sessions with C{pg_terminate_backend}.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from twisted.internet import protocol, reactor
from twisted.internet.task import deferLater
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import TestCase
from txpostgres.txpostgres import Connection

from jsonsync.errors import BackendUnavailable
from jsonsync.query import Query
from tests.pg import SKIP, URL, open_backend, scratch_url, with_port, with_query

R = "record"
P = "/buckets/b/collections/recovery"


class _TrackedProxyServer(ProxyServer):
    def connectionMade(self):
        self.factory.live.add(self)
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.live.discard(self)
        super().connectionLost(reason)


class _Blackhole(protocol.Protocol):
    """Accepts a connection and never answers."""

    def connectionMade(self):
        self.factory.live.add(self)

    def connectionLost(self, reason):
        self.factory.live.discard(self)


class Proxy:
    """A TCP proxy to the test database that can be cut and restored."""

    def __init__(self, test: TestCase, url: str, blackhole: bool = False):
        target = urlsplit(URL)
        if blackhole:
            self.factory = protocol.Factory.forProtocol(_Blackhole)
        else:
            self.factory = ProxyFactory(target.hostname or "127.0.0.1", target.port or 5432)
            self.factory.protocol = _TrackedProxyServer
        self.factory.live = set()
        self.port = None
        self.number = None
        self.target_url = url
        test.addCleanup(self.cut)

    def url(self) -> str:
        return with_port(self.target_url, self.number)

    def reserve(self):
        """Pick a free port number, not listening yet."""
        listening = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.number = listening.getHost().port
        return listening.stopListening()

    def start(self):
        self.port = reactor.listenTCP(self.number or 0, self.factory, interface="127.0.0.1")
        self.number = self.port.getHost().port

    async def cut(self):
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        for proto in list(self.factory.live):
            proto.transport.abortConnection()
            peer = getattr(proto, "peer", None)
            if peer is not None and peer.transport is not None:
                peer.transport.abortConnection()
        # Let the aborted connections finish closing.
        await deferLater(reactor, 0.05, lambda: None)


async def sleep(seconds: float):
    await deferLater(reactor, seconds, lambda: None)


async def round_trip(storage, n: int) -> None:
    """A write and a read, each in its own transaction."""
    txn = storage.transaction()
    try:
        await storage.update(txn, R, P, f"r{n}", {"n": n})
    except BaseException:
        await txn.rollback()
        raise
    await txn.commit()
    txn = storage.transaction()
    try:
        await storage.get(txn, R, P, f"r{n}")
    finally:
        await txn.rollback()


async def wait_until_working(storage, deadline: float = 10.0):
    """
    Retry a round trip until it succeeds; returns C{(seconds, errors)}.
    Anything but L{BackendUnavailable} fails the test.
    """
    started = time.monotonic()
    errors = []
    n = 0
    while True:
        n += 1
        try:
            await round_trip(storage, n)
            return time.monotonic() - started, errors
        except BackendUnavailable as exc:
            errors.append(exc)
        if time.monotonic() - started > deadline:
            raise AssertionError(f"not recovered after {deadline}s: {errors[-1:]}")
        await sleep(0.05)


class KilledSessionsTests(TestCase):
    skip = SKIP

    async def test_recovers_after_sessions_are_terminated(self):
        name = "jsonsync-kill-test"
        storage, _ = await open_backend(
            self, with_query(await scratch_url(self), application_name=name)
        )
        await storage.flush()
        self.addCleanup(storage.flush)
        await round_trip(storage, 0)
        # A transaction in flight when its session dies.
        in_flight = storage.transaction()
        await storage.create(in_flight, R, P, {"id": "lost"})

        killer = Connection(reactor)
        await killer.connect(URL)
        self.addCleanup(killer.close)
        killed = await killer.runQuery(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name = %s",
            (name,),
        )
        self.assertEqual(len(killed), 4)

        with self.assertRaises(BackendUnavailable):
            await in_flight.commit()
        seconds, errors = await wait_until_working(storage)
        print(
            f"\n  recovered {seconds:.2f}s after the kill ({len(errors)} failed attempts: {[str(e) for e in errors]})"
        )
        self.assertLess(seconds, 5)
        self.assertTrue(await storage.heartbeat())
        # The transaction that died was rolled back, not half applied.
        txn = storage.transaction()
        self.assertIsNone(await storage.get(txn, R, P, "lost"))
        await txn.rollback()
        # Every connection heals, not just the first one.
        await sleep(1)
        self.assertTrue(all(c.usable() for c in storage.pool.connections))


class OutageTests(TestCase):
    skip = SKIP

    async def test_outage_then_return(self):
        proxy = Proxy(self, await scratch_url(self))
        proxy.start()
        storage, permissions = await open_backend(self, proxy.url())
        await storage.flush()
        self.addCleanup(storage.flush)
        await round_trip(storage, 0)

        await proxy.cut()
        started = time.monotonic()
        with self.assertRaises(BackendUnavailable):
            await round_trip(storage, 1)
        with self.assertRaises(BackendUnavailable):
            txn = storage.transaction()
            try:
                await permissions.user_principals(txn, ["u"])
            finally:
                await txn.rollback()
        self.assertLess(time.monotonic() - started, 2, "outage errors should come fast")
        self.assertFalse(await storage.heartbeat())

        await sleep(0.5)
        proxy.start()
        seconds, errors = await wait_until_working(storage)
        print(f"\n  recovered {seconds:.2f}s after the database returned")
        self.assertLess(seconds, 5)
        self.assertTrue(await storage.heartbeat())

    async def test_start_while_database_is_down(self):
        proxy = Proxy(self, await scratch_url(self))
        await proxy.reserve()
        started = time.monotonic()
        storage, permissions = await open_backend(self, proxy.url())
        self.assertLess(time.monotonic() - started, 5, "opening waited for the database")
        self.assertFalse(storage.pool.schema_ready)
        with self.assertRaises(BackendUnavailable):
            await round_trip(storage, 0)
        self.assertFalse(await storage.heartbeat())

        proxy.start()
        seconds, _ = await wait_until_working(storage)
        print(f"\n  usable {seconds:.2f}s after the database came up")
        self.assertLess(seconds, 5)
        self.assertTrue(storage.pool.schema_ready)
        await storage.flush()

    async def test_heartbeat_times_out_on_a_silent_server(self):
        proxy = Proxy(self, await scratch_url(self), blackhole=True)
        proxy.start()
        storage, _ = await open_backend(self, proxy.url(), storage_pool_timeout=0.5)
        started = time.monotonic()
        self.assertFalse(await storage.heartbeat())
        self.assertLess(time.monotonic() - started, 3)
        with self.assertRaises(BackendUnavailable):
            txn = storage.transaction()
            try:
                await storage.count(txn, R, P, Query())
            finally:
                await txn.rollback()
