"""
The generic object engine: list, create, read, replace, patch and delete
for any declared resource type, with Kinto's permission checks,
preconditions, tombstones, pagination and events.

Resource types (buckets, collections, groups, records, and those plugins
declare) only describe themselves (L{jsonsync.resources.model}); every verb
is implemented once, here.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import jsonpatch

from jsonsync import events
from jsonsync.auth import challenges, ensure_principals, membership_keys, set_groups
from jsonsync.errors import (
    Forbidden,
    InvalidParameters,
    JsonSyncError,
    ObjectExists,
    ObjectNotFound,
    ParentNotFound,
    Unauthenticated,
    WriteConflict,
)
from jsonsync.http import (
    JSON,
    JSON_PATCH,
    MERGE_PATCH,
    ApiRequest,
    ApiResponse,
    NotModified,
    check_content_type,
    check_preconditions,
    http_date,
    validators,
)
from jsonsync.interfaces import IRequestPrefetch
from jsonsync.jsonutil import Encoded, EncodedPage, decoded
from jsonsync.query import Query
from jsonsync.resources import querystring
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


class Engine:
    def __init__(self, registry):
        self.registry = registry
        self._used_tokens: dict[str, int] = {}

    # -- shared steps ------------------------------------------------------------
    @property
    def storage(self):
        return self.registry.storage

    @property
    def permissions(self):
        return self.registry.permissions

    def settings(self, name, default=None):
        return self.registry.settings.get(name, default)

    async def allowed(self, req: ApiRequest, uri: str, permission: str, acl_uri: str | None = None) -> bool:
        """
        Whether the request may C{permission} on C{uri}. The first check of a
        request also loads its group principals, and C{acl_uri}'s ACL can
        come along (kept in C{req.acl_cache}): one round trip for all three.
        """
        grants = self.registry.tree.grants(uri, permission)
        settings_acl = self.registry.acl
        if req.groups_loaded and acl_uri is None and settings_acl.grants_any(req.principals, grants):
            return True
        members = None if req.groups_loaded else membership_keys(req)
        allowed, groups, acl = await self.permissions.authorize(
            req.txn, req.principals, grants, members=members, acl_uri=acl_uri
        )
        if groups is not None:
            set_groups(req, groups)
        if acl is not None:
            req.acl_cache[acl_uri] = acl
        return allowed or settings_acl.grants_any(req.principals, grants)

    async def object_acl(self, req: ApiRequest, uri: str) -> dict[str, set[str]]:
        acl = req.acl_cache.get(uri)
        if acl is None:
            acl = await self.permissions.get_object_permissions(req.txn, uri)
        return acl

    def deny(self, req: ApiRequest):
        if not req.authenticated:
            return Unauthenticated(challenges(self.registry))
        return Forbidden()

    async def require(self, req: ApiRequest, uri: str, permission: str, acl_uri: str | None = None):
        if not await self.allowed(req, uri, permission, acl_uri):
            raise self.deny(req)

    async def fetch(self, req: ApiRequest, loc: Location, checks, object_id: str | None = None,
                    with_object: bool = True, fresh: bool = False, page=None):
        """
        What an object request needs first, in one round trip when the
        backend can (L{IRequestPrefetch}): the ancestors and the object, and
        whether the user holds each C{(uri, permission)} of C{checks} (the
        object's ACL comes along into C{req.acl_cache}). Returns C{(missing,
        obj, allowed)} where C{missing} is the L{ParentNotFound} to raise
        I{after} the permission check (Kinto's order), or C{None}.

        C{fresh}: the object id was just generated, so no object can hold
        it. Within a batch, the sub-requests then skip the look-up when an
        earlier one found the same ancestors and was granted the same first
        check (until a write to anything but records, see L{forget_checks}).

        C{page}: a list page to read in the same round trip, if the backend
        can (see L{IRequestPrefetch.prefetch}); it lands in C{req.page_ahead}.
        """
        cache = req.ctx.granted if fresh and req.ctx.shared else None
        if cache is not None:
            memo = (loc.parent_uri, checks[0], frozenset(req.principals))
            if memo in cache:
                return None, None, [True] + [False] * (len(checks) - 1)
        oid = object_id or loc.object_id
        keys = list(self.ancestry(loc))
        acl_uri = None
        if with_object:
            keys.append((loc.resource.name, loc.parent_uri, oid))
            acl_uri = loc.child_uri(oid)
        tree, settings_acl = self.registry.tree, self.registry.acl
        grants = [tree.grants(uri, perm) for uri, perm in checks]
        storage = self.storage
        if IRequestPrefetch.providedBy(storage):
            members = None if req.groups_loaded else membership_keys(req)
            if page is None:
                found, held, groups, acl = await storage.prefetch(
                    req.txn, keys, req.principals, grants, members=members, acl_uri=acl_uri
                )
            else:
                found, held, groups, acl, req.page_ahead = await storage.prefetch(
                    req.txn, keys, req.principals, grants, members=members, acl_uri=acl_uri, page=page
                )
            if groups is not None:
                set_groups(req, groups)
            if acl_uri is not None:
                req.acl_cache[acl_uri] = acl
            allowed = [h or settings_acl.grants_any(req.principals, g) for h, g in zip(held, grants, strict=True)]
        else:
            found = await storage.get_many(req.txn, keys)
            allowed = []
            for i, (uri, perm) in enumerate(checks):
                allowed.append(await self.allowed(req, uri, perm, acl_uri if i == 0 else None))
        missing = None
        for (rt, ancestor_id), obj in zip(loc.ancestors, found, strict=False):
            if obj is None:
                missing = ParentNotFound(rt.name, ancestor_id)
                break
        obj = found[-1] if with_object and missing is None else None
        if cache is not None and missing is None and allowed[0]:
            cache.add(memo)
        return missing, obj, allowed

    @staticmethod
    def ancestry(loc: Location) -> tuple:
        """The C{(resource_name, parent_id, id)} of the objects C{loc} lives under (storage's C{within})."""
        keys = []
        parent = ""
        for rt, ancestor_id in loc.ancestors:
            keys.append((rt.name, parent, ancestor_id))
            parent = f"{parent}/{rt.plural}/{ancestor_id}"
        return tuple(keys)

    def forget_checks(self, req: ApiRequest, rt: ResourceType) -> None:
        """A write to C{rt}: what L{fetch} remembers may no longer hold, unless only records changed."""
        if rt.name != "record":
            req.ctx.granted.clear()

    async def check_parents(self, req: ApiRequest, loc: Location, with_object: bool = False):
        """
        404 unless every ancestor exists; with C{with_object}, also return the
        object itself (or C{None}), all fetched in one look-up.
        """
        keys = list(self.ancestry(loc))
        if with_object:
            keys.append((loc.resource.name, loc.parent_uri, loc.object_id))
        if not keys:
            return None
        found = await self.storage.get_many(req.txn, keys)
        for (rt, oid), obj in zip(loc.ancestors, found, strict=False):
            if obj is None:
                raise ParentNotFound(rt.name, oid)
        return found[-1] if with_object else None

    def check_id(self, loc: Location):
        if not loc.resource.id_pattern.match(loc.object_id or ""):
            raise InvalidParameters("path", None, "Invalid object id")

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

    async def validate(self, req, loc: Location, data: dict, existing: dict | None) -> dict:
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

    async def save_permissions(
        self, req, uri: str, rt: ResourceType, given, *, replace: bool, existed: bool
    ) -> dict[str, set[str]]:
        """Apply the request's ACL changes; return the object's ACL after them."""
        current = await self.object_acl(req, uri) if existed else {}
        changes: dict[str, set[str]] = {}
        if given is not None:
            names = rt.permissions if replace else [n for n, v in given.items() if v is not None]
            for name in names:
                changes[name] = set(given.get(name) or ())
        if self.settings("explicit_permissions", True) and req.user_id:
            write = set(changes.get("write", current.get("write", set())))
            if req.user_id not in write:
                write.add(req.user_id)
                changes["write"] = write
        changes = {k: v for k, v in changes.items() if v != current.get(k, set())}
        if changes:
            await self.permissions.replace_object_permissions(req.txn, uri, changes)
        result = {k: set(v) for k, v in current.items()}
        for name, principals in changes.items():
            if principals:
                result[name] = principals
            else:
                result.pop(name, None)
        return result

    def shown_permissions(self, req, acl: dict[str, set[str]]) -> dict[str, list[str]]:
        """An object's ACL is shown only to principals in its own C{write} ACE."""
        if acl.get("write") and not acl["write"].isdisjoint(req.principals):
            return {name: sorted(p) for name, p in acl.items() if p}
        return {}

    def object_response(self, req, loc: Location, obj, acl, status=200) -> ApiResponse:
        shown = loc.resource.present(obj) if loc.resource.present else obj
        body = {"data": shown, "permissions": self.shown_permissions(req, acl)}
        return ApiResponse(body, status, validators(obj["last_modified"]))

    def has_children(self, rt: ResourceType) -> bool:
        return any(t.parent == rt.name for t in self.registry.resource_types.values())

    # -- plural endpoints --------------------------------------------------------
    async def readable_ids(self, req, loc: Location, permission: str, page=None) -> frozenset[str] | None:
        """
        C{(ids, missing)}: C{ids} is C{None} when the user may see the whole
        list, else the ids of the objects shared with them (raise when they
        may see nothing); C{missing} is the L{ParentNotFound} to raise next.
        Permission and ancestors come in one look-up where the backend can.
        """
        rt = loc.resource
        checks = [(loc.parent_uri, rt.create_permission)]
        if loc.parent_uri:
            checks.insert(0, (loc.parent_uri, permission))
        missing, _, allowed = await self.fetch(req, loc, checks, with_object=False, page=page)
        if loc.parent_uri and allowed[0]:
            return None, missing
        await ensure_principals(self.registry, req)
        wanted = ("read", "write") if permission == "read" else ("write",)
        if any(self.registry.acl.granted_on_type(req.principals, rt.name, p) for p in wanted):
            return None, missing
        if permission == "read":
            # Those who may create children in an object may read its
            # attributes (read:attributes), so it is listed to them, as in
            # Kinto: a user allowed to create collections in a bucket finds
            # that bucket in GET /buckets.
            wanted += tuple(p for p in rt.permissions if p.endswith(":create"))
        ids = await self.permissions.accessible_children(
            req.txn, req.principals, loc.list_uri + "/", list(wanted)
        )
        if not ids and not allowed[-1]:
            raise self.deny(req)
        return frozenset(ids), missing

    def list_request(self, req, loc: Location):
        return querystring.parse_list_request(
            req.query,
            paginate_by=self.settings("paginate_by"),
            max_fetch=self.settings("storage_max_fetch_size", 10000),
            strict_fields=loc.resource.strict_fields,
            limits=querystring.QueryLimits.of(self.registry.settings),
        )

    @staticmethod
    def page_query(listing, ids) -> Query:
        """The query of one page (one object more than the page, to know whether another follows)."""
        query: Query = listing.query
        query.ids = ids
        query.limit = listing.limit + 1
        return query

    async def fetch_page(self, req, loc: Location, listing, ids, snapshot=False, encoded=False, ahead=None):
        """
        One page and its Next-Page URL; with C{snapshot}, also the list
        timestamp the page is consistent with (C{(objects, next, timestamp)}),
        and with C{encoded} the objects may be L{Encoded} (only sent on).
        C{ahead}: the C{(timestamp, objects)} of that page, already read.
        """
        query = self.page_query(listing, ids)
        limit = listing.limit
        timestamp = None
        if ahead is not None:
            timestamp, objects = ahead
        elif snapshot:
            if encoded:
                timestamp, objects = await self.storage.list_snapshot(
                    req.txn, loc.resource.name, loc.parent_uri, query, encoded=True
                )
            else:
                timestamp, objects = await self.storage.list_snapshot(
                    req.txn, loc.resource.name, loc.parent_uri, query
                )
        else:
            objects = await self.storage.list(req.txn, loc.resource.name, loc.parent_uri, query)
        next_page = None
        if isinstance(objects, EncodedPage):
            more = objects.found > limit
            last_object = Encoded(objects.last) if more else None
        else:
            more = len(objects) > limit
            if more:
                objects = objects[:limit]
                last_object = objects[-1]
        if more:
            last = querystring.last_object_of(decoded(last_object), query.sorting)
            params = [(k, v) for k, v in req.query if k not in ("_limit", "_token")]
            params.append(("_limit", str(limit)))
            params.append(("_token", querystring.encode_token(last)))
            next_page = req.url(query=params)
        if snapshot:
            return objects, next_page, timestamp
        return objects, next_page

    async def cache_headers(self, req: ApiRequest, loc: Location) -> list[tuple[str, str]]:
        """
        Anonymous reads may be cached when the operator says so
        (C{<resource>_cache_expires_seconds}, C{<bid>.<cid>.record_cache_expires_seconds},
        C{<bid>.record_cache_expires_seconds}) or the collection does
        (C{cache_expires}); the largest value wins.
        """
        if req.authenticated:
            return []
        rt = loc.resource
        settings = self.registry.settings
        candidates = [settings.get(f"{rt.name}_cache_expires_seconds")]
        if rt.name == "record" and len(loc.ancestors) == 2:
            bid, cid = loc.ancestors[0][1], loc.ancestors[1][1]
            candidates += [
                settings.get(f"{bid}.{cid}.record_cache_expires_seconds"),
                settings.get(f"{bid}.record_cache_expires_seconds"),
            ]
            collection = await self.storage.get(req.txn, "collection", f"/buckets/{bid}", cid)
            if collection is not None:
                candidates.append(collection.get("cache_expires"))
        values = [v for v in candidates if isinstance(v, int) and not isinstance(v, bool)]
        if not values:
            return []
        ttl = max(values)
        if ttl <= 0:
            return [("Cache-Control", "max-age=0, must-revalidate, no-cache, no-store"), ("Pragma", "no-cache")]
        expires = http_date((querystring.now_ms() // 1000 + ttl) * 1000)
        return [("Cache-Control", f"max-age={ttl}"), ("Expires", expires)]

    async def get_plural(self, req: ApiRequest, loc: Location) -> ApiResponse:
        # Objects pass through as the backend's JSON text unless something
        # here needs their values.
        encoded = not (loc.resource.present or events.wanted(self.registry, "read"))
        page = None
        if encoded and req.method != "HEAD" and loc.parent_uri and IRequestPrefetch.providedBy(self.storage):
            # Where the user may read the whole list (the common case), its
            # page comes with the permission check: one round trip.
            try:
                ahead_listing = self.list_request(req, loc)
            except JsonSyncError:
                ahead_listing = None  # reported after the permission check
            if ahead_listing is not None and not ahead_listing.fields:
                page = (loc.resource.name, loc.parent_uri, self.page_query(ahead_listing, None))
        req.page_ahead = None
        ids, missing = await self.readable_ids(req, loc, "read", page=page)
        if missing is not None:
            raise missing
        listing = self.list_request(req, loc) if page is None else ahead_listing
        if req.method == "HEAD":
            timestamp = await self.storage.list_timestamp(req.txn, loc.resource.name, loc.parent_uri)
            check_preconditions(req, timestamp)
            headers = validators(timestamp) + await self.cache_headers(req, loc)
            count_query = Query(filters=listing.query.filters, ids=ids)
            total = await self.storage.count(req.txn, loc.resource.name, loc.parent_uri, count_query)
            headers += [("Total-Objects", str(total)), ("Total-Records", str(total))]
            return ApiResponse(b"", 200, headers)
        # The page shows the list as of its ETag: a change committed after the
        # timestamp was read waits for the next sync instead of arriving now
        # and again with `_since=<this ETag>`.
        objects, next_page, timestamp = await self.fetch_page(
            req, loc, listing, ids, snapshot=True, encoded=encoded and not listing.fields,
            ahead=req.page_ahead if ids is None else None,
        )
        check_preconditions(req, timestamp)
        headers = validators(timestamp) + await self.cache_headers(req, loc)
        if listing.deprecated_to:
            headers.append(("Alert", _TO_ALERT))
        if next_page:
            headers.append(("Next-Page", next_page))
        events.notify(req, "read", loc, lambda: [{"new": o} for o in objects], timestamp)
        if loc.resource.present:
            objects = [loc.resource.present(o) for o in objects]
        if listing.fields:
            objects = [querystring.project(o, listing.fields) for o in objects]
        return ApiResponse({"data": objects}, 200, headers)

    async def post_plural(self, req: ApiRequest, loc: Location) -> ApiResponse:
        rt = loc.resource
        data, perms = self.envelope(req, loc)
        data = data or {}
        if "id" in data:
            oid = data["id"]
            if not isinstance(oid, str) or not rt.id_pattern.match(oid):
                raise InvalidParameters("body", "data.id", "data.id in body: Invalid object id")
            fresh = False
        else:
            oid = rt.id_generator()
            fresh = rt.name == "record"
        checks = [(loc.parent_uri, rt.create_permission), (loc.child_uri(oid), "read")]
        missing, existing, (can_create, can_read) = await self.fetch(req, loc, checks, oid, fresh=fresh)
        if existing is not None:
            loc.object_id = oid
            if not can_read:
                raise self.deny(req)
            check_preconditions(req, existing["last_modified"], existing)
            acl = await self.object_acl(req, loc.uri)
            events.notify(req, "read", loc, [{"new": existing}], existing["last_modified"])
            return self.object_response(req, loc, existing, acl, 200)
        if not can_create:
            raise self.deny(req)
        if missing is not None:
            raise missing
        check_preconditions(req, None)
        loc.object_id = oid
        return await self.create(req, loc, data, perms)

    async def create(self, req, loc: Location, data: dict, perms) -> ApiResponse:
        rt = loc.resource
        self.forget_checks(req, rt)
        data = await self.validate(req, loc, data, None)
        # ACL first: the object write takes the list's lock (PostgreSQL), held
        # to commit, so it comes last to keep other writers waiting least.
        acl = await self.save_permissions(req, loc.uri, rt, perms, replace=True, existed=False)
        with self.closing(req, rt.on_write):
            try:
                # (within: a bucket or collection deleted meanwhile refuses it.)
                obj = await self.storage.create(req.txn, rt.name, loc.parent_uri, data, within=self.ancestry(loc))
            except ObjectExists:
                # The request found no object with this id; another request
                # created one since. Run again, it then sees that object.
                raise WriteConflict([(rt.name, loc.parent_uri)]) from None
        if rt.on_write is not None:
            await rt.on_write(req, loc, None, obj)
            acl = await self.permissions.get_object_permissions(req.txn, loc.uri)
        events.notify(req, "create", loc, [{"new": obj}], obj["last_modified"])
        return self.object_response(req, loc, obj, acl, 201)

    def spend_token(self, req, listing):
        """
        DELETE pagination tokens are single use and expire: a reused one
        would delete objects that were never on the page the client saw.
        Used nonces are remembered per process for the token validity (a
        request run again after a write conflict may use its own again).
        """
        if not listing.token_given:
            return
        validity = self.settings("pagination_token_validity_seconds", 600) * 1000
        now = querystring.now_ms()
        used = self._used_tokens
        for nonce, expiry in list(used.items()):
            if expiry < now:
                del used[nonce]
        expired = listing.token_issued is not None and listing.token_issued + validity < now
        reused = listing.token_nonce in used and listing.token_nonce != req.spent_token
        if expired or not listing.token_nonce or reused:
            raise InvalidParameters("querystring", "_token", "_token was already used or has expired.")
        used[listing.token_nonce] = now + validity
        req.spent_token = listing.token_nonce

    async def delete_plural(self, req: ApiRequest, loc: Location) -> ApiResponse:
        rt = loc.resource
        # The selection, and the list timestamp an If-Match compares, must
        # still hold when the deletes commit: a create committed in between
        # would survive a delete that was asked to remove everything that
        # matches. The list is locked before anything of it is read.
        req.txn.lock_lists = tuple({*req.txn.lock_lists, (rt.name, loc.parent_uri)})
        ids, missing = await self.readable_ids(req, loc, "write")
        if missing is not None:
            raise missing
        listing = self.list_request(req, loc)
        self.spend_token(req, listing)
        timestamp = await self.storage.list_timestamp(req.txn, rt.name, loc.parent_uri)
        check_preconditions(req, timestamp)
        listing.query.include_deleted = False
        objects, next_page = await self.fetch_page(req, loc, listing, ids)
        tombstones = []
        impacted = []
        for obj in objects:
            target = Location(rt, loc.parent_uri, loc.ancestors, obj["id"])
            tomb = await self.remove(req, target, obj)
            tombstones.append(tomb)
            impacted.append({"new": tomb, "old": obj})
        newest = max([t["last_modified"] for t in tombstones], default=timestamp)
        headers = validators(newest)
        if next_page:
            headers.append(("Next-Page", next_page))
        if impacted:
            events.notify(req, "delete", loc, impacted, newest)
        if listing.fields:
            tombstones = [querystring.project(o, listing.fields) for o in tombstones]
        return ApiResponse({"data": tombstones}, 200, headers)

    # -- object endpoints --------------------------------------------------------
    async def existing_for_write(self, req, loc: Location) -> dict:
        """
        The object a PATCH or DELETE acts on, after the checks in Kinto's
        order: write permission (a missing object answers 404 to whoever can
        read its parent, 401/403 to others), id, ancestors, existence,
        preconditions.
        """
        checks = [(loc.uri, "write")] + ([(loc.parent_uri, "read")] if loc.parent_uri else [])
        missing, existing, allowed = await self.fetch(req, loc, checks)
        if not allowed[0]:
            if existing is not None or len(allowed) < 2 or not allowed[1]:
                raise self.deny(req)
        self.check_id(loc)
        if missing is not None:
            raise missing
        if existing is None:
            raise ObjectNotFound(loc.resource.name, loc.object_id)
        check_preconditions(req, existing["last_modified"], existing)
        return existing

    async def get_object(self, req: ApiRequest, loc: Location) -> ApiResponse:
        rt = loc.resource
        permission = "read:attributes" if any(p.endswith(":create") for p in rt.permissions) else "read"
        missing, obj, (can_read,) = await self.fetch(req, loc, [(loc.uri, permission)])
        if not can_read:
            raise self.deny(req)
        self.check_id(loc)
        if missing is not None:
            raise missing
        if obj is None:
            raise ObjectNotFound(rt.name, loc.object_id)
        check_preconditions(req, obj["last_modified"], obj)
        acl = await self.object_acl(req, loc.uri)
        limits = querystring.QueryLimits.of(self.registry.settings)
        fields = querystring.parse_fields(req.query, rt.strict_fields, limits)
        events.notify(req, "read", loc, [{"new": obj}], obj["last_modified"])
        if fields:
            obj = querystring.project(obj, fields)
        response = self.object_response(req, loc, obj, acl)
        response.headers += await self.cache_headers(req, loc)
        return response

    async def put_object(self, req: ApiRequest, loc: Location) -> ApiResponse:
        rt = loc.resource
        data, perms = self.envelope(req, loc)
        checks = [(loc.uri, "write"), (loc.parent_uri, rt.create_permission)]
        missing, existing, (can_write, can_create) = await self.fetch(req, loc, checks)
        if existing is not None and req.header("If-None-Match", "").strip() != "*":
            allowed = can_write
        else:
            allowed = can_create
        if not allowed:
            raise self.deny(req)
        self.check_id(loc)
        if missing is not None:
            raise missing
        current = existing["last_modified"] if existing else None
        check_preconditions(req, current, existing)
        if existing is None:
            return await self.create(req, loc, data or {}, perms)
        if data is None:
            data = {k: v for k, v in existing.items() if k != "last_modified"}
        new = await self.validate(req, loc, data, existing)
        return await self.replace(req, loc, existing, new, perms, replace_acl=True)

    async def replace(self, req, loc: Location, existing, new, perms, *, replace_acl) -> ApiResponse:
        rt = loc.resource
        self.forget_checks(req, rt)
        acl = await self.save_permissions(req, loc.uri, rt, perms, replace=replace_acl, existed=True)
        with self.closing(req, rt.on_write):
            # Compare-and-swap on the version this request decided on (its
            # preconditions, merge base, permissions): a write made since
            # fails this one, and the request runs again on the new state.
            obj = await self.storage.update(
                req.txn, rt.name, loc.parent_uri, loc.object_id, new, expected=existing["last_modified"],
                within=self.ancestry(loc),
            )
        if rt.on_write is not None:
            await rt.on_write(req, loc, existing, obj)  # may change the ACL (accounts)
            acl = await self.permissions.get_object_permissions(req.txn, loc.uri)
        events.notify(req, "update", loc, [{"new": obj, "old": existing}], obj["last_modified"])
        return self.object_response(req, loc, obj, acl, 200)

    async def patch_object(self, req: ApiRequest, loc: Location) -> ApiResponse:
        media = check_content_type(req, (JSON, MERGE_PATCH, JSON_PATCH))
        existing = await self.existing_for_write(req, loc)
        behavior = (req.header("Response-Behavior") or "full").strip().lower()
        if behavior not in ("full", "light", "diff"):
            raise InvalidParameters(
                "header", "Response-Behavior", "Response-Behavior should be one of full, light, diff"
            )
        acl_before = await self.object_acl(req, loc.uri)
        if media == JSON_PATCH:
            data, perms, sent = self.apply_json_patch(req, loc, existing, acl_before)
        else:
            changes, perms = self.envelope(req, loc, require_one=True)
            sent = changes or {}
            base = {k: v for k, v in existing.items() if k != "last_modified"}
            if media == MERGE_PATCH:
                data = merge_patch(base, changes or {})
                if perms is not None:
                    perms = {k: (v if v is not None else []) for k, v in perms.items()}
            else:
                data = {**base, **(changes or {})}
            if "last_modified" in sent:
                data["last_modified"] = sent["last_modified"]
        new = await self.validate(req, loc, data, existing)
        response = await self.replace(req, loc, existing, new, perms, replace_acl=False)
        if behavior != "full":
            obj = response.body["data"]
            changed = {k: v for k, v in obj.items() if existing.get(k, _ABSENT) != v}
            if behavior == "diff":
                changed = {k: v for k, v in changed.items() if sent.get(k, _ABSENT) != v}
            response.body = {"data": changed}
        return response

    def apply_json_patch(self, req, loc: Location, existing, acl):
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

    async def delete_object(self, req: ApiRequest, loc: Location) -> ApiResponse:
        existing = await self.existing_for_write(req, loc)
        forced = req.arg("last_modified")
        wanted = None
        if forced is not None:
            try:
                wanted = int(forced.strip('"'))
            except ValueError:
                raise InvalidParameters("querystring", "last_modified", "Invalid value for last_modified") from None
        tomb = await self.remove(req, loc, existing, wanted, last=True)
        events.notify(req, "delete", loc, [{"new": tomb, "old": existing}], tomb["last_modified"])
        return ApiResponse({"data": tomb}, 200, validators(tomb["last_modified"]))

    async def remove(self, req, loc: Location, existing: dict, last_modified=None, *, last=False) -> dict:
        """
        Delete one object, its ACL and everything below it (C{last}: as the
        request's final write).
        """
        rt = loc.resource
        self.forget_checks(req, rt)
        uri = loc.uri
        # The ACL goes first, so that the write taking the list's lock can
        # be the last (and carry the commit) when nothing lies below.
        await self.permissions.delete_object_permissions(req.txn, uri)
        children = self.has_children(rt)
        with self.closing(req, rt.on_delete if last and not children else True):
            tomb = await self.storage.delete(
                req.txn, rt.name, loc.parent_uri, loc.object_id, last_modified,
                expected=existing["last_modified"], within=self.ancestry(loc),
            )
        if children:
            await self.storage.purge(req.txn, uri)
        if rt.on_delete is not None:
            await rt.on_delete(req, loc, existing)
        return tomb

    @contextmanager
    def closing(self, req, follower):
        """
        Around a request's final storage write: tell the transaction, when
        nothing comes between that write and the commit (no C{follower}
        hook, no event listener, not one of a batch's sub-requests), so
        that a backend may commit in the same round trip.
        """
        txn = req.txn
        txn.last_write = follower is None and not req.ctx.shared and not self.registry.listeners
        try:
            yield
        finally:
            txn.last_write = False


_ABSENT = object()

_TO_ALERT = (
    '{"code": "soft-eol", "message": "_to is now deprecated, you should use _before instead", '
    '"url": "https://kinto.readthedocs.io/en/stable/api/1.x/filtering.html"}'
)


__all__ = ["Engine", "merge_patch", "NotModified"]
