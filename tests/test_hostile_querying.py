"""
Hostile query strings and ids over a real socket, on both backends: filter
values nested too deep, fan-out beyond the documented limits, over-long ids
and NUL characters get the same 400 from memory and PostgreSQL (never a 500,
never a "retry later", never the database's own words).
"""

import base64
import json
import random
import string
import uuid
from urllib.parse import quote

import treq
from twisted.trial.unittest import TestCase

from jsonsync import jsonutil
from jsonsync.resources.model import MAX_ID_LENGTH
from jsonsync.testclient import basic, serve_over_tcp, with_postgresql_variants

B = "/v1/buckets/b"
C = B + "/collections/c"
RECS = C + "/records"


def q(value: str) -> str:
    return quote(value, safe="")


class _Served(TestCase):
    settings: dict = {}

    async def setUp(self):
        self.app, self.base, self.pool = await serve_over_tcp(self, self.settings)
        for path in (B, C):
            self.assertEqual((await self.call("PUT", path))[0], 201)
        for rid, data in (("r1", {"x": [1], "tags": ["a", "b"], "s": "a"}), ("r2", {"x": 2, "tags": ["b"]})):
            status, _ = await self.call("PUT", f"{RECS}/{rid}", {"data": data})
            self.assertEqual(status, 201)

    async def call(self, method, path, body=None, user="alice", password="secret"):
        kwargs = {"headers": {"Authorization": basic(user, password)} if user else {}, "pool": self.pool}
        if body is not None:
            kwargs["data"] = jsonutil.dumps(body)
            kwargs["headers"]["Content-Type"] = "application/json"
        # bytes: sent as given, percent-escapes and all
        response = await treq.request(method, (self.base + path).encode("ascii"), **kwargs)
        raw = await response.content()
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["application/json"], raw[:300])
        return response.code, json.loads(raw)

    async def batch(self, path):
        status, body = await self.call("POST", "/v1/batch", {"requests": [{"method": "GET", "path": path}]})
        self.assertEqual(status, 200, body)
        answer = body["responses"][0]
        return answer["status"], answer["body"]

    def assertInvalid(self, answer, location, name=None, contains=None):
        status, body = answer
        self.assertEqual((status, body["code"], body["errno"]), (400, 400, 107), body)
        self.assertEqual(body["error"], "Invalid parameters")
        self.assertTrue(
            any(d["location"] == location and (name is None or d["name"] == name) for d in body["details"]),
            body,
        )
        if contains:
            self.assertIn(contains, body["message"])

    async def ids(self, path):
        status, body = await self.call("GET", path)
        self.assertEqual(status, 200, body)
        return sorted(o["id"] for o in body["data"])


class DeepFilterValueTests(_Served):
    async def test_deeply_nested_filter_values(self):
        for depth in (65, 490, 1023):
            value = q("[" * depth + "]" * depth)
            for name in ("x", "not_x", "in_x", "exclude_x", "contains_x", "contains_any_x", "lt_x", "min_x"):
                self.assertInvalid(await self.call("GET", f"{RECS}?{name}={value}"), "querystring", name,
                                   "nested deeper than 64")
            self.assertInvalid(await self.call("GET", f"{RECS}?in_x=1,{value}"), "querystring", "in_x")
            in_object = q('{"k":' + "[" * depth + "]" * depth + "}")
            self.assertInvalid(await self.call("GET", f"{RECS}?x={in_object}"), "querystring", "x")

    async def test_nesting_up_to_the_limit_is_fine(self):
        value = q("[" * 64 + "]" * 64)
        self.assertEqual(await self.ids(f"{RECS}?x={value}"), [])
        self.assertEqual(await self.ids(f"{RECS}?contains_x={value}"), [])
        self.assertEqual(await self.ids(f"{RECS}?x=[1]"), ["r1"])

    async def test_forged_token_with_deep_or_nul_value(self):
        for last in ({"last_modified": json.loads("[" * 500 + "]" * 500)}, {"last_modified": "a\x00"}):
            payload = {"last_object": last, "nonce": "n"}
            token = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
            self.assertInvalid(await self.call("GET", f"{RECS}?_token={q(token)}"), "querystring", "_token")


