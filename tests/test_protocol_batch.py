"""
Conformance tests for protocol section 7: POST /v1/batch.
"""

from __future__ import annotations

import json

from twisted.internet import defer

from jsonsync.errors import BackendUnavailable
from jsonsync.testclient import ClientTestCase, basic, basicauth_id

uid = basicauth_id


ALICE = uid("alice")
BOB = uid("bob")


class _Base(ClientTestCase):

    async def batch(self, client, body, status=200, **kw):
        r = await client.post("/v1/batch", body, **kw)
        self.assertEqual(r.status, status, r)
        return r

    async def responses(self, client, requests, defaults=None):
        body = {"requests": requests}
        if defaults is not None:
            body["defaults"] = defaults
        r = await self.batch(client, body)
        out = r.json["responses"]
        self.assertEqual(len(out), len(requests))
        return out

    def assertInvalid(self, r):
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json["errno"], 107)
        self.assertEqual(r.json["error"], "Invalid parameters")
        return r.json


class BasicBatchTests(_Base):
    async def test_responses_in_order(self):
        out = await self.responses(self.alice, [
            {"method": "PUT", "path": "/buckets/b"},
            {"method": "PUT", "path": "/buckets/b/collections/c", "body": {"data": {"x": 1}}},
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {"id": "r1", "v": 1}}},
            {"method": "GET", "path": "/buckets/b/collections/c/records"},
        ])
        self.assertEqual([o["status"] for o in out], [201, 201, 201, 200])
        self.assertEqual(out[0]["path"], "/v1/buckets/b")
        self.assertEqual(out[1]["path"], "/v1/buckets/b/collections/c")
        self.assertEqual(out[1]["body"]["data"]["x"], 1)
        self.assertEqual(out[2]["body"]["data"]["id"], "r1")
        self.assertEqual([o["id"] for o in out[3]["body"]["data"]], ["r1"])
        self.assertIn(ALICE, out[0]["body"]["permissions"]["write"])
        # the writes really happened
        r = await self.alice.get("/v1/buckets/b/collections/c/records/r1")
        self.assertEqual(r.status, 200)

    async def test_subresponse_headers(self):
        out = await self.responses(self.alice, [{"method": "PUT", "path": "/buckets/b"}])
        headers = {k.lower(): v for k, v in out[0]["headers"].items()}
        self.assertEqual(headers["etag"], f'"{out[0]["body"]["data"]["last_modified"]}"')
        self.assertIn("last-modified", headers)
        for value in headers.values():
            self.assertIsInstance(value, str)

    async def test_paths_with_or_without_prefix(self):
        out = await self.responses(self.alice, [
            {"method": "PUT", "path": "/v1/buckets/a"},
            {"method": "PUT", "path": "/buckets/b"},
            {"path": "/v1/buckets"},
        ])
        self.assertEqual([o["status"] for o in out], [201, 201, 200])
        self.assertEqual([o["path"] for o in out], ["/v1/buckets/a", "/v1/buckets/b", "/v1/buckets"])
        self.assertEqual(sorted(b["id"] for b in out[2]["body"]["data"]), ["a", "b"])

    async def test_method_defaults_to_get(self):
        await self.alice.put("/v1/buckets/b")
        out = await self.responses(self.alice, [{"path": "/buckets/b"}])
        self.assertEqual(out[0]["status"], 200)
        self.assertEqual(out[0]["body"]["data"]["id"], "b")

    async def test_lower_case_method(self):
        out = await self.responses(self.alice, [{"method": "put", "path": "/buckets/b"}])
        self.assertEqual(out[0]["status"], 201)

    async def test_empty_requests(self):
        r = await self.batch(self.alice, {"requests": []})
        self.assertEqual(r.json, {"responses": []})

    async def test_kinto_http_style_bodies_on_get_and_delete(self):
        # kinto-http.py always sends a body, often {} even for GET/DELETE.
        await self.alice.put("/v1/buckets/b")
        out = await self.responses(self.alice, [
            {"method": "GET", "path": "/buckets/b", "body": {}},
            {"method": "DELETE", "path": "/buckets/b", "body": {}, "headers": {}},
        ])
        self.assertEqual([o["status"] for o in out], [200, 200])
        self.assertTrue(out[1]["body"]["data"]["deleted"])

    async def test_head_subresponse_body_is_empty_string(self):
        await self.alice.put("/v1/buckets/b")
        out = await self.responses(self.alice, [{"method": "HEAD", "path": "/buckets"}])
        self.assertEqual(out[0]["status"], 200)
        self.assertEqual(out[0]["body"], "")
        headers = {k.lower(): v for k, v in out[0]["headers"].items()}
        self.assertEqual(headers.get("total-objects"), "1")

    async def test_query_string_in_path(self):
        await self.alice.put("/v1/buckets/b")
        await self.alice.put("/v1/buckets/b/collections/c")
        for i in range(3):
            await self.alice.put(f"/v1/buckets/b/collections/c/records/r{i}", {"data": {"n": i}})
        out = await self.responses(self.alice, [
            {"path": "/buckets/b/collections/c/records?n=1"},
            {"path": "/buckets/b/collections/c/records?_limit=1&_sort=n"},
        ])
        self.assertEqual([o["id"] for o in out[0]["body"]["data"]], ["r1"])
        self.assertEqual([o["id"] for o in out[1]["body"]["data"]], ["r0"])
        headers = {k.lower(): v for k, v in out[1]["headers"].items()}
        self.assertIn("_token=", headers["next-page"])

    async def test_path_is_url_decoded(self):
        await self.alice.put("/v1/buckets/b")
        out = await self.responses(self.alice, [{"method": "PUT", "path": "/buckets/b/collections/a%2Db"}])
        self.assertEqual(out[0]["status"], 201, out[0])
        self.assertEqual(out[0]["path"], "/v1/buckets/b/collections/a-b")
        self.assertEqual(out[0]["body"]["data"]["id"], "a-b")

    async def test_trailing_slash_followed_internally(self):
        await self.alice.put("/v1/buckets/b")
        out = await self.responses(self.alice, [{"path": "/buckets/b/"}])
        self.assertEqual(out[0]["status"], 200, out[0])
        self.assertEqual(out[0]["path"], "/v1/buckets/b")
        self.assertEqual(out[0]["body"]["data"]["id"], "b")

    async def test_collection_named_like_batch_works(self):
        # Kinto rejects any path containing "/batch" (quirk 6); a client
        # expects a collection called "batchcol" to be usable.
        await self.alice.put("/v1/buckets/b")
        out = await self.responses(self.alice, [{"method": "PUT", "path": "/buckets/b/collections/batchcol"}])
        self.assertEqual(out[0]["status"], 201, out[0])

    async def test_recursive_batch_is_rejected(self):
        r = await self.alice.post("/v1/batch", {"requests": [
            {"method": "POST", "path": "/batch", "body": {"requests": []}}]})
        # Either the whole batch is refused or the sub-request fails in place;
        # never a nested batch.
        if r.status == 200:
            self.assertEqual(r.json["responses"][0]["status"], 400, r)
        else:
            self.assertInvalid(r)

    async def test_batch_itself_is_anonymous(self):
        await self.alice.put("/v1/buckets/b", {"permissions": {"read": ["system.Everyone"]}})
        out = await self.responses(self.anon, [
            {"path": "/buckets/b"},
            {"method": "PUT", "path": "/buckets/b/collections/c"},
        ])
        self.assertEqual(out[0]["status"], 200)
        self.assertEqual(out[1]["status"], 401)
        self.assertEqual(out[1]["body"]["errno"], 104)

    async def test_put_then_patch_same_object(self):
        out = await self.responses(self.alice, [
            {"method": "PUT", "path": "/buckets/b", "body": {"data": {"a": 1}}},
            {"method": "PATCH", "path": "/buckets/b", "body": {"data": {"b": 2}}},
            {"method": "GET", "path": "/buckets/b"},
        ])
        self.assertEqual([o["status"] for o in out], [201, 200, 200])
        self.assertEqual((out[2]["body"]["data"]["a"], out[2]["body"]["data"]["b"]), (1, 2))

    async def test_subrequest_json_patch(self):
        await self.alice.put("/v1/buckets/b", {"data": {"a": 1}})
        out = await self.responses(self.alice, [{
            "method": "PATCH", "path": "/buckets/b",
            "headers": {"Content-Type": "application/json-patch+json"},
            "body": [{"op": "add", "path": "/data/z", "value": 26}],
        }])
        self.assertEqual(out[0]["status"], 200, out[0])
        self.assertEqual(out[0]["body"]["data"]["z"], 26)


