"""
Hostile principals over a real socket, on both backends: a principal too
long for an index key gets the same 400 (errno 107) from memory and
PostgreSQL, through every way a body can name one; and C{/permissions}
does not list grants on an account that no longer count.
"""

import json

import treq
from twisted.trial.unittest import TestCase

from jsonsync import jsonutil
from jsonsync.resources.model import MAX_ID_LENGTH, MAX_PRINCIPAL_LENGTH
from jsonsync.testclient import (
    basic,
    basicauth_id,
    serve_over_tcp,
    with_postgresql_variants,
)

B = "/v1/buckets/b"
C = B + "/collections/c"
LONG = "account:" + "x" * 3000
# The longest principals: a group's and an account's with ids of the
# longest length.
ID = "i" * MAX_ID_LENGTH
LONGEST = f"/buckets/{ID}/groups/{ID}"
LONGEST_ACCOUNT = f"account:{ID}"
# Under the limit in characters, over it in bytes.
WIDE = "account:" + "é" * 600


class _Served(TestCase):
    settings: dict = {}

    async def setUp(self):
        self.app, self.base, self.pool = await serve_over_tcp(self, self.settings)

    async def call(self, method, path, body=None, user="alice", password="secret", content_type=None):
        headers = {"Authorization": basic(user, password)} if user else {}
        kwargs = {"headers": headers, "pool": self.pool}
        if body is not None:
            kwargs["data"] = jsonutil.dumps(body)
            headers["Content-Type"] = content_type or "application/json"
        response = await treq.request(method, self.base + path, **kwargs)
        raw = await response.content()
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["application/json"], raw[:300])
        return response.code, json.loads(raw) if raw else None


class LongPrincipalTests(_Served):
    async def setUp(self):
        await super().setUp()
        for path in (B, C):
            self.assertEqual((await self.call("PUT", path))[0], 201)

    def assertRefused(self, status, body, name):
        self.assertEqual(status, 400, body)
        self.assertEqual(body["errno"], 107, body)
        self.assertEqual(body["details"][0]["location"], "body", body)
        self.assertTrue(body["details"][0]["name"].startswith(name), body)
        self.assertIn(str(MAX_PRINCIPAL_LENGTH), body["message"])

    async def test_long_principal_in_permissions(self):
        for method, path in (("PUT", C + "/records/r"), ("POST", C + "/records"), ("PUT", B + "/collections/d"),
                             ("PATCH", C)):
            status, body = await self.call(method, path, {"permissions": {"read": ["system.Authenticated", LONG]}})
            self.assertRefused(status, body, "permissions.read")
        status, body = await self.call("GET", C + "/records")
        self.assertEqual((status, body["data"]), (200, []))

    async def test_wide_principal(self):
        self.assertLess(len(WIDE), MAX_PRINCIPAL_LENGTH)
        status, body = await self.call("PUT", C + "/records/r", {"permissions": {"write": [WIDE]}})
        self.assertRefused(status, body, "permissions.write")
        status, body = await self.call("PUT", B + "/groups/g", {"data": {"members": [WIDE]}})
        self.assertRefused(status, body, "data.members.0")

    async def test_long_principal_through_json_patch(self):
        ops = [{"op": "add", "path": f"/permissions/read/{LONG}"}]
        status, body = await self.call("PATCH", C, ops, content_type="application/json-patch+json")
        self.assertRefused(status, body, "permissions.read")

    async def test_long_group_member(self):
        status, body = await self.call("PUT", B + "/groups/g", {"data": {"members": ["account:bob", LONG]}})
        self.assertRefused(status, body, "data.members.1")
        status, body = await self.call("GET", B + "/groups/g")
        self.assertEqual(status, 404, body)

    async def test_longest_principals_are_kept(self):
        self.assertEqual(len(LONGEST), MAX_PRINCIPAL_LENGTH)
        # On the object with the longest URI: the longest ACL key there is.
        bucket, collection = f"/v1/buckets/{ID}", f"/v1/buckets/{ID}/collections/{ID}"
        for path in (bucket, collection):
            self.assertEqual((await self.call("PUT", path))[0], 201)
        grant = {"permissions": {"read": [LONGEST, LONGEST_ACCOUNT], "write": [LONGEST]}}
        status, body = await self.call("PUT", f"{collection}/records/{ID}", grant)
        self.assertEqual(status, 201, body)
        self.assertIn(LONGEST, body["permissions"]["read"])
        status, body = await self.call("PUT", f"{bucket}/groups/{ID}", {"data": {"members": [LONGEST_ACCOUNT]}})
        self.assertEqual(status, 201, body)
        self.assertEqual(body["data"]["members"], [LONGEST_ACCOUNT])


class AccountGrantsTests(_Served):
    """Grants on an account to someone else are not listed by /permissions."""

    settings = {
        "includes": "accounts",
        "multiauth.policies": "account basicauth",
        "account_create_principals": "system.Everyone",
        "account_bcrypt_rounds": "4",
        "experimental_permissions_endpoint": "true",
    }

    async def test_grants_on_an_account_are_not_listed_for_others(self):
        status, body = await self.call("PUT", "/v1/accounts/alice", {"data": {"password": "pw"}}, user=None)
        self.assertEqual(status, 201, body)
        bob = basicauth_id("bob")
        grant = {"permissions": {"read": [bob, "system.Authenticated"], "write": [bob]}}
        status, body = await self.call("PATCH", "/v1/accounts/alice", grant, user="alice", password="pw")
        self.assertEqual(status, 200, body)
        # The grant does not let bob in...
        status, _ = await self.call("GET", "/v1/accounts/alice", user="bob")
        self.assertEqual(status, 403)
        # ...so it is not listed as a permission of his.
        status, body = await self.call("GET", "/v1/permissions", user="bob")
        self.assertEqual(status, 200, body)
        self.assertEqual([e for e in body["data"] if e["resource_name"] == "account"], [], body)
        # The owner still sees their own account.
        status, body = await self.call("GET", "/v1/permissions", user="alice", password="pw")
        self.assertEqual(status, 200, body)
        mine = [e for e in body["data"] if e["resource_name"] == "account"]
        self.assertEqual([e["uri"] for e in mine], ["/accounts/alice"], body)


with_postgresql_variants(globals())