class FanOutTests(_Served):
    async def test_too_many_sort_fields(self):
        sort = ",".join(f"f{i}" for i in range(400))
        self.assertInvalid(await self.call("GET", f"{RECS}?_sort={sort}"), "querystring", "_sort",
                           "more than 10 fields")
        sort = ",".join(f"-f{i}" for i in range(11))
        self.assertInvalid(await self.call("GET", f"{RECS}?_sort={sort}"), "querystring", "_sort")

    async def test_ten_sort_fields_are_fine(self):
        sort = ",".join(["-x"] + [f"f{i}" for i in range(9)])
        self.assertEqual(await self.ids(f"{RECS}?_sort={sort}"), ["r1", "r2"])

    async def test_too_many_filters(self):
        many = "&".join(f"f{i}=1" for i in range(21))
        self.assertInvalid(await self.call("GET", f"{RECS}?{many}"), "querystring", "f20", "at most 20")
        enough = "&".join(f"has_f{i}=false" for i in range(20))
        self.assertEqual(await self.ids(f"{RECS}?{enough}"), ["r1", "r2"])

    async def test_too_many_fields(self):
        fields = ",".join(f"f{i}" for i in range(101))
        self.assertInvalid(await self.call("GET", f"{RECS}?_fields={fields}"), "querystring", "_fields")
        self.assertInvalid(await self.call("GET", f"{RECS}/r1?_fields={fields}"), "querystring", "_fields")
        status, body = await self.call("GET", f"{RECS}/r1?_fields={fields[:-4]}")
        self.assertEqual(status, 200, body)

    async def test_in_id_with_ten_thousand_ids_works(self):
        # Too long for a request line: sync clients send it through /batch.
        ids = [str(uuid.uuid4()) for _ in range(9998)] + ["r2", "r1"]
        status, body = await self.batch(f"{RECS}?in_id={','.join(ids)}")
        self.assertEqual(status, 200, str(body)[:300])
        self.assertEqual(sorted(o["id"] for o in body["data"]), ["r1", "r2"])
        status, body = await self.batch(f"{RECS}?exclude_id={','.join(ids[:9999])}")
        self.assertEqual(sorted(o["id"] for o in body["data"]), ["r1"])

    async def test_too_many_values(self):
        values = ",".join(str(i) for i in range(10001))
        self.assertInvalid(await self.batch(f"{RECS}?in_x={values}"), "querystring", "in_x", "more than 10000")
        self.assertInvalid(await self.batch(f"{RECS}?contains_any_x=[{values}]"), "querystring", "contains_any_x")

    async def test_containment_arrays_are_short(self):
        # Each value of a contains_/contains_any_ array is one containment
        # test per row: 10,000 objects over 303 records took PostgreSQL 15 s.
        many = ",".join("{}" for _ in range(101))
        for name in ("contains_x", "contains_any_x"):
            self.assertInvalid(await self.batch(f"{RECS}?{name}=[{many}]"), "querystring", name, "more than 100")
        enough = ",".join(str(i) for i in range(100))
        status, body = await self.batch(f"{RECS}?contains_any_x=[{enough}]")
        self.assertEqual(status, 200, body)


class SmallerLimitsTests(_Served):
    settings = {"querystring_max_sort_fields": "2", "querystring_max_filters": "1",
                "querystring_max_fields": "1", "querystring_max_values": "2", "json_max_depth": "3"}

    async def test_settings_lower_the_limits(self):
        self.assertInvalid(await self.call("GET", f"{RECS}?_sort=a,b,c"), "querystring", "_sort")
        self.assertEqual(await self.ids(f"{RECS}?_sort=a,b"), ["r1", "r2"])
        self.assertInvalid(await self.call("GET", f"{RECS}?a=1&b=1"), "querystring", "b")
        self.assertInvalid(await self.call("GET", f"{RECS}?_fields=a,b"), "querystring", "_fields")
        self.assertInvalid(await self.call("GET", f"{RECS}?in_id=a,b,c"), "querystring", "in_id")
        self.assertEqual(await self.ids(f"{RECS}?in_id=r1,r2"), ["r1", "r2"])
        self.assertInvalid(await self.call("GET", f"{RECS}?x=[[[[1]]]]"), "querystring", "x")
        self.assertEqual(await self.ids(f"{RECS}?x=[[[1]]]"), [])


