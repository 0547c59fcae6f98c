"""
The backend wiring: L{PostgresBackend} opens the pools (one per database
URL, with its statistics keeper and schema) and builds the storage and the
permission store on them; L{migrate} and L{main} apply the schema without
a server (C{python -m jsonsync.storage.postgresql migrate --url ...}).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import alsoProvides, implementer

from jsonsync.errors import BackendUnavailable
from jsonsync.interfaces import IRequestPrefetch, IStorageBackend
from jsonsync.storage.postgresql.permissions import PostgresPermissions
from jsonsync.storage.postgresql.pool import Pool
from jsonsync.storage.postgresql.schema import apply_schema, check_url, redact
from jsonsync.storage.postgresql.statistics import StatisticsKeeper
from jsonsync.storage.postgresql.storage import PostgresStorage

_log = Logger()


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
        # How stale a server's knowledge of the sync horizons may be, and so
        # how long `jsonsync purge-deleted` waits between recording the new
        # horizons and removing tombstones.
        "sync_horizon_refresh_seconds": 5,
    }

    def _setting(self, settings, name):
        value = settings.get(name) if hasattr(settings, "get") else None
        return self.settings[name] if value is None else value

    async def _open_pool(self, url, settings, reactor) -> Pool:
        check_url(url)
        pool = Pool(
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
            _log.warn("database {url} unavailable at start; will retry", url=redact(url))
        except BaseException:
            pool.close()
            raise
        return pool

    async def open_storage(self, settings, reactor):
        url = self._setting(settings, "storage_url")
        refresh = float(self._setting(settings, "sync_horizon_refresh_seconds"))
        return PostgresStorage(await self._open_pool(url, settings, reactor), True, refresh)

    async def open_permissions(self, settings, reactor, storage):
        url = self._setting(settings, "permission_url") or self._setting(settings, "storage_url")
        if isinstance(storage, PostgresStorage) and storage.pool.url == url:
            # Same database: the storage can answer object and ACL look-ups together.
            alsoProvides(storage, IRequestPrefetch)
            return PostgresPermissions(storage.pool, False)
        return PostgresPermissions(await self._open_pool(url, settings, reactor), True)


async def migrate(url: str, reactor, scripts=None, target: int | None = None) -> int:
    """
    Apply the schema to the database at C{url} without starting a server;
    returns the schema version reached.
    @raise BackendUnavailable: the database cannot be reached.
    """
    pool = Pool(reactor, url, 1, 30)
    pool.start()
    try:
        conn = await pool.checkout_now()
        try:
            return await apply_schema(conn, scripts, target)
        finally:
            pool.release(conn)
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> None:
    """C{python -m jsonsync.storage.postgresql migrate --url postgresql://...}"""
    parser = argparse.ArgumentParser(prog="python -m jsonsync.storage.postgresql")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("migrate", help="create or upgrade the schema, then exit")
    cmd.add_argument("--url", required=True, help="postgresql://user@host:port/db")
    args = parser.parse_args(argv)

    from twisted.internet.task import react

    async def run(reactor):
        check_url(args.url)
        try:
            version = await migrate(args.url, reactor)
        except BackendUnavailable as exc:
            print(f"error: database unreachable: {exc.__cause__ or exc}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"schema at version {version}")

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