class DefaultsTests(_Base):
    async def test_method_and_path_defaults(self):
        out = await self.responses(self.alice, [
            {"path": "/buckets/a"},
            {"path": "/buckets/b"},
            {"method": "GET", "path": "/buckets"},
        ], defaults={"method": "PUT"})
        self.assertEqual([o["status"] for o in out], [201, 201, 200])

    async def test_path_default(self):
        await self.alice.put("/v1/buckets/b")
        await self.alice.put("/v1/buckets/b/collections/c")
        out = await self.responses(self.alice, [
            {"body": {"data": {"n": 1}}},
            {"body": {"data": {"n": 2}}},
        ], defaults={"method": "POST", "path": "/buckets/b/collections/c/records"})
        self.assertEqual([o["status"] for o in out], [201, 201])
        r = await self.alice.get("/v1/buckets/b/collections/c/records?_sort=n")
        self.assertEqual([o["n"] for o in r.data], [1, 2])

    async def test_body_deep_merge(self):
        await self.alice.put("/v1/buckets/b")
        await self.alice.put("/v1/buckets/b/collections/c")
        out = await self.responses(self.alice, [
            {"path": "/buckets/b/collections/c/records/r1", "body": {"data": {"own": 1}}},
            {"path": "/buckets/b/collections/c/records/r2", "body": {"data": {"shared": "mine", "own": 2}}},
            {"path": "/buckets/b/collections/c/records/r3", "body": {"permissions": {"write": [BOB]}}},
        ], defaults={"method": "PUT", "body": {"data": {"shared": "default"},
                                               "permissions": {"read": ["system.Everyone"]}}})
        self.assertEqual([o["status"] for o in out], [201, 201, 201])
        d1, d2, d3 = (o["body"]["data"] for o in out)
        self.assertEqual((d1["own"], d1["shared"]), (1, "default"))
        self.assertEqual((d2["own"], d2["shared"]), (2, "mine"))
        self.assertEqual(d3["shared"], "default")
        p3 = out[2]["body"]["permissions"]
        self.assertEqual(p3["read"], ["system.Everyone"])
        self.assertIn(BOB, p3["write"])
        self.assertEqual((await self.anon.get("/v1/buckets/b/collections/c/records/r1")).status, 200)

    async def test_headers_deep_merge(self):
        await self.alice.put("/v1/buckets/b", {"data": {}})
        r = await self.alice.get("/v1/buckets/b")
        etag = r.header("ETag")
        out = await self.responses(self.alice, [
            {"path": "/buckets/b"},
            {"path": "/buckets/b", "headers": {"If-None-Match": '"1"'}},
            {"path": "/buckets/b", "headers": {"Authorization": basic("bob")}},
        ], defaults={"headers": {"If-None-Match": etag}})
        # default header applies: 304; overridden value: 200; merged: 403 for bob
        self.assertEqual(out[0]["status"], 304)
        self.assertEqual(out[0]["body"], "")
        self.assertEqual(out[1]["status"], 200)
        self.assertEqual(out[2]["status"], 403)

    async def test_defaults_validated(self):
        r = await self.alice.post("/v1/batch", {"defaults": {"bogus": 1}, "requests": [{"path": "/buckets"}]})
        self.assertInvalid(r)
        r = await self.alice.post("/v1/batch", {"defaults": {"method": "OPTIONS"}, "requests": [{"path": "/"}]})
        self.assertInvalid(r)


