"""
Protocol conformance, section 1: endpoints, status codes per verb, hello view.

Written against /work/shared/kinto-protocol.md; every test drives the
server through HTTP as a Kinto client would.
"""

import json
import os
import tempfile

from jsonsync.testclient import ClientTestCase, StubClient, basicauth_id, build_app

ERROR_TITLES = {
    400: "Invalid parameters",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    410: "Gone",
    412: "Precondition Failed",
    415: "Unsupported Media Type",
}


uid = basicauth_id


class ProtocolCase(ClientTestCase):

    def assertError(self, r, status, errno, message=None):
        """The Kinto error body: code, errno, error title, optional message."""
        self.assertEqual(r.status, status, r)
        body = r.json
        self.assertIsInstance(body, dict, r)
        self.assertEqual(body["code"], status, body)
        self.assertEqual(body["errno"], errno, body)
        if status in ERROR_TITLES:
            self.assertEqual(body["error"], ERROR_TITLES[status], body)
        if message is not None:
            self.assertEqual(body.get("message"), message, body)
        self.assertTrue(r.header("Content-Type", "").startswith("application/json"), r.headers_all)
        return body

    def assertInvalid(self, r, location, name=None):
        body = self.assertError(r, 400, 107)
        details = body["details"]
        self.assertIsInstance(details, list)
        matching = [d for d in details if d["location"] == location and (name is None or d["name"] == name)]
        self.assertTrue(matching, body)
        return body

    async def make_tree(self, bucket="b", collection="c"):
        r = await self.alice.put(f"/v1/buckets/{bucket}")
        self.assertIn(r.status, (200, 201), r)
        if collection:
            r = await self.alice.put(f"/v1/buckets/{bucket}/collections/{collection}")
            self.assertIn(r.status, (200, 201), r)


# ---------------------------------------------------------------------------------
# §1.3 hello
# ---------------------------------------------------------------------------------
class HelloTests(ProtocolCase):
    async def test_hello_anonymous(self):
        r = await self.anon.get("/v1/")
        self.assertEqual(r.status, 200, r)
        doc = r.json
        self.assertEqual(doc["http_api_version"], "1.23")
        for key in ("project_name", "project_version", "project_docs"):
            self.assertIsInstance(doc[key], str)
        # Absolute URL, with a trailing slash (observed Kinto behaviour, docs drift).
        self.assertEqual(doc["url"], "http://localhost/v1/")
        self.assertIn("config", doc)
        self.assertEqual(
            doc["settings"],
            {"batch_max_requests": 25, "readonly": False, "explicit_permissions": True},
        )
        self.assertIsInstance(doc["capabilities"], dict)
        self.assertNotIn("user", doc)
        self.assertNotIn("eos", doc)

    async def test_hello_without_version_prefix_slash(self):
        # kinto-http.py requests "<server>/" with server_url ending in /v1
        r = await self.anon.get("/v1")
        self.assertIn(r.status, (200, 307), r)
        if r.status == 307:
            self.assertTrue(r.header("Location").endswith("/v1/"), r.headers_all)

    async def test_hello_authenticated_user(self):
        r = await self.alice.get("/v1/")
        self.assertEqual(r.status, 200, r)
        user = r.json["user"]
        self.assertEqual(user["id"], uid("alice"))
        self.assertIn(uid("alice"), user["principals"])
        self.assertIn("system.Authenticated", user["principals"])
        self.assertIn("system.Everyone", user["principals"])
        self.assertNotIn(uid("bob"), user["principals"])

    async def test_hello_userid_hmac_secret(self):
        app = await build_app({"userid_hmac_secret": "s3cr3t"})
        r = await StubClient(app).as_user("alice").get("/v1/")
        self.assertEqual(r.json["user"]["id"], uid("alice", secret="s3cr3t"))

    async def test_hello_basicauth_capability(self):
        r = await self.anon.get("/v1/")
        caps = r.json["capabilities"]
        self.assertIn("basicauth", caps)
        self.assertIn("description", caps["basicauth"])
        self.assertIn("url", caps["basicauth"])

    async def test_hello_public_settings_reflect_configuration(self):
        app = await build_app({"batch_max_requests": "7", "explicit_permissions": "false"})
        r = await StubClient(app).as_user(None).get("/v1/")
        self.assertEqual(r.json["settings"]["batch_max_requests"], 7)
        self.assertIs(r.json["settings"]["explicit_permissions"], False)

    async def test_hello_readonly_is_cacheable(self):
        app = await build_app({"readonly": "true"})
        r = await StubClient(app).as_user(None).get("/v1/")
        self.assertEqual(r.status, 200)
        self.assertIs(r.json["settings"]["readonly"], True)
        self.assertEqual(r.header("Cache-Control"), "max-age=86400")
        self.assertIsNotNone(r.header("Expires"))

    async def test_hello_not_cacheable_when_writable(self):
        r = await self.anon.get("/v1/")
        self.assertNotEqual(r.header("Cache-Control"), "max-age=86400")

    async def test_hello_head(self):
        r = await self.anon.head("/v1/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.raw, b"")

    async def test_hello_eos_future(self):
        app = await build_app({"eos": "2999-01-01"})
        r = await StubClient(app).as_user(None).get("/v1/")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["eos"], "2999-01-01")
        alert = json.loads(r.header("Alert"))
        self.assertEqual(alert["code"], "soft-eol")

    async def test_hello_eos_past_is_gone(self):
        app = await build_app({"eos": "2000-01-01"})
        client = StubClient(app).as_user("alice")
        r = await client.get("/v1/")
        self.assertError(r, 410, 202)
        self.assertEqual(json.loads(r.header("Alert"))["code"], "hard-eol")
        r = await client.put("/v1/buckets/b")
        self.assertError(r, 410, 202)

    async def test_hello_config_null_without_ini(self):
        r = await self.anon.get("/v1/")
        self.assertIsNone(r.json["config"])

    async def test_hello_ignores_accept(self):
        r = await self.anon.get("/v1/", headers={"Accept": "text/html"})
        self.assertEqual(r.status, 200)


