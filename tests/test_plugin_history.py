"""
The C{history} plugin over HTTP: entries for every change, their listing
with filters, sorting and pages, access through the bucket, deletion,
trimming, exclusions and the collection snapshot at a timestamp.
"""

from __future__ import annotations

import datetime

from zope.interface import implementer

from jsonsync.errors import ListenerRejected
from jsonsync.interfaces import IResourceListener
from jsonsync.testclient import ClientTestCase, StubClient, basicauth_id, build_app
from tests import pg

uid = basicauth_id


ALICE = uid("alice")
BOB = uid("bob")

B = "/v1/buckets/b"
H = B + "/history"
C = B + "/collections/c"


@implementer(IResourceListener)
class Rejecter:
    """A listener that refuses every change after the history listener ran."""

    actions = None
    resource_names = None

    async def before_commit(self, event, txn):
        raise ListenerRejected("no")

    async def after_commit(self, event):
        return None


class _Base(ClientTestCase):
    settings: dict = {}
    backend: dict = {}

    async def setUp(self):
        self.app = await build_app({"includes": "history", **self.backend, **self.settings})
        registry = self.app.registry
        self.addCleanup(registry.close)
        if self.backend:
            await registry.storage.flush()
            await registry.permissions.flush()
        self.stub = StubClient(self.app)
        self.alice = self.stub.as_user("alice")
        self.bob = self.stub.as_user("bob")
        self.anon = self.stub.as_user(None)


    async def entries(self, query="", client=None):
        r = await self.ok((client or self.alice).get(H + query), 200)
        return r.json["data"]

    async def tree(self):
        await self.ok(self.alice.put(B))
        await self.ok(self.alice.put(C))


