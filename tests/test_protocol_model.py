"""
Protocol conformance, section 2: object model (envelope, fields, ids,
timestamps, tombstones, ETag/Last-Modified, cascades, group principals).
"""

import hashlib
import hmac
import re
import time
from email.utils import parsedate_to_datetime

from jsonsync.testclient import ClientTestCase

B = "/v1/buckets/b"
C = B + "/collections/c"
RECS = C + "/records"


def uid(user, password="secret", secret=""):
    digest = hmac.new(secret.encode(), f"{user}:{password}".encode(), hashlib.sha256).hexdigest()
    return "basicauth:" + digest


def etag_ts(r):
    value = r.header("ETag")
    assert value and re.match(r'^"\d+"$', value), value
    return int(value.strip('"'))


class ProtocolCase(ClientTestCase):
    async def setUp(self):
        await super().setUp()
        r = await self.alice.put(B)
        self.assertEqual(r.status, 201, r)
        r = await self.alice.put(C)
        self.assertEqual(r.status, 201, r)

    def assertInvalid(self, r, location=None, name=None):
        self.assertEqual(r.status, 400, r)
        body = r.json
        self.assertEqual(body["code"], 400)
        self.assertEqual(body["errno"], 107)
        self.assertEqual(body["error"], "Invalid parameters")
        self.assertIsInstance(body["message"], str)
        self.assertIsInstance(body["details"], list)
        for d in body["details"]:
            self.assertEqual(set(d), {"location", "name", "description"}, d)
        if location is not None:
            self.assertTrue(
                [d for d in body["details"] if d["location"] == location and (name is None or d["name"] == name)],
                body,
            )
        return body


# ---------------------------------------------------------------------------------
# §2.1 envelope
# ---------------------------------------------------------------------------------
class EnvelopeTests(ProtocolCase):
    async def test_unknown_top_level_key_400(self):
        for method in ("PUT", "PATCH"):
            r = await self.alice.request(method, RECS + "/r1", {"data": {}, "extra": 1})
            if method == "PATCH":
                await self.alice.put(RECS + "/r1")
                r = await self.alice.request(method, RECS + "/r1", {"data": {}, "extra": 1})
            self.assertInvalid(r, "body")
        r = await self.alice.post(RECS, {"data": {}, "extra": 1})
        self.assertInvalid(r, "body")

    async def test_data_must_be_object(self):
        r = await self.alice.put(RECS + "/r1", {"data": [1, 2]})
        self.assertInvalid(r, "body")
        r = await self.alice.put(RECS + "/r1", {"data": "x"})
        self.assertInvalid(r, "body")

    async def test_body_must_be_object(self):
        r = await self.alice.put(RECS + "/r1", [1, 2])
        self.assertInvalid(r, "body")

    async def test_put_without_body_creates_empty(self):
        r = await self.alice.put(RECS + "/r1")
        self.assertEqual(r.status, 201, r)
        self.assertEqual(set(r.data), {"id", "last_modified"})

    async def test_empty_raw_body_on_put_and_post(self):
        r = await self.alice.request("PUT", RECS + "/r1", raw=b"", headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 201, r)
        r = await self.alice.request("POST", RECS, raw=b"", headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 201, r)

    async def test_put_without_data_keeps_existing_data(self):
        await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        r = await self.alice.put(RECS + "/r1", {"permissions": {"read": ["system.Everyone"]}})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data["a"], 1)
        self.assertEqual(r.json["permissions"]["read"], ["system.Everyone"])

    async def test_patch_needs_data_or_permissions(self):
        await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        r = await self.alice.patch(RECS + "/r1", {})
        body = self.assertInvalid(r, "body")
        self.assertIn("Provide at least one of data or permissions", body["message"])
        r = await self.alice.request("PATCH", RECS + "/r1")
        self.assertInvalid(r, "body")

    async def test_object_response_has_permissions_for_writer(self):
        r = await self.alice.put(RECS + "/r1", {"data": {"a": 1}, "permissions": {"read": [uid("bob")]}})
        self.assertEqual(set(r.json), {"data", "permissions"})
        perms = r.json["permissions"]
        self.assertEqual(perms["write"], [uid("alice")])
        self.assertEqual(perms["read"], [uid("bob")])

    async def test_permissions_empty_for_non_writer(self):
        await self.alice.put(RECS + "/r1", {"data": {"a": 1}, "permissions": {"read": [uid("bob")]}})
        r = await self.bob.get(RECS + "/r1")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["permissions"], {})

    async def test_permissions_empty_when_write_is_only_inherited(self):
        await self.alice.patch(B, {"permissions": {"write": [uid("bob")]}})
        await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        r = await self.bob.get(RECS + "/r1")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["permissions"], {})
        r = await self.bob.put(RECS + "/r2", {"data": {}})
        self.assertEqual(r.json["permissions"], {"write": [uid("bob")]})

    async def test_plural_response_has_no_permissions(self):
        await self.alice.put(RECS + "/r1")
        r = await self.alice.get(RECS)
        self.assertEqual(set(r.json), {"data"})
        self.assertIsInstance(r.data, list)

    async def test_unknown_permission_name_400(self):
        r = await self.alice.put(RECS + "/r1", {"permissions": {"record:create": ["x"]}})
        self.assertInvalid(r, "body")
        r = await self.alice.put(C, {"permissions": {"collection:create": ["x"]}})
        self.assertInvalid(r, "body")
        r = await self.alice.put(C, {"permissions": {"record:create": ["x"]}})
        self.assertEqual(r.status, 200, r)
        r = await self.alice.put(B, {"permissions": {"collection:create": ["x"], "group:create": ["y"]}})
        self.assertEqual(r.status, 200, r)

    async def test_permission_value_must_be_list(self):
        r = await self.alice.put(RECS + "/r1", {"permissions": {"read": 42}})
        self.assertInvalid(r, "body")


