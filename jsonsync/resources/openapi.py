"""
The OpenAPI document served at C{GET /v1/__api__}, built from what the
server really has: the registered routes (plugins' included), the methods
each answers, the resource types' id patterns and permission names.

It is OpenAPI 3.0 rather than Kinto's Swagger 2.0: a Swagger 2.0 body
parameter has one schema whatever the content type, and a C{PATCH} takes
either an envelope (JSON, merge-patch) or an array of operations
(JSON-Patch); nor can Swagger 2.0 say "nullable" or "not this value".
Kinto clients do not read this document, so its version is free.
"""

from __future__ import annotations

import re
from typing import Any

from jsonsync.auth import challenges
from jsonsync.http import JSON, JSON_PATCH, MERGE_PATCH
from jsonsync.registry import Registry, Route
from jsonsync.resources.model import MAX_ID_LENGTH, MAX_PRINCIPAL_LENGTH

_RULE_PARAM = re.compile(r"<(?:([^:>]+):)?([^>]+)>")
_ERROR_STATUSES = {
    "400": "Invalid parameters (errno 107)",
    "401": "Authentication required (errno 104)",
    "403": "Not allowed (errno 121)",
    "404": "Not found (errno 110, 111)",
    "405": "Method disabled by configuration (errno 115)",
    "406": "Not acceptable (errno 107)",
    "409": "Conflict (errno 122)",
    "412": "Precondition failed (errno 114)",
    "413": "Request too large (errno 113)",
    "415": "Unsupported media type (errno 107)",
    "503": "Backend unavailable (errno 201)",
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error_responses(*codes: str) -> dict:
    return {code: {"description": _ERROR_STATUSES[code], "content": _json(_ref("Error"))} for code in codes}


def _id_schema(rt) -> dict:
    pattern = rt.id_pattern
    return {"type": "string", "pattern": pattern.pattern, "minLength": 1,
            "maxLength": getattr(pattern, "max_length", MAX_ID_LENGTH)}


def _principals(nullable=True) -> dict:
    schema: dict[str, Any] = {"type": "array", "items": {"type": "string", "maxLength": MAX_PRINCIPAL_LENGTH}}
    if nullable:
        schema["nullable"] = True
    return schema


class _Builder:
    def __init__(self, registry: Registry, permission_fields):
        self.registry = registry
        self.permission_fields = permission_fields
        self.settings = registry.settings
        self.types = registry.resource_types
        self.schemas: dict[str, Any] = {}
        self.paths: dict[str, dict] = {}
        # One HTTP security scheme per scheme the active policies challenge
        # with (Basic for basicauth and account, Bearer for tokens, ...).
        schemes = [c.split()[0].lower() for c in challenges(registry) if c.strip()]
        self.schemes = list(dict.fromkeys(schemes))

    # -- schemas -------------------------------------------------------------------
    def common_schemas(self):
        self.schemas["Error"] = {
            "type": "object",
            "required": ["code", "errno", "error"],
            "properties": {
                "code": {"type": "integer"},
                "errno": {"type": "integer"},
                "error": {"type": "string"},
                "message": {"type": "string"},
                "info": {"type": "string"},
                "details": {},
            },
        }
        self.schemas["Object"] = {
            "type": "object",
            "required": ["id", "last_modified"],
            "properties": {"id": {"type": "string"}, "last_modified": {"type": "integer"}},
        }
        self.schemas["ObjectList"] = {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "array", "items": _ref("Object")}},
        }
        self.schemas["Permissions"] = {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        }
        self.schemas["ObjectResponse"] = {
            "type": "object",
            "required": ["data"],
            "properties": {"data": _ref("Object"), "permissions": _ref("Permissions")},
        }
        self.schemas["BatchRequest"] = {
            "type": "object",
            "required": ["requests"],
            "additionalProperties": False,
            # Every sub-request has a path, its own or the defaults' one.
            "anyOf": [
                {"required": ["defaults"],
                 "properties": {"defaults": {"required": ["path"], "properties": {"path": {"type": "string"}}}}},
                {"properties": {"requests": {"items": {"required": ["path"]}}}},
            ],
            "properties": {
                "defaults": {"allOf": [_ref("BatchDefaults")], "nullable": True},
                "requests": {
                    "type": "array",
                    "maxItems": self.settings["batch_max_requests"],
                    "items": _ref("BatchSubRequest"),
                },
            },
        }
        sub: dict[str, Any] = {
            "method": {"type": "string", "enum": ["GET", "HEAD", "DELETE", "TRACE", "POST", "PUT", "PATCH"]},
            "path": {"type": "string", "pattern": "^/"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"anyOf": [{"type": "object"}, {"type": "array"}], "nullable": True},
        }
        self.schemas["BatchSubRequest"] = {"type": "object", "additionalProperties": False, "properties": sub}
        defaults = dict(sub, path=dict(sub["path"], nullable=True))
        self.schemas["BatchDefaults"] = {"type": "object", "additionalProperties": False, "properties": defaults}
        self.schemas["BatchResponse"] = {
            "type": "object",
            "required": ["responses"],
            "properties": {
                "responses": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["status", "path", "headers", "body"],
                        "properties": {
                            "status": {"type": "integer"},
                            "path": {"type": "string"},
                            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                            "body": {},
                        },
                    },
                },
            },
        }

    def json_patch(self, rt) -> dict:
        # Operations on a member of data or on one principal of an ACE.
        # Whether remove, replace, move, copy or test apply depends on the
        # object (an absent member is refused with 400): no schema says it.

        perms = "|".join(rt.permissions)
        # The id is the URL's: a patch may not change it.
        pointer = rf"^/(data/(?!id$)|permissions/({perms})/)([^/~]|~[01]){{1,{MAX_PRINCIPAL_LENGTH}}}$"
        operation = {
            "oneOf": [
                {"type": "object", "required": ["op", "path", "value"], "additionalProperties": False,
                 "properties": {"op": {"type": "string", "enum": ["add", "replace", "test"]},
                                "path": {"type": "string", "pattern": pointer}, "value": {}}},
                {"type": "object", "required": ["op", "path"], "additionalProperties": False,
                 "properties": {"op": {"type": "string", "enum": ["remove"]},
                                "path": {"type": "string", "pattern": pointer}}},
                {"type": "object", "required": ["op", "from", "path"], "additionalProperties": False,
                 "properties": {"op": {"type": "string", "enum": ["move", "copy"]},
                                "from": {"type": "string"},
                                "path": {"type": "string", "pattern": pointer}}},
            ],
        }
        return {"type": "array", "items": operation}

    def type_schemas(self, rt) -> dict[str, str]:
        """Request body schemas of a resource type; their names by use."""
        name = rt.name.replace(":", "_").capitalize()
        perms: dict[str, Any] = {
            "type": "object",
            "nullable": True,
            "additionalProperties": False,
            "properties": {p: _principals() for p in rt.permissions},
        }
        data: dict[str, Any] = {
            "type": "object", "properties": self.data_properties(rt), "additionalProperties": True
        }
        # In PUT and PATCH the id is the URL's: a different one in the body is refused.
        put_data = dict(data, nullable=True, properties={k: v for k, v in data["properties"].items() if k != "id"})
        put_data["not"] = {"required": ["id"]}
        if rt.required_fields:
            put_data["required"] = list(rt.required_fields)
            put_data["nullable"] = False
        patch_data = {k: v for k, v in put_data.items() if k not in ("required", "nullable")}
        # "Provide at least one of data or permissions": in a PATCH neither is null.
        patch_perms = {k: v for k, v in perms.items() if k != "nullable"}
        post_data = dict(data, nullable=True, properties=dict(data["properties"], id=_id_schema(rt)))
        if rt.required_fields:
            post_data["required"] = ["id", *rt.required_fields]
            post_data["nullable"] = False
        self.schemas[f"{name}Permissions"] = perms
        self.schemas[f"{name}PatchPermissions"] = patch_perms
        for use, schema in (("Put", put_data), ("Post", post_data), ("Patch", patch_data)):
            self.schemas[f"{name}{use}Data"] = schema
            body: dict[str, Any] = {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "data": _ref(f"{name}{use}Data"),
                    "permissions": _ref(f"{name}PatchPermissions" if use == "Patch" else f"{name}Permissions"),
                },
            }
            if use == "Patch":
                body["minProperties"] = 1
            elif rt.required_fields:
                body["required"] = ["data"]
            else:
                body["nullable"] = True  # a JSON null body is an empty one
            self.schemas[f"{name}{use}"] = body
        self.schemas[f"{name}JsonPatch"] = self.json_patch(rt)
        return {"put": f"{name}Put", "post": f"{name}Post", "patch": f"{name}Patch", "json-patch": f"{name}JsonPatch"}

    @staticmethod
    def data_properties(rt) -> dict:
        # (last_modified is the server's: an integer one is kept, any other
        # value ignored, so it is left out like any free field.)
        return dict(rt.data_schema)

    # -- parameters ----------------------------------------------------------------
    def path_parameter(self, route_rt, name: str, converter: str | None) -> dict:
        if name == "id" and route_rt is not None:
            schema = _id_schema(route_rt)
        elif name.endswith("_id") and name[:-3] in self.types:
            schema = _id_schema(self.types[name[:-3]])
        elif name == "target":
            schema = {"type": "string", "pattern": r"^[a-zA-Z0-9][a-zA-Z0-9_-]*@[0-9]+$"}
        else:
            schema = {"type": "string", "minLength": 1}
        return {"name": name, "in": "path", "required": True, "schema": schema}

    def list_parameters(self, strict=None, hidden=()) -> list[dict]:
        """
        The query parameters of a list. C{strict}: the only fields it may
        sort and project on; C{hidden}: fields it may not sort on.
        """
        # Values more than a day ahead of the server's clock are refused: a
        # bound that moves with the clock, said in words, not as a maximum.
        # Kinto clients send them bare or quoted; _since=null is no filter.
        timestamp: dict[str, Any] = {"type": "string", "pattern": r'^"?[0-9]+"?$'}
        since = {"type": "string", "pattern": r'^("?[0-9]+"?|null)?$'}
        if strict is not None:
            names = "|".join(sorted(strict))
            # Parts that are no sort field at all (empty, or with a character
            # outside letters, digits, _ and .) are ignored.
            # (ASCII classes: the server's \w takes any letter, a client's regex may not)
            ignored = (r"[^,]*[!-*/:-@\[-^`{-~][^,]*|[ \t]*[-+]?[A-Za-z0-9_.]*[-+][^,]*"
                       r"|[^,]*[^\s,][ \t]+[^\s,][^,]*|[ \t]*")
            part = rf"(\s*[-+]?({names})(\.[\w.]*)?\s*|{ignored})"
            sort = {"type": "string", "pattern": rf"^{part}(,{part})*$"}
            field = rf"({names})(\.[^,\x00]*)?"
            fields = {"type": "string", "pattern": rf"^({field})?(,{field})*$"}
        else:
            sort = {"type": "string", "pattern": r"^[^\x00]*$"}
            fields = {"type": "string", "pattern": r"^[^\x00]*$"}
            if hidden:
                names = "|".join(sorted(hidden))
                sort["pattern"] = rf"^(?!(.*,)?\s*[-+]?({names})(\.|\s*,|\s*$))[^\x00]*$"
        return [
            {"name": "_limit", "in": "query", "schema": {"type": "integer", "minimum": 0},
             "description": "Page size (capped by the server's paginate_by)"},
            {"name": "_sort", "in": "query", "schema": sort,
             "description": "Comma-separated fields, - for descending"},
            {"name": "_since", "in": "query", "schema": since,
             "description": "Changes after this timestamp in ms (tombstones included; at most a day ahead)"},
            {"name": "_before", "in": "query", "schema": timestamp,
             "description": "Changes before this timestamp in ms (at most a day ahead)"},
            {"name": "_token", "in": "query", "schema": {"type": "string"},
             "description": "Opaque pagination token from a Next-Page header"},
            {"name": "_fields", "in": "query", "schema": fields,
             "description": "Comma-separated fields to return"},
        ]

    # -- operations ----------------------------------------------------------------
    def enabled(self, rt, kind: str, method: str) -> bool:
        verb = "get" if method == "HEAD" else method.lower()
        return bool(self.settings.get(f"{kind}_{rt.name}_{verb}_enabled", True))

    def operation(self, route: Route, path: str, method: str, params: list[dict]) -> dict:
        op: dict[str, Any] = {
            "summary": route.summary or route.name,
            "operationId": f"{method.lower()}_{route.name}{_suffix(path)}",
            "tags": [route.resource.name if route.resource is not None else "utilities"],
            "parameters": list(params),
        }
        if self.schemes and route.authenticate:
            op["security"] = [*({f"{scheme}Auth": []} for scheme in self.schemes), {}]
        return op

    def add(self, path: str, method: str, op: dict):
        self.paths.setdefault(path, {})[method.lower()] = op

    def resource_route(self, route: Route, path: str, params: list[dict]):
        rt = route.resource
        plural = route.name.endswith("-plural")
        kind = "plural" if plural else "object"
        bodies = self.type_schemas(rt)
        methods = [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE") if m in route.methods or
                   (m == "HEAD" and "GET" in route.methods)]
        for method in methods:
            if route.generic and not self.enabled(rt, kind, method):
                continue
            op = self.operation(route, path, method, params)
            ok = _ref("ObjectList") if plural and method != "POST" else _ref("ObjectResponse")
            errors = ["400", "401", "403", "404", "406", "412", "503"]
            if method == "HEAD":
                op["responses"] = {"200": {"description": "Headers only"}, "304": {"description": "Not modified"}}
            elif method == "GET":
                op["responses"] = {"200": {"description": "OK", "content": _json(ok)},
                                   "304": {"description": "Not modified"}}
            else:
                op["responses"] = {"200": {"description": "OK", "content": _json(ok)}}
            if plural and method in ("GET", "HEAD", "DELETE"):
                hidden = rt.hidden_fields
                op["parameters"] += self.list_parameters(rt.strict_fields, hidden)
            if method == "DELETE" and not plural:
                op["parameters"].append({"name": "last_modified", "in": "query", "schema": {"type": "integer"},
                                         "description": "The tombstone's timestamp"})
            if method in ("POST", "PUT"):
                op["requestBody"] = {
                    "required": bool(rt.required_fields),
                    "content": _json(_ref(bodies["post" if method == "POST" else "put"])),
                }
                op["responses"]["201"] = {"description": "Created", "content": _json(_ref("ObjectResponse"))}
                errors += ["409", "413", "415"]
            if method == "PATCH":
                envelope = {"schema": _ref(bodies["patch"])}
                op["requestBody"] = {
                    "required": True,
                    "content": {JSON: envelope, MERGE_PATCH: envelope, JSON_PATCH: {"schema": _ref(bodies["json-patch"])}},
                }
                errors += ["409", "413", "415"]
            op["responses"].update(_error_responses(*errors))
            self.add(path, method, op)

    def service_route(self, route: Route, path: str, params: list[dict]):
        methods = set(route.methods)
        if "GET" in methods:
            methods.add("HEAD")
        for method in sorted(methods):
            op = self.operation(route, path, method, params)
            body: dict[str, Any] = {"type": "object"}
            if route.name == "batch":
                op["requestBody"] = {"required": True, "content": _json(_ref("BatchRequest"))}
                body = _ref("BatchResponse")
            elif route.name in ("history-snapshot", "permissions"):
                body = _ref("ObjectList") if route.name == "history-snapshot" else {
                    "type": "object", "required": ["data"],
                    "properties": {"data": {"type": "array", "items": {"type": "object"}}},
                }
                if route.name == "permissions" and method in ("GET", "HEAD"):
                    op["parameters"] += [p for p in self.list_parameters(self.permission_fields)
                                         if p["name"] not in ("_since", "_before")]
            elif route.name == "heartbeat":
                body = {"type": "object", "additionalProperties": {"type": "boolean", "nullable": True}}
            ok: dict[str, Any] = {"description": "OK"}
            if method != "HEAD":
                ok["content"] = _json(body)
            op["responses"] = {"200": ok}
            if route.name == "heartbeat":
                op["responses"]["503"] = {"description": "A backend is down", "content": _json(body)}
            else:
                op["responses"].update(_error_responses("400", "401", "403", "404", "406", "503"))
            if route.name == "batch":
                op["responses"].update(_error_responses("413", "415"))
            self.add(path, method, op)

    def route(self, route: Route, alias: tuple[str, str] | None = None):
        """Describe C{route}; C{alias} C{(prefix, stand_in)}: under C{stand_in} instead of its rule's C{prefix}."""
        rule = route.rule
        if alias is not None:
            prefix, stand_in = alias
            rule = stand_in + rule[len(prefix):]
        path = _RULE_PARAM.sub(lambda m: "{" + m.group(2) + "}", rule) or "/"
        params = [
            self.path_parameter(route.resource, m.group(2), m.group(1)) for m in _RULE_PARAM.finditer(rule)
        ]
        if route.kind == "resource" and route.resource is not None and route.name.endswith(("-plural", "-object")):
            self.resource_route(route, path, params)
        else:
            self.service_route(route, path, params)

    def build(self) -> dict:
        self.common_schemas()
        routes = list(self.registry.routes)
        for route in routes:
            if route.name == "default-bucket":
                # The default bucket stands for the user's bucket: it answers
                # what the bucket's own route answers, and the routes below
                # C{/buckets/<bucket_id>} through its sub-path.
                for target in routes:
                    if target.name == "bucket-object":
                        self.route(target, ("/buckets/<id>", "/buckets/default"))
            elif route.name == "default-bucket-sub":
                for target in routes:
                    if target.rule.startswith("/buckets/<bucket_id>/"):
                        self.route(target, ("/buckets/<bucket_id>", "/buckets/default"))
            else:
                self.route(route)
        doc: dict[str, Any] = {
            "openapi": "3.0.3",
            "info": {"title": self.settings["project_name"], "version": self.settings["http_api_version"]},
            "paths": self.paths,
            "components": {"schemas": self.schemas},
        }
        if self.schemes:
            doc["components"]["securitySchemes"] = {
                f"{scheme}Auth": {"type": "http", "scheme": scheme} for scheme in self.schemes
            }
        return doc


def _suffix(path: str) -> str:
    """Distinguishes the default bucket's aliases from the routes they stand for."""
    return "_default" if path.startswith("/buckets/default") else ""


def openapi_document(registry: Registry, base_url: str, permission_fields=frozenset()) -> dict:
    doc = _Builder(registry, permission_fields).build()
    doc["servers"] = [{"url": base_url}]
    return doc

