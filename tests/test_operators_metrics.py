"""
The C{prometheus} plugin (issue 15), scraped through a real socket:
requests by route name (never the raw path), method and status, latency
histograms, errors by errno, and the database pool on PostgreSQL.
"""

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from jsonsync import jsonutil
from jsonsync.service import make_site
from jsonsync.testclient import basic, build_app, with_postgresql_variants


class MetricsTests(TestCase):
    async def setUp(self):
        self.app = await build_app({"includes": "prometheus"})
        self.port = reactor.listenTCP(0, make_site(self.app, self.app.settings), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    async def call(self, method, path, body=None, auth=True):
        headers = {"Authorization": basic("alice")} if auth else {}
        kwargs = {"headers": headers, "pool": self.pool}
        if body is not None:
            kwargs["data"] = jsonutil.dumps(body)
            headers["Content-Type"] = "application/json"
        response = await treq.request(method, self.base + path, **kwargs)
        await response.content()
        return response.code

    async def scrape(self):
        response = await treq.get(self.base + "/v1/__metrics__", pool=self.pool)
        text = (await response.content()).decode()
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("Content-Type")[0].startswith("text/plain"))
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples, text

    async def test_requests_by_route_method_status_and_errors_by_errno(self):
        self.assertEqual(await self.call("PUT", "/v1/buckets/b1"), 201)
        self.assertEqual(await self.call("PUT", "/v1/buckets/b2"), 201)
        self.assertEqual(await self.call("GET", "/v1/buckets/b1"), 200)
        self.assertEqual(await self.call("GET", "/v1/buckets/missing"), 403)
        self.assertEqual(await self.call("POST", "/v1/buckets", auth=False), 401)
        self.assertEqual(await self.call("GET", "/v1/no/such/thing"), 404)
        self.assertEqual(await self.call("BREW", "/v1/buckets/b1"), 405)
        samples, text = await self.scrape()

        def count(route, method, status):
            key = tuple(sorted({"route": route, "method": method, "status": status}.items()))
            return samples.get(("jsonsync_requests_total", key))

        self.assertEqual(count("bucket-object", "PUT", "201"), 2)
        self.assertEqual(count("bucket-object", "GET", "200"), 1)
        self.assertEqual(count("bucket-plural", "POST", "401"), 1)
        self.assertEqual(count("unmatched", "GET", "404"), 1)
        self.assertEqual(count("unmatched", "other", "405"), 1)
        self.assertEqual(samples[("jsonsync_errors_total", (("errno", "104"),))], 1)
        self.assertEqual(samples[("jsonsync_errors_total", (("errno", "111"),))], 1)
        histogram = (("method", "PUT"), ("route", "bucket-object"))
        self.assertEqual(samples[("jsonsync_request_duration_seconds_count", histogram)], 2)
        self.assertEqual(samples[("jsonsync_request_duration_seconds_bucket", (("le", "+Inf"), *histogram))], 2)
        # Raw paths and methods never become labels.
        for raw in ("b1", "b2", "missing", "no/such", "BREW"):
            self.assertNotIn(f'"{raw}', text)

    async def test_pool_gauges_on_postgresql(self):
        await self.call("PUT", "/v1/buckets/b1")
        samples, _ = await self.scrape()
        names = {name for name, _ in samples}
        if self.app.settings["storage_backend"] == "postgresql":
            self.assertIn("jsonsync_db_pool_connections", names)
            self.assertEqual(samples[("jsonsync_db_pool_waiting", (("backend", "storage"),))], 0)
            in_use = samples[("jsonsync_db_pool_connections", (("backend", "storage"), ("state", "in_use")))]
            idle = samples[("jsonsync_db_pool_connections", (("backend", "storage"), ("state", "idle")))]
            self.assertEqual((in_use, idle), (0, 3))
        else:
            self.assertNotIn("jsonsync_db_pool_connections", names)

    async def test_not_served_without_the_plugin(self):
        app = await build_app({})
        port = reactor.listenTCP(0, make_site(app, app.settings), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        response = await treq.get(f"http://127.0.0.1:{port.getHost().port}/v1/__metrics__", pool=self.pool)
        await response.content()
        self.assertEqual(response.code, 404)


class MissingLibraryTests(TestCase):
    memory_only = True

    async def test_a_clear_configuration_error(self):
        from jsonsync.config import ConfigurationError
        from jsonsync.plugins import prometheus

        self.patch(prometheus, "_AVAILABLE", False)  # as when the import failed
        with self.assertRaises(ConfigurationError) as caught:
            await build_app({"includes": "prometheus"})
        self.assertIn("needs the prometheus-client package", str(caught.exception))


with_postgresql_variants(globals())
