"""
Conformance tests for protocol section 8: error bodies and errno, content
negotiation, redirects, CORS, Backoff, readonly mode, size and nesting
limits, and "never a 500 nor an HTML page".
"""

from __future__ import annotations

import datetime
import json

from jsonsync.testclient import ClientTestCase

B = "/v1/buckets/b"
C = B + "/collections/c"
RECS = C + "/records"
R = RECS + "/r"


class _Base(ClientTestCase):

    async def tree(self):
        for path in (B, C):
            r = await self.alice.put(path)
            self.assertIn(r.status, (200, 201), r)
        r = await self.alice.put(R, {"data": {"v": 1}})
        self.assertIn(r.status, (200, 201), r)

    def assertJsonError(self, r, status, errno=None):
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.header("Content-Type"), "application/json")
        body = r.json
        self.assertIsInstance(body, dict, r)
        self.assertEqual(body["code"], status)
        self.assertIsInstance(body["errno"], int)
        self.assertIsInstance(body["error"], str)
        if errno is not None:
            self.assertEqual(body["errno"], errno, body)
        self.assertNotIn("info", body)  # only on 500
        for key in ("message", "details"):
            if key in body:
                self.assertTrue(body[key], f"empty {key} should be omitted")
        return body

    def assertInvalid(self, r, location=None, name=None, status=400):
        body = self.assertJsonError(r, status, 107)
        self.assertEqual(body["error"], "Invalid parameters" if status == 400 else body["error"])
        if location is not None:
            self.assertTrue(body["details"], body)
            self.assertIn(location, [d["location"] for d in body["details"]], body)
        if name is not None:
            self.assertIn(name, [d["name"] for d in body["details"]], body)
        return body


