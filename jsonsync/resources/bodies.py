"""
Request bodies for the engine's verbs: the C{{"data", "permissions"}}
envelope, permission lists, JSON merge and JSON Patch documents, and the
resource type's validation of the data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonpatch

from jsonsync.errors import (
    InvalidParameters,
)
from jsonsync.http import (
    ApiRequest,
)
from jsonsync.resources.model import (
    MAX_PRINCIPAL_LENGTH,
    Location,
    ResourceType,
    principal_too_long,
)

_ENVELOPE_KEYS = frozenset({"data", "permissions"})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: C{null} removes a key, objects merge recursively, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result



class Bodies:
    """The engine's part that reads and checks what a request sends."""

    registry: Any
    settings: Callable[..., Any]  # (name, default) -> value, from Access

    def check_id(self, loc: Location) -> str:
        """The object id of C{loc}; 400 unless its type's pattern takes it."""
        oid = loc.object_id
        if oid is None or not loc.resource.id_pattern.match(oid):
            raise InvalidParameters("path", None, "Invalid object id")
        return oid

    def envelope(self, req: ApiRequest, loc: Location, *, require_one=False):
        """C{(data, permissions)} from the body; each C{None} when absent."""
        body = req.json(self.settings("json_max_depth", 64))
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise InvalidParameters("body", None, "Invalid JSON: body should be an object")
        unknown = sorted(set(body) - _ENVELOPE_KEYS)
        if unknown:
            raise InvalidParameters(
                "body", unknown[0], f"{unknown[0]} in body: Unrecognized keys in mapping"
            )
        data = body.get("data")
        # An explicit null is refused like any other non-object (as Kinto
        # does): a client sending it most likely lost its data on the way,
        # and creating an empty object would hide that.
        if "data" in body and not isinstance(data, dict):
            raise InvalidParameters("body", "data", "data in body: Should be a mapping")
        perms = self.clean_permissions(loc.resource, body.get("permissions"))
        if require_one and data is None and perms is None:
            raise InvalidParameters("body", None, "Provide at least one of data or permissions")
        return data, perms

    def clean_permissions(self, rt: ResourceType, perms) -> dict[str, list[str] | None] | None:
        if perms is None:
            return None
        if not isinstance(perms, dict):
            raise InvalidParameters("body", "permissions", "permissions in body: Should be a mapping")
        clean: dict[str, list[str] | None] = {}
        for name, principals in perms.items():
            if name not in rt.permissions:
                raise InvalidParameters(
                    "body",
                    f"permissions.{name}",
                    f'"{name}" is not one of {", ".join(rt.permissions)}',
                )
            if principals is None:
                clean[name] = None
                continue
            if not isinstance(principals, list) or not all(isinstance(p, str) for p in principals):
                raise InvalidParameters(
                    "body", f"permissions.{name}", f"permissions.{name} in body: should be a list of strings"
                )
            # A principal is part of an ACL index key: refused here alike on
            # both backends rather than by PostgreSQL's index size limit.
            for i, principal in enumerate(principals):
                if principal_too_long(principal):
                    raise InvalidParameters(
                        "body", f"permissions.{name}.{i}",
                        f"permissions.{name}.{i} in body: principals are at most {MAX_PRINCIPAL_LENGTH} bytes",
                    )
            clean[name] = sorted(set(principals))
        return clean

    async def validate(self, req: ApiRequest, loc: Location, data: dict, existing: dict | None) -> dict:
        data = dict(data)
        if "id" in data and data["id"] != loc.object_id:
            raise InvalidParameters("body", "id", "Object id does not match existing object")
        data["id"] = loc.object_id
        lm = data.get("last_modified")
        if not isinstance(lm, int) or isinstance(lm, bool):
            data.pop("last_modified", None)
        data.pop("deleted", None)
        if loc.resource.validate is not None:
            data = await loc.resource.validate(req, loc, data, existing)
        for check in loc.resource.validators:
            data = await check(req, loc, data, existing)
        return data


    def apply_json_patch(self, req: ApiRequest, loc: Location, existing, acl):
        ops = req.json(self.settings("json_max_depth", 64))
        if not isinstance(ops, list):
            raise InvalidParameters("body", None, "JSON Patch body should be an array of operations")
        doc_perms: dict[str, dict[str, str]] = {
            name: {p: p for p in acl.get(name, ())} for name in loc.resource.permissions
            if name in ("read", "write") or acl.get(name)
        }
        fixed = []
        for i, op in enumerate(ops):
            if not isinstance(op, dict) or not isinstance(op.get("op"), str) or not isinstance(op.get("path"), str):
                raise InvalidParameters("body", str(i), "JSON Patch operation should have op and path")
            unknown = set(op) - {"op", "path", "value", "from"}
            if unknown:
                raise InvalidParameters("body", str(i), f"Unknown keys in JSON Patch operation: {sorted(unknown)}")
            path = op["path"]
            if path.startswith("/permissions/"):
                parts = path.split("/")
                if len(parts) >= 3 and parts[2] not in loc.resource.permissions:
                    raise InvalidParameters("body", "permissions", f'"{parts[2]}" is not one of {", ".join(loc.resource.permissions)}')
                if len(parts) == 4 and op["op"] in ("add", "replace") and "value" not in op:
                    op = {**op, "value": parts[3].replace("~1", "/").replace("~0", "~")}
                if len(parts) >= 3:
                    doc_perms.setdefault(parts[2], {})
            fixed.append(op)
        document = {"data": {k: v for k, v in existing.items() if k != "last_modified"}, "permissions": doc_perms}
        try:
            result = jsonpatch.apply_patch(document, fixed)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, ValueError, KeyError, IndexError) as e:
            raise InvalidParameters("body", None, f"JSON Patch operation failed: {e}") from None
        if (not isinstance(result, dict) or not isinstance(result.get("data"), dict)
                or not isinstance(result.get("permissions"), dict)):
            raise InvalidParameters("body", None, "JSON Patch operation failed: data and permissions must stay objects")
        perms = {}
        for name, members in result["permissions"].items():
            if name not in loc.resource.permissions or not isinstance(members, dict):
                raise InvalidParameters("body", "permissions", "JSON Patch operation failed: invalid permissions")
            perms[name] = sorted(str(p) for p in members)
        return result["data"], self.clean_permissions(loc.resource, perms), {}

