"""
Behind a reverse proxy (issue 15), through a real socket: from a peer in
C{trusted_proxies}, Forwarded / X-Forwarded-* set the client address in the
request summary and the scheme and host of the URLs the server writes
(hello C{url}, C{Next-Page}, C{Location}); anyone else's are ignored.
"""

import treq
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from jsonsync import jsonutil
from jsonsync.config import ConfigurationError
from jsonsync.service import make_site
from jsonsync.testclient import basic, build_app


class ProxyTests(TestCase):
    async def serve(self, trusted, family=None):
        settings = {"paginate_by": "1"}
        if trusted is not None:
            settings["trusted_proxies"] = trusted
        if family is not None:
            settings["trusted_proxy_headers"] = family
        app = await build_app(settings)
        port = reactor.listenTCP(0, make_site(app, app.settings), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.clients = []

        def observe(event):
            if event.get("log_namespace") == "jsonsync.request":
                self.clients.append(event["client"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    async def call(self, method, path, headers):
        headers = {"Authorization": basic("alice"), **headers}
        response = await treq.request(method, self.base + path, headers=headers, pool=self.pool, allow_redirects=False)
        body = await response.content()
        return response, body

    async def urls(self, headers):
        """hello url, a Next-Page and a Location, all for C{headers}."""
        _, body = await self.call("GET", "/v1/", headers)
        hello = jsonutil.loads(body)["url"]
        await self.call("PUT", "/v1/buckets/b1", {})
        await self.call("PUT", "/v1/buckets/b2", {})
        listing, _ = await self.call("GET", "/v1/buckets", headers)
        redirect, _ = await self.call("GET", "/v1/buckets/", headers)
        return hello, listing.headers.getRawHeaders("Next-Page")[0], redirect.headers.getRawHeaders("Location")[0]

    async def test_x_forwarded_from_a_trusted_proxy(self):
        await self.serve("10.0.0.0/8 127.0.0.1")
        headers = {
            "X-Forwarded-For": "203.0.113.9, 10.1.2.3",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "api.example.org",
        }
        hello, next_page, location = await self.urls(headers)
        self.assertEqual(hello, "https://api.example.org/v1/")
        self.assertTrue(next_page.startswith("https://api.example.org/v1/buckets?"), next_page)
        self.assertEqual(location, "https://api.example.org/v1/buckets")
        # The client is the first hop that is not a trusted proxy.
        self.assertEqual(self.clients[0], "203.0.113.9")

    async def test_forwarded_header(self):
        await self.serve("127.0.0.1", family="forwarded")
        headers = {"Forwarded": 'for="[2001:db8::7]:4711";proto=https;host=sync.example.net'}
        hello, next_page, location = await self.urls(headers)
        self.assertEqual(hello, "https://sync.example.net/v1/")
        self.assertTrue(next_page.startswith("https://sync.example.net/"))
        self.assertEqual(location, "https://sync.example.net/v1/buckets")
        self.assertEqual(self.clients[0], "2001:db8::7")

    async def test_forged_hops_before_the_proxy_are_not_believed(self):
        await self.serve("127.0.0.1")
        # The client sent "X-Forwarded-For: 198.51.100.1"; the proxy appended its peer.
        await self.call("GET", "/v1/", {"X-Forwarded-For": "198.51.100.1, 192.0.2.44"})
        self.assertEqual(self.clients[0], "192.0.2.44")

    async def test_untrusted_peers_are_ignored(self):
        for trusted in (None, "10.0.0.0/8"):
            await self.serve(trusted)
            headers = {
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "evil.example",
                "Forwarded": "for=203.0.113.9;proto=https;host=evil.example",
            }
            hello, next_page, location = await self.urls(headers)
            self.assertEqual(hello, self.base + "/v1/")
            self.assertTrue(next_page.startswith(self.base + "/v1/buckets?"))
            self.assertEqual(location, self.base + "/v1/buckets")
            self.assertEqual(self.clients[0], "127.0.0.1")

    async def test_malformed_forwarded_values_are_ignored(self):
        await self.serve("127.0.0.1")
        headers = {"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "a b/c", "X-Forwarded-For": "not-an-ip"}
        _, body = await self.call("GET", "/v1/", headers)
        self.assertEqual(jsonutil.loads(body)["url"], self.base + "/v1/")
        self.assertEqual(self.clients[0], "127.0.0.1")

    async def test_bad_setting_stops_the_start(self):
        with self.assertRaises(ConfigurationError) as caught:
            await build_app({"trusted_proxies": "10.0.0.0/8 nonsense"})
        self.assertIn("trusted_proxies: 'nonsense' is not an address or a network", str(caught.exception))