class ValidationTests(_Base):
    async def check_invalid(self, body, raw=None):
        if raw is not None:
            r = await self.alice.request("POST", "/v1/batch", raw=raw, headers={"Content-Type": "application/json"})
        else:
            r = await self.alice.post("/v1/batch", body)
        return self.assertInvalid(r)

    async def test_missing_requests(self):
        body = await self.check_invalid({})
        self.assertIn("requests", json.dumps(body))

    async def test_requests_not_a_list(self):
        await self.check_invalid({"requests": {"path": "/"}})

    async def test_unknown_top_level_key(self):
        body = await self.check_invalid({"requests": [], "foo": 1})
        self.assertIn("foo", json.dumps(body))

    async def test_unknown_key_in_request(self):
        body = await self.check_invalid({"requests": [{"path": "/buckets", "bogus": True}]})
        self.assertIn("bogus", json.dumps(body))

    async def test_missing_path(self):
        await self.check_invalid({"requests": [{"method": "GET"}]})

    async def test_path_must_start_with_slash(self):
        await self.check_invalid({"requests": [{"path": "buckets"}]})

    async def test_bad_methods(self):
        await self.check_invalid({"requests": [{"method": "OPTIONS", "path": "/buckets"}]})
        await self.check_invalid({"requests": [{"method": "FETCH", "path": "/buckets"}]})
        await self.check_invalid({"requests": [{"method": 3, "path": "/buckets"}]})

    async def test_header_values_must_be_strings(self):
        await self.check_invalid({"requests": [{"path": "/buckets", "headers": {"If-Match": 1}}]})

    async def test_body_must_be_object(self):
        await self.check_invalid({"requests": [{"method": "PUT", "path": "/buckets/b", "body": "text"}]})
        await self.check_invalid({"requests": [{"method": "PUT", "path": "/buckets/b", "body": 3}]})

    async def test_request_must_be_object(self):
        await self.check_invalid({"requests": ["/buckets"]})

    async def test_malformed_json(self):
        body = await self.check_invalid(None, raw=b'{"requests": [')
        self.assertIn("Invalid JSON", body["message"])

    async def test_body_not_an_object(self):
        await self.check_invalid(None, raw=b"[]")

    async def test_wrong_content_type_is_415(self):
        r = await self.alice.request("POST", "/v1/batch", raw=b'{"requests": []}',
                                     headers={"Content-Type": "text/plain"})
        self.assertEqual(r.status, 415, r)
        self.assertEqual(r.json["errno"], 107)

    async def test_nothing_executed_when_invalid(self):
        r = await self.alice.post("/v1/batch", {"requests": [
            {"method": "PUT", "path": "/buckets/b"},
            {"method": "PUT", "path": "/buckets/c", "bogus": 1},
        ]})
        self.assertInvalid(r)
        self.assertEqual((await self.alice.get("/v1/buckets/b")).status, 403)

    async def test_get_on_batch_is_405(self):
        r = await self.alice.get("/v1/batch")
        self.assertEqual(r.status, 405, r)
        self.assertEqual(r.json["errno"], 115)
        self.assertIn("POST", r.header("Allow"))


