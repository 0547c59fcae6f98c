"""
The in-memory storage and permission backends (the default).

Each list keeps its objects by id and an index of C{(last_modified, id)}
kept sorted, so the default order (newest first), C{_since} syncs and
keyset pages walk only what they return instead of sorting the list.

Writers are serialised by one lock taken at a transaction's first write
and released at its end; every write is journalled so that a rollback puts
back exactly what was there.

Stored objects are never modified in place (a write stores a new mapping),
so reads hand out the stored mappings themselves, without copying: callers
treat them as read-only, as the IStorage contract says.
"""

from __future__ import annotations

import copy
import weakref
from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping, Set
from typing import Any, Literal, overload

from twisted.internet.defer import DeferredLock
from zope.interface import implementer

from jsonsync.errors import ObjectExists, ObjectNotFound, WriteConflict
from jsonsync.interfaces import IPermissionStore, IStorage, IStorageBackend
from jsonsync.query import (
    Filter,
    Op,
    Query,
    matches_all,
    ordering_key,
)
from jsonsync.storage import Transaction, check_expected, next_timestamp, now_ms
from jsonsync.storage.outbox import MemoryOutbox


class _Journal:
    """The undo log of one transaction on the memory backend."""

    def __init__(self, lock: DeferredLock):
        self._lock = lock
        self.undo: list = []

    async def commit(self):
        self.undo = []
        self._lock.release()

    async def rollback(self):
        undo, self.undo = self.undo, []
        for action in reversed(undo):
            action()
        self._lock.release()


class _MemoryBase:
    def __init__(self, lock: DeferredLock | None = None):
        self._lock = lock or DeferredLock()

    def transaction(self):
        return Transaction()

    async def close(self):
        """Nothing to release: the data lives as long as the process."""

    async def _journal(self, txn) -> _Journal:
        async def open_journal():
            await self._lock.acquire()
            return _Journal(self._lock)

        return await txn.enlist(("memory", id(self._lock)), open_journal)

    async def _locked_read(self, txn) -> None:
        """
        A transaction that said which lists it writes (C{lock_lists}, a
        request run again after a write conflict, or a plural delete) takes
        the writers' lock before it reads, so that what it reads holds to
        its commit.
        """
        if getattr(txn, "lock_lists", ()):
            await self._journal(txn)


class _List:
    __slots__ = ("objects", "order", "timestamp")

    def __init__(self):
        self.objects: dict[str, dict] = {}
        self.order: list[tuple[int, str]] = []
        self.timestamp: int | None = None

    def put(self, obj: dict):
        old = self.objects.get(obj["id"])
        if old is not None:
            self._unindex(old)
        self.objects[obj["id"]] = obj
        insort(self.order, (obj["last_modified"], obj["id"]))

    def remove(self, object_id: str):
        old = self.objects.pop(object_id, None)
        if old is not None:
            self._unindex(old)

    def _unindex(self, obj):
        pos = bisect_left(self.order, (obj["last_modified"], obj["id"]))
        if pos < len(self.order) and self.order[pos] == (obj["last_modified"], obj["id"]):
            del self.order[pos]


