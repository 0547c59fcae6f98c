"""
Shipped test support for HTTP suites: an application built from settings
(on the memory backend, or on PostgreSQL for the C{...OnPostgreSQL}
variants), a client that drives it through real HTTP parsing in memory,
one served on a real socket, and Basic-auth helpers.

The storage contract suite, which a backend author binds, is
L{jsonsync.testing}; it does not depend on this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any, cast

import psycopg2
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from jsonsync import jsonutil
from jsonsync.channel import LimitedRequest
from jsonsync.registry import configure, discover
from jsonsync.server import build
from jsonsync.service import make_site


class Response:
    """A response as a test sees it: status, headers (lower-cased names) and JSON body."""

    def __init__(self, status: int, headers: dict[str, list[str]], raw: bytes):
        self.status = status
        self.headers_all = headers
        self.raw = raw

    def header(self, name: str, default=None):
        values = self.headers_all.get(name.lower())
        return values[-1] if values else default

    @property
    def json(self):
        return jsonutil.loads(self.raw) if self.raw else None

    @property
    def data(self):
        return self.json["data"]

    def __repr__(self):
        return f"<Response {self.status} {self.raw[:200]!r}>"


def basicauth_id(user: str, password: str = "secret", secret: str = "") -> str:
    """The principal the basicauth policy gives to C{user:password}."""
    digest = hmac.new(secret.encode(), f"{user}:{password}".encode(), hashlib.sha256).hexdigest()
    return "basicauth:" + digest


def basic(user: str, password: str = "secret") -> str:
    """An C{Authorization} header value for Basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# The PostgreSQL server of the test suites (tests/pg.py builds on these).