class LimitTests(_Base):
    async def test_default_limit_25(self):
        r = await self.alice.post("/v1/batch", {"requests": [{"path": "/"}] * 26})
        body = self.assertInvalid(r)
        self.assertIn("Number of requests is limited to 25", body["message"])
        r = await self.alice.post("/v1/batch", {"requests": [{"path": "/"}] * 25})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.json["responses"]), 25)

    async def test_configured_limit(self):
        await self.make({"batch_max_requests": "3"})
        r = await self.alice.post("/v1/batch", {"requests": [{"path": "/"}] * 4})
        body = self.assertInvalid(r)
        self.assertIn("limited to 3", body["message"])
        r = await self.alice.get("/v1/")
        self.assertEqual(r.json["settings"]["batch_max_requests"], 3)

    async def test_readonly_batch_is_405(self):
        await self.make({"readonly": "true"})
        r = await self.alice.post("/v1/batch", {"requests": [{"path": "/"}]})
        self.assertEqual(r.status, 405, r)
        self.assertEqual(r.json["errno"], 115)


class ErrorsInPlaceTests(_Base):
    async def test_client_errors_reported_in_place_and_not_rolled_back(self):
        await self.alice.put("/v1/buckets/b")
        out = await self.responses(self.alice, [
            {"method": "PUT", "path": "/buckets/b/collections/c1"},
            {"path": "/buckets/b/collections/missing"},
            {"method": "PUT", "path": "/buckets/b/collections/c2", "body": {"bogus": 1}},
            {"method": "PUT", "path": "/buckets/b", "headers": {"If-Match": '"1"'}},
            {"path": "/nothing/here"},
            {"method": "POST", "path": "/buckets/b"},
            {"method": "PUT", "path": "/buckets/b/collections/c3"},
        ])
        statuses = [o["status"] for o in out]
        self.assertEqual(statuses, [201, 404, 400, 412, 404, 405, 201])
        self.assertEqual(out[1]["body"]["errno"], 110)
        self.assertEqual(out[2]["body"]["errno"], 107)
        self.assertEqual(out[3]["body"]["errno"], 114)
        self.assertEqual(out[4]["body"]["errno"], 111)
        self.assertEqual(out[5]["body"]["errno"], 115)
        for o in out[1:6]:
            self.assertIsInstance(o["body"], dict)
            self.assertEqual(o["body"]["code"], o["status"])
        # errno 110 carries details instead of a message (section 8.2)
        self.assertEqual(out[1]["body"]["details"], {"id": "missing", "resource_name": "collection"})
        for o in out[2:6]:
            self.assertIn("message", o["body"])
        for cid in ("c1", "c3"):
            self.assertEqual((await self.alice.get(f"/v1/buckets/b/collections/{cid}")).status, 200)

    async def test_forbidden_in_place(self):
        await self.alice.put("/v1/buckets/b")
        out = await self.responses(self.bob, [
            {"path": "/buckets/b"},
            {"method": "PUT", "path": "/buckets/bobs"},
        ])
        self.assertEqual([o["status"] for o in out], [403, 201])
        self.assertEqual(out[0]["body"]["errno"], 121)

    async def test_unknown_path_404_in_place(self):
        # Kinto prefixes /v1 to any path not starting with it, so /v2/x
        # becomes /v1/v2/x (111); a dedicated 116 would be fine too.
        out = await self.responses(self.alice, [{"path": "/v2/buckets"}, {"path": "/"}])
        self.assertEqual(out[0]["status"], 404)
        self.assertIn(out[0]["body"]["errno"], (111, 116))
        self.assertEqual(out[1]["status"], 200)


