"""
The core resource types (buckets, collections, groups, records) and the
routes of every resource type: each is a declaration; the verbs are the
engine's.
"""

from __future__ import annotations

import dataclasses

import jsonschema
from twisted.internet.threads import deferToThread

from jsonsync.errors import InvalidParameters
from jsonsync.http import ApiRequest
from jsonsync.registry import Registry
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


async def validate_bucket(req: ApiRequest, loc, data, existing):
    for name in SCHEMA_FIELDS:
        if name in data:
            await check_schema(name, data[name])
    return data


async def validate_collection(req: ApiRequest, loc, data, existing):
    if "schema" in data:
        await check_schema("schema", data["schema"])
    if "cache_expires" in data:
        value = data["cache_expires"]
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidParameters("body", "data.cache_expires", "data.cache_expires in body: should be an integer")
    return data


async def validate_group(req: ApiRequest, loc, data, existing):
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


async def sync_members(req: ApiRequest, loc: Location, old, new):
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


async def forget_group(req: ApiRequest, loc: Location, old):
    await _registry(req).permissions.remove_principal(req.txn, loc.uri)
    req.ctx.auth_cache.clear()


async def forget_bucket_groups(req: ApiRequest, loc: Location, old):
    await _registry(req).permissions.remove_principal_prefix(req.txn, loc.uri + "/groups/")
    req.ctx.auth_cache.clear()


async def record_cache_expiry(req: ApiRequest, loc: Location) -> list:
    """
    A record's cache lifetimes for anonymous reads: the settings
    C{<bid>.<cid>.record_cache_expires_seconds} and
    C{<bid>.record_cache_expires_seconds}, and its collection's C{cache_expires}.
    """
    if len(loc.ancestors) != 2:
        return []
    bid, cid = loc.ancestors[0][1], loc.ancestors[1][1]
    registry = _registry(req)
    settings = registry.settings
    found = [
        settings.get(f"{bid}.{cid}.record_cache_expires_seconds"),
        settings.get(f"{bid}.record_cache_expires_seconds"),
    ]
    collection = await registry.storage.get(req.txn, "collection", f"/buckets/{bid}", cid)
    if collection is not None:
        found.append(collection.get("cache_expires"))
    return found


def _registry(req: ApiRequest) -> Registry:
    return req.registry


BUCKET = ResourceType(
    "bucket", "buckets", None, ("read", "write", "collection:create", "group:create"),
    validate=validate_bucket, on_delete=forget_bucket_groups,
    data_schema={name: {"type": "object"} for name in SCHEMA_FIELDS},
)
COLLECTION = ResourceType(
    "collection", "collections", "bucket", ("read", "write", "record:create"), validate=validate_collection,
    data_schema={"schema": {"type": "object"}, "cache_expires": {"type": "integer"}},
)
GROUP = ResourceType(
    "group", "groups", "bucket", ("read", "write"),
    validate=validate_group, on_write=sync_members, on_delete=forget_group,
    data_schema={
        "members": {
            "type": "array",
            "items": {
                "type": "string",
                "maxLength": MAX_PRINCIPAL_LENGTH,
                # Groups hold users: neither everyone nor another group.
                "pattern": r"^(?!system\.Everyone$)(?!/buckets/)",
            },
        },
    },
)
RECORD = ResourceType(
    "record", "records", "collection", ("read", "write"), id_generator=uuid_id,
    leaf_data=True, cache_expiry=record_cache_expiry,
)

CORE_TYPES = (BUCKET, COLLECTION, GROUP, RECORD)


def install(registry: Registry):
    # Each server gets its own copies: plugins add validators to them.
    for rt in CORE_TYPES:
        registry.add_resource_type(dataclasses.replace(rt, validators=list(rt.validators)))
    registry.add_root_permission("bucket:create")