def random_id(length):
    # Random characters: a repeated one would compress in the database's
    # index and hide a key that is too long.
    rng = random.Random(length)
    return rng.choice(string.ascii_letters) + "".join(
        rng.choice(string.ascii_letters + string.digits + "_-") for _ in range(length - 1)
    )


class IdLengthTests(_Served):
    settings = {
        "includes": "accounts",
        "multiauth.policies": "account basicauth",
        "account_create_principals": "system.Everyone",
        "account_bcrypt_rounds": "4",
    }

    async def test_longest_ids_at_every_level(self):
        # The longest keys the database holds: ids of the longest length at
        # every level, created by an account of the longest id (its
        # principal is part of the ACL's key).
        user = random_id(MAX_ID_LENGTH)
        status, body = await self.call("PUT", f"/v1/accounts/{user}", {"data": {"password": "pw"}}, user=None)
        self.assertEqual(status, 201, body)
        bid, cid = random_id(MAX_ID_LENGTH - 1), random_id(MAX_ID_LENGTH - 2)
        rid, gid = random_id(MAX_ID_LENGTH - 3), random_id(MAX_ID_LENGTH - 4)
        for path in (f"/v1/buckets/{bid}", f"/v1/buckets/{bid}/collections/{cid}",
                     f"/v1/buckets/{bid}/groups/{gid}",
                     f"/v1/buckets/{bid}/collections/{cid}/records/{rid}"):
            status, body = await self.call("PUT", path, {"data": {"members": [f"account:{user}"]}},
                                           user=user, password="pw")
            self.assertEqual(status, 201, body)
        status, body = await self.call("GET", f"/v1/buckets/{bid}/collections/{cid}/records", user=user,
                                       password="pw")
        self.assertEqual([o["id"] for o in body["data"]], [rid])

    async def test_longer_ids_are_invalid(self):
        long = "a" * (MAX_ID_LENGTH + 1)
        for path in (f"/v1/buckets/{long}", f"{B}/collections/{long}", f"{B}/groups/{long}",
                     f"{RECS}/{long}", f"{RECS}/{random_id(2800)}", f"/v1/accounts/{long}"):
            self.assertInvalid(await self.call("PUT", path, {"data": {}}), "path", contains="Invalid object id")
        for plural in (f"{RECS}", f"{B}/collections", "/v1/buckets"):
            self.assertInvalid(await self.call("POST", plural, {"data": {"id": long}}), "body", "data.id")
        status, body = await self.call("GET", f"{RECS}?_limit=10")
        self.assertEqual(sorted(o["id"] for o in body["data"]), ["r1", "r2"])

    async def test_trailing_newline_is_not_part_of_a_valid_id(self):
        self.assertInvalid(await self.call("PUT", "/v1/buckets/abc%0A", {"data": {}}), "path")
        self.assertInvalid(await self.call("POST", RECS, {"data": {"id": "abc\n"}}), "body", "data.id")


class NulFilterValueTests(_Served):
    async def test_escaped_nul_in_filter_values(self):
        nul = q('"a\\u0000"')
        for name in ("contains_tags", "contains_any_tags", "tags", "not_tags", "in_tags", "exclude_tags",
                     "like_s", "lt_s", "gt_s", "min_s", "max_s", "id", "in_id", "not_id"):
            self.assertInvalid(await self.call("GET", f"{RECS}?{name}={nul}"), "querystring", name,
                               "cannot contain the NUL character")
        for value in ('["b","a\\u0000"]', '{"a\\u0000":1}', '[{"k":"\\u0000"}]'):
            self.assertInvalid(await self.call("GET", f"{RECS}?contains_tags={q(value)}"), "querystring",
                               "contains_tags", "NUL")
        # an escaped backslash before "u0000" is no NUL
        self.assertEqual(await self.ids(f"{RECS}?tags={q(chr(34) + chr(92) * 2 + 'u0000' + chr(34))}"), [])

    async def test_raw_nul_in_names(self):
        for query in ("_sort=a%00", "_fields=a%00", "a%00=1", "x=a%00", "in_id=a,%00"):
            status, body = await self.call("GET", f"{RECS}?{query}")
            self.assertEqual((status, body["errno"]), (400, 107), body)
            self.assertEqual(body["details"][0]["location"], "querystring")
        self.assertInvalid(await self.call("GET", f"{RECS}/r1?_fields=a%00"), "querystring", "_fields")


with_postgresql_variants(globals())