class RememberedChecksTests(_Base):
    """
    Creations with generated ids skip the look-up of their parents when an
    earlier sub-request of the batch made it; a write to anything but a
    record makes them look again.
    """

    async def setUp(self):
        await super().setUp()
        await self.alice.put("/v1/buckets/b")
        await self.alice.put("/v1/buckets/b/collections/c")

    async def test_many_creations(self):
        out = await self.responses(self.alice, [
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {"n": i}}}
            for i in range(10)
        ])
        self.assertEqual([o["status"] for o in out], [201] * 10)
        listed = (await self.alice.get("/v1/buckets/b/collections/c/records")).json["data"]
        self.assertEqual(sorted(r["n"] for r in listed), list(range(10)))
        stamps = [o["body"]["data"]["last_modified"] for o in out]
        self.assertEqual(stamps, sorted(set(stamps)))
        for o in out:
            self.assertEqual(o["body"]["permissions"]["write"], [ALICE])

    async def test_parent_deleted_in_between(self):
        out = await self.responses(self.alice, [
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {}}},
            {"method": "DELETE", "path": "/buckets/b/collections/c"},
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {}}},
        ])
        self.assertEqual([o["status"] for o in out], [201, 200, 404])
        self.assertEqual(out[2]["body"]["details"], {"id": "c", "resource_name": "collection"})

    async def test_permission_lost_in_between(self):
        # Bob may create records through group g, and may edit g.
        await self.alice.put("/v1/buckets/b/groups/g", {"data": {"members": [BOB]}, "permissions": {"write": [BOB]}})
        await self.alice.patch(
            "/v1/buckets/b/collections/c", {"permissions": {"record:create": ["/buckets/b/groups/g"]}}
        )
        out = await self.responses(self.bob, [
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {}}},
            {"method": "PATCH", "path": "/buckets/b/groups/g", "body": {"data": {"members": []}}},
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {}}},
        ])
        self.assertEqual([o["status"] for o in out], [201, 200, 403])
        listed = (await self.alice.get("/v1/buckets/b/collections/c/records")).json["data"]
        self.assertEqual([r["id"] for r in listed], [out[0]["body"]["data"]["id"]])


class InheritedHeadersTests(_Base):
    async def test_authorization_inherited(self):
        out = await self.responses(self.alice, [{"path": "/"}])
        self.assertEqual(out[0]["body"]["user"]["id"], ALICE)

    async def test_subrequest_headers_override(self):
        out = await self.responses(self.alice, [
            {"path": "/"},
            {"path": "/", "headers": {"Authorization": basic("bob")}},
        ])
        self.assertEqual(out[0]["body"]["user"]["id"], ALICE)
        self.assertEqual(out[1]["body"]["user"]["id"], BOB)

    async def test_each_subrequest_checked_with_its_own_identity(self):
        await self.alice.put("/v1/buckets/b")
        out = await self.responses(self.alice, [
            {"method": "PATCH", "path": "/buckets/b", "body": {"data": {"a": 1}},
             "headers": {"Authorization": basic("bob")}},
            {"method": "PATCH", "path": "/buckets/b", "body": {"data": {"a": 2}}},
        ])
        self.assertEqual([o["status"] for o in out], [403, 200])

    async def test_other_outer_headers_inherited(self):
        await self.alice.put("/v1/buckets/b")
        r = await self.alice.get("/v1/buckets/b")
        r = await self.alice.post("/v1/batch", {"requests": [{"path": "/buckets/b"}]},
                                  headers={"If-None-Match": r.header("ETag")})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["responses"][0]["status"], 304)

    async def test_outer_origin_inherited(self):
        r = await self.alice.post("/v1/batch", {"requests": [{"path": "/buckets"}]},
                                  headers={"Origin": "http://example.com"})
        self.assertEqual(r.status, 200, r)
        sub = {k.lower(): v for k, v in r.json["responses"][0]["headers"].items()}
        self.assertEqual(sub.get("access-control-allow-origin"), "*")