# ---------------------------------------------------------------------------------
# §1.1 core service endpoints
# ---------------------------------------------------------------------------------
class ServiceEndpointTests(ProtocolCase):
    async def test_heartbeat(self):
        r = await self.anon.get("/v1/__heartbeat__")
        self.assertEqual(r.status, 200, r)
        for key in ("storage", "permission", "cache"):
            self.assertIn(key, r.json)
            self.assertIn(r.json[key], (True, None))

    async def test_lbheartbeat(self):
        r = await self.anon.get("/v1/__lbheartbeat__")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json, {})

    async def test_version_missing_file_is_404(self):
        app = await build_app({"version_json_path": "/nonexistent/dir/version.json"})
        r = await StubClient(app).as_user(None).get("/v1/__version__")
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.json["code"], 404)

    async def test_version_file_contents(self):
        content = {"name": "jsonsync", "version": "1.2.3", "source": "https://x", "commit": "abc"}
        fd, path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(content, f)
        self.addCleanup(os.remove, path)
        app = await build_app({"version_json_path": path})
        r = await StubClient(app).as_user(None).get("/v1/__version__")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, content)

    async def test_openapi(self):
        r = await self.anon.get("/v1/__api__")
        self.assertEqual(r.status, 200, r)
        doc = r.json
        self.assertEqual(doc["openapi"], "3.0.3")  # tests/test_openapi.py checks the rest
        self.assertEqual(doc["info"]["version"], "1.23")
        self.assertIsInstance(doc["info"]["title"], str)
        self.assertTrue(doc["servers"][0]["url"].endswith("/v1"), doc["servers"])
        self.assertEqual(doc["components"]["securitySchemes"]["basicAuth"], {"type": "http", "scheme": "basic"})
        paths = doc["paths"]
        self.assertIn("/buckets", paths)
        self.assertTrue(any(k.endswith("/records") for k in paths), sorted(paths))
        self.assertIn("/batch", paths)

    async def test_contribute(self):
        r = await self.anon.get("/v1/contribute.json")
        self.assertEqual(r.status, 200, r)
        self.assertIn("name", r.json)
        self.assertIn("description", r.json)

    async def test_batch_exists(self):
        r = await self.anon.post("/v1/batch", {"requests": [{"path": "/"}]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["responses"][0]["status"], 200)

    async def test_permissions_endpoint_absent_by_default(self):
        r = await self.alice.get("/v1/permissions")
        self.assertError(r, 404, 111)

    async def test_permissions_endpoint_enabled(self):
        app = await build_app({"experimental_permissions_endpoint": "true"})
        client = StubClient(app).as_user("alice")
        r = await client.get("/v1/")
        self.assertIn("permissions_endpoint", r.json["capabilities"])
        await client.put("/v1/buckets/b")
        r = await client.get("/v1/permissions")
        self.assertEqual(r.status, 200, r)
        self.assertIn("/buckets/b", [e["uri"] for e in r.data])
        r = await client.head("/v1/permissions")
        self.assertEqual(r.status, 200, r)

    async def test_user_data_endpoint_registered_and_denied_by_default(self):
        # Always registered; granted to nobody by default.
        r = await self.anon.delete("/v1/__user_data__/" + uid("bob"))
        self.assertError(r, 401, 104)
        r = await self.alice.delete("/v1/__user_data__/" + uid("bob"))
        self.assertError(r, 403, 121)

    async def test_user_data_endpoint_deletes_principal_data(self):
        app = await build_app({"user-data_delete_principals": uid("admin")})
        base = StubClient(app)
        admin, bob, alice = base.as_user("admin"), base.as_user("bob"), base.as_user("alice")
        self.assertEqual((await bob.put("/v1/buckets/bobs")).status, 201)
        r = await alice.put("/v1/buckets/shared", {"permissions": {"write": [uid("bob")]}})
        self.assertEqual(r.status, 201)
        r = await admin.delete("/v1/__user_data__/" + uid("bob"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json, {"data": {"principal": uid("bob")}})
        # bob's only-writer bucket is gone, bob stripped from the shared one
        r = await bob.get("/v1/buckets/bobs")
        self.assertIn(r.status, (403, 404), r)
        r = await alice.get("/v1/buckets/shared")
        self.assertEqual(r.json["permissions"]["write"], [uid("alice")])

    async def test_unknown_url(self):
        r = await self.alice.get("/v1/nowhere")
        self.assertError(r, 404, 111, "The resource you are looking for could not be found.")

    async def test_other_version_prefix(self):
        r = await self.alice.get("/v2/buckets")
        self.assertError(r, 404, 116)


# ---------------------------------------------------------------------------------
# §1.2 status codes per verb, for every resource type
# ---------------------------------------------------------------------------------
RESOURCES = {
    # name: (plural path, object path template, needs tree)
    "bucket": ("/v1/buckets", "/v1/buckets/{id}"),
    "collection": ("/v1/buckets/b/collections", "/v1/buckets/b/collections/{id}"),
    "group": ("/v1/buckets/b/groups", "/v1/buckets/b/groups/{id}"),
    "record": ("/v1/buckets/b/collections/c/records", "/v1/buckets/b/collections/c/records/{id}"),
}


class VerbStatusMixin:
    resource = "bucket"

    async def setUp(self):
        await super().setUp()
        if self.resource != "bucket":
            await self.make_tree()
        self.plural, template = RESOURCES[self.resource]
        self.obj = lambda i: template.format(id=i)

    async def test_post_creates_201(self):
        r = await self.alice.post(self.plural, {"data": {"title": "x"}})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.data["title"], "x")
        self.assertIsInstance(r.data["id"], str)
        self.assertIsInstance(r.data["last_modified"], int)
        self.assertIn("permissions", r.json)
        self.assertEqual(r.header("ETag"), f'"{r.data["last_modified"]}"')

    async def test_post_existing_id_returns_200_unchanged(self):
        r = await self.alice.post(self.plural, {"data": {"id": "abc", "title": "first"}})
        self.assertEqual(r.status, 201, r)
        first = r.data
        r = await self.alice.post(self.plural, {"data": {"id": "abc", "title": "second"}})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data, first)
        r = await self.alice.get(self.obj("abc"))
        self.assertEqual(r.data["title"], "first")

    async def test_post_without_body(self):
        r = await self.alice.post(self.plural)
        self.assertEqual(r.status, 201, r)

    async def test_put_create_then_replace(self):
        r = await self.alice.put(self.obj("abc"), {"data": {"a": 1}})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.data["id"], "abc")
        r = await self.alice.put(self.obj("abc"), {"data": {"b": 2}})
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("a", r.data)
        self.assertEqual(r.data["b"], 2)

    async def test_get_object(self):
        await self.alice.put(self.obj("abc"), {"data": {"a": 1}})
        r = await self.alice.get(self.obj("abc"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json), {"data", "permissions"})
        self.assertEqual(r.data["a"], 1)
        self.assertEqual(r.header("ETag"), f'"{r.data["last_modified"]}"')

    async def test_head_object(self):
        r = await self.alice.put(self.obj("abc"))
        etag = r.header("ETag")
        r = await self.alice.head(self.obj("abc"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.raw, b"")
        self.assertEqual(r.header("ETag"), etag)

    async def test_patch_object(self):
        await self.alice.put(self.obj("abc"), {"data": {"a": 1}})
        r = await self.alice.patch(self.obj("abc"), {"data": {"b": 2}})
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.data["a"], r.data["b"]), (1, 2))

    async def test_delete_object(self):
        await self.alice.put(self.obj("abc"), {"data": {"a": 1}})
        r = await self.alice.delete(self.obj("abc"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json), {"data"})
        self.assertEqual(set(r.data), {"id", "last_modified", "deleted"})
        self.assertEqual(r.data["id"], "abc")
        self.assertIs(r.data["deleted"], True)
        r = await self.alice.get(self.obj("abc"))
        self.assertEqual(r.status, 404 if self.resource != "bucket" else 403, r)

    async def test_get_plural(self):
        await self.alice.put(self.obj("abc"))
        r = await self.alice.get(self.plural)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(set(r.json), {"data"})
        self.assertIn("abc", [o["id"] for o in r.data])

    async def test_head_plural(self):
        await self.alice.put(self.obj("abc"))
        r = await self.alice.head(self.plural)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.raw, b"")
        self.assertIsNotNone(r.header("ETag"))

    async def test_delete_plural(self):
        await self.alice.put(self.obj("one"))
        await self.alice.put(self.obj("two"))
        expected = sorted(o["id"] for o in (await self.alice.get(self.plural)).data)
        self.assertIn("one", expected)
        r = await self.alice.delete(self.plural)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(sorted(o["id"] for o in r.data), expected)
        for tomb in r.data:
            self.assertEqual(set(tomb), {"id", "last_modified", "deleted"})
            self.assertIs(tomb["deleted"], True)
        r = await self.alice.get(self.plural)
        self.assertEqual(r.data, [])

    async def test_get_missing_object_404(self):
        r = await self.alice.get(self.obj("missing"))
        if self.resource == "bucket":
            # No read permission on an unknown bucket: 403 for a non-admin.
            self.assertError(r, 403, 121)
            return
        body = self.assertError(r, 404, 110)
        self.assertEqual(body["details"], {"id": "missing", "resource_name": self.resource})

    async def test_patch_missing_object_404(self):
        if self.resource == "bucket":
            return await self._skip_bucket()
        r = await self.alice.patch(self.obj("missing"), {"data": {"a": 1}})
        body = self.assertError(r, 404, 110)
        self.assertEqual(body["details"], {"id": "missing", "resource_name": self.resource})

    async def test_delete_missing_object_404(self):
        if self.resource == "bucket":
            return await self._skip_bucket()
        r = await self.alice.delete(self.obj("missing"))
        body = self.assertError(r, 404, 110)
        self.assertEqual(body["details"], {"id": "missing", "resource_name": self.resource})

    async def _skip_bucket(self):
        # Missing buckets are answered 403 (no permission can exist on them).
        r = await self.alice.delete(self.obj("missing"))
        self.assertIn(r.status, (403, 404), r)

    async def test_post_on_object_405(self):
        await self.alice.put(self.obj("abc"))
        r = await self.alice.post(self.obj("abc"), {"data": {}})
        self.assertError(r, 405, 115, "Method not allowed on this endpoint.")
        allow = {m.strip() for m in r.header("Allow", "").split(",")}
        self.assertTrue({"GET", "PUT", "PATCH", "DELETE"} <= allow, allow)
        self.assertNotIn("POST", allow)

    async def test_put_on_plural_405(self):
        r = await self.alice.put(self.plural, {"data": {}})
        self.assertError(r, 405, 115)
        allow = {m.strip() for m in r.header("Allow", "").split(",")}
        self.assertTrue({"GET", "POST", "DELETE"} <= allow, allow)

    async def test_patch_on_plural_405(self):
        r = await self.alice.patch(self.plural, {"data": {}})
        self.assertError(r, 405, 115)

    async def test_anonymous_401(self):
        await self.alice.put(self.obj("abc"))
        r = await self.anon.get(self.obj("abc"))
        self.assertError(r, 401, 104, "Please authenticate yourself to use this endpoint.")
        # Browsers/clients need the challenge to know basic auth is accepted.
        self.assertTrue(r.header("WWW-Authenticate", "").startswith("Basic"), r.headers_all)

    async def test_other_user_403(self):
        await self.alice.put(self.obj("abc"))
        r = await self.bob.get(self.obj("abc"))
        self.assertError(r, 403, 121, "This user cannot access this resource.")

    async def test_not_acceptable_406(self):
        r = await self.alice.get(self.plural, headers={"Accept": "text/html"})
        body = self.assertError(r, 406, 107)
        self.assertEqual(body["details"][0]["location"], "header")
        self.assertEqual(body["details"][0]["name"], "Accept")

    async def test_accept_variants_ok(self):
        for accept in ("*/*", "application/*", "application/json", "text/html, application/json;q=0.9"):
            r = await self.alice.get(self.plural, headers={"Accept": accept})
            self.assertEqual(r.status, 200, (accept, r))

    async def test_unsupported_media_type_415(self):
        r = await self.alice.request(
            "PUT", self.obj("abc"), raw=b'{"data": {}}', headers={"Content-Type": "text/plain"}
        )
        body = self.assertError(r, 415, 107)
        self.assertEqual(body["details"][0]["location"], "header")
        self.assertEqual(body["details"][0]["name"], "Content-Type")
        r = await self.alice.request(
            "POST", self.plural, raw=b'{"data": {}}', headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        self.assertError(r, 415, 107)

    async def test_json_content_type_with_params_ok(self):
        r = await self.alice.request(
            "PUT", self.obj("abc"), raw=b'{"data": {"a": 1}}',
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        self.assertEqual(r.status, 201, r)

    async def test_invalid_json_body(self):
        r = await self.alice.request(
            "PUT", self.obj("abc"), raw=b'{"data": ', headers={"Content-Type": "application/json"}
        )
        body = self.assertError(r, 400, 107)
        self.assertIn("Invalid JSON", body["message"])

    async def test_invalid_object_id_400(self):
        r = await self.alice.put(self.obj("with%20space"), {"data": {}})
        body = self.assertError(r, 400, 107)
        self.assertEqual(body["details"], [{"location": "path", "name": None, "description": "Invalid object id"}])
        r = await self.alice.get(self.obj("_bad"))
        if self.resource != "bucket":
            self.assertError(r, 400, 107)

    async def test_invalid_object_id_checked_after_authentication(self):
        r = await self.anon.put(self.obj("with%20space"), {"data": {}})
        self.assertError(r, 401, 104)

    async def test_disabled_endpoint_405(self):
        name = self.resource
        app = await build_app({f"object_{name}_delete_enabled": "false", f"plural_{name}_delete_enabled": "false"})
        client = StubClient(app).as_user("alice")
        if name != "bucket":
            await client.put("/v1/buckets/b")
            await client.put("/v1/buckets/b/collections/c")
        self.assertEqual((await client.put(self.obj("abc"))).status, 201)
        self.assertError(await client.delete(self.obj("abc")), 405, 115)
        self.assertError(await client.delete(self.plural), 405, 115)
        self.assertEqual((await client.get(self.obj("abc"))).status, 200)


class BucketVerbTests(VerbStatusMixin, ProtocolCase):
    resource = "bucket"


class CollectionVerbTests(VerbStatusMixin, ProtocolCase):
    resource = "collection"


class GroupVerbTests(VerbStatusMixin, ProtocolCase):
    resource = "group"


class RecordVerbTests(VerbStatusMixin, ProtocolCase):
    resource = "record"

    async def test_records_of_missing_collection_get_404(self):
        r = await self.alice.get("/v1/buckets/b/collections/nope/records")
        body = self.assertError(r, 404, 111)
        self.assertEqual(body["details"], {"id": "nope", "resource_name": "collection"})

    async def test_records_of_missing_collection_post_404(self):
        r = await self.alice.post("/v1/buckets/b/collections/nope/records", {"data": {}})
        body = self.assertError(r, 404, 111)
        self.assertEqual(body["details"], {"id": "nope", "resource_name": "collection"})
        r = await self.alice.put("/v1/buckets/b/collections/nope/records/r1", {"data": {}})
        self.assertError(r, 404, 111)

    async def test_records_of_missing_collection_anonymous_get_401(self):
        # GET checks authorization first (no existence leak).
        r = await self.anon.get("/v1/buckets/b/collections/nope/records")
        self.assertError(r, 401, 104)

    async def test_invalid_parent_id_404(self):
        r = await self.alice.get("/v1/buckets/b/collections/c_$/records")
        body = self.assertError(r, 404, 111)
        self.assertEqual(body["details"]["resource_name"], "collection")

    async def test_record_ids_may_start_with_digit_and_be_long(self):
        rid = "1" + "a" * 300
        r = await self.alice.put(self.obj(rid), {"data": {}})
        self.assertEqual(r.status, 201, r)


class CollectionParentTests(ProtocolCase):
    async def test_collection_in_missing_bucket_403(self):
        r = await self.alice.put("/v1/buckets/nope/collections/c", {"data": {}})
        self.assertError(r, 403, 121)
        r = await self.anon.put("/v1/buckets/nope/collections/c", {"data": {}})
        self.assertError(r, 401, 104)

    async def test_invalid_bucket_id_in_parent_position_404(self):
        r = await self.alice.get("/v1/buckets/b%24/collections")
        body = self.assertError(r, 404, 111)
        self.assertEqual(body["details"]["resource_name"], "bucket")

    async def test_bucket_create_principals(self):
        app = await build_app({"bucket_create_principals": uid("alice")})
        base = StubClient(app)
        self.assertEqual((await base.as_user("alice").put("/v1/buckets/a")).status, 201)
        self.assertError(await base.as_user("bob").put("/v1/buckets/b"), 403, 121)
        self.assertError(await base.as_user("bob").post("/v1/buckets", {"data": {}}), 403, 121)

    async def test_anonymous_cannot_create_bucket(self):
        r = await self.anon.post("/v1/buckets", {"data": {}})
        self.assertError(r, 401, 104)

    async def test_plural_delete_only_writable(self):
        await self.alice.put("/v1/buckets/a")
        await self.bob.put("/v1/buckets/bb")
        r = await self.alice.delete("/v1/buckets")
        self.assertEqual(r.status, 200, r)
        self.assertEqual([o["id"] for o in r.data], ["a"])
        r = await self.bob.get("/v1/buckets/bb")
        self.assertEqual(r.status, 200, r)


from jsonsync.testclient import with_postgresql_variants  # noqa: E402

with_postgresql_variants(globals())
