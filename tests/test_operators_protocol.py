"""
Protocol points where jsonsync differed from Kinto (issue 15), through a
real socket: an explicit C{"data": null} is refused, and a bucket in which
a user may only create collections or groups is listed to them.
"""

import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from jsonsync import jsonutil
from jsonsync.service import make_site
from jsonsync.testclient import basic, basicauth_id, build_app, with_postgresql_variants


class ProtocolTests(TestCase):
    async def setUp(self):
        self.app = await build_app({"experimental_permissions_endpoint": "true"})
        self.port = reactor.listenTCP(0, make_site(self.app, self.app.settings), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    async def call(self, method, path, body=None, user="alice"):
        headers = {"Authorization": basic(user)}
        kwargs = {"headers": headers, "pool": self.pool}
        if body is not None:
            kwargs["data"] = body if isinstance(body, bytes) else jsonutil.dumps(body)
            headers["Content-Type"] = "application/json"
        response = await treq.request(method, self.base + path, **kwargs)
        content = await response.content()
        return response.code, jsonutil.loads(content) if content else None

    async def test_data_null_is_refused(self):
        self.assertEqual((await self.call("PUT", "/v1/buckets/b"))[0], 201)
        self.assertEqual((await self.call("PUT", "/v1/buckets/b/collections/c"))[0], 201)
        records = "/v1/buckets/b/collections/c/records"
        for method, path in (("PUT", records + "/r1"), ("POST", records), ("PUT", "/v1/buckets/b2")):
            status, body = await self.call(method, path, b'{"data": null}')
            self.assertEqual((status, body["errno"], body["details"][0]["name"]), (400, 107, "data"), (method, path))
        status, body = await self.call("GET", records)
        self.assertEqual((status, body["data"]), (200, []))
        # No data at all (permissions only) still creates an empty record.
        status, _ = await self.call("PUT", records + "/r2", {"permissions": {"read": ["system.Everyone"]}})
        self.assertEqual(status, 201)

    async def test_bucket_listed_to_who_may_create_in_it(self):
        bob = basicauth_id("bob")
        await self.call("PUT", "/v1/buckets/shared", {"permissions": {"collection:create": [bob]}})
        await self.call("PUT", "/v1/buckets/groups", {"permissions": {"group:create": [bob]}})
        await self.call("PUT", "/v1/buckets/private")
        status, body = await self.call("GET", "/v1/buckets", user="bob")
        self.assertEqual(status, 200)
        self.assertEqual(sorted(b["id"] for b in body["data"]), ["groups", "shared"])
        status, body = await self.call("GET", "/v1/permissions", user="bob")
        self.assertEqual(status, 200)
        perms = {e["uri"]: e["permissions"] for e in body["data"]}
        self.assertEqual(perms["/buckets/shared"], ["collection:create", "read:attributes"])
        self.assertEqual(perms["/buckets/groups"], ["group:create", "read:attributes"])
        # Writers keep what they had (read implies the attributes).
        status, body = await self.call("GET", "/v1/permissions")
        mine = {e["uri"]: e["permissions"] for e in body["data"]}
        self.assertEqual(mine["/buckets/private"], ["collection:create", "group:create", "read", "write"])


with_postgresql_variants(globals())
