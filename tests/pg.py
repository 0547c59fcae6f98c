"""
The PostgreSQL test helper every test module uses: which server, whether to
skip, scratch schemas, and the backend opened on one.

The server is C{JSONSYNC_TEST_POSTGRESQL_URL} (default: the C{test} database
on 127.0.0.1:5432, user postgres, trust authentication). When it cannot be
reached the tests are skipped, except under CI (C{CI} set), where they fail.
The accounts tests use a database of their own, C{ACCOUNTS_URL}
(C{JSONSYNC_TEST_ACCOUNTS_POSTGRESQL_URL}), created when missing.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, TestCase
from txpostgres.txpostgres import Connection

from jsonsync.storage.postgresql import PostgresBackend
from jsonsync.testclient import TEST_POSTGRESQL_URL, postgresql_skip

URL = TEST_POSTGRESQL_URL
ACCOUNTS_URL = os.environ.get(
    "JSONSYNC_TEST_ACCOUNTS_POSTGRESQL_URL",
    urlunsplit(urlsplit(URL)._replace(path="/jsonsync_accounts_test")),
)

# The C{skip} of every PostgreSQL test case (C{None}: run): the same rule as
# the HTTP suites' PostgreSQL variants (jsonsync.testclient).
SKIP = postgresql_skip(URL)


def require(test: TestCase) -> None:
    """Skip C{test} (from within it) where L{SKIP} says so."""
    if SKIP:
        raise SkipTest(SKIP)


def prepare_accounts_database() -> str | None:
    """
    Create the accounts tests' database (L{ACCOUNTS_URL}) when it is
    missing; returns the C{skip} of those tests (blocking: call at import).
    """
    name = urlsplit(ACCOUNTS_URL).path.lstrip("/")
    try:
        conn = psycopg2.connect(URL, connect_timeout=3)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
    except psycopg2.Error as exc:
        return None if os.environ.get("CI") else f"PostgreSQL not reachable at {URL}: {str(exc).strip()}"
    return None


def with_query(url: str, **params) -> str:
    """C{url} with C{params} added to its query string (libpq connection options)."""
    parts = urlsplit(url)
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def with_port(url: str, port: int) -> str:
    """C{url} pointing at C{port} on 127.0.0.1 (a proxy, or nothing listening)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@dataclass
class Scratch:
    """A scratch schema: its name, the URL that uses it, and an open admin connection."""

    schema: str
    url: str
    admin: Connection


async def scratch_schema(test: TestCase) -> Scratch:
    """
    A fresh PostgreSQL schema first in the C{search_path} of the returned
    URL, dropped (and the admin connection closed) in the test's cleanup:
    tests never see each other's rows, nor those of anything else using the
    same database (a developer's server, a concurrent test run).
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
    return Scratch(schema, with_query(URL, options=f"-csearch_path%3D{schema}"), admin)


async def scratch_url(test: TestCase) -> str:
    """The URL of a L{scratch_schema}."""
    return (await scratch_schema(test)).url


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