# ---------------------------------------------------------------------------------
# §2.2 resource fields
# ---------------------------------------------------------------------------------
class ResourceFieldTests(ProtocolCase):
    async def test_group_members_default_and_always_returned(self):
        r = await self.alice.put(B + "/groups/g", {"data": {"title": "G"}})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.data["members"], [])
        r = await self.alice.get(B + "/groups")
        self.assertEqual(r.data[0]["members"], [])

    async def test_group_members_validation(self):
        r = await self.alice.put(B + "/groups/g", {"data": {"members": ["system.Everyone"]}})
        self.assertInvalid(r, "body", "data.members.0")
        r = await self.alice.put(B + "/groups/g", {"data": {"members": ["a", "/buckets/b/groups/h"]}})
        self.assertInvalid(r, "body", "data.members.1")
        r = await self.alice.put(B + "/groups/g", {"data": {"members": "bob"}})
        self.assertInvalid(r, "body")

    async def test_collection_schema_must_be_valid(self):
        r = await self.alice.put(C, {"data": {"schema": {"type": "nope"}}})
        self.assertInvalid(r, "body")
        r = await self.alice.put(C, {"data": {"schema": {"type": "object"}}})
        self.assertEqual(r.status, 200, r)

    async def test_bucket_schemas_must_be_valid(self):
        for key in ("collection:schema", "group:schema", "record:schema"):
            r = await self.alice.put(B, {"data": {key: {"type": 12}}})
            self.assertInvalid(r, "body")

    async def test_free_fields_kept(self):
        data = {"n": 1.5, "s": "é", "l": [1, {"a": None}], "o": {"x": {"y": True}}, "z": None}
        r = await self.alice.put(RECS + "/r1", {"data": data})
        r = await self.alice.get(RECS + "/r1")
        for k, v in data.items():
            self.assertEqual(r.data[k], v)