class EntriesTests(_Base):
    async def test_bucket_create_entry(self):
        r = await self.ok(self.alice.put(B, {"data": {"x": 1}}))
        (entry,) = await self.entries()
        self.assertEqual(entry["action"], "create")
        self.assertEqual(entry["resource_name"], "bucket")
        self.assertEqual(entry["uri"], "/buckets/b")
        self.assertEqual(entry["bucket_id"], "b")
        self.assertEqual(entry["user_id"], ALICE)
        self.assertEqual(entry["target"]["data"], r.json["data"])
        self.assertEqual(entry["target"]["permissions"], {"write": [ALICE]})
        self.assertEqual(len(entry["id"]), 36)
        self.assertIsInstance(entry["last_modified"], int)
        date = datetime.datetime.fromisoformat(entry["date"])
        self.assertEqual(date.utcoffset(), datetime.timedelta(0))
        self.assertNotIn("timestamp", entry)
        self.assertNotIn("collection_id", entry)

    async def test_collection_group_record_entries(self):
        await self.tree()
        await self.ok(self.alice.put(B + "/groups/g", {"data": {"members": ["x"]}}))
        rec = await self.ok(
            self.alice.post(
                C + "/records", {"data": {"title": "a"}, "permissions": {"read": ["bob"]}}
            )
        )
        rid = rec.json["data"]["id"]
        entries = await self.entries("?_sort=last_modified")
        self.assertEqual(
            [e["resource_name"] for e in entries], ["bucket", "collection", "group", "record"]
        )
        coll, group, record = entries[1:]
        self.assertEqual(coll["uri"], "/buckets/b/collections/c")
        self.assertEqual(coll["collection_id"], "c")
        self.assertNotIn("bucket_id", coll)
        self.assertEqual(group["uri"], "/buckets/b/groups/g")
        self.assertEqual(group["group_id"], "g")
        self.assertEqual(group["target"]["data"]["members"], ["x"])
        self.assertEqual(record["uri"], f"/buckets/b/collections/c/records/{rid}")
        self.assertEqual(record["collection_id"], "c")
        self.assertEqual(record["record_id"], rid)
        self.assertEqual(record["target"]["data"], rec.json["data"])
        self.assertEqual(record["target"]["permissions"], {"read": ["bob"], "write": [ALICE]})

    async def test_update_and_delete_entries(self):
        await self.tree()
        await self.ok(self.alice.put(C + "/records/r", {"data": {"v": 1}}))
        upd = await self.ok(self.alice.patch(C + "/records/r", {"data": {"v": 2}}))
        tomb = await self.ok(self.alice.delete(C + "/records/r"))
        entries = await self.entries("?resource_name=record")
        self.assertEqual([e["action"] for e in entries], ["delete", "update", "create"])
        self.assertEqual(entries[1]["target"]["data"], upd.json["data"])
        self.assertEqual(entries[0]["target"]["data"], tomb.json["data"])
        self.assertTrue(entries[0]["target"]["data"]["deleted"])
        self.assertEqual(entries[0]["target"]["permissions"], {})
        await self.ok(self.alice.delete(C))
        (entry,) = await self.entries("?resource_name=collection&action=delete")
        self.assertTrue(entry["target"]["data"]["deleted"])

    async def test_group_update_and_delete(self):
        await self.ok(self.alice.put(B))
        await self.ok(self.alice.put(B + "/groups/g", {"data": {"members": []}}))
        await self.ok(self.alice.put(B + "/groups/g", {"data": {"members": ["y"]}}))
        await self.ok(self.alice.delete(B + "/groups/g"))
        entries = await self.entries("?resource_name=group")
        self.assertEqual([e["action"] for e in entries], ["delete", "update", "create"])
        self.assertEqual(entries[1]["target"]["data"]["members"], ["y"])

    async def test_bucket_update_permissions_in_target(self):
        await self.ok(self.alice.put(B))
        await self.ok(self.alice.patch(B, {"permissions": {"read": ["system.Everyone"]}}))
        (entry,) = await self.entries("?action=update")
        self.assertEqual(
            entry["target"]["permissions"], {"read": ["system.Everyone"], "write": [ALICE]}
        )

    async def test_batch_one_entry_per_object(self):
        await self.tree()
        body = {
            "defaults": {"method": "PUT"},
            "requests": [
                {"path": f"/buckets/b/collections/c/records/r{i}", "body": {"data": {"i": i}}}
                for i in range(3)
            ],
        }
        r = await self.ok(self.alice.post("/v1/batch", body), 200)
        self.assertEqual([resp["status"] for resp in r.json["responses"]], [201, 201, 201])
        entries = await self.entries("?resource_name=record&_sort=record_id")
        self.assertEqual([e["record_id"] for e in entries], ["r0", "r1", "r2"])
        self.assertEqual(
            [e["uri"] for e in entries],
            [f"/buckets/b/collections/c/records/r{i}" for i in range(3)],
        )
        self.assertEqual([e["target"]["data"]["i"] for e in entries], [0, 1, 2])

    async def test_plural_delete_one_entry_per_object(self):
        await self.tree()
        for i in range(2):
            await self.ok(self.alice.put(C + f"/records/r{i}", {"data": {}}))
        await self.ok(self.alice.delete(C + "/records"), 200)
        entries = await self.entries("?action=delete&_sort=record_id")
        self.assertEqual(
            [e["uri"] for e in entries],
            [f"/buckets/b/collections/c/records/r{i}" for i in range(2)],
        )

    async def test_failed_write_leaves_no_entry(self):
        await self.tree()
        r = await self.alice.put(C + "/records/r", {"data": {}}, headers={"If-Match": '"1"'})
        self.assertEqual(r.status, 412)
        self.assertEqual(await self.entries("?resource_name=record"), [])

    async def test_rolled_back_write_leaves_no_entry(self):
        await self.tree()
        self.app.registry.add_listener(Rejecter())
        r = await self.alice.put(C + "/records/r", {"data": {}})
        self.assertEqual(r.status, 400, r)
        self.app.registry.listeners.pop()
        self.assertEqual(await self.entries("?resource_name=record"), [])

    async def test_history_changes_are_not_tracked(self):
        await self.ok(self.alice.put(B))
        await self.ok(self.alice.delete(H), 200)
        self.assertEqual(await self.entries(), [])

    async def test_capability(self):
        r = await self.ok(self.anon.get("/v1/"), 200)
        self.assertEqual(r.json["capabilities"]["history"]["description"], "Track changes on data.")
        self.assertNotIn("auto_trim_max_count", r.json["capabilities"]["history"])


