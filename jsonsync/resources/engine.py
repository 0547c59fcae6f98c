"""
The generic object engine: list, create, read, replace, patch and delete
for any declared resource type, with Kinto's permission checks,
preconditions, tombstones, pagination and events.

Resource types (buckets, collections, groups, records, and those plugins
declare) only describe themselves (L{jsonsync.resources.model}); every verb
is implemented once, here. The engine is assembled from one part per job:
L{jsonsync.resources.access} (who may do what), L{jsonsync.resources.listing}
(pages and tokens), L{jsonsync.resources.bodies} (what requests send); this
module holds the verbs. A plugin serves its own types with it, or with a
subclass that overrides one step (the history plugin's C{list_request}).
"""

from __future__ import annotations

from contextlib import contextmanager

from jsonsync import events
from jsonsync.errors import (
    InvalidParameters,
    JsonSyncError,
    ObjectExists,
    ObjectNotFound,
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
    validators,
)
from jsonsync.interfaces import IRequestPrefetch
from jsonsync.query import Query
from jsonsync.resources import querystring
from jsonsync.resources.bodies import Bodies, merge_patch
from jsonsync.resources.listing import Listing
from jsonsync.resources.model import (
    Location,
    ResourceType,
)


class Engine(Listing, Bodies):
    """Every verb of every resource type."""

    def object_response(self, req: ApiRequest, loc: Location, obj, acl, status=200) -> ApiResponse:
        shown = loc.resource.present(obj) if loc.resource.present else obj
        body = {"data": shown, "permissions": self.shown_permissions(req, acl)}
        return ApiResponse(body, status, validators(obj["last_modified"]))

    def has_children(self, rt: ResourceType) -> bool:
        return any(t.parent == rt.name for t in self.registry.resource_types.values())

    # -- plural endpoints --------------------------------------------------------
    async def get_plural(self, req: ApiRequest, loc: Location) -> ApiResponse:
        # Objects pass through as the backend's JSON text unless something
        # here needs their values.
        encoded = not (loc.resource.present or events.wanted(self.registry, "read"))
        page = None
        listing: querystring.ListRequest | None = None  # when it comes with the page
        if encoded and req.method != "HEAD" and loc.parent_uri and IRequestPrefetch.providedBy(self.storage):
            # Where the user may read the whole list (the common case), its
            # page comes with the permission check: one round trip.
            try:
                ahead_listing = self.list_request(req, loc)
            except JsonSyncError:
                pass  # reported after the permission check
            else:
                if not ahead_listing.fields:
                    listing = ahead_listing
                    page = (loc.resource.name, loc.parent_uri, self.page_query(listing, None))
        req.page_ahead = None
        ids, missing = await self.readable_ids(req, loc, "read", page=page)
        if missing is not None:
            raise missing
        if listing is None:
            listing = self.list_request(req, loc)
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
            fresh = rt.leaf_data
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

    async def create(self, req: ApiRequest, loc: Location, data: dict, perms) -> ApiResponse:
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
    async def existing_for_write(self, req: ApiRequest, loc: Location) -> dict:
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
        oid = self.check_id(loc)
        if missing is not None:
            raise missing
        if existing is None:
            raise ObjectNotFound(loc.resource.name, oid)
        check_preconditions(req, existing["last_modified"], existing)
        return existing

    async def get_object(self, req: ApiRequest, loc: Location) -> ApiResponse:
        rt = loc.resource
        permission = "read:attributes" if any(p.endswith(":create") for p in rt.permissions) else "read"
        missing, obj, (can_read,) = await self.fetch(req, loc, [(loc.uri, permission)])
        if not can_read:
            raise self.deny(req)
        oid = self.check_id(loc)
        if missing is not None:
            raise missing
        if obj is None:
            raise ObjectNotFound(rt.name, oid)
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

    async def replace(self, req: ApiRequest, loc: Location, existing, new, perms, *, replace_acl) -> ApiResponse:
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

    async def remove(self, req: ApiRequest, loc: Location, existing: dict, last_modified=None, *, last=False) -> dict:
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
    def closing(self, req: ApiRequest, follower):
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