# ---------------------------------------------------------------------------------
# §2.3 ids
# ---------------------------------------------------------------------------------
class IdTests(ProtocolCase):
    async def test_generated_bucket_collection_group_ids(self):
        for plural in ("/v1/buckets", B + "/collections", B + "/groups"):
            r = await self.alice.post(plural, {"data": {}})
            self.assertEqual(r.status, 201, r)
            self.assertRegex(r.data["id"], r"^[a-zA-Z0-9][a-zA-Z0-9_-]{7}$")

    async def test_generated_record_id_is_uuid4(self):
        r = await self.alice.post(RECS, {"data": {}})
        self.assertRegex(
            r.data["id"], r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
        )

    async def test_post_with_invalid_id(self):
        for bad in ("with space", "_x", 12, None, ""):
            r = await self.alice.post(RECS, {"data": {"id": bad}})
            body = self.assertInvalid(r)
            self.assertIn("Invalid object id", body["message"], bad)

    async def test_id_mismatch(self):
        r = await self.alice.put(RECS + "/r1", {"data": {"id": "r2"}})
        body = self.assertInvalid(r, "body", "id")
        self.assertIn("does not match", body["message"])
        await self.alice.put(RECS + "/r1")
        r = await self.alice.patch(RECS + "/r1", {"data": {"id": "r2"}})
        self.assertInvalid(r, "body", "id")
        r = await self.alice.put(RECS + "/r1", {"data": {"id": "r1", "a": 1}})
        self.assertEqual(r.status, 200, r)

    async def test_ids_with_dash_and_underscore(self):
        r = await self.alice.put(B + "/collections/a-b_c", {"data": {}})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.data["id"], "a-b_c")