class OneUnitTests(_Base):
    def inject_failure(self, failing_id, exc=BackendUnavailable):
        """Make the storage fail when it writes an object with this id."""
        storage = self.app.registry.storage
        original = storage.create

        async def create(txn, resource_name, parent_id, obj, **kwargs):
            if obj.get("id") == failing_id:
                raise exc()
            return await original(txn, resource_name, parent_id, obj, **kwargs)

        storage.create = create
        self.addCleanup(setattr, storage, "create", original)

    async def test_server_error_aborts_and_rolls_back_whole_batch(self):
        await self.alice.put("/v1/buckets/b")
        self.inject_failure("boom")
        r = await self.alice.post("/v1/batch", {"requests": [
            {"method": "PUT", "path": "/buckets/b/collections/before"},
            {"method": "PATCH", "path": "/buckets/b", "body": {"data": {"touched": True}}},
            {"method": "PUT", "path": "/buckets/b/collections/boom"},
            {"method": "PUT", "path": "/buckets/b/collections/after"},
        ]})
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.json["errno"], 201)
        self.assertIsNotNone(r.header("Retry-After"))
        for cid in ("before", "boom", "after"):
            got = await self.alice.get(f"/v1/buckets/b/collections/{cid}")
            self.assertEqual(got.status, 404, (cid, got))
        got = await self.alice.get("/v1/buckets/b")
        self.assertNotIn("touched", got.data)
        r = await self.alice.get("/v1/buckets/b/collections")
        self.assertEqual(r.data, [])

    async def test_unexpected_error_aborts_batch_with_500(self):
        await self.alice.put("/v1/buckets/b")
        self.inject_failure("boom", exc=RuntimeError)
        r = await self.alice.post("/v1/batch", {"requests": [
            {"method": "PUT", "path": "/buckets/b/collections/before"},
            {"method": "PUT", "path": "/buckets/b/collections/boom"},
        ]})
        self.assertEqual(r.status, 500, r)
        self.assertEqual(r.json["errno"], 999)
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual((await self.alice.get("/v1/buckets/b/collections/before")).status, 404)

    async def test_later_subrequests_see_earlier_writes(self):
        out = await self.responses(self.alice, [
            {"method": "PUT", "path": "/buckets/b"},
            {"method": "PUT", "path": "/buckets/b/groups/g", "body": {"data": {"members": [BOB]}}},
            {"method": "PATCH", "path": "/buckets/b", "body": {"permissions": {"read": ["/buckets/b/groups/g"]}}},
            {"path": "/buckets/b", "headers": {"Authorization": basic("bob")}},
        ])
        self.assertEqual([o["status"] for o in out], [201, 201, 200, 200])

    async def test_concurrent_reader_sees_all_or_nothing(self):
        await self.alice.put("/v1/buckets/b")
        await self.alice.put("/v1/buckets/b/collections/c")
        requests = [{"method": "PUT", "path": f"/buckets/b/collections/c/records/r{i}"} for i in range(20)]
        batch_d = defer.ensureDeferred(self.alice.post("/v1/batch", {"requests": requests}))
        reads = [defer.ensureDeferred(self.alice.get("/v1/buckets/b/collections/c/records")) for _ in range(5)]
        batch = await batch_d
        self.assertEqual(batch.status, 200)
        for d in reads:
            r = await d
            self.assertIn(len(r.data), (0, 20), "a reader saw a partial batch")


from jsonsync.testclient import with_postgresql_variants  # noqa: E402

with_postgresql_variants(globals())
