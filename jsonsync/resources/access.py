"""
Access decisions for the engine's verbs: whether a request may do
something on a URI (the permission tree, the stored ACLs and the settings'
ACLs), the look-up that brings ancestors, object, permissions and group
principals in one round trip, which objects of a list a user may see, and
the ACL writes and reads that go with an object.
"""

from __future__ import annotations

from jsonsync.auth import challenges, ensure_principals, membership_keys, set_groups
from jsonsync.errors import (
    Forbidden,
    ParentNotFound,
    Unauthenticated,
)
from jsonsync.http import (
    ApiRequest,
)
from jsonsync.interfaces import IRequestPrefetch
from jsonsync.resources.model import (
    Location,
    ResourceType,
)


class Access:
    """The engine's first part: who may do what, decided once per check."""

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
        restriction = req.restriction
        if restriction is not None and not restriction.permits(uri, permission):
            return False
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
        if acl_uri is not None and acl is not None:
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

    async def fetch(
        self, req: ApiRequest, loc: Location, checks: list[tuple[str, str]], object_id: str | None = None,
        with_object: bool = True, fresh: bool = False, page=None,
    ) -> tuple[ParentNotFound | None, dict | None, list[bool]]:
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
                remembered = [True] + [False] * (len(checks) - 1)
                if req.restriction is not None:
                    remembered = self.restrict(req, checks, remembered)
                return None, None, remembered
        oid = object_id or loc.object_id
        keys = list(self.ancestry(loc))
        acl_uri = None
        if with_object:
            assert oid is not None, "an object look-up without an object id"
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
        missing: ParentNotFound | None = None
        for (rt, ancestor_id), obj in zip(loc.ancestors, found, strict=False):
            if obj is None:
                missing = ParentNotFound(rt.name, ancestor_id)
                break
        obj = found[-1] if with_object and missing is None else None
        if cache is not None and missing is None and allowed[0]:
            # (Remembered before the restriction: the memo holds what the
            # principals may do; a restricted request narrows it above.)
            cache.add(memo)
        if req.restriction is not None:
            allowed = self.restrict(req, checks, allowed)
        return missing, obj, allowed

    @staticmethod
    def restrict(req: ApiRequest, checks, allowed: list[bool]) -> list[bool]:
        """C{allowed}, narrowed by the request's restriction (a scoped token)."""
        permits = req.restriction.permits
        return [a and permits(uri, perm) for a, (uri, perm) in zip(allowed, checks, strict=True)]

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
        if not rt.leaf_data:
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
        restriction = req.restriction
        if restriction is not None and given is not None and not restriction.permits(uri, SHARE):
            asked = {k: v for k, v in changes.items() if v != current.get(k, set())}
            if req.user_id and asked.get("write") == {req.user_id} and not current.get("write"):
                asked.pop("write")  # what a creation gives its author anyway
            if asked:
                raise Forbidden("These credentials may not change permissions.")
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

    def shown_permissions(self, req: ApiRequest, acl: dict[str, set[str]]) -> dict[str, list[str]]:
        """An object's ACL is shown only to principals in its own C{write} ACE."""
        if acl.get("write") and not acl["write"].isdisjoint(req.principals):
            return {name: sorted(p) for name, p in acl.items() if p}
        return {}


    async def readable_ids(
        self, req: ApiRequest, loc: Location, permission: str, page=None
    ) -> tuple[frozenset[str] | None, ParentNotFound | None]:
        """
        C{(ids, missing)}: C{ids} is C{None} when the user may see the whole
        list, else the ids of the objects shared with them (raise when they
        may see nothing); C{missing} is the L{ParentNotFound} to raise next,
        or C{None}. Permission and ancestors come in one look-up where the
        backend can.
        """
        rt = loc.resource
        checks = [(loc.parent_uri, rt.create_permission)]
        if loc.parent_uri:
            checks.insert(0, (loc.parent_uri, permission))
        missing, _, allowed = await self.fetch(req, loc, checks, with_object=False, page=page)
        if loc.parent_uri and allowed[0]:
            return None, missing
        await ensure_principals(self.registry, req)
        wanted: tuple[str, ...] = ("read", "write") if permission == "read" else ("write",)
        restriction = req.restriction
        if any(self.registry.acl.granted_on_type(req.principals, rt.name, p) for p in wanted):
            if restriction is None:
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
        if restriction is not None:
            ids = await self.restricted_ids(req, loc, ids, wanted)
        if not ids and not allowed[-1]:
            raise self.deny(req)
        return frozenset(ids), missing

    async def restricted_ids(self, req, loc: Location, shared, wanted) -> set[str]:
        """
        The ids of a list a restricted request may see: of those shared with
        its principals (C{shared}), the ones its restriction permits; and the
        objects its restriction names in that list, where the principals may
        see them (through the tree, the stored ACLs or the settings).
        """
        permits = req.restriction.permits
        prefix = loc.list_uri + "/"
        # What lists an object to a restricted request is the restriction's
        # own read (or write): that a user who may create in an object sees
        # it does not make a create-only token a reader.
        wanted = tuple(p for p in wanted if not p.endswith(":create"))
        ids = {oid for oid in shared if any(permits(prefix + oid, p) for p in wanted)}
        tree, settings_acl = self.registry.tree, self.registry.acl
        for oid in req.restriction.named_children(prefix):
            if oid in ids:
                continue
            uri = prefix + oid
            for perm in wanted:
                if not permits(uri, perm):
                    continue
                grants = tree.grants(uri, perm)
                if settings_acl.grants_any(req.principals, grants) or await self.permissions.check(
                    req.txn, req.principals, grants
                ):
                    ids.add(oid)
                    break
        return ids


# The pseudo-permission a restriction is asked about before a request
# changes an object's ACL (see L{jsonsync.interfaces.IRestriction}).
SHARE = "share"