# ---------------------------------------------------------------------------------
# §2.4 last_modified and list timestamps
# ---------------------------------------------------------------------------------
class TimestampTests(ProtocolCase):
    async def test_last_modified_is_epoch_milliseconds(self):
        before = int(time.time() * 1000)
        r = await self.alice.post(RECS, {"data": {}})
        after = int(time.time() * 1000)
        lm = r.data["last_modified"]
        self.assertIsInstance(lm, int)
        self.assertTrue(before - 1000 <= lm <= after + 1000, (before, lm, after))

    async def test_strictly_increasing_within_a_list(self):
        seen = []
        for i in range(10):
            r = await self.alice.post(RECS, {"data": {"i": i}})
            seen.append(r.data["last_modified"])
        self.assertEqual(seen, sorted(set(seen)))
        r = await self.alice.get(RECS)
        self.assertEqual(etag_ts(r), seen[-1])

    async def test_updates_bump_last_modified(self):
        r = await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        t1 = r.data["last_modified"]
        r = await self.alice.patch(RECS + "/r1", {"data": {"a": 1}})
        self.assertGreater(r.data["last_modified"], t1)

    async def test_record_writes_do_not_touch_parents(self):
        bucket_lm = (await self.alice.get(B)).data["last_modified"]
        coll_lm = (await self.alice.get(C)).data["last_modified"]
        colls_etag = (await self.alice.get(B + "/collections")).header("ETag")
        buckets_etag = (await self.alice.get("/v1/buckets")).header("ETag")
        recs_etag = (await self.alice.get(RECS)).header("ETag")
        await self.alice.put(RECS + "/r1", {"data": {}})
        await self.alice.delete(RECS + "/r1")
        await self.alice.put(B + "/groups/g", {"data": {}})
        self.assertEqual((await self.alice.get(B)).data["last_modified"], bucket_lm)
        self.assertEqual((await self.alice.get(C)).data["last_modified"], coll_lm)
        self.assertEqual((await self.alice.get(B + "/collections")).header("ETag"), colls_etag)
        self.assertEqual((await self.alice.get("/v1/buckets")).header("ETag"), buckets_etag)
        self.assertNotEqual((await self.alice.get(RECS)).header("ETag"), recs_etag)

    async def test_collection_write_does_not_touch_bucket(self):
        bucket_lm = (await self.alice.get(B)).data["last_modified"]
        await self.alice.put(B + "/collections/c2", {"data": {}})
        await self.alice.patch(C, {"data": {"x": 1}})
        self.assertEqual((await self.alice.get(B)).data["last_modified"], bucket_lm)

    async def test_lists_have_independent_timestamps(self):
        await self.alice.put(B + "/collections/c2")
        r1 = await self.alice.put(RECS + "/r1", {"data": {}})
        r2 = await self.alice.put(B + "/collections/c2/records/r1", {"data": {}})
        self.assertEqual(etag_ts(await self.alice.get(RECS)), r1.data["last_modified"])
        self.assertEqual(etag_ts(await self.alice.get(B + "/collections/c2/records")), r2.data["last_modified"])

    async def test_empty_list_timestamp_is_stable(self):
        await self.alice.put(B + "/collections/empty")
        r1 = await self.alice.get(B + "/collections/empty/records")
        first = etag_ts(r1)
        self.assertTrue(abs(first - time.time() * 1000) < 60_000, first)
        await self._sleep(0.01)
        r2 = await self.alice.get(B + "/collections/empty/records")
        self.assertEqual(etag_ts(r2), first)
        r3 = await self.alice.post(B + "/collections/empty/records", {"data": {}})
        self.assertGreater(r3.data["last_modified"], first)

    async def _sleep(self, seconds):
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, seconds, lambda: None)

    async def test_list_timestamp_includes_tombstones(self):
        await self.alice.put(RECS + "/r1", {"data": {}})
        r = await self.alice.delete(RECS + "/r1")
        tomb_ts = r.data["last_modified"]
        self.assertEqual(etag_ts(await self.alice.get(RECS)), tomb_ts)
        self.assertEqual(etag_ts(r), tomb_ts)

    # -- client-supplied last_modified -------------------------------------------------
    async def test_create_with_older_last_modified_kept_list_unchanged(self):
        r = await self.alice.put(RECS + "/r1", {"data": {}})
        list_ts = r.data["last_modified"]
        r = await self.alice.put(RECS + "/old", {"data": {"last_modified": 1234}})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.data["last_modified"], 1234)
        self.assertEqual(etag_ts(await self.alice.get(RECS)), list_ts)
        r = await self.alice.post(RECS, {"data": {"id": "old2", "last_modified": 1235}})
        self.assertEqual(r.data["last_modified"], 1235)
        self.assertEqual(etag_ts(await self.alice.get(RECS)), list_ts)

    async def test_create_with_list_timestamp_is_bumped(self):
        r = await self.alice.put(RECS + "/r1", {"data": {}})
        list_ts = r.data["last_modified"]
        r = await self.alice.put(RECS + "/r2", {"data": {"last_modified": list_ts}})
        self.assertEqual(r.data["last_modified"], list_ts + 1)
        self.assertEqual(etag_ts(await self.alice.get(RECS)), list_ts + 1)

    async def test_create_with_future_last_modified_moves_list(self):
        future = int(time.time() * 1000) + 3_600_000
        r = await self.alice.put(RECS + "/r1", {"data": {"last_modified": future}})
        self.assertEqual(r.data["last_modified"], future)
        self.assertEqual(etag_ts(await self.alice.get(RECS)), future)
        r = await self.alice.post(RECS, {"data": {}})
        self.assertEqual(r.data["last_modified"], future + 1)

    async def test_non_integer_last_modified_ignored(self):
        for bad in ("1234", 12.5, None, True):
            r = await self.alice.post(RECS, {"data": {"last_modified": bad}})
            self.assertEqual(r.status, 201, (bad, r))
            lm = r.data["last_modified"]
            self.assertIsInstance(lm, int)
            self.assertNotIsInstance(lm, bool)
            self.assertGreater(lm, 10**12, bad)

    async def test_update_with_older_last_modified_ignored(self):
        r = await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        t1 = r.data["last_modified"]
        r = await self.alice.put(RECS + "/r1", {"data": {"a": 2, "last_modified": t1 - 100}})
        self.assertEqual(r.status, 200, r)
        self.assertGreater(r.data["last_modified"], t1)
        t2 = r.data["last_modified"]
        r = await self.alice.patch(RECS + "/r1", {"data": {"last_modified": t2}})
        self.assertGreater(r.data["last_modified"], t2)

    async def test_update_with_newer_last_modified_honoured(self):
        r = await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        target = r.data["last_modified"] + 50_000
        r = await self.alice.put(RECS + "/r1", {"data": {"a": 2, "last_modified": target}})
        self.assertEqual(r.data["last_modified"], target)
        r = await self.alice.patch(RECS + "/r1", {"data": {"a": 3, "last_modified": target + 10}})
        self.assertEqual(r.data["last_modified"], target + 10)
        self.assertEqual(etag_ts(await self.alice.get(RECS)), target + 10)

    async def test_delete_with_forced_last_modified(self):
        r = await self.alice.put(RECS + "/r1", {"data": {}})
        forced = r.data["last_modified"] + 10_000
        r = await self.alice.delete(RECS + f"/r1?last_modified={forced}")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data["last_modified"], forced)
        r = await self.alice.get(RECS + "?_since=0")
        self.assertEqual(r.data, [{"id": "r1", "last_modified": forced, "deleted": True}])

    async def test_delete_with_older_forced_last_modified_ignored(self):
        r = await self.alice.put(RECS + "/r1", {"data": {}})
        created = r.data["last_modified"]
        r = await self.alice.delete(RECS + f"/r1?last_modified={created - 10_000}")
        self.assertEqual(r.status, 200, r)
        self.assertGreater(r.data["last_modified"], created)