@implementer(IStorage)
class MemoryStorage(_MemoryBase):
    def __init__(self, lock: DeferredLock | None = None):
        super().__init__(lock)
        self._lists: dict[tuple[str, str], _List] = {}
        self._outbox: MemoryOutbox | None = None

    @property
    def outbox(self) -> MemoryOutbox:
        """The transactional outbox (L{jsonsync.interfaces.IOutbox}), made on first use."""
        if self._outbox is None:
            self._outbox = MemoryOutbox(self)
        return self._outbox

    async def close(self):
        if self._outbox is not None:
            await self._outbox.run_close_hooks()

    @overload
    def _list(self, resource_name: str, parent_id: str, create: Literal[True]) -> _List: ...

    @overload
    def _list(self, resource_name: str, parent_id: str, create: bool = False) -> _List | None: ...

    def _list(self, resource_name: str, parent_id: str, create: bool = False) -> _List | None:
        key = (resource_name, parent_id)
        found = self._lists.get(key)
        if found is None and create:
            found = self._lists[key] = _List()
        return found

    async def heartbeat(self):
        return True

    async def flush(self):
        self._lists.clear()
        if self._outbox is not None:
            self._outbox.flush()

    async def get(self, txn, resource_name, parent_id, object_id):
        await self._locked_read(txn)
        lst = self._list(resource_name, parent_id)
        if lst is None:
            return None
        obj = lst.objects.get(object_id)
        if obj is None or obj.get("deleted"):
            return None
        return dict(obj)

    async def get_many(self, txn, keys):
        return [await self.get(txn, *key) for key in keys]

    async def list_timestamp(self, txn, resource_name, parent_id):
        await self._locked_read(txn)
        lst = self._list(resource_name, parent_id, create=True)
        if lst.timestamp is None:
            lst.timestamp = now_ms()
        return lst.timestamp

    def _live(self, key) -> bool:
        lst = self._list(key[0], key[1])
        found = lst.objects.get(key[2]) if lst else None
        return found is not None and not found.get("deleted")

    async def _write(self, txn, resource_name, parent_id, obj, decide, within=()):
        """
        Store C{obj} once this transaction holds the writers' lock:
        C{decide(old)} sees the stored object of that id (or C{None}) as it
        is then, and returns the client-wanted timestamp (or C{None}),
        raising to refuse the write. Deciding after the lock is what keeps a
        concurrent write from slipping in between the check and the write.
        """
        journal = await self._journal(txn)
        key = (resource_name, parent_id)
        if not all(self._live(ancestor) for ancestor in within):
            raise WriteConflict([key])  # deleted meanwhile: the next attempt says 404
        lst = self._list(resource_name, parent_id, create=True)
        old = lst.objects.get(obj["id"])
        wanted = decide(old)
        old_ts = lst.timestamp
        current = max(
            (lst.order[-1][0] if lst.order else 0), old_ts if old_ts is not None else 0
        )
        stamp, lst.timestamp = next_timestamp(current, wanted)
        stored = dict(obj)
        stored["last_modified"] = stamp
        lst.put(stored)

        def undo():
            target = self._lists.get(key)
            if target is None:
                target = self._lists[key] = lst
            target.remove(stored["id"])
            if old is not None:
                target.put(old)
            target.timestamp = old_ts

        journal.undo.append(undo)
        return dict(stored)

    async def guard(self, txn, resource_name, parent_id, object_id, expected):
        # Holding the writers' lock to the end of the transaction is what
        # keeps the object as it is now.
        await self._journal(txn)
        lst = self._list(resource_name, parent_id)
        found = lst.objects.get(object_id) if lst else None
        if found is None or found.get("deleted") or found["last_modified"] != expected:
            raise WriteConflict([(resource_name, parent_id)])

    async def create(self, txn, resource_name, parent_id, obj, within=()):
        obj = copy.deepcopy(obj)
        wanted = obj.pop("last_modified", None)

        def decide(old):
            if old is not None and not old.get("deleted"):
                raise ObjectExists()
            return wanted

        return await self._write(txn, resource_name, parent_id, obj, decide, within)

    async def update(self, txn, resource_name, parent_id, object_id, obj, expected=None, within=()):
        obj = copy.deepcopy(obj)
        obj["id"] = object_id
        obj.pop("deleted", None)
        wanted = obj.pop("last_modified", None)

        def decide(old):
            live = old is not None and not old.get("deleted")
            check_expected(expected, live, old and old["last_modified"], (resource_name, parent_id))
            if live and isinstance(wanted, int) and wanted <= old["last_modified"]:
                return None
            return wanted

        return await self._write(txn, resource_name, parent_id, obj, decide, within)

    async def delete(self, txn, resource_name, parent_id, object_id, last_modified=None, expected=None,
                     within=()):
        def decide(old):
            live = old is not None and not old.get("deleted")
            check_expected(expected, live, old and old["last_modified"], (resource_name, parent_id))
            if not live:
                raise ObjectNotFound(resource_name, object_id)
            if not isinstance(last_modified, int) or last_modified <= old["last_modified"]:
                return None
            return last_modified

        tombstone = {"id": object_id, "deleted": True}
        return await self._write(txn, resource_name, parent_id, tombstone, decide, within)

    async def purge(self, txn, parent_prefix):
        journal = await self._journal(txn)
        below = parent_prefix + "/"
        removed = {
            key: lst
            for key, lst in self._lists.items()
            if key[1] == parent_prefix or key[1].startswith(below)
        }
        for key in removed:
            del self._lists[key]

        def undo():
            self._lists.update(removed)

        journal.undo.append(undo)

    def _candidates(self, lst: _List, query: Query):
        """
        Objects of the list, in C{query.sorting} order when it is the
        timestamp order (walking the index, and starting where a
        C{last_modified} bound puts it), in no particular order otherwise.
        Returns C{(iterable, already_sorted)}.
        """
        sorting = query.sorting
        if len(sorting) == 1 and sorting[0].field == "last_modified":
            low, high = _timestamp_bounds(query.filters)
            lo = 0 if low is None else bisect_right(lst.order, (low, "\U0010ffff"))
            hi = len(lst.order) if high is None else bisect_left(lst.order, (high, ""))
            objects = lst.objects
            if sorting[0].direction < 0:
                keys = (lst.order[i] for i in range(hi - 1, lo - 1, -1))
            else:
                keys = (lst.order[i] for i in range(lo, hi))
            return (objects[k[1]] for k in keys), True
        return lst.objects.values(), False

    def _select(self, lst: _List, query: Query, limit: int | None):
        candidates, ordered = self._candidates(lst, query)
        ids = query.ids
        result = []
        for obj in candidates:
            if ids is not None and obj["id"] not in ids:
                continue
            if obj.get("deleted") and not query.include_deleted:
                continue
            if query.filters and not matches_all(obj, query.filters):
                continue
            if query.pagination and not any(matches_all(obj, r) for r in query.pagination):
                continue
            result.append(obj)
            if ordered and limit is not None and len(result) >= limit:
                break
        if not ordered:
            result.sort(key=ordering_key(query.sorting))
            if limit is not None:
                del result[limit:]
        return result

    async def list(self, txn, resource_name, parent_id, query):
        await self._locked_read(txn)
        lst = self._list(resource_name, parent_id)
        if lst is None:
            return []
        return self._select(lst, query, query.limit)

    async def list_snapshot(self, txn, resource_name, parent_id, query, encoded=False):
        await self._locked_read(txn)
        timestamp = await self.list_timestamp(txn, resource_name, parent_id)
        return timestamp, await self.list(txn, resource_name, parent_id, query)

    async def count(self, txn, resource_name, parent_id, query):
        await self._locked_read(txn)
        lst = self._list(resource_name, parent_id)
        if lst is None:
            return 0
        plain = Query(filters=query.filters, ids=query.ids, include_deleted=False)
        plain.sorting = ()
        if not plain.filters and plain.ids is None:
            return sum(1 for o in lst.objects.values() if not o.get("deleted"))
        return len(self._select(lst, plain, None))

    # Introspection used by the memory benchmarks and the contract suite.
    def size(self) -> int:
        return sum(len(lst.objects) for lst in self._lists.values())


