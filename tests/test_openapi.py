"""
C{GET /v1/__api__} describes the server as it is, checked over a real
socket: a well-formed OpenAPI 3.0 document whose schemas are JSON Schemas,
listing every route (plugins' included) with the methods that answer and
no other, with the id patterns the server enforces and the bodies it
takes. The full fuzzing of the document is C{scripts/check_api.py}
(schemathesis, not a test dependency); the bugs it found are pinned here.
"""

from __future__ import annotations

import json
import re

import jsonschema
import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from jsonsync import jsonutil
from jsonsync.resources.model import MAX_ID_LENGTH
from jsonsync.service import make_site
from jsonsync.testclient import basic, basicauth_id, build_app, with_postgresql_variants

SETTINGS = {
    "includes": "accounts default_bucket history",
    "multiauth.policies": "account basicauth",
    "account_create_principals": "system.Everyone",
    "account_write_principals": basicauth_id("alice"),
    "account_bcrypt_rounds": "4",
    "experimental_permissions_endpoint": "true",
    "user-data_delete_principals": basicauth_id("alice"),
}
METHODS = ("get", "head", "post", "put", "patch", "delete")
# Values for path parameters, all of them existing objects of alice's.
VALUES = {"bucket_id": "b", "collection_id": "c", "target": "c@0", "principal": "account:victim"}
IDS = {"bucket": "b", "collection": "c", "group": "g", "record": "r", "account": "victim"}


class _Served(TestCase):
    settings = SETTINGS

    async def setUp(self):
        version = self.mktemp()
        with open(version, "w") as f:
            json.dump({"name": "jsonsync", "version": "0", "source": "here", "commit": "none"}, f)
        self.app = await build_app(dict(self.settings, version_json_path=version))
        self.addCleanup(lambda: self.app.registry.close())
        self.port = reactor.listenTCP(0, make_site(self.app, self.app.settings), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    async def call(self, method, path, body=None, user="alice", content_type="application/json", raw=None,
                   headers=None):
        headers = dict(headers or {})
        if user:
            headers["Authorization"] = basic(user)
        kwargs = {"headers": headers, "pool": self.pool}
        if body is not None or raw is not None:
            kwargs["data"] = raw if raw is not None else jsonutil.dumps(body)
            headers["Content-Type"] = content_type
        response = await treq.request(method, self.base + path, **kwargs)
        content = await response.content()
        if method != "HEAD":
            self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["application/json"], content[:300])
        return response.code, (json.loads(content) if content else None)

    async def seed(self):
        for path, body in (
            ("/v1/buckets/b", None),
            ("/v1/buckets/b/collections/c", None),
            ("/v1/buckets/b/groups/g", {"data": {"members": []}}),
            ("/v1/buckets/b/collections/c/records/r", {"data": {"n": 1}}),
            ("/v1/accounts/victim", {"data": {"password": "pw"}}),
            ("/v1/buckets/default/collections/c/records/r", {"data": {"n": 1}}),
            ("/v1/buckets/default/groups/g", {"data": {"members": []}}),
        ):
            status, answer = await self.call("PUT", path, body)
            self.assertIn(status, (200, 201), (path, answer))

    async def document(self):
        status, doc = await self.call("GET", "/v1/__api__", user=None)
        self.assertEqual(status, 200, doc)
        return doc


def deref(doc, ref: str):
    node = doc
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def inline(doc, node):
    """
    C{node} as a plain JSON Schema: its C{$ref}s replaced by what they name
    (the document has no cycles), C{nullable} made a null type.
    """
    if isinstance(node, dict):
        if "$ref" in node:
            return inline(doc, deref(doc, node["$ref"]))
        node = {k: inline(doc, v) for k, v in node.items()}
        if node.pop("nullable", False):  # OpenAPI 3.0's word for JSON Schema's null type
            node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [inline(doc, v) for v in node]
    return node


def refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def schemas_of(node):
    """Every schema object in an operation (parameters, bodies, responses)."""
    for param in node.get("parameters", []):
        yield param["schema"]
    for media in node.get("requestBody", {}).get("content", {}).values():
        yield media["schema"]
    for response in node.get("responses", {}).values():
        for media in response.get("content", {}).values():
            yield media["schema"]