# ---------------------------------------------------------------------------------
# §2.5 tombstones
# ---------------------------------------------------------------------------------
class TombstoneTests(ProtocolCase):
    async def test_tombstone_shape_and_visibility(self):
        r = await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        created = r.data["last_modified"]
        await self.alice.put(RECS + "/r2", {"data": {"a": 2}})
        r = await self.alice.delete(RECS + "/r1")
        tomb = r.data
        self.assertEqual(set(tomb), {"id", "last_modified", "deleted"})
        self.assertGreater(tomb["last_modified"], created)
        r = await self.alice.get(RECS)
        self.assertEqual([o["id"] for o in r.data], ["r2"])
        r = await self.alice.get(RECS + f"?_since={created}")
        self.assertIn(tomb, r.data)
        r = await self.alice.get(RECS + "?_since=0&deleted=true")
        self.assertEqual(r.data, [tomb])

    async def test_head_count_excludes_tombstones(self):
        await self.alice.put(RECS + "/r1")
        await self.alice.put(RECS + "/r2")
        await self.alice.delete(RECS + "/r1")
        r = await self.alice.head(RECS + "?_since=0")
        self.assertEqual(r.header("Total-Objects"), "1")
        self.assertEqual(r.header("Total-Records"), "1")

    async def test_recreate_removes_tombstone(self):
        await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        await self.alice.delete(RECS + "/r1")
        r = await self.alice.put(RECS + "/r1", {"data": {"a": 2}})
        self.assertEqual(r.status, 201, r)
        r = await self.alice.get(RECS + "?_since=0")
        self.assertEqual(len(r.data), 1)
        self.assertNotIn("deleted", r.data[0])
        self.assertEqual(r.data[0]["a"], 2)

    async def test_get_deleted_object_404(self):
        await self.alice.put(RECS + "/r1")
        await self.alice.delete(RECS + "/r1")
        r = await self.alice.get(RECS + "/r1")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json["errno"], 110)
        r = await self.alice.delete(RECS + "/r1")
        self.assertEqual(r.status, 404)

    async def test_permissions_of_deleted_object_are_deleted(self):
        await self.alice.put(RECS + "/r1", {"permissions": {"read": [uid("bob")]}})
        await self.alice.delete(RECS + "/r1")
        await self.alice.put(RECS + "/r1")
        r = await self.bob.get(RECS + "/r1")
        self.assertEqual(r.status, 403, r)

    async def test_plural_delete_tombstones(self):
        await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        await self.alice.put(RECS + "/r2", {"data": {"a": 2}})
        r = await self.alice.delete(RECS + "?a=1")
        self.assertEqual([t["id"] for t in r.data], ["r1"])
        self.assertEqual(etag_ts(r), r.data[0]["last_modified"])
        r = await self.alice.get(RECS)
        self.assertEqual([o["id"] for o in r.data], ["r2"])