def _timestamp_bounds(filters: list[Filter]) -> tuple[int | None, int | None]:
    """The exclusive C{(low, high)} bounds that C{last_modified} filters put on a scan."""
    low = high = None
    for flt in filters:
        if flt.field != "last_modified" or not isinstance(flt.value, int):
            continue
        if flt.op is Op.GT or flt.op is Op.MIN:
            bound = flt.value if flt.op is Op.GT else flt.value - 1
            low = bound if low is None else max(low, bound)
        elif flt.op is Op.LT or flt.op is Op.MAX:
            bound = flt.value if flt.op is Op.LT else flt.value + 1
            high = bound if high is None else min(high, bound)
    return low, high


class _ACL(dict):
    """A shared, never modified ACL mapping (a dict that weak references can point to)."""

    __slots__ = ("__weakref__",)


@implementer(IPermissionStore)
class MemoryPermissions(_MemoryBase):
    """
    ACEs by object URI, indexed by parent so that "which children may these
    principals read" looks only at that list. Every change journals the
    previous value of just what it touches.
    """

    def __init__(self, lock: DeferredLock | None = None):
        super().__init__(lock)
        # uri -> permission -> set(principals), never modified in place
        self._aces: dict[str, dict[str, frozenset[str]]] = {}
        self._acl_pool: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # parent prefix ("/buckets/b/collections/") -> set(child ids) having ACEs
        self._children: dict[str, set[str]] = {}
        # member -> set(principals)
        self._members: dict[str, set[str]] = {}

    async def heartbeat(self):
        return True

    async def flush(self):
        self._aces.clear()
        self._acl_pool.clear()
        self._children.clear()
        self._members.clear()

    # -- journalled primitives ---------------------------------------------------
    def _shared(self, perms: Mapping[str, Set[str]]) -> _ACL:
        """
        One immutable copy per distinct ACL: most objects carry the same one
        (their creator's write), so 100,000 records hold one ACL, not 100,000.
        """
        key = tuple(sorted((p, tuple(sorted(s))) for p, s in perms.items() if s))
        found = self._acl_pool.get(key)
        if found is None:
            found = _ACL((p, frozenset(s)) for p, s in key)
            self._acl_pool[key] = found
        return found

    def _set_aces(self, uri: str, perms: Mapping[str, Set[str]] | None):
        prefix, _, child = uri.rpartition("/")
        prefix += "/"
        if perms:
            self._aces[uri] = self._shared(perms)
            self._children.setdefault(prefix, set()).add(child)
        else:
            self._aces.pop(uri, None)
            siblings = self._children.get(prefix)
            if siblings is not None:
                siblings.discard(child)
                if not siblings:
                    del self._children[prefix]

    async def _change_aces(self, txn, uri: str, perms: Mapping[str, Set[str]] | None):
        journal = await self._journal(txn)
        # The stored ACL is never modified in place: undo can put it back as it is.
        old = self._aces.get(uri)
        journal.undo.append(lambda: self._set_aces(uri, old))
        self._set_aces(uri, perms)

    async def _change_member(self, txn, member: str, principals: set[str]):
        journal = await self._journal(txn)
        old = set(self._members.get(member, ()))

        def restore():
            if old:
                self._members[member] = old
            else:
                self._members.pop(member, None)

        journal.undo.append(restore)
        if principals:
            self._members[member] = principals
        else:
            self._members.pop(member, None)

    # -- the interface -------------------------------------------------------------
    async def get_object_permissions(self, txn, object_uri):
        perms = self._aces.get(object_uri, {})
        return {name: set(principals) for name, principals in perms.items() if principals}

    async def replace_object_permissions(self, txn, object_uri, permissions):
        perms = {p: set(s) for p, s in self._aces.get(object_uri, {}).items()}
        for name, principals in permissions.items():
            if principals:
                perms[name] = set(principals)
            else:
                perms.pop(name, None)
        await self._change_aces(txn, object_uri, perms or None)

    async def delete_object_permissions(self, txn, uri_prefix):
        below = uri_prefix + "/"
        doomed = [u for u in self._aces if u == uri_prefix or u.startswith(below)] if self._has_below(
            uri_prefix
        ) else ([uri_prefix] if uri_prefix in self._aces else [])
        for uri in doomed:
            await self._change_aces(txn, uri, None)

    def _has_below(self, uri_prefix: str) -> bool:
        below = uri_prefix + "/"
        return any(prefix.startswith(below) for prefix in self._children)

    async def check(self, txn, principals, grants):
        for uri, perm in grants:
            holders = self._aces.get(uri, {}).get(perm)
            if holders and not holders.isdisjoint(principals):
                return True
        return False

    async def authorize(self, txn, principals, grants, members=None, acl_uri=None):
        groups = await self.user_principals(txn, members) if members is not None else None
        everyone = set(principals) | (groups or set())
        allowed = await self.check(txn, everyone, grants)
        acl = await self.get_object_permissions(txn, acl_uri) if acl_uri is not None else None
        return allowed, groups, acl

    async def accessible_children(self, txn, principals, uri_prefix, permissions):
        principals = set(principals)
        found = set()
        for child in self._children.get(uri_prefix, ()):
            perms = self._aces.get(uri_prefix + child, {})
            if any(not perms.get(p, set()).isdisjoint(principals) for p in permissions):
                found.add(child)
        return found

    async def accessible_objects(self, txn, principals):
        principals = set(principals)
        result: dict[str, set[str]] = {}
        for uri, perms in self._aces.items():
            held = {p for p, holders in perms.items() if not holders.isdisjoint(principals)}
            if held:
                result[uri] = held
        return result

    async def user_principals(self, txn, members):
        found: set[str] = set()
        for member in members:
            found |= self._members.get(member, set())
        return found

    async def add_user_principal(self, txn, member, principal):
        await self._change_member(txn, member, self._members.get(member, set()) | {principal})

    async def remove_user_principal(self, txn, member, principal):
        await self._change_member(txn, member, self._members.get(member, set()) - {principal})

    async def remove_principal(self, txn, principal):
        for member in [m for m, p in self._members.items() if principal in p]:
            await self._change_member(txn, member, self._members[member] - {principal})
        touched = [u for u, perms in self._aces.items() if any(principal in s for s in perms.values())]
        for uri in touched:
            perms = {p: s - {principal} for p, s in self._aces[uri].items()}
            await self._change_aces(txn, uri, {p: s for p, s in perms.items() if s} or None)

    async def remove_principal_prefix(self, txn, prefix):
        for member in list(self._members):
            principals = self._members[member]
            kept = {p for p in principals if not p.startswith(prefix)}
            if kept != principals:
                await self._change_member(txn, member, kept)


@implementer(IStorageBackend)
class MemoryBackend:
    """Builds the memory storage and permission store (sharing one write lock)."""

    name = "memory"
    settings: dict[str, Any] = {}

    async def open_storage(self, settings, reactor):
        return MemoryStorage()

    async def open_permissions(self, settings, reactor, storage):
        lock = storage._lock if isinstance(storage, MemoryStorage) else None
        return MemoryPermissions(lock)