class ErrorBodyTests(_Base):
    async def test_malformed_json(self):
        await self.tree()
        for method, path in (("PUT", R), ("POST", RECS), ("PATCH", R)):
            r = await self.alice.request(method, path, raw=b'{"data": {', headers={"Content-Type": "application/json"})
            body = self.assertInvalid(r, "body")
            self.assertIn("Invalid JSON", body["message"])

    async def test_invalid_utf8_body(self):
        await self.tree()
        r = await self.alice.request("PUT", R, raw=b'{"data": {"a": "\xff\xfe"}}',
                                     headers={"Content-Type": "application/json"})
        self.assertInvalid(r, "body")

    async def test_body_not_an_object(self):
        await self.tree()
        for raw in (b"[]", b'"text"', b"42"):
            r = await self.alice.request("PUT", R, raw=raw, headers={"Content-Type": "application/json"})
            self.assertInvalid(r, "body")

    async def test_wrong_types(self):
        await self.tree()
        self.assertInvalid(await self.alice.put(R, {"data": []}), "body")
        self.assertInvalid(await self.alice.put(R, {"data": "x"}), "body")
        self.assertInvalid(await self.alice.put(R, {"permissions": []}), "body")
        self.assertInvalid(await self.alice.put(R, {"permissions": {"read": "x"}}), "body")
        self.assertInvalid(await self.alice.put(R, {"permissions": {"read": [1]}}), "body")
        self.assertInvalid(await self.alice.put(C, {"data": {"cache_expires": "soon"}}), "body")
        self.assertInvalid(await self.alice.put(B + "/groups/g", {"data": {"members": [1]}}), "body")

    async def test_unknown_top_level_keys(self):
        await self.tree()
        body = self.assertInvalid(await self.alice.put(R, {"data": {}, "extra": 1}), "body")
        self.assertIn("Unrecognized keys", json.dumps(body))
        self.assertInvalid(await self.alice.post(RECS, {"bogus": 1}), "body")
        self.assertInvalid(await self.alice.patch(R, {"data": {}, "meta": {}}), "body")

    async def test_message_format_of_validation_error(self):
        await self.tree()
        body = self.assertInvalid(await self.alice.put(R, {"data": {}, "extra": 1}))
        detail = body["details"][0]
        self.assertEqual(set(detail), {"location", "name", "description"})
        if detail["name"] and detail["name"] not in detail["description"]:
            self.assertEqual(body["message"], f"{detail['name']} in {detail['location']}: {detail['description']}")
        else:
            self.assertIn(detail["description"], body["message"])

    async def test_invalid_object_ids(self):
        await self.tree()
        for path in ("/v1/buckets/-bad", "/v1/buckets/a.b", B + "/collections/_x", B + "/groups/sp%20ace",
                     RECS + "/no%24dollar"):
            r = await self.alice.put(path, {"data": {}})
            body = self.assertInvalid(r, "path")
            self.assertEqual(body["details"], [{"location": "path", "name": None, "description": "Invalid object id"}])
        r = await self.alice.get(RECS + "/b@d")
        self.assertInvalid(r, "path")
        r = await self.alice.delete(RECS + "/b@d")
        self.assertInvalid(r, "path")

    async def test_invalid_posted_ids(self):
        await self.tree()
        self.assertInvalid(await self.alice.post(RECS, {"data": {"id": "b@d"}}), "body")
        self.assertInvalid(await self.alice.post(RECS, {"data": {"id": 42}}), "body")
        self.assertInvalid(await self.alice.post("/v1/buckets", {"data": {"id": "-no"}}), "body")

    async def test_invalid_parent_id_is_404(self):
        await self.tree()
        r = await self.alice.get("/v1/buckets/b/collections/c%40d/records")
        body = self.assertJsonError(r, 404, 111)
        self.assertEqual(body["details"], {"id": "c@d", "resource_name": "collection"})

    async def test_missing_parent_collection_is_404(self):
        await self.tree()
        r = await self.alice.get(B + "/collections/nope/records")
        body = self.assertJsonError(r, 404, 111)
        self.assertEqual(body["details"], {"id": "nope", "resource_name": "collection"})
        r = await self.alice.put(B + "/collections/nope/records/x", {"data": {}})
        self.assertJsonError(r, 404, 111)

    async def test_missing_object_is_404_110(self):
        await self.tree()
        r = await self.alice.get(RECS + "/nope")
        body = self.assertJsonError(r, 404, 110)
        self.assertEqual(body["details"], {"id": "nope", "resource_name": "record"})

    async def test_bad_query_parameters(self):
        await self.tree()
        future = int((datetime.datetime.now() + datetime.timedelta(days=3)).timestamp() * 1000)
        for qs, name in (("_limit=-1", "_limit"), ("_limit=abc", "_limit"), ("_since=abc", "_since"),
                         ("_before=1.5", "_before"), (f"_since={future}", "_since"),
                         ("gt_last_modified=yesterday", "gt_last_modified"), ("_token=garbage", "_token"),
                         ("like_v=1", "like_v"),
                         ("contains_id=a", "contains_id"), ("v=a%00b", None)):
            r = await self.alice.get(RECS + "?" + qs)
            self.assertInvalid(r, "querystring", name)

    async def test_in_id_values_must_be_strings(self):
        # Ids that look like numbers ("1") are valid ids and sync clients send
        # them in exclude_id, so numbers are taken as the strings they spell;
        # values that cannot be ids (arrays, objects) are refused.
        await self.tree()
        self.assertInvalid(await self.alice.get(RECS + "?in_id=[1],2"), "querystring", "in_id")
        self.assertInvalid(await self.alice.get(RECS + '?exclude_id={"a":1}'), "querystring", "exclude_id")
        self.assertInvalid(await self.alice.get(RECS + "?in_last_modified=a,b"), "querystring", "in_last_modified")
        r = await self.alice.get(RECS + '?in_id=r,"x"')
        self.assertEqual([o["id"] for o in r.data], ["r"])

    async def test_non_utf8_path_is_json_error(self):
        r = await self.alice.get("/v1/buckets/b/collections/c/records/%ff%fe")
        self.flushLoggedErrors(UnicodeDecodeError)
        self.assertLess(r.status, 500)
        self.assertEqual(r.header("Content-Type"), "application/json", r)
        self.assertEqual(r.json["code"], r.status)

    async def test_underscore_params_ignored(self):
        await self.tree()
        r = await self.alice.get(RECS + "?_expected=123&_whatever=x")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.data), 1)

    async def test_bad_if_match_headers(self):
        await self.tree()
        for header in ("If-Match", "If-None-Match"):
            for value in ("abc", 'W/"123"', "123", '"12a"'):
                r = await self.alice.get(R, headers={header: value})
                self.assertInvalid(r, "header", header)
                r = await self.alice.patch(R, {"data": {}}, headers={header: value})
                self.assertInvalid(r, "header", header)

    async def test_unsupported_content_type_415(self):
        await self.tree()
        for method, path in (("PUT", R), ("POST", RECS), ("PATCH", R)):
            r = await self.alice.request(method, path, raw=b'{"data": {}}', headers={"Content-Type": "text/plain"})
            body = self.assertInvalid(r, "header", status=415)
            self.assertEqual(body["error"], "Unsupported Media Type")
        r = await self.alice.request("PUT", R, raw=b'{"data": {}}',
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        self.assertEqual(r.status, 200, r)

    async def test_not_acceptable_406(self):
        await self.tree()
        for path in (R, RECS):
            r = await self.alice.get(path, headers={"Accept": "text/html"})
            body = self.assertInvalid(r, "header", status=406)
            self.assertEqual(body["details"][0]["name"], "Accept")
        for accept in ("*/*", "application/*", "application/json", "text/html, application/json;q=0.5"):
            r = await self.alice.get(R, headers={"Accept": accept})
            self.assertEqual(r.status, 200, (accept, r))
        # Non-resource services ignore Accept.
        r = await self.alice.get("/v1/", headers={"Accept": "text/html"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("Content-Type"), "application/json")

    async def test_unknown_route_404_json(self):
        for path in ("/v1/nothing", "/v1/buckets/b/unknown", "/v1/buckets/b/collections/c/records/r/x"):
            r = await self.alice.get(path)
            body = self.assertJsonError(r, 404, 111)
            self.assertEqual(body["message"], "The resource you are looking for could not be found.")

    async def test_405_with_allow(self):
        await self.tree()
        r = await self.alice.post(R, {"data": {}})
        body = self.assertJsonError(r, 405, 115)
        self.assertEqual(body["error"], "Method Not Allowed")
        allow = {m.strip() for m in r.header("Allow").split(",")}
        self.assertTrue({"GET", "PUT", "PATCH", "DELETE"} <= allow, allow)
        self.assertNotIn("POST", allow)
        r = await self.alice.put(RECS, {"data": {}})
        self.assertJsonError(r, 405, 115)
        allow = {m.strip() for m in r.header("Allow").split(",")}
        self.assertTrue({"GET", "POST", "DELETE"} <= allow, allow)
        r = await self.alice.request("PATCH", "/v1/", raw=b"{}")
        self.assertJsonError(r, 405, 115)
        self.assertIn("GET", r.header("Allow"))

    async def test_error_headers(self):
        r = await self.anon.get("/v1/nothing")
        self.assertEqual(r.header("X-Content-Type-Options"), "nosniff")
        self.assertTrue((r.header("Content-Security-Policy") or "").startswith("default-src 'none'"))

    async def test_slash_not_escaped(self):
        await self.tree()
        r = await self.alice.patch(R, {"permissions": {"read": ["/buckets/b/groups/g"]}})
        self.assertEqual(r.status, 200, r)
        self.assertIn(b'"/buckets/b/groups/g"', r.raw)
        self.assertNotIn(b"\\/", r.raw)

    async def test_head_has_no_body(self):
        await self.tree()
        r = await self.alice.head(RECS)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.raw, b"")

    async def test_304_empty(self):
        await self.tree()
        r = await self.alice.get(R)
        r2 = await self.alice.get(R, headers={"If-None-Match": r.header("ETag")})
        self.assertEqual(r2.status, 304)
        self.assertEqual(r2.raw, b"")
        self.assertEqual(r2.header("ETag"), r.header("ETag"))


class RedirectTests(_Base):
    async def test_trailing_slash_307(self):
        r = await self.alice.get("/v1/buckets/?_limit=2")
        self.assertEqual(r.status, 307, r)
        self.assertEqual(r.header("Location"), "http://localhost/v1/buckets?_limit=2")
        self.assertEqual(r.header("Cache-Control"), "max-age=3600")
        r = await self.alice.get("/v1/buckets/b/collections//")
        self.assertEqual(r.status, 307, r)
        self.assertEqual(r.header("Location"), "http://localhost/v1/buckets/b/collections")

    async def test_trailing_slash_disabled(self):
        await self.make({"trailing_slash_redirect_enabled": "false"})
        r = await self.alice.get("/v1/buckets/")
        self.assertJsonError(r, 404, 111)

    async def test_v1_to_v1_slash(self):
        r = await self.alice.get("/v1")
        self.assertEqual(r.status, 307, r)
        self.assertEqual(r.header("Location"), "http://localhost/v1/")

    async def test_version_prefix_redirect(self):
        for path, target in (("/buckets", "/v1/buckets"), ("/", "/v1/"),
                             ("/buckets/b/collections?x=1&y=2", "/v1/buckets/b/collections?x=1&y=2"),
                             ("/__heartbeat__", "/v1/__heartbeat__")):
            r = await self.alice.get(path)
            self.assertEqual(r.status, 307, (path, r))
            self.assertEqual(r.header("Location"), "http://localhost" + target)
            self.assertIsNone(r.header("Cache-Control"))  # ttl -1 by default
        r = await self.alice.post("/buckets", {"data": {}})
        self.assertEqual(r.status, 307, r)

    async def test_version_prefix_redirect_ttl(self):
        await self.make({"version_prefix_redirect_ttl_seconds": "60"})
        r = await self.alice.get("/buckets")
        self.assertEqual(r.status, 307, r)
        self.assertEqual(r.header("Cache-Control"), "max-age=60")

    async def test_version_prefix_redirect_disabled(self):
        await self.make({"version_prefix_redirect_enabled": "false"})
        r = await self.alice.get("/buckets")
        self.assertJsonError(r, 404)

    async def test_options_on_unprefixed_path(self):
        r = await self.anon.request("OPTIONS", "/buckets", headers={
            "Origin": "http://a.example", "Access-Control-Request-Method": "GET"})
        self.assertEqual(r.status, 200, r)

    async def test_other_version_404_116(self):
        for path in ("/v2/buckets", "/v2/", "/v0"):
            r = await self.alice.get(path)
            self.assertJsonError(r, 404, 116)

    async def test_http_host_and_scheme_in_location(self):
        await self.make({"http_host": "example.org:8443", "http_scheme": "https"})
        r = await self.alice.get("/buckets")
        self.assertEqual(r.header("Location"), "https://example.org:8443/v1/buckets")


class CorsTests(_Base):
    async def preflight(self, path, method="GET", origin="http://app.example", headers=""):
        h = {"Origin": origin, "Access-Control-Request-Method": method}
        if headers:
            h["Access-Control-Request-Headers"] = headers
        return await self.anon.request("OPTIONS", path, headers=h)

    async def test_preflight_plural(self):
        r = await self.preflight(RECS, "POST", headers="Authorization, Content-Type, X-Custom")
        self.assertEqual(r.status, 200, r)
        methods = {m.strip() for m in r.header("Access-Control-Allow-Methods").split(",")}
        self.assertEqual(methods, {"HEAD", "GET", "POST", "DELETE", "OPTIONS"})
        allowed = {h.strip().lower() for h in r.header("Access-Control-Allow-Headers").split(",")}
        self.assertTrue({"authorization", "content-type", "x-custom"} <= allowed, allowed)
        self.assertEqual(r.header("Access-Control-Max-Age"), "3600")
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")
        self.assertIsNone(r.header("Access-Control-Allow-Credentials"))

    async def test_preflight_object_needs_no_auth(self):
        # the object does not exist and the request is anonymous
        r = await self.preflight(R, "PATCH")
        self.assertEqual(r.status, 200, r)
        methods = {m.strip() for m in r.header("Access-Control-Allow-Methods").split(",")}
        self.assertEqual(methods, {"HEAD", "GET", "PUT", "PATCH", "DELETE", "OPTIONS"})

    async def test_preflight_batch_and_hello(self):
        r = await self.preflight("/v1/batch", "POST", headers="Content-Type")
        self.assertEqual(r.status, 200, r)
        self.assertIn("POST", r.header("Access-Control-Allow-Methods"))
        r = await self.preflight("/v1/", "GET")
        self.assertEqual(r.status, 200, r)

    async def test_preflight_max_age_setting(self):
        await self.make({"cors_max_age_seconds": "42"})
        r = await self.preflight(RECS)
        self.assertEqual(r.header("Access-Control-Max-Age"), "42")

    async def test_expose_headers(self):
        await self.tree()
        origin = {"Origin": "http://app.example"}

        def exposed(r):
            return {h.strip().lower() for h in (r.header("Access-Control-Expose-Headers") or "").split(",")}

        base = {"backoff", "retry-after", "alert", "content-length", "content-type"}
        read = {"next-page", "last-modified", "etag", "cache-control", "expires", "pragma"}
        r = await self.alice.get(RECS, headers=origin)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")
        self.assertTrue(base | read <= exposed(r), exposed(r))
        r = await self.alice.head(RECS, headers=origin)
        self.assertTrue(base | read | {"total-objects", "total-records"} <= exposed(r), exposed(r))
        r = await self.alice.get(R, headers=origin)
        self.assertTrue(base | {"last-modified", "etag"} <= exposed(r), exposed(r))
        r = await self.alice.patch(R, {"data": {}}, headers=origin)
        self.assertTrue(base <= exposed(r), exposed(r))
        # error responses generated outside a service
        r = await self.alice.get("/v1/nothing", headers=origin)
        self.assertEqual(r.status, 404)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")
        self.assertTrue(base <= exposed(r), exposed(r))
        r = await self.alice.get(R + "/", headers=origin)
        self.assertEqual(r.status, 307)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")

    async def test_specific_origins(self):
        await self.make({"cors_origins": "http://good.example https://*.trusted.example"})
        await self.tree()
        r = await self.alice.get(RECS, headers={"Origin": "http://good.example"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "http://good.example")
        r = await self.alice.get(RECS, headers={"Origin": "https://app.trusted.example"})
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.trusted.example")

    async def test_disallowed_origin(self):
        # Kinto answers 400 to any request with a disallowed Origin (quirk 14).
        # jsonsync serves it without CORS headers (the browser blocks the page
        # from reading it) and refuses only the CORS preflight.
        await self.make({"cors_origins": "http://good.example"})
        await self.tree()
        headers = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
        r = await self.alice.request("GET", RECS, headers=headers)
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"), r)
        r = await self.alice.request("OPTIONS", RECS, headers=headers)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"), r)
        self.assertInvalid(r, "header", "Origin")

    async def test_no_origin_no_cors_headers(self):
        await self.tree()
        r = await self.alice.get(RECS)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))