# ---------------------------------------------------------------------------------
# §2.6 ETag / Last-Modified
# ---------------------------------------------------------------------------------
class ETagTests(ProtocolCase):
    def assertHeaders(self, r, ts):
        self.assertEqual(r.header("ETag"), f'"{ts}"')
        lm = r.header("Last-Modified")
        self.assertIsNotNone(lm, r.headers_all)
        self.assertTrue(lm.endswith("GMT"), lm)
        self.assertEqual(int(parsedate_to_datetime(lm).timestamp()), ts // 1000)

    async def test_object_verbs(self):
        r = await self.alice.post(RECS, {"data": {"id": "r1"}})
        self.assertHeaders(r, r.data["last_modified"])
        r = await self.alice.put(RECS + "/r1", {"data": {}})
        self.assertHeaders(r, r.data["last_modified"])
        r = await self.alice.patch(RECS + "/r1", {"data": {"a": 1}})
        self.assertHeaders(r, r.data["last_modified"])
        r = await self.alice.get(RECS + "/r1")
        self.assertHeaders(r, r.data["last_modified"])
        r = await self.alice.head(RECS + "/r1")
        self.assertHeaders(r, etag_ts(r))
        r = await self.alice.delete(RECS + "/r1")
        self.assertHeaders(r, r.data["last_modified"])

    async def test_object_with_old_last_modified_etag(self):
        await self.alice.put(RECS + "/r0")
        r = await self.alice.put(RECS + "/r1", {"data": {"last_modified": 1500000000123}})
        self.assertHeaders(r, 1500000000123)
        r = await self.alice.get(RECS + "/r1")
        self.assertHeaders(r, 1500000000123)

    async def test_plural_etag_independent_of_filters_and_pagination(self):
        for i in range(4):
            r = await self.alice.post(RECS, {"data": {"i": i}})
        last = r.data["last_modified"]
        for qs in ("", "?i=0", "?i=99", "?_limit=1", "?_sort=i", "?_fields=i"):
            r = await self.alice.get(RECS + qs)
            self.assertHeaders(r, last)
        r = await self.alice.head(RECS + "?i=0")
        self.assertHeaders(r, last)

    async def test_plural_etag_independent_of_visibility(self):
        await self.alice.patch(C, {"permissions": {"read": [uid("bob")]}})
        await self.alice.put(RECS + "/r1")
        # bob can read the collection's records; carol only her own record
        await self.alice.patch(C, {"permissions": {"record:create": [uid("carol")]}})
        r = await self.carol.post(RECS, {"data": {}})
        last = r.data["last_modified"]
        r = await self.alice.put(RECS + "/r0", {"data": {"last_modified": 1000}})
        r = await self.carol.get(RECS)
        self.assertEqual(len(r.data), 1)
        self.assertHeaders(r, last)
        r = await self.bob.get(RECS)
        self.assertHeaders(r, last)

    async def test_plural_delete_etag_without_deletions(self):
        r = await self.alice.put(RECS + "/r1", {"data": {"a": 1}})
        r = await self.alice.delete(RECS + "?a=2")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.data, [])
        self.assertEqual(etag_ts(r), etag_ts(await self.alice.get(RECS)))

    async def test_if_modified_since_ignored(self):
        await self.alice.put(RECS + "/r1")
        r = await self.alice.get(RECS + "/r1", headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
        self.assertEqual(r.status, 200)
        r = await self.alice.put(
            RECS + "/r1", {"data": {}}, headers={"If-Unmodified-Since": "Fri, 01 Jan 1990 00:00:00 GMT"}
        )
        self.assertEqual(r.status, 200)


# ---------------------------------------------------------------------------------
# §2.7 cascades
# ---------------------------------------------------------------------------------
class CascadeTests(ProtocolCase):
    async def test_delete_bucket_cascades(self):
        await self.alice.put(RECS + "/r1", {"data": {}})
        await self.alice.put(B + "/groups/g", {"data": {"members": [uid("bob")]}})
        await self.alice.put(B + "/collections/c2", {"data": {}})
        await self.alice.delete(B + "/collections/c2")
        r = await self.alice.delete(B)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data["id"], "b")
        # Children gone: the parent is missing, so no permission applies.
        self.assertEqual((await self.alice.get(C)).status, 403)
        self.assertEqual((await self.alice.get(RECS + "/r1")).status, 403)
        # Recreate: no trace of the children, tombstones included.
        await self.alice.put(B)
        r = await self.alice.get(B + "/collections?_since=0")
        self.assertEqual(r.data, [])
        r = await self.alice.get(B + "/groups?_since=0")
        self.assertEqual(r.data, [])
        await self.alice.put(C)
        r = await self.alice.get(RECS + "?_since=0")
        self.assertEqual(r.data, [])
        # Group principal removed from bob.
        r = await self.bob.get("/v1/")
        self.assertNotIn("/buckets/b/groups/g", r.json["user"]["principals"])

    async def test_delete_bucket_removes_acls(self):
        await self.alice.put(RECS + "/r1", {"permissions": {"read": [uid("bob")]}})
        await self.alice.patch(C, {"permissions": {"read": [uid("carol")]}})
        await self.alice.delete(B)
        await self.alice.put(B)
        await self.alice.put(C)
        await self.alice.put(RECS + "/r1")
        self.assertEqual((await self.bob.get(RECS + "/r1")).status, 403)
        self.assertEqual((await self.carol.get(RECS)).status, 403)

    async def test_delete_collection_cascades(self):
        await self.alice.put(RECS + "/r1", {"permissions": {"read": [uid("bob")]}})
        await self.alice.put(RECS + "/r2")
        await self.alice.delete(RECS + "/r2")
        r = await self.alice.delete(C)
        self.assertEqual(r.status, 200)
        r = await self.alice.get(RECS)
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json["errno"], 111)
        await self.alice.put(C)
        r = await self.alice.get(RECS + "?_since=0")
        self.assertEqual(r.data, [])
        await self.alice.put(RECS + "/r1")
        self.assertEqual((await self.bob.get(RECS + "/r1")).status, 403)

    async def test_delete_buckets_plural_cascades(self):
        await self.alice.put(RECS + "/r1")
        r = await self.alice.delete("/v1/buckets")
        self.assertEqual([t["id"] for t in r.data], ["b"])
        await self.alice.put(B)
        r = await self.alice.get(B + "/collections?_since=0")
        self.assertEqual(r.data, [])

    async def test_no_implicit_parent_creation(self):
        r = await self.alice.put("/v1/buckets/b/collections/nope/records/r1", {"data": {}})
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json["details"], {"id": "nope", "resource_name": "collection"})
        r = await self.alice.put("/v1/buckets/nope/collections/c", {"data": {}})
        self.assertEqual(r.status, 403)
        r = await self.alice.get("/v1/buckets")
        self.assertEqual([o["id"] for o in r.data], ["b"])


