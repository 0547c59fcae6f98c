"""
Endpoints: a L{Route} (a Werkzeug rule under C{/v1}, its methods, its view)
and the two routes every resource type gets, whose views locate the object
from the path and hand it to the engine's verbs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonsync.errors import MethodNotAllowed, ParentNotFound
from jsonsync.http import ApiRequest
from jsonsync.resources.model import Location, ResourceType


@dataclass
class Route:
    """One endpoint: a Werkzeug rule (under C{/v1}), its methods and its view."""

    rule: str
    methods: tuple[str, ...]
    view: Callable
    name: str
    kind: str = "service"  # "resource" endpoints negotiate Accept/Content-Type
    summary: str = ""
    anonymous: bool = True
    resource: Any = None
    authenticate: bool = True  # False for probes that must answer while backends are down
    # True: the view reads the body itself from twisted.web's spooled file
    # (C{request.upload}), for bodies beyond the JSON limit (see add_body_limit).
    streams_body: bool = False
    # Made by resource_routes: the engine's verbs, switched off per type and
    # verb by the <kind>_<type>_<verb>_enabled settings.
    generic: bool = False


def lineage(registry, rt: ResourceType) -> list[ResourceType]:
    """The types above C{rt}, top first."""
    chain: list[ResourceType] = []
    parent = rt.parent
    while parent is not None:
        parent_type = registry.resource_types[parent]
        chain.insert(0, parent_type)
        parent = parent_type.parent
    return chain


def locate(registry, rt: ResourceType, params: Mapping[str, str], object_id: str | None) -> Location:
    parent_uri = ""
    ancestors = []
    for parent_type in lineage(registry, rt):
        oid = params[f"{parent_type.name}_id"]
        if not parent_type.id_pattern.match(oid):
            raise ParentNotFound(parent_type.name, oid)
        ancestors.append((parent_type, oid))
        parent_uri = f"{parent_uri}/{parent_type.plural}/{oid}"
    return Location(rt, parent_uri, ancestors, object_id)


def resource_routes(registry, engine, rt: ResourceType, *, plural=True, single=True) -> list[Route]:
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
                  f"List, create or delete {rt.plural}", resource=rt, generic=True)
        )
    if single:
        routes.append(
            Route(f"{plural_rule}/<id>", ("GET", "PUT", "PATCH", "DELETE"), object_view, f"{rt.name}-object",
                  "resource", f"Read, replace, modify or delete one {rt.name}", resource=rt, generic=True)
        )
    return routes