class OperatorSettingsTests(_Base):
    async def test_backoff(self):
        await self.make({"backoff": "10"})
        await self.tree()
        for r in (await self.alice.get(RECS), await self.anon.get("/v1/"), await self.alice.get("/v1/nothing"),
                  await self.anon.get(R)):
            self.assertEqual(r.header("Backoff"), "10", r)

    async def test_no_backoff_by_default(self):
        r = await self.anon.get("/v1/")
        self.assertIsNone(r.header("Backoff"))

    async def test_backoff_percentage_zero(self):
        await self.make({"backoff": "10", "backoff_percentage": "0"})
        for _ in range(5):
            r = await self.anon.get("/v1/")
            self.assertIsNone(r.header("Backoff"))

    async def test_readonly(self):
        await self.tree()  # in a writable server first
        await self.make({"readonly": "true"})
        r = await self.anon.get("/v1/")
        self.assertIs(r.json["settings"]["readonly"], True)
        self.assertIn("max-age", r.header("Cache-Control") or "")
        for method, path in (("PUT", B), ("POST", "/v1/buckets"), ("PATCH", B), ("DELETE", B),
                             ("DELETE", "/v1/buckets")):
            r = await self.alice.request(method, path, raw=b'{"data": {}}', headers={"Content-Type": "application/json"})
            body = self.assertJsonError(r, 405, 115)
            self.assertIn("Method not allowed", body["message"])
        r = await self.alice.get("/v1/buckets")
        self.assertEqual(r.status, 200, r)

    async def test_request_body_too_large(self):
        await self.make({"max_request_body_bytes": "1000"})
        await self.tree()
        big = {"data": {"blob": "x" * 2000}}
        r = await self.alice.put(R, big)
        self.assertJsonError(r, 413, 113)
        r = await self.alice.post("/v1/batch", {"requests": [{"method": "PUT", "path": "/buckets/b2", "body": big}]})
        self.assertJsonError(r, 413, 113)
        r = await self.alice.put(R, {"data": {"blob": "x" * 100}})
        self.assertEqual(r.status, 200, r)
        r = await self.alice.get(R)
        self.assertEqual(r.data["blob"], "x" * 100)

    async def test_request_body_limit_default_is_generous(self):
        await self.tree()
        r = await self.alice.put(R, {"data": {"blob": "x" * 200_000}})
        self.assertEqual(r.status, 200, r)

    async def test_json_nesting_limit(self):
        await self.make({"json_max_depth": "10"})
        await self.tree()
        deep = "x"
        for _ in range(20):
            deep = {"n": deep}
        r = await self.alice.put(R, {"data": deep})
        self.assertInvalid(r, "body")
        raw = b'{"data": ' + b'[' * 50 + b']' * 50 + b'}'
        r = await self.alice.request("PUT", R, raw=raw, headers={"Content-Type": "application/json"})
        self.assertInvalid(r, "body")
        r = await self.alice.post("/v1/batch", {"requests": [{"method": "PUT", "path": "/buckets/b", "body": {"data": deep}}]})
        self.assertEqual(r.status, 400, r)
        shallow = {"a": {"b": {"c": 1}}}
        r = await self.alice.put(R, {"data": shallow})
        self.assertEqual(r.status, 200, r)

    async def test_default_nesting_limit_no_crash(self):
        await self.tree()
        raw = b'{"data": {"a": ' + b'[' * 100_000 + b']' * 100_000 + b'}}'
        r = await self.alice.request("PUT", R, raw=raw, headers={"Content-Type": "application/json"})
        self.assertInvalid(r, "body")

    async def test_eos_soft(self):
        future = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
        await self.make({"eos": future, "eos_message": "bye", "eos_url": "http://x"})
        r = await self.anon.get("/v1/")
        self.assertEqual(r.status, 200)
        alert = json.loads(r.header("Alert"))
        self.assertEqual(alert["code"], "soft-eol")
        self.assertEqual(alert["message"], "bye")

    async def test_eos_hard(self):
        past = (datetime.date.today() - datetime.timedelta(days=1)).isoformat()
        await self.make({"eos": past})
        for path in ("/v1/", "/v1/buckets"):
            r = await self.alice.get(path)
            self.assertJsonError(r, 410, 202)
            self.assertEqual(json.loads(r.header("Alert"))["code"], "hard-eol")


