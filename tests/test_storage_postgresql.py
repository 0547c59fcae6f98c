"""
The storage contract, bound to the PostgreSQL backend on a real server.

The server is C{JSONSYNC_TEST_POSTGRESQL_URL} (default: the C{test} database
on 127.0.0.1:5432, user postgres, trust authentication). When it cannot be
reached the tests are skipped, except under CI (C{CI} set), where they fail.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from txpostgres.txpostgres import Connection

from jsonsync.storage.postgresql import PostgresBackend
from jsonsync.testing import StorageContract

URL = os.environ.get("JSONSYNC_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _unreachable_reason(url: str) -> str | None:
    """Why PostgreSQL cannot be used (checked once, blocking, at import)."""
    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except psycopg2.Error as exc:
        return f"PostgreSQL not reachable at {url}: {str(exc).strip()}"
    return None


_REASON = _unreachable_reason(URL)
# Under CI a missing database must fail the run, not skip it silently.
SKIP = _REASON if _REASON and not os.environ.get("CI") else None


def with_query(url: str, **params) -> str:
    """C{url} with C{params} added to its query string (libpq connection options)."""
    parts = urlsplit(url)
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


async def scratch_url(test: TestCase) -> str:
    """
    The test database URL with a fresh PostgreSQL schema first in its
    C{search_path}, dropped in the test's cleanup: tests never see each
    other's rows, nor those of anything else using the same database (a
    developer's server, a concurrent test run).
    """
    schema = "jsonsync_test_" + uuid.uuid4().hex[:12]
    admin = Connection(reactor)
    await admin.connect(URL)

    async def drop():
        try:
            await admin.runOperation(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            admin.close()

    test.addCleanup(drop)
    await admin.runOperation(f"CREATE SCHEMA {schema}")
    return with_query(URL, options=f"-csearch_path%3D{schema}")


async def open_backend(test: TestCase, url: str | None = None, **settings):
    """
    Open storage and permissions on C{url} (a scratch schema by default),
    closed in the test's cleanup.
    """
    if url is None:
        url = await scratch_url(test)
    backend = PostgresBackend()
    settings = {"storage_url": url, "storage_pool_size": 4, **settings}
    storage = await backend.open_storage(settings, reactor)
    test.addCleanup(storage.close)
    permissions = await backend.open_permissions(settings, reactor, storage)
    test.addCleanup(permissions.close)
    return storage, permissions


class PostgresStorageTests(StorageContract, TestCase):
    skip = SKIP

    async def make_backend(self):
        return await open_backend(self)
