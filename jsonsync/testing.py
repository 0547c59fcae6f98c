"""
Shipped test support: the contract suites every storage and permission
backend binds, grouped by capability. They use only the interfaces and
the domain types (L{jsonsync.interfaces}, L{jsonsync.errors},
L{jsonsync.query}); the HTTP test client is L{jsonsync.testclient}.

A backend's test module binds them like this::

    class MemoryStorageTests(StorageContract, TestCase):
        async def make_backend(self):
            backend = MemoryBackend()
            storage = await backend.open_storage(settings, reactor)
            return storage, await backend.open_permissions(settings, reactor, storage)

C{make_backend} must return an empty storage and permission store; the
suite flushes them in cleanup. A backend that cannot honour a test marks it
C{skip} with a reason in its binding; it never overrides it with C{pass}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface.verify import verifyObject

from jsonsync.errors import ObjectExists, ObjectNotFound, WriteConflict
from jsonsync.interfaces import IPermissionStore, IStorage, ITransaction
from jsonsync.query import MISSING, Filter, Op, Query, Sort, keyset_rules

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object

R = "record"
P = "/buckets/b/collections/c"
BY_ID = (Sort("id", 1),)


class _BackendFixture(_Base):
    async def make_backend(self):
        raise NotImplementedError

    # trial runs a coroutine setUp (the standard library's stubs say None).
    async def setUp(self) -> None:  # type: ignore[override]
        self.storage, self.permissions = await self.make_backend()

        async def cleanup():
            await self.storage.flush()
            await self.permissions.flush()

        self.addCleanup(cleanup)

    async def run_in_txn(self, func, *args):
        txn = self.storage.transaction()
        try:
            result = await func(txn, *args)
        except BaseException:
            await txn.rollback()
            raise
        await txn.commit()
        return result

    async def create(self, obj, resource=R, parent=P):
        return await self.run_in_txn(
            lambda txn: self.storage.create(txn, resource, parent, obj)
        )

    async def list(self, query=None, resource=R, parent=P):
        txn = self.storage.transaction()
        try:
            return await self.storage.list(txn, resource, parent, query or Query())
        finally:
            await txn.rollback()

    async def ids(self, query=None, **kw):
        return [o["id"] for o in await self.list(query, **kw)]


class StorageInterfaceContract(_BackendFixture):
    async def test_provides_interfaces(self):
        self.assertTrue(verifyObject(IStorage, self.storage))
        self.assertTrue(verifyObject(IPermissionStore, self.permissions))
        self.assertTrue(verifyObject(ITransaction, self.storage.transaction()))

    async def test_heartbeat(self):
        self.assertTrue(await self.storage.heartbeat())


class CreateReadContract(_BackendFixture):
    async def test_create_then_get(self):
        created = await self.create({"id": "a", "title": "x", "n": {"deep": [1, 2]}})
        self.assertEqual(created["id"], "a")
        self.assertIsInstance(created["last_modified"], int)
        txn = self.storage.transaction()
        got = await self.storage.get(txn, R, P, "a")
        await txn.rollback()
        self.assertEqual(got, created)

    async def test_get_many_in_order_with_gaps(self):
        await self.create({"id": "a", "v": 1})
        await self.create({"id": "c"}, resource="collection", parent="/buckets/b")
        await self.create({"id": "gone"})
        await self.run_in_txn(lambda txn: self.storage.delete(txn, R, P, "gone"))
        txn = self.storage.transaction()
        found = await self.storage.get_many(
            txn, [("collection", "/buckets/b", "c"), (R, P, "zz"), (R, P, "a"), (R, P, "gone")]
        )
        await txn.rollback()
        self.assertEqual([o and o["id"] for o in found], ["c", None, "a", None])
        self.assertEqual(found[2]["v"], 1)

    async def test_get_missing_is_none(self):
        txn = self.storage.transaction()
        self.assertIsNone(await self.storage.get(txn, R, P, "nope"))
        await txn.rollback()

    async def test_lists_are_separate(self):
        await self.create({"id": "a"})
        await self.create({"id": "a"}, parent="/buckets/b/collections/other")
        await self.create({"id": "a"}, resource="group", parent="/buckets/b")
        self.assertEqual(await self.ids(), ["a"])
        self.assertEqual(await self.ids(parent="/buckets/b/collections/other"), ["a"])

    async def test_create_existing_raises(self):
        await self.create({"id": "a"})
        with self.assertRaises(ObjectExists):
            await self.create({"id": "a"})

    async def test_create_over_tombstone(self):
        await self.create({"id": "a"})
        await self.run_in_txn(lambda txn: self.storage.delete(txn, R, P, "a"))
        again = await self.create({"id": "a", "v": 2})
        self.assertEqual(again["v"], 2)
        everything = await self.list(Query(include_deleted=True))
        self.assertEqual([(o["id"], o.get("deleted", False)) for o in everything], [("a", False)])

    async def test_unicode_and_big_values_roundtrip(self):
        obj = {"id": "u", "text": "h\u00e9llo \u2603 \U0001f600", "f": 1.5, "neg": -3, "n": None}
        created = await self.create(obj)
        txn = self.storage.transaction()
        got = await self.storage.get(txn, R, P, "u")
        await txn.rollback()
        self.assertEqual(got, created)
        self.assertEqual(got["text"], obj["text"])


class UpdateDeleteContract(_BackendFixture):
    async def test_update_replaces(self):
        first = await self.create({"id": "a", "x": 1, "y": 2})
        updated = await self.run_in_txn(
            lambda txn: self.storage.update(txn, R, P, "a", {"id": "a", "x": 3})
        )
        self.assertEqual(updated["x"], 3)
        self.assertNotIn("y", updated)
        self.assertGreater(updated["last_modified"], first["last_modified"])

    async def test_update_creates_when_missing(self):
        made = await self.run_in_txn(lambda txn: self.storage.update(txn, R, P, "n", {"v": 1}))
        self.assertEqual(made["id"], "n")
        self.assertEqual(await self.ids(), ["n"])

    async def test_delete_leaves_tombstone(self):
        await self.create({"id": "a", "secret": "s"})
        tomb = await self.run_in_txn(lambda txn: self.storage.delete(txn, R, P, "a"))
        self.assertEqual(set(tomb), {"id", "last_modified", "deleted"})
        self.assertTrue(tomb["deleted"])
        self.assertEqual(await self.ids(), [])
        everything = await self.list(Query(include_deleted=True))
        self.assertEqual(everything, [tomb])

    async def test_delete_missing_raises(self):
        with self.assertRaises(ObjectNotFound):
            await self.run_in_txn(lambda txn: self.storage.delete(txn, R, P, "zz"))

    async def test_delete_with_forced_timestamp(self):
        obj = await self.create({"id": "a"})
        forced = obj["last_modified"] + 100000
        tomb = await self.run_in_txn(
            lambda txn: self.storage.delete(txn, R, P, "a", last_modified=forced)
        )
        self.assertEqual(tomb["last_modified"], forced)

    async def test_purge_cascades_below_prefix(self):
        await self.create({"id": "c"}, resource="collection", parent="/buckets/b")
        await self.create({"id": "r"})
        await self.create({"id": "keep"}, parent="/buckets/bb/collections/c")
        await self.run_in_txn(lambda txn: self.storage.purge(txn, "/buckets/b"))
        self.assertEqual(await self.ids(resource="collection", parent="/buckets/b"), [])
        self.assertEqual(await self.list(Query(include_deleted=True)), [])
        self.assertEqual(await self.ids(parent="/buckets/bb/collections/c"), ["keep"])


class TimestampContract(_BackendFixture):
    async def test_strictly_increasing_per_list(self):
        stamps = []
        for i in range(30):
            stamps.append((await self.create({"id": f"r{i}"}))["last_modified"])
        self.assertEqual(stamps, sorted(set(stamps)))

    async def test_list_timestamp_is_max(self):
        await self.create({"id": "a"})
        last = await self.create({"id": "b"})
        txn = self.storage.transaction()
        ts = await self.storage.list_timestamp(txn, R, P)
        await txn.rollback()
        self.assertEqual(ts, last["last_modified"])

    async def test_list_timestamp_of_empty_list_is_stable(self):
        txn = self.storage.transaction()
        first = await self.storage.list_timestamp(txn, R, "/nothing/here")
        await txn.commit()
        txn = self.storage.transaction()
        second = await self.storage.list_timestamp(txn, R, "/nothing/here")
        await txn.commit()
        self.assertEqual(first, second)
        created = await self.create({"id": "x"}, parent="/nothing/here")
        self.assertGreater(created["last_modified"], first)

    async def test_delete_bumps_list_timestamp(self):
        obj = await self.create({"id": "a"})
        tomb = await self.run_in_txn(lambda txn: self.storage.delete(txn, R, P, "a"))
        self.assertGreater(tomb["last_modified"], obj["last_modified"])
        txn = self.storage.transaction()
        self.assertEqual(await self.storage.list_timestamp(txn, R, P), tomb["last_modified"])
        await txn.rollback()

    async def test_client_timestamp_in_future_moves_list(self):
        await self.create({"id": "a"})
        future = 4102444800000  # 2100-01-01
        created = await self.create({"id": "b", "last_modified": future})
        self.assertEqual(created["last_modified"], future)
        after = await self.create({"id": "c"})
        self.assertEqual(after["last_modified"], future + 1)

    async def test_client_timestamp_in_past_kept_without_moving_list(self):
        latest = await self.create({"id": "a"})
        old = await self.create({"id": "b", "last_modified": 1000})
        self.assertEqual(old["last_modified"], 1000)
        txn = self.storage.transaction()
        self.assertEqual(await self.storage.list_timestamp(txn, R, P), latest["last_modified"])
        await txn.rollback()

    async def test_client_timestamp_equal_to_list_is_bumped(self):
        latest = await self.create({"id": "a"})
        same = await self.create({"id": "b", "last_modified": latest["last_modified"]})
        self.assertEqual(same["last_modified"], latest["last_modified"] + 1)

    async def test_update_ignores_older_client_timestamp(self):
        obj = await self.create({"id": "a"})
        updated = await self.run_in_txn(
            lambda txn: self.storage.update(
                txn, R, P, "a", {"last_modified": obj["last_modified"] - 10}
            )
        )
        self.assertGreater(updated["last_modified"], obj["last_modified"])


class TransactionContract(_BackendFixture):
    async def test_rollback_undoes_everything(self):
        await self.create({"id": "keep", "v": 1})
        txn = self.storage.transaction()
        await self.storage.create(txn, R, P, {"id": "new"})
        await self.storage.update(txn, R, P, "keep", {"v": 2})
        await self.storage.delete(txn, R, P, "new")
        await self.permissions.replace_object_permissions(txn, P + "/records/keep", {"read": ["u"]})
        await self.permissions.add_user_principal(txn, "u", "/buckets/b/groups/g")
        await txn.rollback()
        everything = await self.list(Query(include_deleted=True))
        self.assertEqual([(o["id"], o["v"]) for o in everything], [("keep", 1)])
        txn = self.storage.transaction()
        self.assertEqual(await self.permissions.get_object_permissions(txn, P + "/records/keep"), {})
        self.assertEqual(await self.permissions.user_principals(txn, ["u"]), set())
        await txn.rollback()

    async def test_after_commit_runs_only_on_commit(self):
        calls = []
        txn = self.storage.transaction()
        await self.storage.create(txn, R, P, {"id": "a"})
        txn.after_commit(lambda: calls.append("first"))
        await txn.rollback()
        txn = self.storage.transaction()
        await self.storage.create(txn, R, P, {"id": "b"})
        txn.after_commit(lambda: calls.append("second"))
        await txn.commit()
        self.assertEqual(calls, ["second"])

    async def test_commit_is_visible_to_next_transaction(self):
        txn = self.storage.transaction()
        await self.storage.create(txn, R, P, {"id": "a"})
        await self.permissions.replace_object_permissions(txn, P + "/records/a", {"write": ["u"]})
        await txn.commit()
        self.assertEqual(await self.ids(), ["a"])
        txn = self.storage.transaction()
        perms = await self.permissions.get_object_permissions(txn, P + "/records/a")
        await txn.rollback()
        self.assertEqual(perms, {"write": {"u"}})


class ListingContract(_BackendFixture):
    async def seed(self):
        objs = [
            {"id": "a", "status": "x", "n": 1, "tags": ["red", "blue"], "sub": {"k": 3}},
            {"id": "b", "status": "y", "n": 2, "tags": ["red"], "sub": {"k": 1}},
            {"id": "c", "status": "x", "n": 10, "tags": [], "title": "Hello World"},
            {"id": "d", "status": None, "n": "10", "title": "hello there"},
            {"id": "e", "n": True, "dotted.key": 5},
        ]
        self.made = [await self.create(o) for o in objs]

    async def walk(self, sorting, size) -> list[str]:
        """The ids of the whole list, page by page, following keyset rules."""
        seen: list[str] = []
        query = Query(sorting=sorting, limit=size)
        while True:
            page = await self.list(query)
            seen.extend(o["id"] for o in page)
            if len(page) < size:
                return seen
            last = {s.field: page[-1].get(s.field, MISSING) for s in sorting}
            query = Query(sorting=sorting, limit=size, pagination=keyset_rules(sorting, last))

    async def filtered(self, *filters, sorting=BY_ID):
        return await self.ids(Query(filters=list(filters), sorting=tuple(sorting)))

    async def test_default_sort_newest_first(self):
        await self.seed()
        self.assertEqual(await self.ids(), ["e", "d", "c", "b", "a"])

    async def test_equality_is_typed(self):
        await self.seed()
        self.assertEqual(await self.filtered(Filter("n", 10)), ["c"])
        self.assertEqual(await self.filtered(Filter("n", "10")), ["d"])
        self.assertEqual(await self.filtered(Filter("n", 1)), ["a"])
        self.assertEqual(await self.filtered(Filter("status", None)), ["d"])

    async def test_not_and_exclude_match_missing(self):
        await self.seed()
        self.assertEqual(await self.filtered(Filter("status", "x", Op.NOT)), ["b", "d", "e"])
        self.assertEqual(await self.filtered(Filter("status", ["x", "y"], Op.EXCLUDE)), ["d", "e"])

    async def test_in(self):
        await self.seed()
        self.assertEqual(await self.filtered(Filter("n", [1, 2, "10"], Op.IN)), ["a", "b", "d"])
        self.assertEqual(await self.filtered(Filter("id", ["a", "e"], Op.IN)), ["a", "e"])

    async def test_comparisons_follow_type_order(self):
        await self.seed()
        # numbers: 1, 2, 10 ; "10" is a string (< numbers) ; True is a boolean (> numbers)
        self.assertEqual(await self.filtered(Filter("n", 2, Op.LT)), ["a", "d"])
        self.assertEqual(await self.filtered(Filter("n", 2, Op.MAX)), ["a", "b", "d"])
        self.assertEqual(await self.filtered(Filter("n", 2, Op.GT)), ["c", "e"])
        self.assertEqual(await self.filtered(Filter("n", 2, Op.MIN)), ["b", "c", "e"])

    async def test_gt_matches_missing_lt_does_not(self):
        await self.seed()
        self.assertEqual(await self.filtered(Filter("title", "A", Op.GT)), ["a", "b", "c", "d", "e"])
        self.assertEqual(await self.filtered(Filter("title", "zzz", Op.LT)), ["c", "d"])

    async def test_like(self):
        await self.seed()
        self.assertEqual(await self.filtered(Filter("title", "hello", Op.LIKE)), ["c", "d"])
        self.assertEqual(await self.filtered(Filter("title", "*world", Op.LIKE)), ["c"])
        self.assertEqual(await self.filtered(Filter("title", "h*there", Op.LIKE)), ["d"])
        self.assertEqual(await self.filtered(Filter("title", "", Op.LIKE)), ["c", "d"])
        self.assertEqual(await self.filtered(Filter("n", "1", Op.LIKE)), ["d"])

    async def test_has(self):
        await self.seed()
        self.assertEqual(await self.filtered(Filter("status", True, Op.HAS)), ["a", "b", "c", "d"])
        self.assertEqual(await self.filtered(Filter("status", False, Op.HAS)), ["e"])

    async def test_contains(self):
        await self.seed()
        self.assertEqual(await self.filtered(Filter("tags", ["red"], Op.CONTAINS)), ["a", "b"])
        self.assertEqual(await self.filtered(Filter("tags", ["red", "blue"], Op.CONTAINS)), ["a"])
        self.assertEqual(
            await self.filtered(Filter("tags", ["blue", "nope"], Op.CONTAINS_ANY)), ["a"]
        )
        self.assertEqual(await self.filtered(Filter("status", ["x"], Op.CONTAINS)), [])

    async def test_nested_and_dotted_fields(self):
        await self.seed()
        self.assertEqual(await self.filtered(Filter("sub.k", 3)), ["a"])
        self.assertEqual(await self.filtered(Filter("dotted.key", 5)), ["e"])
        self.assertEqual(await self.filtered(Filter("sub.k", 1, Op.MIN)), ["a", "b", "c", "d", "e"])

    async def test_filters_are_anded(self):
        await self.seed()
        self.assertEqual(
            await self.filtered(Filter("status", "x"), Filter("n", 5, Op.GT)), ["c"]
        )

    async def test_sort_ascending_and_descending_with_missing(self):
        await self.seed()
        self.assertEqual(
            await self.ids(Query(sorting=(Sort("sub.k", 1), Sort("id", 1)))),
            ["b", "a", "c", "d", "e"],
        )
        self.assertEqual(
            await self.ids(Query(sorting=(Sort("sub.k", -1), Sort("id", 1)))),
            ["c", "d", "e", "a", "b"],
        )

    async def test_sort_mixed_types(self):
        await self.seed()
        # null? none here; "10" (string) < 1 < 2 < 10 (numbers) < True (boolean)
        self.assertEqual(
            await self.ids(Query(sorting=(Sort("n", 1),))), ["d", "a", "b", "c", "e"]
        )

    async def test_limit(self):
        await self.seed()
        self.assertEqual(await self.ids(Query(limit=2)), ["e", "d"])
        self.assertEqual(await self.ids(Query(limit=2, sorting=(Sort("id", 1),))), ["a", "b"])

    async def test_ids_restriction(self):
        await self.seed()
        self.assertEqual(await self.ids(Query(ids=frozenset({"b", "d", "zz"}))), ["d", "b"])
        self.assertEqual(await self.ids(Query(ids=frozenset())), [])

    async def test_since_and_before(self):
        await self.seed()
        ts = [o["last_modified"] for o in self.made]
        since = Query(filters=[Filter("last_modified", ts[1], Op.GT)], include_deleted=True)
        self.assertEqual(await self.ids(since), ["e", "d", "c"])
        before = Query(filters=[Filter("last_modified", ts[1], Op.LT)], include_deleted=True)
        self.assertEqual(await self.ids(before), ["a"])

    async def test_tombstones_only_when_asked_and_filtered(self):
        await self.seed()
        await self.run_in_txn(lambda txn: self.storage.delete(txn, R, P, "a"))
        self.assertNotIn("a", await self.ids())
        with_deleted = await self.list(Query(include_deleted=True, limit=1))
        self.assertEqual(with_deleted[0]["id"], "a")
        self.assertTrue(with_deleted[0]["deleted"])
        only_deleted = Query(filters=[Filter("deleted", True)], include_deleted=True)
        self.assertEqual(await self.ids(only_deleted), ["a"])

    async def test_keyset_pagination_visits_everything_once(self):
        for i in range(23):
            await self.create({"id": f"r{i:02d}", "group": i % 3})
        for sorting in [
            (Sort("last_modified", -1),),
            (Sort("group", 1), Sort("last_modified", -1)),
            (Sort("group", -1), Sort("id", 1)),
        ]:
            seen = await self.walk(sorting, 5)
            self.assertEqual(sorted(seen), [f"r{i:02d}" for i in range(23)])
            self.assertEqual(len(seen), 23)

    async def test_keyset_pagination_over_missing_values(self):
        for i in range(6):
            await self.create({"id": f"m{i}", **({"k": i} if i % 2 else {})})
        seen = await self.walk((Sort("k", 1), Sort("id", 1)), 2)
        self.assertEqual(seen, ["m1", "m3", "m5", "m0", "m2", "m4"])

    async def test_count(self):
        await self.seed()
        await self.run_in_txn(lambda txn: self.storage.delete(txn, R, P, "a"))
        txn = self.storage.transaction()
        self.assertEqual(await self.storage.count(txn, R, P, Query()), 4)
        self.assertEqual(
            await self.storage.count(txn, R, P, Query(filters=[Filter("status", "x")])), 1
        )
        self.assertEqual(
            await self.storage.count(txn, R, P, Query(ids=frozenset({"b", "c", "a"}))), 2
        )
        await txn.rollback()


class PermissionContract(_BackendFixture):
    async def txn_do(self, func):
        return await self.run_in_txn(func)

    async def test_replace_and_get(self):
        uri = "/buckets/b"
        await self.txn_do(
            lambda t: self.permissions.replace_object_permissions(
                t, uri, {"read": ["a", "b"], "write": ["c"]}
            )
        )
        await self.txn_do(
            lambda t: self.permissions.replace_object_permissions(t, uri, {"read": [], "x:create": ["d"]})
        )
        got = await self.txn_do(lambda t: self.permissions.get_object_permissions(t, uri))
        self.assertEqual(got, {"write": {"c"}, "x:create": {"d"}})

    async def test_check(self):
        await self.txn_do(
            lambda t: self.permissions.replace_object_permissions(t, "/buckets/b", {"write": ["u"]})
        )
        p = self.permissions
        self.assertTrue(await self.txn_do(lambda t: p.check(t, ["x", "u"], [("/buckets/b", "write")])))
        self.assertFalse(await self.txn_do(lambda t: p.check(t, ["x"], [("/buckets/b", "write")])))
        self.assertFalse(await self.txn_do(lambda t: p.check(t, ["u"], [("/buckets/b", "read")])))
        self.assertFalse(await self.txn_do(lambda t: p.check(t, ["u"], [])))

    async def test_authorize_in_one_call(self):
        p = self.permissions
        g = "/buckets/b/groups/g"
        await self.txn_do(lambda t: p.add_user_principal(t, "alice", g))
        await self.txn_do(lambda t: p.replace_object_permissions(t, "/buckets/b", {"write": [g], "read": ["x"]}))
        grants = [("/buckets/b", "write")]
        allowed, groups, acl = await self.txn_do(
            lambda t: p.authorize(t, ["alice"], grants, members=["alice"], acl_uri="/buckets/b")
        )
        self.assertTrue(allowed)  # through the group loaded in the same call
        self.assertEqual(groups, {g})
        self.assertEqual(acl, {"write": {g}, "read": {"x"}})
        allowed, groups, acl = await self.txn_do(lambda t: p.authorize(t, ["alice"], grants))
        self.assertFalse(allowed)  # without members, groups are not looked up
        self.assertIsNone(groups)
        self.assertIsNone(acl)
        allowed, _, acl = await self.txn_do(
            lambda t: p.authorize(t, ["bob"], grants, members=["bob"], acl_uri="/buckets/none")
        )
        self.assertFalse(allowed)
        self.assertEqual(acl, {})

    async def test_delete_by_prefix(self):
        p = self.permissions
        for uri in ["/buckets/b", "/buckets/b/collections/c", "/buckets/bb"]:
            await self.txn_do(lambda t, uri=uri: p.replace_object_permissions(t, uri, {"read": ["u"]}))
        await self.txn_do(lambda t: p.delete_object_permissions(t, "/buckets/b"))
        objs = await self.txn_do(lambda t: p.accessible_objects(t, ["u"]))
        self.assertEqual(objs, {"/buckets/bb": {"read"}})

    async def test_accessible_children(self):
        p = self.permissions
        base = "/buckets/b/collections/c/records/"
        await self.txn_do(lambda t: p.replace_object_permissions(t, base + "r1", {"read": ["u"]}))
        await self.txn_do(lambda t: p.replace_object_permissions(t, base + "r2", {"write": ["u"]}))
        await self.txn_do(lambda t: p.replace_object_permissions(t, base + "r3", {"read": ["v"]}))
        await self.txn_do(
            lambda t: p.replace_object_permissions(t, "/buckets/b/collections/c", {"read": ["u"]})
        )
        found = await self.txn_do(lambda t: p.accessible_children(t, ["u"], base, ["read", "write"]))
        self.assertEqual(found, {"r1", "r2"})
        found = await self.txn_do(lambda t: p.accessible_children(t, ["u"], base, ["write"]))
        self.assertEqual(found, {"r2"})

    async def test_group_membership(self):
        p = self.permissions
        await self.txn_do(lambda t: p.add_user_principal(t, "alice", "/buckets/b/groups/g1"))
        await self.txn_do(lambda t: p.add_user_principal(t, "alice", "/buckets/c/groups/g2"))
        await self.txn_do(
            lambda t: p.add_user_principal(t, "system.Authenticated", "/buckets/b/groups/all")
        )
        got = await self.txn_do(lambda t: p.user_principals(t, ["alice", "system.Authenticated"]))
        self.assertEqual(got, {"/buckets/b/groups/g1", "/buckets/c/groups/g2", "/buckets/b/groups/all"})
        await self.txn_do(lambda t: p.remove_user_principal(t, "alice", "/buckets/c/groups/g2"))
        await self.txn_do(lambda t: p.remove_principal_prefix(t, "/buckets/b/"))
        got = await self.txn_do(lambda t: p.user_principals(t, ["alice", "system.Authenticated"]))
        self.assertEqual(got, set())

    async def test_remove_principal_everywhere(self):
        p = self.permissions
        g = "/buckets/b/groups/g"
        await self.txn_do(lambda t: p.add_user_principal(t, "alice", g))
        await self.txn_do(lambda t: p.replace_object_permissions(t, "/buckets/b", {"read": [g, "x"]}))
        await self.txn_do(lambda t: p.remove_principal(t, g))
        self.assertEqual(await self.txn_do(lambda t: p.user_principals(t, ["alice"])), set())
        got = await self.txn_do(lambda t: p.get_object_permissions(t, "/buckets/b"))
        self.assertEqual(got, {"read": {"x"}})


class ConcurrencyContract(_BackendFixture):
    """
    Writers racing on one object or one list, each in its own transaction
    (on a database backend, each on its own connection). What every backend
    guarantees: a compare-and-swap write (C{expected}) never commits over a
    version it did not decide on, of two creates of one id exactly one
    wins, a transaction that names its lists up front (C{lock_lists}) reads
    what its writes commit over, and list locks never deadlock.
    """

    async def together(self, *coroutines):
        """Run the coroutines concurrently; C{[(ok, result or exception)]}."""
        from twisted.internet.defer import Deferred, DeferredList

        found = await DeferredList([Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True)
        return [(ok, value if ok else value.value) for ok, value in found]

    async def attempt(self, func, locks=(), last_write=False):
        """One transaction running C{func(txn)}, committed; rolled back on any error."""
        txn = self.storage.transaction()
        txn.lock_lists = tuple(locks)
        try:
            txn.last_write = last_write
            result = await func(txn)
        except BaseException:
            await txn.rollback()
            raise
        await txn.commit()
        return result

    async def retrying(self, func, attempts=20):
        """What the server does with a request: run again after a write conflict, its lists locked first."""
        locks: frozenset = frozenset()
        for _ in range(attempts):
            try:
                return await self.attempt(func, locks)
            except WriteConflict as conflict:
                self.assertFalse(conflict.deadlock, "the backend had to break a deadlock")
                locks |= conflict.lists
        self.fail(f"no progress after {attempts} attempts")

    async def stored(self, object_id, parent=P):
        txn = self.storage.transaction()
        try:
            return await self.storage.get(txn, R, parent, object_id)
        finally:
            await txn.rollback()

    async def test_conditional_updates_exactly_one_wins(self):
        base = await self.create({"id": "a", "v": 0})

        def write(n, last_write):
            return self.attempt(
                lambda txn: self.storage.update(txn, R, P, "a", {"v": n}, expected=base["last_modified"]),
                last_write=last_write,
            )

        for last_write in (False, True):  # in an open transaction, and carrying the commit
            base = await self.stored("a")
            outcomes = await self.together(*(write(n, last_write) for n in range(1, 6)))
            winners = [value for ok, value in outcomes if ok]
            self.assertEqual(len(winners), 1, outcomes)
            for ok, value in outcomes:
                if not ok:
                    self.assertIsInstance(value, WriteConflict)
            now = await self.stored("a")
            self.assertEqual(now["v"], winners[0]["v"])
            self.assertEqual(now["last_modified"], winners[0]["last_modified"])

    async def test_refused_write_commits_nothing_sent_with_it(self):
        base = await self.create({"id": "a", "v": 0})
        await self.run_in_txn(lambda txn: self.storage.update(txn, R, P, "a", {"v": 1}))

        async def stale(txn):
            await self.permissions.replace_object_permissions(txn, P + "/records/a", {"read": ["mallory"]})
            return await self.storage.update(txn, R, P, "a", {"v": 2}, expected=base["last_modified"])

        for last_write in (False, True):
            with self.assertRaises(WriteConflict):
                await self.attempt(stale, last_write=last_write)
        self.assertEqual((await self.stored("a"))["v"], 1)
        txn = self.storage.transaction()
        self.assertEqual(await self.permissions.get_object_permissions(txn, P + "/records/a"), {})
        await txn.rollback()

    async def test_concurrent_merges_lose_no_field(self):
        await self.create({"id": "a"})

        def merge(n):
            async def once(txn):
                current = await self.storage.get(txn, R, P, "a")
                data = {k: v for k, v in current.items() if k != "last_modified"}
                data[f"f{n}"] = n
                return await self.storage.update(txn, R, P, "a", data, expected=current["last_modified"])

            return self.retrying(once)

        outcomes = await self.together(*(merge(n) for n in range(8)))
        self.assertTrue(all(ok for ok, _ in outcomes), outcomes)
        final = await self.stored("a")
        self.assertEqual({k: v for k, v in final.items() if k.startswith("f")}, {f"f{n}": n for n in range(8)})

    async def test_concurrent_creates_of_one_id_one_wins(self):
        def make(n, last_write):
            return self.attempt(
                lambda txn: self.storage.create(txn, R, P, {"id": f"x{int(last_write)}", "n": n}),
                last_write=last_write,
            )

        for last_write in (False, True):
            outcomes = await self.together(*(make(n, last_write) for n in range(6)))
            winners = [value for ok, value in outcomes if ok]
            self.assertEqual(len(winners), 1, outcomes)
            self.assertTrue(all(isinstance(v, ObjectExists) for ok, v in outcomes if not ok), outcomes)
            self.assertEqual((await self.stored(f"x{int(last_write)}"))["n"], winners[0]["n"])

    async def test_delete_racing_update_no_resurrection(self):
        base = await self.create({"id": "a", "v": 0})
        seen = base["last_modified"]
        outcomes = await self.together(
            self.attempt(lambda txn: self.storage.delete(txn, R, P, "a", expected=seen)),
            self.attempt(lambda txn: self.storage.update(txn, R, P, "a", {"v": 1}, expected=seen)),
        )
        self.assertEqual(sum(ok for ok, _ in outcomes), 1, outcomes)
        deleted_won = outcomes[0][0]
        if deleted_won:
            self.assertIsNone(await self.stored("a"))  # the update did not bring it back
        else:
            self.assertEqual((await self.stored("a"))["v"], 1)  # the delete did not remove the new version
        # A write that decided on a version since deleted never lands.
        fresh = await self.create({"id": "b"})
        await self.run_in_txn(lambda txn: self.storage.delete(txn, R, P, "b"))
        with self.assertRaises(WriteConflict):
            await self.attempt(
                lambda txn: self.storage.update(txn, R, P, "b", {"v": 2}, expected=fresh["last_modified"]),
                last_write=True,
            )
        with self.assertRaises(WriteConflict):
            await self.attempt(lambda txn: self.storage.delete(txn, R, P, "b", expected=fresh["last_modified"]))
        self.assertIsNone(await self.stored("b"))

    async def test_concurrent_writes_get_unique_timestamps(self):
        outcomes = await self.together(
            *(self.attempt(lambda txn, n=n: self.storage.create(txn, R, P, {"id": f"o{n}"}), last_write=n % 2 == 0)
              for n in range(24))
        )
        self.assertTrue(all(ok for ok, _ in outcomes), outcomes)
        stamps = [value["last_modified"] for _, value in outcomes]
        self.assertEqual(len(set(stamps)), len(stamps))
        txn = self.storage.transaction()
        listed = await self.storage.list_timestamp(txn, R, P)
        await txn.rollback()
        self.assertEqual(listed, max(stamps))

    async def test_named_lists_are_read_under_their_lock(self):
        """A transaction naming its lists reads after a concurrent writer's commit, never before."""
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
        from twisted.internet.task import deferLater

        await self.create({"id": "a", "v": 0})
        writer = self.storage.transaction()
        await self.storage.update(writer, R, P, "a", {"v": 1})  # holds the list's write lock, uncommitted
        reader = self.storage.transaction()
        reader.lock_lists = ((R, P),)
        read = Deferred.fromCoroutine(self.storage.get(reader, R, P, "a"))
        await deferLater(reactor, 0.1, lambda: None)  # the read reaches the backend and waits
        await writer.commit()
        self.assertEqual((await read)["v"], 1)
        await reader.rollback()

    async def test_guard_refuses_a_changed_object_and_holds_off_its_writers(self):
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
        from twisted.internet.task import deferLater

        coll = ("collection", "/buckets/b")
        first = await self.create({"id": "c", "schema": 1}, *coll)
        await self.run_in_txn(lambda txn: self.storage.update(txn, *coll, "c", {"schema": 2}))
        with self.assertRaises(WriteConflict):
            await self.attempt(lambda txn: self.storage.guard(txn, *coll, "c", first["last_modified"]))
        current = await self.run_in_txn(lambda txn: self.storage.get(txn, *coll, "c"))
        guarded = self.storage.transaction()
        await self.storage.guard(guarded, *coll, "c", current["last_modified"])
        order = []
        writer = Deferred.fromCoroutine(
            self.attempt(lambda txn: self.storage.update(txn, *coll, "c", {"schema": 3}))
        )
        writer.addCallback(lambda _: order.append("schema changed"))
        await deferLater(reactor, 0.1, lambda: None)  # the writer reaches the backend and waits
        await self.storage.create(guarded, R, "/buckets/b/collections/c", {"id": "r", "schema": 2})
        order.append("record committed")
        await guarded.commit()
        await writer
        self.assertEqual(order, ["record committed", "schema changed"])

    async def test_lists_written_in_opposite_orders_do_not_deadlock(self):
        x, y = "/buckets/b/collections/x", "/buckets/b/collections/y"
        await self.create({"id": "a"}, parent=x)
        await self.create({"id": "a"}, parent=y)

        def both(first, second, tag):
            async def run(txn):
                await self.storage.update(txn, R, first, "a", {"by": tag})
                await self.storage.update(txn, R, second, "a", {"by": tag})
                return tag

            return self.retrying(run)

        for _ in range(5):
            outcomes = await self.together(both(x, y, "xy"), both(y, x, "yx"), both(x, y, "xy2"), both(y, x, "yx2"))
            # Every transaction commits (none broken by a deadlock, none a 503).
            self.assertTrue(all(ok for ok, _ in outcomes), outcomes)
            # Each commits whole: both lists show the same, last, writer.
            self.assertEqual((await self.stored("a", x))["by"], (await self.stored("a", y))["by"])


class StorageContract(
    StorageInterfaceContract,
    CreateReadContract,
    UpdateDeleteContract,
    TimestampContract,
    TransactionContract,
    ListingContract,
    PermissionContract,
    ConcurrencyContract,
):
    """Every capability group at once."""
