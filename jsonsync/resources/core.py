"""
The core resource types (buckets, collections, groups, records) and the
routes of every resource type: each is a declaration; the verbs are the
engine's.
"""

from __future__ import annotations

import dataclasses

import jsonschema
from twisted.internet.threads import deferToThread

from jsonsync.errors import InvalidParameters, MethodNotAllowed, ParentNotFound
from jsonsync.http import ApiRequest
from jsonsync.registry import Registry, Route
from jsonsync.resources.engine import Engine
from jsonsync.resources.model import (
    MAX_PRINCIPAL_LENGTH,
    Location,
    ResourceType,
    principal_too_long,
    uuid_id,
)

SCHEMA_FIELDS = ("collection:schema", "group:schema", "record:schema")

# Schemas bigger than this are checked off the reactor thread.
_BIG_SCHEMA = 20_000


async def check_schema(name: str, schema) -> None:
    """400 unless C{schema} is a valid JSON Schema (Draft 7 meta-schema)."""
    if not isinstance(schema, dict):
        raise InvalidParameters("body", f"data.{name}", f"data.{name} in body: Should be an object (a JSON Schema)")

    def check():
        jsonschema.Draft7Validator.check_schema(schema)

    try:
        if len(repr(schema)) > _BIG_SCHEMA:
            await deferToThread(check)
        else:
            check()
    except jsonschema.SchemaError as e:
        raise InvalidParameters("body", f"data.{name}", f"data.{name} in body: {e.message}") from None


async def validate_bucket(req, loc, data, existing):
    for name in SCHEMA_FIELDS:
        if name in data:
            await check_schema(name, data[name])
    return data


async def validate_collection(req, loc, data, existing):
    if "schema" in data:
        await check_schema("schema", data["schema"])
    if "cache_expires" in data:
        value = data["cache_expires"]
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidParameters("body", "data.cache_expires", "data.cache_expires in body: should be an integer")
    return data


async def validate_group(req, loc, data, existing):
    members = data.setdefault("members", [])
    if not isinstance(members, list):
        raise InvalidParameters("body", "data.members", "data.members in body: should be a list of strings")
    for i, member in enumerate(members):
        if not isinstance(member, str):
            raise InvalidParameters("body", f"data.members.{i}", f"data.members.{i} in body: should be a string")
        if principal_too_long(member):
            # Members are principals, part of an index key (as in clean_permissions).
            raise InvalidParameters(
                "body", f"data.members.{i}",
                f"data.members.{i} in body: principals are at most {MAX_PRINCIPAL_LENGTH} bytes",
            )
        if member == "system.Everyone" or member.startswith("/buckets/"):
            raise InvalidParameters(
                "body", f"data.members.{i}", f"data.members.{i} in body: {member!r} cannot be a group member"
            )
    return data


async def sync_members(req, loc: Location, old, new):
    """Group members hold the group's URI as a principal."""
    before = set(old.get("members", [])) if old else set()
    after = set(new.get("members", []))
    store = _registry(req).permissions
    for member in sorted(after - before):
        await store.add_user_principal(req.txn, member, loc.uri)
    for member in sorted(before - after):
        await store.remove_user_principal(req.txn, member, loc.uri)
    if before != after:
        req.ctx.auth_cache.clear()


async def forget_group(req, loc: Location, old):
    await _registry(req).permissions.remove_principal(req.txn, loc.uri)
    req.ctx.auth_cache.clear()


async def forget_bucket_groups(req, loc: Location, old):
    await _registry(req).permissions.remove_principal_prefix(req.txn, loc.uri + "/groups/")
    req.ctx.auth_cache.clear()


def _registry(req) -> Registry:
    return req.registry