TEST_POSTGRESQL_URL = os.environ.get(
    "JSONSYNC_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

# Which backend build_app uses when the settings name none; the PostgreSQL
# variants of the HTTP suites switch it for the duration of a test.
_current: dict[str, Any] = {"backend": "memory"}
_open_apps: list = []
_discovered: list = []


async def build_app(settings: dict | None = None, reactor=None, environ=None):
    """
    A jsonsync application configured with C{settings} (name -> raw string
    value), on the backend of the running test variant unless the settings
    choose one.
    """
    if reactor is None:
        from twisted.internet import reactor
    values = {k: (" ".join(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in (settings or {}).items()}
    if _current["backend"] == "postgresql" and "storage_backend" not in values:
        values.update(
            storage_backend="postgresql",
            permission_backend="postgresql",
            storage_url=TEST_POSTGRESQL_URL,
            storage_pool_size="3",
        )
    if not _discovered:
        _discovered.append(discover())
    configured, discovered = configure(None, environ or {}, values, _discovered[0])
    app = await build(configured, reactor, discovered)
    if configured["storage_backend"] != "memory" or configured["permission_backend"] != "memory":
        # The first app of a PostgreSQL variant's test starts from an empty
        # database. (Deciding that by _open_apps being empty failed when an
        # earlier test closed its own PostgreSQL apps without _close_apps:
        # they stayed listed, and the next variant test saw their rows.)
        if _current.pop("fresh", False) or not _open_apps:
            await app.registry.storage.flush()
            await app.registry.permissions.flush()
        _open_apps.append(app)
    return app


async def serve_over_tcp(test, settings: dict | None = None):
    """
    An app (of the running test variant's backend) served on a real socket
    on 127.0.0.1: C{(app, base_url, pool)}, with a non-persistent treq pool;
    the port and the pool are closed in C{test}'s cleanup.
    """
    from twisted.internet import reactor

    app = await build_app(dict(settings or {}))
    site: Any = make_site(app, app.settings)  # (twisted's stubs want a ServerFactory[...])
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    pool = HTTPConnectionPool(reactor, persistent=False)
    test.addCleanup(pool.closeCachedConnections)
    address = cast(IPv4Address, port.getHost())
    return app, f"http://127.0.0.1:{address.port}", pool


def postgresql_unavailable(url: str = TEST_POSTGRESQL_URL) -> str | None:
    """Why PostgreSQL at C{url} cannot be used for tests, or C{None} when it answers (blocking)."""
    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except psycopg2.Error as e:
        return f"PostgreSQL not reachable at {url}: {str(e).strip()}"
    return None


def postgresql_skip(url: str = TEST_POSTGRESQL_URL) -> str | None:
    """
    The C{skip} of a PostgreSQL test: the reason it cannot run here, or
    C{None}. Under CI (C{CI} set) a missing database must fail the run,
    so this is always C{None} there.
    """
    if os.environ.get("CI"):
        return None
    return postgresql_unavailable(url)


async def _close_apps():
    apps, _open_apps[:] = list(_open_apps), []
    _current["backend"] = "memory"
    _current.pop("fresh", None)
    try:
        for app in apps:
            try:
                await app.registry.storage.flush()
                await app.registry.permissions.flush()
                break
            except Exception:
                continue  # this app's pool is gone; another may flush
    finally:
        for app in apps:
            await app.registry.close()


def with_postgresql_variants(namespace: dict) -> None:
    """
    Add to a test module, beside each C{TestCase} class it defines, a
    C{<Name>OnPostgreSQL} class running the same tests with every app on
    the real PostgreSQL (C{JSONSYNC_TEST_POSTGRESQL_URL}). Skipped where
    PostgreSQL is unreachable, except under CI, where that fails.
    """
    skip = postgresql_skip()
    for name, cls in list(namespace.items()):
        if not (isinstance(cls, type) and issubclass(cls, TestCase)) or name.endswith("OnPostgreSQL"):
            continue
        if cls.__module__ != namespace.get("__name__") or getattr(cls, "memory_only", False):
            continue

        variant_name = f"{name}OnPostgreSQL"
        members: dict[str, Any] = {
            "setUp": _on_postgresql(cls), "__qualname__": variant_name, "__module__": cls.__module__,
        }
        if skip:
            members["skip"] = skip
        namespace[variant_name] = type(variant_name, (cls,), members)


def _on_postgresql(base: type[TestCase]):
    """The C{setUp} of a PostgreSQL variant of C{base}: switch the backend, then C{base}'s own."""

    async def setUp(self) -> None:
        _current["backend"] = "postgresql"
        _current["fresh"] = True
        self.addCleanup(_close_apps)
        result: Any = base.setUp(self)  # a coroutine when base's setUp is async
        if hasattr(result, "__await__"):
            await result

    return setUp


class StubClient:
    """
    Drives an application through real HTTP parsing, in memory
    (L{treq.testing.StubTreq}), with Kinto-style helpers.
    """

    def __init__(self, app, auth: str | None = None):
        self.app = app
        # (StubTreq makes its verbs at run time: typed Any.)
        self.stub: Any = StubTreq(app.resource())
        factory: Any = self.stub._agent._serverFactory
        factory.requestFactory = LimitedRequest
        factory.max_body = app.settings["max_request_body_bytes"]
        self.auth = auth

    def as_user(self, user: str | None, password: str = "secret") -> StubClient:
        other = StubClient.__new__(StubClient)
        other.__dict__.update(self.__dict__)
        other.auth = basic(user, password) if user else None
        return other

    async def request(self, method, path, body=None, headers=None, raw=None, auth=True):
        url = path if path.startswith("http") else "http://localhost" + path
        sent = dict(headers or {})
        if auth and self.auth and "Authorization" not in sent:
            sent["Authorization"] = self.auth
        data = raw
        if body is not None and raw is None:
            data = jsonutil.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        encoded = {k.encode(): [v.encode("latin-1")] for k, v in sent.items()}
        kwargs = {"headers": encoded, "allow_redirects": False}
        if data is not None:
            kwargs["data"] = data
        response = await self._settle(self.stub.request(method, url, **kwargs))
        content = await self._settle(response.content())
        headers_out = {
            k.decode().lower(): [v.decode("latin-1") for v in vs]
            for k, vs in response.headers.getAllRawHeaders()
        }
        return Response(response.code, headers_out, content)

    async def _settle(self, d):
        """Pump the in-memory connection until C{d} fires (the server may wait on real I/O)."""
        from twisted.internet import reactor

        done: list = []

        def settled(result):
            done.append(result)
            return result

        d.addBoth(settled)
        while not done:
            self.stub.flush()
            if not done:
                await deferLater(reactor, 0.001, lambda: None)
        return await d

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def head(self, path, **kw):
        return self.request("HEAD", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self.request("PATCH", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


class ClientTestCase(TestCase):
    """
    A test case with a jsonsync application built from C{settings} and
    stub clients for alice, bob, carol and an anonymous user.
    """

    settings: dict = {}

    # trial runs a coroutine setUp (the standard library's stubs say None).
    async def setUp(self) -> None:  # type: ignore[override]
        await self.make(self.settings)

    async def make(self, settings):
        """(Re)build the application with other settings."""
        self.app = await build_app(dict(settings))
        self.stub = StubClient(self.app)
        self.anon = self.stub.as_user(None)
        self.alice = self.stub.as_user("alice")
        self.bob = self.stub.as_user("bob")
        self.carol = self.stub.as_user("carol")

    async def ok(self, response, status=(200, 201)):
        """Await a response and check its status is one of C{status}."""
        r = await response
        statuses = status if isinstance(status, tuple) else (status,)
        self.assertIn(r.status, statuses, r)
        return r