class ListingTests(_Base):
    async def seed(self):
        await self.tree()
        for i in range(4):
            await self.ok(self.alice.put(C + f"/records/r{i}", {"data": {"n": i}}))
        await self.ok(self.bob.put("/v1/buckets/other"))

    async def test_default_sort_newest_first(self):
        await self.seed()
        entries = await self.entries()
        stamps = [e["last_modified"] for e in entries]
        self.assertEqual(stamps, sorted(stamps, reverse=True))
        self.assertEqual(len(entries), 6)

    async def test_filters(self):
        await self.seed()
        got = await self.entries("?resource_name=record&gt_target.data.n=1")
        self.assertEqual(sorted(e["record_id"] for e in got), ["r2", "r3"])
        got = await self.entries("?uri=/buckets/b/collections/c/records/r1")
        self.assertEqual([e["record_id"] for e in got], ["r1"])
        got = await self.entries(f"?exclude_user_id={ALICE}")
        self.assertEqual(got, [])
        got = await self.entries(f"?in_user_id={ALICE},{BOB}&resource_name=collection")
        self.assertEqual(len(got), 1)
        got = await self.entries("?like_user_id=basicauth")
        self.assertEqual(len(got), 6)
        got = await self.entries("?resource_name=record&target.data.n=2")
        self.assertEqual([e["record_id"] for e in got], ["r2"])

    async def test_numeric_ids_filter_as_strings(self):
        await self.tree()
        await self.ok(self.alice.put(C + "/records/123", {"data": {}}))
        got = await self.entries("?record_id=123")
        self.assertEqual([e["record_id"] for e in got], ["123"])

    async def test_since_before(self):
        await self.seed()
        entries = await self.entries("?_sort=last_modified")
        middle = entries[2]["last_modified"]
        after = await self.entries(f"?_since={middle}")
        self.assertEqual(len(after), 3)
        before = await self.entries(f"?_before={middle}")
        self.assertEqual(len(before), 2)
        got = await self.entries(
            f"?gt_target.data.last_modified={entries[3]['target']['data']['last_modified']}"
        )
        self.assertEqual([e["record_id"] for e in got], ["r3", "r2"])

    async def test_sort_and_fields(self):
        await self.seed()
        got = await self.entries("?resource_name=record&_sort=-record_id&_fields=record_id")
        self.assertEqual([e["record_id"] for e in got], ["r3", "r2", "r1", "r0"])
        self.assertEqual(set(got[0]), {"id", "last_modified", "record_id"})
        got = await self.entries("?resource_name=record&_sort=target.data.n&_fields=target.data.n")
        self.assertEqual([e["target"]["data"]["n"] for e in got], [0, 1, 2, 3])

    async def test_pagination(self):
        await self.seed()
        r = await self.ok(self.alice.get(H + "?_limit=4"), 200)
        self.assertEqual(len(r.json["data"]), 4)
        nxt = r.header("Next-Page")
        self.assertTrue(nxt)
        r2 = await self.ok(self.alice.get(nxt), 200)
        self.assertEqual(len(r2.json["data"]), 2)
        self.assertIsNone(r2.header("Next-Page"))
        ids = {e["id"] for e in r.json["data"] + r2.json["data"]}
        self.assertEqual(len(ids), 6)

    async def test_head_total(self):
        await self.seed()
        r = await self.ok(self.alice.head(H + "?resource_name=record"), 200)
        self.assertEqual(r.header("Total-Objects"), "4")
        self.assertEqual(r.header("Total-Records"), "4")

    async def test_strict_fields(self):
        await self.seed()
        for query in ("?foo=1", "?_sort=foo", "?gt_foo=2", "?_fields=foo"):
            r = await self.alice.get(H + query)
            self.assertEqual(r.status, 400, query)
            self.assertEqual(r.json["errno"], 107)
        r = await self.alice.get(H + "?foo=1")
        self.assertIn("foo", r.json["message"])

    async def test_post_not_allowed(self):
        await self.seed()
        r = await self.alice.post(H, {"data": {}})
        self.assertEqual(r.status, 405)

    async def test_missing_bucket(self):
        r = await self.alice.get("/v1/buckets/nope/history")
        self.assertEqual(r.status, 403)


