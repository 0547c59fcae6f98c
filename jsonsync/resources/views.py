"""
The service endpoints: hello, heartbeats, version, OpenAPI, contribute,
C{/batch} and C{/permissions}.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import os
from collections.abc import Mapping
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

from twisted.internet import defer

from jsonsync import __version__, events, jsonutil
from jsonsync.auth import challenges, ensure_principals
from jsonsync.errors import (
    Forbidden,
    InvalidParameters,
    MethodNotAllowed,
    RouteNotFound,
    Unauthenticated,
)
from jsonsync.http import API_PREFIX, ApiRequest, ApiResponse, check_content_type, parse_query
from jsonsync.query import Query, Sort, matches_all, ordering_key
from jsonsync.registry import Registry, Route
from jsonsync.resources import querystring
from jsonsync.resources.openapi import openapi_document

PUBLIC_SETTINGS = ("batch_max_requests", "readonly", "explicit_permissions")
BATCH_METHODS = ("GET", "HEAD", "DELETE", "TRACE", "POST", "PUT", "PATCH")
PERMISSION_FIELDS = frozenset(
    {"uri", "resource_name", "permissions", "id", "bucket_id", "collection_id", "group_id", "record_id",
     "account_id", "last_modified"}
)


class ServiceViews:
    def __init__(self, registry: Registry, app_ref):
        self.registry = registry
        self.settings = registry.settings
        self._app_ref = app_ref  # a callable returning the JsonSyncApp (built after the routes)

    @property
    def app(self):
        return self._app_ref()

    # -- hello ----------------------------------------------------------------------
    async def hello(self, req: ApiRequest) -> ApiResponse:
        s = self.settings
        doc = {
            "project_name": s["project_name"],
            "project_version": s["project_version"] or __version__,
            "http_api_version": s["http_api_version"],
            "project_docs": s["project_docs"],
            "url": req.url(API_PREFIX + "/"),
            "config": self.config_info(),
            "settings": {name: s[name] for name in PUBLIC_SETTINGS},
            "capabilities": copy.deepcopy(self.registry.capabilities),
        }
        doc["settings"].update(self.registry.public_settings)
        if s.get("eos"):
            doc["eos"] = s["eos"]
        if req.authenticated:
            principals = await ensure_principals(self.registry, req)
            doc["user"] = {"id": req.user_id, "principals": list(principals)}
        for extend in self.registry.hello_extensions:
            result = extend(req, doc)
            if hasattr(result, "__await__"):
                await result
        headers = []
        if s["readonly"]:
            ttl = s["root_cache_expires_seconds"]
            headers.append(("Cache-Control", f"max-age={ttl}"))
            headers.append(("Expires", formatdate(datetime.datetime.now().timestamp() + ttl, usegmt=True)))
        return ApiResponse(doc, 200, headers)

    def config_info(self):
        path = self.settings.source
        if not path or not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            content = f.read()
        modified = datetime.datetime.fromtimestamp(os.path.getmtime(path), datetime.timezone.utc)
        return {"path": os.path.abspath(path), "hash": hashlib.sha256(content).hexdigest(), "modified": modified.isoformat()}

    # -- heartbeats -----------------------------------------------------------------
    async def heartbeat(self, req: ApiRequest) -> ApiResponse:
        checks = {"storage": self.registry.storage.heartbeat}
        checks["permission"] = getattr(self.registry.permissions, "heartbeat", None) or (
            self.registry.storage.heartbeat
        )
        checks.update(self.registry.heartbeats)
        timeout = self.settings["heartbeat_timeout_seconds"]
        reactor = self.registry.reactor

        async def run(check):
            try:
                d = defer.ensureDeferred(check())
                d.addTimeout(timeout, reactor)
                return bool(await d)
            except Exception:
                return False

        results = {"cache": None}  # jsonsync keeps no cache backend
        for name, check in checks.items():
            results[name] = await run(check)
        status = 200 if all(v is not False for v in results.values()) else 503
        return ApiResponse(results, status)

    async def lbheartbeat(self, req: ApiRequest) -> ApiResponse:
        return ApiResponse({}, 200)

    async def version(self, req: ApiRequest) -> ApiResponse:
        path = self.settings["version_json_path"]
        try:
            with open(path, "rb") as f:
                return ApiResponse(jsonutil.loads(f.read()), 200)
        except (OSError, jsonutil.JSONError):
            raise RouteNotFound("The version file could not be found.") from None

    async def contribute(self, req: ApiRequest) -> ApiResponse:
        return ApiResponse(
            {
                "name": self.settings["project_name"],
                "description": "Self-hostable JSON storage with synchronisation and sharing, "
                "speaking the Kinto HTTP API v1.",
                "repository": {"url": "https://github.com/jsonsync/jsonsync", "license": "Apache-2.0"},
                "participate": {"docs": self.settings["project_docs"]},
                "bugs": {"report": self.settings["error_info_link"]},
                "keywords": ["python", "twisted", "json", "sync", "kinto"],
            }
        )

    async def openapi(self, req: ApiRequest) -> ApiResponse:
        return ApiResponse(openapi_document(self.registry, req.url(API_PREFIX), PERMISSION_FIELDS))

    # -- batch ----------------------------------------------------------------------
    async def batch(self, req: ApiRequest) -> ApiResponse:
        check_content_type(req)
        body = req.json(self.settings["json_max_depth"])
        if not isinstance(body, dict):
            raise InvalidParameters("body", None, "body should be an object with requests")
        for key in body:
            if key not in ("defaults", "requests"):
                raise InvalidParameters("body", key, f"{key} in body: Unrecognized keys in mapping")
        requests = body.get("requests")
        if requests is None:
            raise InvalidParameters("body", "requests", "requests in body: Required")
        if not isinstance(requests, list):
            raise InvalidParameters("body", "requests", "requests in body: should be a list")
        limit = self.settings["batch_max_requests"]
        if len(requests) > limit:
            raise InvalidParameters("body", "requests", f"Number of requests is limited to {limit}")
        defaults = body.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise InvalidParameters("body", "defaults", "defaults in body: should be an object")
        self._check_subrequest(defaults, "defaults", partial=True)
        subs = []
        for i, sub in enumerate(requests):
            if not isinstance(sub, dict):
                raise InvalidParameters("body", f"requests.{i}", f"requests.{i} in body: should be an object")
            merged = _deep_merge(defaults, sub)
            self._check_subrequest(merged, f"requests.{i}")
            subs.append(merged)
        responses = []
        for sub in subs:
            responses.append(await self._run_subrequest(req, sub))
        return ApiResponse({"responses": responses})

    def _check_subrequest(self, sub: dict, where: str, partial=False):
        for key in sub:
            if key not in ("method", "path", "headers", "body"):
                raise InvalidParameters("body", f"{where}.{key}", f"{where}.{key} in body: Unrecognized keys in mapping")
        if sub.get("path") is None and not partial:
            raise InvalidParameters("body", f"{where}.path", f"{where}.path in body: Required")
        path = sub.get("path")
        if path is not None and (not isinstance(path, str) or not path.startswith("/")):
            raise InvalidParameters("body", f"{where}.path", f"{where}.path in body: should be a path starting with /")
        method = sub.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in BATCH_METHODS:
            raise InvalidParameters("body", f"{where}.method", f"{where}.method in body: {method!r} is not one of {', '.join(BATCH_METHODS)}")
        headers = sub.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise InvalidParameters("body", f"{where}.headers", f"{where}.headers in body: values should be strings")
        if "body" in sub and not isinstance(sub["body"], dict) and sub["body"] is not None:
            if not isinstance(sub["body"], list):
                raise InvalidParameters("body", f"{where}.body", f"{where}.body in body: should be an object")

    async def _run_subrequest(self, outer: ApiRequest, sub: dict) -> dict:
        method = sub.get("method", "GET").upper()
        raw_path, _, raw_query = sub["path"].partition("?")
        raw_path = unquote(raw_path)
        if "\x00" in raw_path:
            raise InvalidParameters("body", "path", "Invalid character 0x00 in a sub-request path")
        if not (raw_path == API_PREFIX or raw_path.startswith(API_PREFIX + "/")):
            raw_path = API_PREFIX + raw_path
        headers = {k: v for k, v in outer.headers.items() if k not in ("content-length", "content-type")}
        headers.update({k.lower(): v for k, v in sub.get("headers", {}).items()})
        body = b""
        if sub.get("body") is not None:
            body = jsonutil.dumps(sub["body"])
            headers.setdefault("content-type", "application/json")
        req = ApiRequest(method, raw_path, [], headers, body, outer.scheme, outer.host, raw_query)
        req.in_batch = True
        req.client = outer.client
        app = self.app
        try:
            req.query = parse_query(raw_query)
            route, params, effective = self._match(raw_path, method)
        except (RouteNotFound, InvalidParameters, MethodNotAllowed) as exc:
            response = app.finish(req, app.error_response(exc), None)
        else:
            req.params = params
            req.path = effective
            response = await app.process(req, route, ctx=outer.ctx)
        content = response.body
        if isinstance(content, bytes):
            content = jsonutil.loads(content) if content.strip() else ""
        if method == "HEAD" or response.status == 304:
            content = ""
        return {
            "status": response.status,
            "path": req.path,
            "headers": {name: value for name, value in response.headers},
            "body": content,
        }

    def _match(self, path: str, method: str) -> tuple[Route, Mapping[str, str], str]:
        app = self.app
        candidates = [path]
        if path.endswith("/") and path != API_PREFIX + "/":
            candidates.append(path.rstrip("/"))
        if path == API_PREFIX:
            candidates.append(API_PREFIX + "/")
        for candidate in candidates:
            try:
                route, params = app.match(candidate, method)
            except (RouteNotFound, InvalidParameters):
                continue
            if route.name == "batch":
                raise InvalidParameters("body", "path", "Recursive call on /batch endpoint is forbidden.")
            return route, params, candidate
        raise RouteNotFound()

    # -- permissions ----------------------------------------------------------------
    async def permissions(self, req: ApiRequest) -> ApiResponse:
        acl = self.registry.acl
        await ensure_principals(self.registry, req)
        if not acl.principals("permissions_read_principals").intersection(req.principals):
            raise Forbidden() if req.authenticated else Unauthenticated(challenges(self.registry))
        tree = self.registry.tree
        found = self._grants_that_count(
            await self.registry.permissions.accessible_objects(req.txn, req.principals), req.principals
        )
        for uri, perms in (await self._settings_grants(req)).items():
            found.setdefault(uri, set()).update(perms)
        restriction = req.restriction
        entries = []
        root_perms = sorted(
            p for p in tree.permissions_of("root")
            if acl.grants_any(req.principals, [("", p)]) and (restriction is None or restriction.permits("", p))
        )
        if root_perms:
            entries.append({"uri": "/", "resource_name": "root", "id": None, "permissions": root_perms})
        for uri, perms in found.items():
            entry = self._permission_entry(uri, perms)
            if entry is not None and restriction is not None:
                # A scoped token sees what it may do, not all its user may.
                entry["permissions"] = [p for p in entry["permissions"] if restriction.permits(uri, p)]
                if not entry["permissions"]:
                    entry = None
            if entry is not None:
                entries.append(entry)
        listing = querystring.parse_list_request(
            req.query,
            paginate_by=self.settings["paginate_by"],
            max_fetch=self.settings["storage_max_fetch_size"],
            strict_fields=PERMISSION_FIELDS,
            default_sort=(Sort("uri", -1),),
            tiebreak="uri",
            limits=querystring.QueryLimits.of(self.settings),
        )
        query = listing.query
        filters = [f for f in query.filters if f.field != "last_modified"]
        sorting = tuple(s for s in query.sorting if s.field != "last_modified")
        selected = [e for e in entries if matches_all(e, filters)]
        if query.pagination:
            rules = [[f for f in rule] for rule in query.pagination]
            selected = [e for e in selected if any(matches_all(e, r) for r in rules)]
        selected.sort(key=ordering_key(sorting))
        headers = []
        if req.method == "HEAD":
            total = len([e for e in entries if matches_all(e, filters)])
            return ApiResponse(b"", 200, [("Total-Objects", str(total)), ("Total-Records", str(total))])
        if len(selected) > listing.limit:
            selected = selected[: listing.limit]
            last = querystring.last_object_of(selected[-1], sorting)
            params = [(k, v) for k, v in req.query if k not in ("_limit", "_token")]
            params += [("_limit", str(listing.limit)), ("_token", querystring.encode_token(last))]
            headers.append(("Next-Page", req.url(query=params)))
        if listing.fields:
            selected = [querystring.project(e, listing.fields) for e in selected]
        return ApiResponse({"data": selected}, 200, headers)

    def _grants_that_count(self, found: dict[str, set[str]], principals: list[str]) -> dict[str, set[str]]:
        """
        Leave out the ACL grants that give nothing: a resource type may say
        which of its ACEs count (the accounts plugin: an account's ACEs
        reach only its owner and the admins, whatever they name).
        """
        tree = self.registry.tree
        types = self.registry.resource_types
        kept = {}
        for uri, perms in found.items():
            rt = types.get(tree.type_of(uri))
            judge = rt.grants_that_count if rt is not None else None
            if judge is not None:
                perms = judge(self.settings, principals, uri.rsplit("/", 1)[-1], perms)
            if perms:
                kept[uri] = perms
        return kept

    async def _settings_grants(self, req: ApiRequest) -> dict[str, set[str]]:
        """
        Permissions that settings ACLs give on every object of a type, for
        the objects that exist (records are left out: there can be millions).
        """
        acl = self.registry.acl
        types = self.registry.resource_types
        granted: dict[str, set[str]] = {}
        cache: dict[str, list[str]] = {}

        async def uris_of(type_name: str) -> list[str]:
            if type_name in cache:
                return cache[type_name]
            rt = types[type_name]
            parents = [""] if rt.parent is None else await uris_of(rt.parent)
            uris: list[str] = []
            for parent in parents:
                objects = await self.registry.storage.list(
                    req.txn, rt.name, parent, Query(limit=self.settings["storage_max_fetch_size"])
                )
                uris.extend(f"{parent}/{rt.plural}/{o['id']}" for o in objects)
            cache[type_name] = uris
            return uris

        for rt in list(types.values()):
            if rt.leaf_data:
                continue
            for perm in ("read", "write"):
                if acl.granted_on_type(req.principals, rt.name, perm):
                    for uri in await uris_of(rt.name):
                        granted.setdefault(uri, set()).add(perm)
            if rt.parent is not None and acl.granted_on_type(req.principals, rt.name, "create"):
                for uri in await uris_of(rt.parent):
                    granted.setdefault(uri, set()).add(rt.create_permission)
        return granted

    # -- user data --------------------------------------------------------------------
    async def user_data(self, req: ApiRequest) -> ApiResponse:
        """Forget a principal: delete what only it could write, strip it from every ACL and group."""
        await ensure_principals(self.registry, req)
        if not self.registry.acl.principals("user-data_delete_principals").intersection(req.principals):
            raise Forbidden() if req.authenticated else Unauthenticated(challenges(self.registry))
        if req.restriction is not None:
            raise Forbidden("These credentials may not delete user data.")
        principal = req.params["principal"]
        store = self.registry.permissions
        engine = self.registry.engine
        owned = await store.accessible_objects(req.txn, [principal])
        for uri in sorted(owned, key=len):
            acl = await store.get_object_permissions(req.txn, uri)
            if acl.get("write") != {principal}:
                continue
            loc = self.registry.location(uri)
            if loc is None:
                continue
            existing = await self.registry.storage.get(req.txn, loc.resource.name, loc.parent_uri, loc.object_id)
            if existing is None:
                continue
            tomb = await engine.remove(req, loc, existing)
            events.notify(req, "delete", loc, [{"new": tomb, "old": existing}], tomb["last_modified"])
        await store.remove_principal(req.txn, principal)
        return ApiResponse({"data": {"principal": principal}})

    def _permission_entry(self, uri: str, perms: set[str]) -> dict | None:
        tree = self.registry.tree
        parts = uri.strip("/").split("/")
        if len(parts) % 2:
            return None
        resource_name = tree.type_of(uri)
        entry: dict[str, Any] = {"uri": uri, "resource_name": resource_name, "id": parts[-1]}
        for i in range(0, len(parts) - 2, 2):
            entry[f"{tree.type_of('/' + '/'.join(parts[: i + 2]))}_id"] = parts[i + 1]
        entry[f"{resource_name}_id"] = parts[-1]
        expanded = set(perms)
        if "write" in expanded:
            expanded.add("read")
            expanded.update(p for p in tree.permissions_of(resource_name) if p.endswith(":create"))
        elif "read" not in expanded and any(p.endswith(":create") for p in expanded):
            # Creating children lets one read the object's attributes (as Kinto lists it).
            expanded.add("read:attributes")
        entry["permissions"] = sorted(expanded)
        return entry


def _deep_merge(defaults: dict, values: dict) -> dict:
    """
    C{values} over C{defaults}, objects merged key by key. Neither input is
    changed, and values are shared rather than copied: a sub-request's body
    is encoded again before its view reads it, so nothing can alter what
    the next sub-request shares (copying cost a tenth of a batch).
    """
    merged = dict(defaults)
    for key, value in values.items():
        base = merged.get(key)
        merged[key] = _deep_merge(base, value) if isinstance(value, dict) and isinstance(base, dict) else value
    return merged


def install(registry: Registry, views: ServiceViews):
    add = registry.add_route
    add(Route("/", ("GET",), views.hello, "hello", summary="Server information and capabilities"))
    add(Route("/__heartbeat__", ("GET",), views.heartbeat, "heartbeat", summary="Backends health", authenticate=False))
    add(Route("/__lbheartbeat__", ("GET",), views.lbheartbeat, "lbheartbeat", summary="Process alive", authenticate=False))
    add(Route("/__version__", ("GET",), views.version, "version", summary="Deployed version", authenticate=False))
    add(Route("/__api__", ("GET",), views.openapi, "openapi", summary="This OpenAPI document", authenticate=False))
    add(Route("/contribute.json", ("GET",), views.contribute, "contribute", summary="Project information", authenticate=False))
    add(Route("/batch", ("POST",), views.batch, "batch", summary="Several requests in one transaction"))
    add(Route("/__user_data__/<path:principal>", ("DELETE",), views.user_data, "user-data",
              summary="Delete a principal's data (needs user-data_delete_principals)"))
    if registry.settings["experimental_permissions_endpoint"]:
        add(Route("/permissions", ("GET",), views.permissions, "permissions", "resource",
                  summary="Objects the user has permissions on"))
        registry.add_capability(
            "permissions_endpoint", "List every permission granted to the current user.",
            "https://kinto.readthedocs.io/en/stable/api/1.x/permissions.html",
        )
    if "basicauth" in registry.settings["multiauth.policies"]:
        registry.add_capability(
            "basicauth", "Very basic authentication sessions. Not for production use.",
            "http://kinto.readthedocs.io/en/stable/api/1.x/authentication.html",
        )