# ---------------------------------------------------------------------------------
# §2.7 group membership principals
# ---------------------------------------------------------------------------------
class GroupPrincipalTests(ProtocolCase):
    G = "/buckets/b/groups/g"

    async def principals(self, client):
        return (await client.get("/v1/")).json["user"]["principals"]

    async def test_members_gain_group_principal(self):
        await self.alice.put("/v1" + self.G, {"data": {"members": [uid("bob")]}})
        self.assertIn(self.G, await self.principals(self.bob))
        self.assertNotIn(self.G, await self.principals(self.carol))

    async def test_group_grants_access(self):
        await self.alice.put("/v1" + self.G, {"data": {"members": [uid("bob")]}})
        await self.alice.patch(C, {"permissions": {"read": [self.G]}})
        await self.alice.put(RECS + "/r1")
        self.assertEqual((await self.bob.get(RECS + "/r1")).status, 200)
        self.assertEqual((await self.bob.get(RECS)).status, 200)
        self.assertEqual((await self.carol.get(RECS + "/r1")).status, 403)

    async def test_removed_member_loses_principal(self):
        await self.alice.put("/v1" + self.G, {"data": {"members": [uid("bob"), uid("carol")]}})
        await self.alice.patch(C, {"permissions": {"read": [self.G]}})
        await self.alice.patch("/v1" + self.G, {"data": {"members": [uid("carol")]}})
        self.assertNotIn(self.G, await self.principals(self.bob))
        self.assertIn(self.G, await self.principals(self.carol))
        self.assertEqual((await self.bob.get(RECS)).status, 403)
        await self.alice.put("/v1" + self.G, {"data": {}})
        self.assertNotIn(self.G, await self.principals(self.carol))

    async def test_deleted_group_principal_removed(self):
        await self.alice.put("/v1" + self.G, {"data": {"members": [uid("bob")]}})
        await self.alice.patch(C, {"permissions": {"read": [self.G]}})
        await self.alice.delete("/v1" + self.G)
        self.assertNotIn(self.G, await self.principals(self.bob))
        self.assertEqual((await self.bob.get(RECS)).status, 403)

    async def test_membership_via_system_authenticated(self):
        await self.alice.put("/v1" + self.G, {"data": {"members": ["system.Authenticated"]}})
        await self.alice.patch(C, {"permissions": {"read": [self.G]}})
        self.assertEqual((await self.carol.get(RECS)).status, 200)

    async def test_plural_group_delete_removes_principals(self):
        await self.alice.put("/v1" + self.G, {"data": {"members": [uid("bob")]}})
        await self.alice.delete(B + "/groups")
        self.assertNotIn(self.G, await self.principals(self.bob))


from jsonsync.testclient import with_postgresql_variants  # noqa: E402

with_postgresql_variants(globals())