class AccessTests(_Base):
    async def test_reading_needs_bucket_read(self):
        await self.tree()
        r = await self.bob.get(H)
        self.assertEqual(r.status, 403)
        r = await self.anon.get(H)
        self.assertEqual(r.status, 401)
        await self.ok(self.alice.patch(B, {"permissions": {"read": [BOB]}}))
        got = await self.entries(client=self.bob)
        self.assertEqual(len(got), 3)

    async def test_collection_read_does_not_read_history(self):
        await self.tree()
        await self.ok(self.alice.patch(C, {"permissions": {"read": [BOB]}}))
        r = await self.bob.get(H)
        self.assertEqual(r.status, 403)

    async def test_bucket_write_reads_history(self):
        await self.tree()
        await self.ok(self.alice.patch(B, {"permissions": {"write": [BOB]}}))
        got = await self.entries(client=self.bob)
        self.assertEqual(len(got), 3)

    async def test_no_acl_stored_per_entry(self):
        await self.tree()
        (entry,) = await self.entries("?resource_name=collection")
        txn = self.app.registry.storage.transaction()
        acl = await self.app.registry.permissions.get_object_permissions(
            txn, f"/buckets/b/history/{entry['id']}"
        )
        await txn.rollback()
        self.assertEqual(acl, {})

    async def test_public_bucket_history_readable_anonymously(self):
        await self.tree()
        await self.ok(self.alice.patch(B, {"permissions": {"read": ["system.Everyone"]}}))
        got = await self.entries(client=self.anon)
        self.assertEqual(len(got), 3)


class DeleteTests(_Base):
    async def test_delete_all(self):
        await self.tree()
        r = await self.ok(self.alice.delete(H), 200)
        self.assertEqual(len(r.json["data"]), 2)
        self.assertTrue(all(t["deleted"] for t in r.json["data"]))
        self.assertEqual(await self.entries(), [])

    async def test_delete_filtered(self):
        await self.tree()
        await self.ok(self.alice.delete(H + "?resource_name=collection"), 200)
        got = await self.entries()
        self.assertEqual([e["resource_name"] for e in got], ["bucket"])

    async def test_delete_needs_bucket_write(self):
        await self.tree()
        await self.ok(self.alice.patch(B, {"permissions": {"read": [BOB]}}))
        r = await self.bob.delete(H)
        self.assertEqual(r.status, 403)
        self.assertEqual(len(await self.entries()), 3)

    async def test_bucket_deletion_removes_history(self):
        await self.tree()
        await self.ok(self.alice.delete(B), 200)
        await self.ok(self.alice.put(B))
        got = await self.entries()
        self.assertEqual([(e["resource_name"], e["action"]) for e in got], [("bucket", "create")])
        txn = self.app.registry.storage.transaction()
        from jsonsync.query import Query

        everything = await self.app.registry.storage.list(
            txn, "history", "/buckets/b", Query(include_deleted=True)
        )
        await txn.rollback()
        self.assertEqual(len(everything), 1)

    async def test_batch_write_then_bucket_delete_leaves_nothing(self):
        await self.tree()
        body = {
            "requests": [
                {
                    "method": "PUT",
                    "path": "/buckets/b/collections/c/records/r",
                    "body": {"data": {}},
                },
                {"method": "DELETE", "path": "/buckets/b"},
            ]
        }
        r = await self.ok(self.alice.post("/v1/batch", body), 200)
        self.assertEqual([x["status"] for x in r.json["responses"]], [201, 200])
        await self.ok(self.alice.put(B))
        got = await self.entries()
        self.assertEqual([e["resource_name"] for e in got], ["bucket"])