BUCKET = ResourceType(
    "bucket", "buckets", None, ("read", "write", "collection:create", "group:create"),
    validate=validate_bucket, on_delete=forget_bucket_groups,
)
COLLECTION = ResourceType(
    "collection", "collections", "bucket", ("read", "write", "record:create"), validate=validate_collection
)
GROUP = ResourceType(
    "group", "groups", "bucket", ("read", "write"),
    validate=validate_group, on_write=sync_members, on_delete=forget_group,
)
RECORD = ResourceType("record", "records", "collection", ("read", "write"), id_generator=uuid_id)

CORE_TYPES = (BUCKET, COLLECTION, GROUP, RECORD)


def lineage(registry: Registry, rt: ResourceType) -> list[ResourceType]:
    """The types above C{rt}, top first."""
    chain = []
    parent = rt.parent
    while parent is not None:
        parent_type = registry.resource_types[parent]
        chain.insert(0, parent_type)
        parent = parent_type.parent
    return chain


def locate(registry: Registry, rt: ResourceType, params: dict, object_id: str | None) -> Location:
    parent_uri = ""
    ancestors = []
    for parent_type in lineage(registry, rt):
        oid = params[f"{parent_type.name}_id"]
        if not parent_type.id_pattern.match(oid):
            raise ParentNotFound(parent_type.name, oid)
        ancestors.append((parent_type, oid))
        parent_uri = f"{parent_uri}/{parent_type.plural}/{oid}"
    return Location(rt, parent_uri, ancestors, object_id)


def resource_routes(registry: Registry, engine: Engine, rt: ResourceType, *, plural=True) -> list[Route]:
    """The plural and object routes of a resource type."""
    base = "".join(f"/{t.plural}/<{t.name}_id>" for t in lineage(registry, rt))
    plural_rule = f"{base}/{rt.plural}"

    settings = registry.settings

    def check_enabled(kind: str, method: str, allowed: tuple[str, ...]):
        def enabled(m):
            return settings.get(f"{kind}_{rt.name}_{('get' if m == 'HEAD' else m).lower()}_enabled", True)

        if not enabled(method):
            raise MethodNotAllowed(tuple(m for m in allowed if enabled(m)))

    async def plural_view(req: ApiRequest):
        check_enabled("plural", req.method, ("GET", "HEAD", "POST", "DELETE"))
        loc = locate(registry, rt, req.params, None)
        if req.method in ("GET", "HEAD"):
            return await engine.get_plural(req, loc)
        if req.method == "POST":
            return await engine.post_plural(req, loc)
        if req.method == "DELETE":
            return await engine.delete_plural(req, loc)
        raise MethodNotAllowed(("GET", "HEAD", "POST", "DELETE"))

    async def object_view(req: ApiRequest):
        check_enabled("object", req.method, ("GET", "HEAD", "PUT", "PATCH", "DELETE"))
        loc = locate(registry, rt, req.params, req.params["id"])
        method = req.method
        if method in ("GET", "HEAD"):
            return await engine.get_object(req, loc)
        if method == "PUT":
            return await engine.put_object(req, loc)
        if method == "PATCH":
            return await engine.patch_object(req, loc)
        if method == "DELETE":
            return await engine.delete_object(req, loc)
        raise MethodNotAllowed(("GET", "HEAD", "PUT", "PATCH", "DELETE"))

    routes = []
    if plural:
        routes.append(
            Route(plural_rule, ("GET", "POST", "DELETE"), plural_view, f"{rt.name}-plural", "resource",
                  f"List, create or delete {rt.plural}", resource=rt)
        )
    routes.append(
        Route(f"{plural_rule}/<id>", ("GET", "PUT", "PATCH", "DELETE"), object_view, f"{rt.name}-object",
              "resource", f"Read, replace, modify or delete one {rt.name}", resource=rt)
    )
    return routes


def install(registry: Registry, engine: Engine):
    # Each server gets its own copies: plugins add validators to them.
    types = [dataclasses.replace(rt, validators=list(rt.validators)) for rt in CORE_TYPES]
    for rt in types:
        registry.add_resource_type(rt)
    registry.tree.add_root_permission("bucket:create")
    for rt in types:
        for route in resource_routes(registry, engine, rt):
            registry.add_route(route)