class DocumentTests(_Served):
    memory_only = True  # the document does not depend on the backend
    async def test_well_formed(self):
        doc = await self.document()
        self.assertEqual(doc["openapi"], "3.0.3")
        self.assertEqual(doc["servers"], [{"url": self.base + "/v1"}])
        self.assertEqual(doc["components"]["securitySchemes"]["basicAuth"], {"type": "http", "scheme": "basic"})
        for ref in set(refs(doc)):
            self.assertTrue(ref.startswith("#/components/schemas/"), ref)
            deref(doc, ref)  # resolves
        operation_ids = []
        for path, ops in doc["paths"].items():
            self.assertTrue(path.startswith("/"), path)
            declared = set(re.findall(r"{([^}]+)}", path))
            for method, op in ops.items():
                self.assertIn(method, METHODS, path)
                operation_ids.append(op["operationId"])
                self.assertTrue(op["responses"], (method, path))
                in_path = {p["name"] for p in op["parameters"] if p["in"] == "path"}
                self.assertEqual(in_path, declared, (method, path))
                for schema in schemas_of(op):
                    # OpenAPI 3.0 schema objects are JSON Schemas (draft 4
                    # family) with a few extra keywords such as nullable.
                    jsonschema.Draft4Validator.check_schema(schema)
        for schema in doc["components"]["schemas"].values():
            jsonschema.Draft4Validator.check_schema(schema)
        self.assertEqual(len(operation_ids), len(set(operation_ids)))

    async def test_every_route_is_listed(self):
        doc = await self.document()
        listed = {(path, method) for path, ops in doc["paths"].items() for method in ops}
        for route in self.app.registry.routes:
            if route.name.startswith("default-bucket"):
                continue  # listed as the routes it stands for, below
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", route.rule) or "/"
            for method in route.methods:
                self.assertIn((path, method.lower()), listed)
        for path in ("/buckets/default", "/buckets/default/collections", "/buckets/default/groups/{id}",
                     "/buckets/default/collections/{collection_id}/records/{id}", "/buckets/default/history"):
            self.assertIn(path, doc["paths"])
        # The alias answers what a bucket answers: no POST (it used to be listed).
        self.assertEqual(sorted(doc["paths"]["/buckets/default"]), ["delete", "get", "head", "patch", "put"])

    async def test_id_patterns(self):
        doc = await self.document()
        types = self.app.registry.resource_types
        op = doc["paths"]["/buckets/{bucket_id}/collections/{collection_id}/records/{id}"]["get"]
        params = {p["name"]: p["schema"] for p in op["parameters"]}
        for name, rt in (("bucket_id", "bucket"), ("collection_id", "collection"), ("id", "record")):
            self.assertEqual(params[name]["pattern"], types[rt].id_pattern.pattern)
            self.assertEqual(params[name]["maxLength"], MAX_ID_LENGTH)
        op = doc["paths"]["/accounts/{id}"]["put"]
        self.assertEqual(op["parameters"][0]["schema"]["pattern"], types["account"].id_pattern.pattern)
        lists = doc["paths"]["/buckets/{bucket_id}/collections/{collection_id}/records"]["get"]
        names = {p["name"] for p in lists["parameters"] if p["in"] == "query"}
        self.assertEqual(names, {"_limit", "_sort", "_since", "_before", "_token", "_fields"})
        patch = doc["paths"]["/buckets/{id}"]["patch"]["requestBody"]["content"]
        self.assertEqual(
            sorted(patch), ["application/json", "application/json-patch+json", "application/merge-patch+json"]
        )

    async def test_listed_methods_answer_and_others_are_refused(self):
        """Every listed operation reaches its view; an unlisted method gets 405."""
        await self.seed()
        doc = await self.document()
        for path, ops in doc["paths"].items():
            route_id = None
            if path.endswith("/{id}"):
                op = next(iter(ops.values()))
                tag = op["tags"][0]
                route_id = IDS[tag]
            url = "/v1" + re.sub(r"{([^}]+)}", lambda m, rid=route_id: rid if m.group(1) == "id" else VALUES[m.group(1)], path)
            for method in METHODS:
                if method in ops:
                    # Reads, and writes that cannot change anything (an
                    # invalid body, a failed precondition): the view
                    # answers, not the router.
                    body = None if method in ("get", "head", "delete") else b"[1"
                    status, answer = await self.call(method.upper(), url, raw=body, headers={"If-Match": '"1"'})
                    self.assertNotIn(status, (404, 405), (method, url, answer))
                    self.assertLess(status, 500, (method, url, answer))
                    if method == "get" and status == 200:
                        self.check_response(doc, ops[method], answer, (method, url))
                else:
                    status, answer = await self.call(method.upper(), url)
                    self.assertEqual(status, 405, (method, url, answer))

    def check_response(self, doc, op, body, where):
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        validator = jsonschema.Draft4Validator(inline(doc, schema))
        errors = [e.message for e in validator.iter_errors(body)]
        self.assertEqual(errors, [], where)


class FoundByFuzzingTests(_Served):
    """5xx that schemathesis found once it could reach the views."""

    async def setUp(self):
        await super().setUp()
        await self.seed()

    async def test_batch_subrequest_with_null_path(self):
        body = {"defaults": {"path": "/"}, "requests": [{"method": "GET", "path": None}]}
        status, answer = await self.call("POST", "/v1/batch", body)
        self.assertEqual(status, 400, answer)
        self.assertEqual(answer["details"][0]["name"], "requests.0.path")

    async def test_json_patch_replacing_the_whole_document(self):
        ops = [{"op": "add", "path": "", "value": None}]
        status, answer = await self.call(
            "PATCH", "/v1/buckets/b", ops, content_type="application/json-patch+json"
        )
        self.assertEqual(status, 400, answer)
        status, answer = await self.call("GET", "/v1/buckets/b")
        self.assertEqual(status, 200, answer)

    async def test_timestamps_past_year_9999(self):
        far = 430410271827565568  # ms, in the year 13 million
        status, answer = await self.call("PUT", "/v1/buckets/b/collections/c/records/far",
                                         {"data": {"last_modified": far}})
        self.assertEqual(status, 201, answer)
        self.assertEqual(answer["data"]["last_modified"], far)
        status, answer = await self.call("DELETE", f"/v1/buckets/b/collections/c/records/r?last_modified={far + 1}")
        self.assertEqual(status, 200, answer)


with_postgresql_variants(globals())