class SnapshotTests(_Base):
    async def test_snapshot_at_timestamps(self):
        await self.tree()
        a = await self.ok(self.alice.put(C + "/records/a", {"data": {"v": 1}}))
        b = await self.ok(self.alice.put(C + "/records/b", {"data": {"v": 1}}))
        t1 = b.json["data"]["last_modified"]
        a2 = await self.ok(self.alice.put(C + "/records/a", {"data": {"v": 2}}))
        t2 = a2.json["data"]["last_modified"]
        tomb = await self.ok(self.alice.delete(C + "/records/b"))
        t3 = tomb.json["data"]["last_modified"]
        url = B + "/snapshot/collections/c@{}"

        r = await self.ok(self.alice.get(url.format(a.json["data"]["last_modified"] - 1)), 200)
        self.assertEqual(r.json, {"data": []})
        r = await self.ok(self.alice.get(url.format(t1)), 200)
        self.assertEqual(r.json["data"], [b.json["data"], a.json["data"]])
        r = await self.ok(self.alice.get(url.format(t2)), 200)
        self.assertEqual(r.json["data"], [a2.json["data"], b.json["data"]])
        r = await self.ok(self.alice.get(url.format(t3)), 200)
        self.assertEqual(r.json["data"], [a2.json["data"]])

    async def test_snapshot_ignores_other_collections_and_earlier_incarnation(self):
        await self.tree()
        await self.ok(self.alice.put(B + "/collections/d"))
        await self.ok(self.alice.put(B + "/collections/d/records/x", {"data": {}}))
        await self.ok(self.alice.put(C + "/records/old", {"data": {}}))
        await self.ok(self.alice.delete(C))
        await self.ok(self.alice.put(C))
        new = await self.ok(self.alice.put(C + "/records/new", {"data": {}}))
        r = await self.ok(
            self.alice.get(B + f"/snapshot/collections/c@{new.json['data']['last_modified']}"), 200
        )
        self.assertEqual([x["id"] for x in r.json["data"]], ["new"])

    async def test_snapshot_sorted_by_record_timestamp(self):
        await self.tree()
        a = await self.ok(self.alice.put(C + "/records/a", {"data": {}}))
        older = a.json["data"]["last_modified"] - 10
        # Written later, but with an older (replicated) timestamp.
        b = await self.ok(self.alice.put(C + "/records/b", {"data": {"last_modified": older}}))
        self.assertEqual(b.json["data"]["last_modified"], older)
        r = await self.ok(
            self.alice.get(B + f"/snapshot/collections/c@{a.json['data']['last_modified']}"), 200
        )
        self.assertEqual([x["id"] for x in r.json["data"]], ["a", "b"])

    async def test_snapshot_bad_timestamp(self):
        await self.tree()
        for bad in ("c@abc", "c@", "c", "c@-1"):
            r = await self.alice.get(B + "/snapshot/collections/" + bad)
            self.assertEqual(r.status, 400, bad)

    async def test_snapshot_permissions(self):
        await self.tree()
        rec = await self.ok(self.alice.put(C + "/records/r", {"data": {}}))
        url = B + f"/snapshot/collections/c@{rec.json['data']['last_modified']}"
        self.assertEqual((await self.bob.get(url)).status, 403)
        self.assertEqual((await self.anon.get(url)).status, 401)
        await self.ok(self.alice.patch(C, {"permissions": {"read": [BOB]}}))
        r = await self.ok(self.bob.get(url), 200)
        self.assertEqual([x["id"] for x in r.json["data"]], ["r"])
        # Collection read does not open other collections.
        other = B + f"/snapshot/collections/d@{rec.json['data']['last_modified']}"
        self.assertEqual((await self.bob.get(other)).status, 403)
        await self.ok(self.alice.patch(B, {"permissions": {"read": [BOB]}}))
        await self.ok(self.bob.get(other), 200)


