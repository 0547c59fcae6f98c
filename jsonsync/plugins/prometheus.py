"""
The C{prometheus} plugin (C{includes = prometheus}): C{GET /v1/__metrics__}
in the Prometheus text format, as Kinto's plugin of the same name.

Series (labels kept to small, fixed sets: the route's name, never the raw
path; methods outside the HTTP ones become C{other}):

  - C{jsonsync_requests_total{route,method,status}}
  - C{jsonsync_request_duration_seconds{route,method}} (a histogram)
  - C{jsonsync_errors_total{errno}} (Kinto errnos of the error responses)
  - C{jsonsync_db_pool_connections{backend,state}}: C{in_use}, C{idle},
    C{down} connections of each PostgreSQL pool, read at scrape time
  - C{jsonsync_db_pool_waiting{backend}}: requests waiting for a connection

Each process counts its own requests: with C{--workers N} a scrape reaches
one worker (the kernel picks it), so give each worker its own port to
scrape, or read the series as one process's sample. The endpoint needs no
authentication, like Kinto's: keep it off the public side of the proxy if
the numbers are private.
"""

from __future__ import annotations

import time

from zope.interface import implementer

from jsonsync.interfaces import IJsonSyncPlugin

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    _AVAILABLE = True
except ImportError:  # an optional dependency: say so at start, not with a traceback
    _AVAILABLE = False

from jsonsync.config import ConfigurationError
from jsonsync.http import ApiResponse
from jsonsync.registry import Route

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _PoolCollector:
    """Connections of the storage's database pools, read when scraped."""

    def __init__(self, registry):
        self._registry = registry

    def _pools(self):
        seen = {}
        for name in ("storage", "permissions"):
            backend = getattr(self._registry, name, None)
            pool = getattr(backend, "pool", None)
            if hasattr(pool, "idle_count") and id(pool) not in seen:
                seen[id(pool)] = (name, pool)
        return seen.values()

    def collect(self):
        connections = GaugeMetricFamily(
            "jsonsync_db_pool_connections", "Database pool connections by state", labels=["backend", "state"]
        )
        waiting = GaugeMetricFamily(
            "jsonsync_db_pool_waiting", "Requests waiting for a database connection", labels=["backend"]
        )
        for name, pool in self._pools():
            conns = list(getattr(pool, "connections", ()))
            in_use = sum(1 for c in conns if getattr(c, "checked_out", False))
            down = sum(1 for c in conns if not getattr(c, "ready", False))
            connections.add_metric([name, "in_use"], in_use)
            connections.add_metric([name, "idle"], pool.idle_count())
            connections.add_metric([name, "down"], down)
            waiting.add_metric([name], pool.waiting_count())
        yield connections
        yield waiting


class Metrics:
    def __init__(self, registry):
        self.prometheus = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "jsonsync_requests", "Requests answered", ["route", "method", "status"], registry=self.prometheus
        )
        self.duration = Histogram(
            "jsonsync_request_duration_seconds", "Time to answer a request", ["route", "method"],
            buckets=_BUCKETS, registry=self.prometheus,
        )
        self.errors = Counter("jsonsync_errors", "Error responses by Kinto errno", ["errno"], registry=self.prometheus)
        self.prometheus.register(_PoolCollector(registry))
        # Children by label values: looking them up through .labels() on
        # every request costs a lock and a tuple of strings.
        self._counted: dict = {}
        self._timed: dict = {}
        self._errnos: dict = {}

    def observe(self, request) -> None:
        """A finished request (called by the site, see L{jsonsync.service.QuietSite})."""
        api = getattr(request, "jsonsync", None)
        route = getattr(api, "route_name", None) or "unmatched"
        # Any token is a method to Twisted: the rest are counted as one.
        method = _METHODS.get(request.method, "other")
        key = (route, method, request.code)
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = self.requests.labels(route, method, str(request.code))
        child.inc()
        started = getattr(request, "jsonsync_started", None)
        if started is not None:
            timed = self._timed.get((route, method))
            if timed is None:
                timed = self._timed[(route, method)] = self.duration.labels(route, method)
            timed.observe(time.monotonic() - started)
        errno = getattr(api, "errno", None)
        if errno is not None:
            counter = self._errnos.get(errno)
            if counter is None:
                counter = self._errnos[errno] = self.errors.labels(str(errno))
            counter.inc()

    async def serve(self, req) -> ApiResponse:
        return ApiResponse(generate_latest(self.prometheus), 200, [("Content-Type", CONTENT_TYPE_LATEST)])


@implementer(IJsonSyncPlugin)
class PrometheusPlugin:
    name = "prometheus"

    @property
    def settings(self) -> dict:
        # Read while the configuration is checked: the place to refuse the start.
        if not _AVAILABLE:
            raise ConfigurationError(
                ["plugin 'prometheus' needs the prometheus-client package (pip install 'jsonsync[prometheus]')"]
            )
        return {}

    def install(self, registry, settings):
        metrics = Metrics(registry)
        registry.add_request_observer(metrics.observe)
        registry.add_route(
            Route("/__metrics__", ("GET",), metrics.serve, "metrics", summary="Prometheus metrics", authenticate=False)
        )
        registry.add_capability(
            "prometheus", "Prometheus metrics.", "https://github.com/Kinto/kinto/tree/main/kinto/plugins/prometheus.py"
        )