class NeverCrashTests(_Base):
    """Odd requests get a JSON answer below 500, never an HTML page."""

    async def check(self, method, path, raw=None, headers=None):
        r = await self.alice.request(method, path, raw=raw, headers=headers)
        self.assertLess(r.status, 500, (method, path, r))
        if r.status not in (204, 304) and method != "HEAD" and r.raw:
            self.assertEqual(r.header("Content-Type"), "application/json", (method, path, r))
            self.assertNotIn(b"<html", r.raw.lower())
            json.loads(r.raw)
        return r

    async def test_odd_requests(self):
        await self.tree()
        ct = {"Content-Type": "application/json"}
        cases = [
            ("GET", "/v1/buckets/%00"),
            ("GET", "/v1/buckets/" + "a" * 5000),
            ("GET", RECS + "?_sort=%00,-,,+"),
            ("GET", RECS + "?_fields=,,,"),
            ("GET", RECS + "?_limit=99999999999999999999999"),
            ("GET", RECS + "?in_v=&exclude_v="),
            ("GET", RECS + "?like_v=%25%25%25"),
            ("GET", RECS + "?has_v=maybe"),
            ("GET", RECS + "?gt_v={\"a\":1}&lt_v=[1,2]"),
            ("GET", RECS + "?_token=" + "A" * 100),
            ("GET", RECS + "?_since=%22123%22"),
            ("GET", RECS + "?_since=null"),
            ("GET", RECS + "?a.b.c.d.e=1&_sort=a.b.c"),
            ("GET", "/v1/buckets?_limit=0"),
            ("PROPFIND", RECS),
            ("TRACE", R),
            ("PUT", R, b'{"data": {"n": 1e400}}', ct),
            ("PUT", R, b'{"data": {"n": NaN}}', ct),
            ("PUT", R, b'{"data": {"n": 123456789012345678901234567890}}', ct),
            ("PUT", R, b'{"data": {"a": 1, "a": 2}}', ct),
            ("PUT", R, b'\xef\xbb\xbf{"data": {}}', ct),
            ("PUT", R, b"", ct),
            ("PUT", R, b"   ", ct),
            ("POST", RECS, b'{"data": {"id": null}}', ct),
            ("POST", RECS, b'{"data": {"last_modified": "yesterday"}}', ct),
            ("PATCH", R, b'{"data": null}', ct),
            ("PATCH", R, b'{"permissions": null}', ct),
            ("PATCH", R, b'[{"op": "add", "path": "/data/x"}]', {"Content-Type": "application/json-patch+json"}),
            ("PATCH", R, b'[{"op": "move", "from": "/data", "path": "/data/x"}]',
             {"Content-Type": "application/json-patch+json"}),
            ("PATCH", R, b'[{"op": "remove", "path": "/permissions"}]',
             {"Content-Type": "application/json-patch+json"}),
            ("PATCH", R, b'[{"op": "replace", "path": "/data", "value": 3}]',
             {"Content-Type": "application/json-patch+json"}),
            ("PATCH", R, b'{"data": 3}', {"Content-Type": "application/merge-patch+json"}),
            ("DELETE", R + "?last_modified=abc"),
            ("DELETE", RECS + "?_token=%7B%7D"),
            ("PUT", C, b'{"data": {"schema": "nope"}}', ct),
            ("PUT", B, b'{"data": {"record:schema": {"type": 12}}}', ct),
            ("GET", R, None, {"If-Match": "*"}),
            ("GET", R, None, {"If-None-Match": '"1", "2"'}),
            ("POST", "/v1/batch", b'{"requests": [{"path": "/buckets/%zz"}]}', ct),
            ("POST", "/v1/batch", b'{"requests": [{"path": "/v1/buckets?_limit=-3"}]}', ct),
            ("POST", "/v1/batch", b'{"requests": [{"path": "/"}], "defaults": null}', ct),
            ("GET", "/v1/__version__"),
        ]
        for case in cases:
            method, path = case[0], case[1]
            raw = case[2] if len(case) > 2 else None
            headers = case[3] if len(case) > 3 else None
            await self.check(method, path, raw, headers)
        self.flushLoggedErrors()

    async def test_version_json_missing_is_404(self):
        await self.make({"version_json_path": "/nonexistent/version.json"})
        r = await self.anon.get("/v1/__version__")
        self.assertJsonError(r, 404)


from jsonsync.testclient import with_postgresql_variants  # noqa: E402

with_postgresql_variants(globals())