class ExcludeTests(_Base):
    settings = {
        "history.exclude_resources": "/buckets/quiet /buckets/b/collections/hidden /buckets/b/collections/c/records/secret",
        "history.exclude_user_ids": BOB,
    }

    async def test_excluded_resources(self):
        await self.tree()
        await self.ok(self.alice.put(B + "/collections/hidden"))
        await self.ok(self.alice.put(B + "/collections/hidden/records/x", {"data": {}}))
        await self.ok(self.alice.put(C + "/records/secret", {"data": {}}))
        await self.ok(self.alice.put(C + "/records/open", {"data": {}}))
        await self.ok(self.alice.put("/v1/buckets/quiet"))
        await self.ok(self.alice.put("/v1/buckets/quiet/collections/c"))
        got = await self.entries("?_sort=last_modified")
        self.assertEqual(
            [e["uri"] for e in got],
            ["/buckets/b", "/buckets/b/collections/c", "/buckets/b/collections/c/records/open"],
        )
        r = await self.ok(self.alice.get("/v1/buckets/quiet/history"), 200)
        self.assertEqual(r.json["data"], [])

    async def test_excluded_users(self):
        await self.tree()
        await self.ok(self.alice.patch(B, {"permissions": {"write": [BOB]}}))
        await self.ok(self.bob.put(C + "/records/bobs", {"data": {}}))
        got = await self.entries("?resource_name=record")
        self.assertEqual(got, [])

    async def test_capability_lists_excluded(self):
        r = await self.ok(self.anon.get("/v1/"), 200)
        self.assertEqual(
            r.json["capabilities"]["history"]["excluded_resources"],
            [
                {"bucket": "quiet"},
                {"bucket": "b", "collection": "hidden"},
                {"bucket": "b", "collection": "c", "record": "secret"},
            ],
        )


class TrimTests(_Base):
    settings = {"history.auto_trim_max_count": "3", "history.auto_trim_threshold": "2"}

    async def test_trim_keeps_newest_per_resource_type(self):
        await self.tree()
        for i in range(5):
            await self.ok(self.alice.put(C + f"/records/r{i}", {"data": {}}))
        # 5 <= 3 + 2: not trimmed yet.
        self.assertEqual(len(await self.entries("?resource_name=record")), 5)
        await self.ok(self.alice.put(C + "/records/r5", {"data": {}}))
        got = await self.entries("?resource_name=record")
        self.assertEqual([e["record_id"] for e in got], ["r5", "r4", "r3"])
        # Other types are counted apart.
        self.assertEqual(len(await self.entries("?resource_name=collection")), 1)
        self.assertEqual(len(await self.entries("?resource_name=bucket")), 1)

    async def test_capability(self):
        r = await self.ok(self.anon.get("/v1/"), 200)
        self.assertEqual(r.json["capabilities"]["history"]["auto_trim_max_count"], 3)


class TrimUsersTests(_Base):
    settings = {
        "history.auto_trim_max_count": "1",
        "history.auto_trim_threshold": "0",
        "history.auto_trim_user_ids": BOB,
    }

    async def test_only_listed_users_are_trimmed(self):
        await self.tree()
        await self.ok(self.alice.patch(B, {"permissions": {"write": [BOB]}}))
        for i in range(3):
            await self.ok(self.alice.put(C + f"/records/a{i}", {"data": {}}))
            await self.ok(self.bob.put(C + f"/records/b{i}", {"data": {}}))
        got = await self.entries("?resource_name=record&_sort=record_id")
        self.assertEqual([e["record_id"] for e in got], ["a0", "a1", "a2", "b2"])
        r = await self.ok(self.anon.get("/v1/"), 200)
        self.assertEqual(r.json["capabilities"]["history"]["auto_trim_user_ids"], [BOB])


# The same tests on PostgreSQL, where the nested filters and sorts of the
# history queries (C{target.data.last_modified}, C{in_user_id}) are SQL.
_PG = {"storage_backend": "postgresql", "permission_backend": "postgresql", "storage_url": pg.URL}
_PG_SKIP = pg.SKIP

for _case in (
    EntriesTests,
    ListingTests,
    AccessTests,
    DeleteTests,
    SnapshotTests,
    ExcludeTests,
    TrimTests,
    TrimUsersTests,
):
    _name = "Postgres" + _case.__name__
    globals()[_name] = type(_name, (_case,), {"backend": _PG, "skip": _PG_SKIP})
del _case, _name
