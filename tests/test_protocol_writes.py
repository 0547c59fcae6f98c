"""
Conformance tests for protocol section 5: PUT / PATCH semantics (replace,
default merge, merge-patch, JSON-patch including value-less permission
operations for every permission name, Response-Behavior), driven over HTTP
as a Kinto client would.
"""

from __future__ import annotations

import json

from jsonsync.testclient import ClientTestCase, StubClient, basicauth_id, build_app

JSON_PATCH = {"Content-Type": "application/json-patch+json"}
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


uid = basicauth_id


ALICE = uid("alice")
BOB = uid("bob")

B = "/v1/buckets/b"
C = B + "/collections/c"
R = C + "/records/r"


class _Base(ClientTestCase):

    async def tree(self):
        await self.ok(self.alice.put(B))
        await self.ok(self.alice.put(C))

    async def json_patch(self, client, path, ops, headers=None):
        h = dict(JSON_PATCH)
        h.update(headers or {})
        return await client.request("PATCH", path, raw=json.dumps(ops).encode(), headers=h)

    def assertValidation(self, r, status=400):
        self.assertEqual(r.status, status, r)
        body = r.json
        self.assertEqual(body["code"], status)
        self.assertEqual(body["errno"], 107, body)
        self.assertEqual(r.header("Content-Type").split(";")[0], "application/json")
        return body


class PutTests(_Base):
    async def test_put_creates_201_then_replaces_200(self):
        r = await self.alice.put(B, {"data": {"a": 1}})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.data["id"], "b")
        self.assertEqual(r.data["a"], 1)
        self.assertIsInstance(r.data["last_modified"], int)
        self.assertEqual(r.header("ETag"), f'"{r.data["last_modified"]}"')
        r2 = await self.alice.put(B, {"data": {"b": 2}})
        self.assertEqual(r2.status, 200, r2)
        self.assertGreater(r2.data["last_modified"], r.data["last_modified"])

    async def test_put_replaces_all_fields(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"a": 1, "nested": {"x": 1, "y": 2}}}))
        r = await self.ok(self.alice.put(R, {"data": {"b": 2, "nested": {"x": 9}}}), 200)
        self.assertNotIn("a", r.data)
        self.assertEqual(r.data["nested"], {"x": 9})
        got = await self.ok(self.alice.get(R), 200)
        self.assertEqual({k: v for k, v in got.data.items() if k != "last_modified"},
                         {"id": "r", "b": 2, "nested": {"x": 9}})

    async def test_put_without_body_creates_empty_object(self):
        await self.tree()
        r = await self.alice.request("PUT", R)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(set(r.data), {"id", "last_modified"})

    async def test_put_permissions_only_keeps_data(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"keep": "me"}}))
        r = await self.ok(self.alice.put(R, {"permissions": {"read": ["system.Everyone"]}}), 200)
        self.assertEqual(r.data["keep"], "me")
        self.assertEqual(r.json["permissions"]["read"], ["system.Everyone"])
        got = await self.ok(self.anon.get(R), 200)
        self.assertEqual(got.data["keep"], "me")

    async def test_put_permissions_replace_whole_acl(self):
        await self.ok(self.alice.put(B, {"permissions": {
            "read": ["x"], "collection:create": ["y"], "group:create": ["z"]}}))
        r = await self.ok(self.alice.put(B, {"permissions": {"read": ["other"]}}), 200)
        perms = r.json["permissions"]
        self.assertEqual(perms.get("read"), ["other"])
        self.assertFalse(perms.get("collection:create"))
        self.assertFalse(perms.get("group:create"))
        # The editor is always re-added to write.
        self.assertEqual(perms["write"], [ALICE])

    async def test_put_without_permissions_keeps_acl(self):
        await self.ok(self.alice.put(B, {"permissions": {"read": ["x"], "write": [BOB]}}))
        r = await self.ok(self.alice.put(B, {"data": {"v": 2}}), 200)
        self.assertEqual(r.json["permissions"]["read"], ["x"])
        self.assertEqual(sorted(r.json["permissions"]["write"]), sorted([ALICE, BOB]))

    async def test_put_editor_readded_to_write(self):
        # Bob has write through the ACL and replaces it with one that omits him.
        await self.ok(self.alice.put(B, {"permissions": {"write": [BOB]}}))
        r = await self.ok(self.bob.put(B, {"permissions": {"write": ["someone"]}}), 200)
        self.assertEqual(sorted(r.json["permissions"]["write"]), sorted([BOB, "someone"]))
        # Alice lost her write ACE (the ACL was replaced).
        r = await self.alice.get(B)
        self.assertEqual(r.status, 403, r)

    async def test_put_ignores_client_id_and_timestamps_are_server_managed(self):
        await self.tree()
        first = await self.ok(self.alice.put(R, {"data": {"a": 1}}))
        # An older last_modified on update is ignored.
        r = await self.ok(self.alice.put(R, {"data": {"a": 2, "last_modified": 1}}), 200)
        self.assertGreater(r.data["last_modified"], first.data["last_modified"])

    async def test_put_mismatching_id_is_400(self):
        await self.tree()
        r = await self.alice.put(R, {"data": {"id": "other"}})
        body = self.assertValidation(r)
        self.assertIn("id", json.dumps(body["details"]))

    async def test_put_matching_id_is_fine(self):
        await self.tree()
        r = await self.alice.put(R, {"data": {"id": "r", "a": 1}})
        self.assertEqual(r.status, 201, r)

    async def test_put_unknown_permission_name_is_400(self):
        r = await self.alice.put(B, {"permissions": {"record:create": ["x"]}})
        self.assertValidation(r)
        await self.ok(self.alice.put(B))
        r = await self.alice.put(C, {"permissions": {"collection:create": ["x"]}})
        self.assertValidation(r)

    async def test_put_explicit_permissions_false_adds_no_ace(self):
        self.app = await build_app({"explicit_permissions": "false",
                                    "bucket_write_principals": "system.Authenticated"})
        alice = StubClient(self.app).as_user("alice")
        r = await alice.put(B, {"data": {}})
        self.assertEqual(r.status, 201, r)
        r = await alice.put(B, {"permissions": {"read": ["x"]}})
        self.assertEqual(r.status, 200, r)
        perms = r.json["permissions"]
        self.assertFalse(perms.get("write"), perms)


class DefaultPatchTests(_Base):
    async def test_shallow_merge(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"a": 1, "sub": {"x": 1, "y": 2}, "keep": True}}))
        r = await self.ok(self.alice.patch(R, {"data": {"a": 2, "sub": {"x": 5}, "new": "n"}}), 200)
        self.assertEqual(r.data["a"], 2)
        self.assertEqual(r.data["sub"], {"x": 5})  # replaced wholesale
        self.assertEqual(r.data["new"], "n")
        self.assertIs(r.data["keep"], True)

    async def test_null_stores_null(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"a": 1}}))
        r = await self.ok(self.alice.patch(R, {"data": {"a": None}}), 200)
        self.assertIn("a", r.data)
        self.assertIsNone(r.data["a"])
        got = await self.ok(self.alice.get(R), 200)
        self.assertIn("a", got.data)
        self.assertIsNone(got.data["a"])

    async def test_last_modified_bumps_even_without_change(self):
        await self.tree()
        first = await self.ok(self.alice.put(R, {"data": {"a": 1}}))
        r = await self.ok(self.alice.patch(R, {"data": {"a": 1}}), 200)
        self.assertGreater(r.data["last_modified"], first.data["last_modified"])
        self.assertEqual(r.header("ETag"), f'"{r.data["last_modified"]}"')

    async def test_patch_permissions_replaces_given_names_only(self):
        await self.ok(self.alice.put(B, {"permissions": {"read": ["r1"], "group:create": ["g1"]}}))
        r = await self.ok(self.alice.patch(B, {"permissions": {"read": ["r2"]}}), 200)
        perms = r.json["permissions"]
        self.assertEqual(perms["read"], ["r2"])
        self.assertEqual(perms["group:create"], ["g1"])
        self.assertIn(ALICE, perms["write"])

    async def test_patch_permissions_null_ignored(self):
        await self.ok(self.alice.put(B, {"permissions": {"read": ["r1"]}}))
        r = await self.ok(self.alice.patch(B, {"permissions": {"read": None}}), 200)
        self.assertEqual(r.json["permissions"]["read"], ["r1"])

    async def test_patch_permissions_only_keeps_data_and_readds_editor(self):
        await self.ok(self.alice.put(B, {"data": {"d": 1}, "permissions": {"write": [BOB]}}))
        r = await self.ok(self.bob.patch(B, {"permissions": {"write": ["other"]}}), 200)
        self.assertEqual(r.data["d"], 1)
        self.assertEqual(sorted(r.json["permissions"]["write"]), sorted([BOB, "other"]))

    async def test_patch_without_data_or_permissions_is_400(self):
        await self.ok(self.alice.put(B))
        self.assertValidation(await self.alice.patch(B, {}))

    async def test_patch_without_body_is_400(self):
        await self.ok(self.alice.put(B))
        self.assertValidation(await self.alice.request("PATCH", B))

    async def test_patch_missing_object_is_404(self):
        await self.tree()
        r = await self.alice.patch(C + "/records/nope", {"data": {"a": 1}})
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.json["errno"], 110)
        self.assertEqual(r.json["details"], {"id": "nope", "resource_name": "record"})

    async def test_patch_mismatching_id_is_400(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {}}))
        self.assertValidation(await self.alice.patch(R, {"data": {"id": "zzz"}}))

    async def test_patch_group_members_must_be_list(self):
        await self.ok(self.alice.put(B))
        await self.ok(self.alice.put(B + "/groups/g", {"data": {"members": []}}))
        self.assertValidation(await self.alice.patch(B + "/groups/g", {"data": {"members": "x"}}))

    async def test_patch_collection_schema_must_be_valid(self):
        await self.tree()
        r = await self.alice.patch(C, {"data": {"schema": {"type": "not-a-type"}}})
        self.assertValidation(r)

    async def test_patch_bad_permission_value_is_400(self):
        await self.ok(self.alice.put(B))
        self.assertValidation(await self.alice.patch(B, {"permissions": {"read": "notalist"}}))
        self.assertValidation(await self.alice.patch(B, {"permissions": {"bogus": ["x"]}}))


class ResponseBehaviorTests(_Base):
    async def setUp(self):
        await super().setUp()
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"a": 1, "b": 2, "z": 26}}))

    async def test_full_is_default(self):
        r = await self.ok(self.alice.patch(R, {"data": {"b": 3}}, headers={"Response-Behavior": "full"}), 200)
        self.assertEqual((r.data["a"], r.data["b"], r.data["z"]), (1, 3, 26))

    async def test_light_returns_only_changed_fields(self):
        r = await self.ok(self.alice.patch(R, {"data": {"a": 1, "b": 3, "c": 4}},
                                           headers={"Response-Behavior": "light"}), 200)
        data = r.data
        self.assertEqual(data.get("b"), 3)
        self.assertEqual(data.get("c"), 4)
        self.assertNotIn("z", data)  # not sent, not changed
        self.assertNotIn("a", data)  # sent but unchanged
        # The object itself was fully patched.
        got = await self.ok(self.alice.get(R), 200)
        self.assertEqual((got.data["a"], got.data["b"], got.data["c"], got.data["z"]), (1, 3, 4, 26))

    async def test_diff_omits_values_equal_to_sent(self):
        r = await self.ok(self.alice.patch(R, {"data": {"b": 3, "c": 4}},
                                           headers={"Response-Behavior": "diff"}), 200)
        self.assertNotIn("b", r.data)
        self.assertNotIn("c", r.data)
        self.assertNotIn("z", r.data)

    async def test_unknown_behavior_is_400(self):
        r = await self.alice.patch(R, {"data": {"b": 3}}, headers={"Response-Behavior": "bogus"})
        body = self.assertValidation(r)
        self.assertEqual(body["details"][0]["location"], "header")
        got = await self.ok(self.alice.get(R), 200)
        self.assertEqual(got.data["b"], 2)

    async def test_light_with_merge_patch(self):
        r = await self.ok(self.alice.request(
            "PATCH", R, raw=b'{"data": {"b": 5}}',
            headers={"Content-Type": "application/merge-patch+json", "Response-Behavior": "light"}), 200)
        self.assertEqual(r.data.get("b"), 5)
        self.assertNotIn("z", r.data)


class MergePatchTests(_Base):
    async def mp(self, client, path, body, **kw):
        return await client.request("PATCH", path, raw=json.dumps(body).encode(), headers=dict(MERGE_PATCH), **kw)

    async def test_recursive_merge_and_null_removes(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"a": {"b": {"c": 1, "d": 2}, "e": 3}, "gone": 1, "kept": 1}}))
        r = await self.ok(self.mp(self.alice, R, {"data": {"a": {"b": {"c": None}, "f": 4}, "gone": None}}), 200)
        self.assertEqual(r.data["a"], {"b": {"d": 2}, "e": 3, "f": 4})
        self.assertNotIn("gone", r.data)
        self.assertEqual(r.data["kept"], 1)
        got = await self.ok(self.alice.get(R), 200)
        self.assertNotIn("gone", got.data)

    async def test_null_at_depth_leaves_empty_object(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {}}))
        r = await self.ok(self.mp(self.alice, R, {"data": {"a": {"b": {"c": None}}}}), 200)
        self.assertEqual(r.data["a"], {"b": {}})

    async def test_permissions_merged_per_name(self):
        await self.ok(self.alice.put(B, {"permissions": {"read": ["r1"], "collection:create": ["c1"],
                                                         "group:create": ["g1"]}}))
        r = await self.ok(self.mp(self.alice, B, {"permissions": {"read": ["r2"], "collection:create": None}}), 200)
        perms = r.json["permissions"]
        self.assertEqual(perms["read"], ["r2"])
        self.assertFalse(perms.get("collection:create"))
        self.assertEqual(perms["group:create"], ["g1"])
        self.assertIn(ALICE, perms["write"])

    async def test_merge_patch_charset_param_accepted(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"a": 1}}))
        r = await self.alice.request("PATCH", R, raw=b'{"data": {"a": null}}',
                                     headers={"Content-Type": "application/merge-patch+json; charset=utf-8"})
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("a", r.data)

    async def test_merge_patch_not_accepted_on_put(self):
        await self.tree()
        r = await self.alice.request("PUT", R, raw=b'{"data": {}}', headers=dict(MERGE_PATCH))
        self.assertValidation(r, 415)


class JsonPatchTests(_Base):
    async def test_data_ops(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"a": 1, "b": {"c": 2}, "l": [1, 2]}}))
        r = await self.ok(self.json_patch(self.alice, R, [
            {"op": "test", "path": "/data/a", "value": 1},
            {"op": "replace", "path": "/data/a", "value": 10},
            {"op": "add", "path": "/data/n", "value": "new"},
            {"op": "remove", "path": "/data/b/c"},
            {"op": "add", "path": "/data/l/1", "value": 9},
            {"op": "copy", "from": "/data/a", "path": "/data/a2"},
            {"op": "move", "from": "/data/n", "path": "/data/moved"},
        ]), 200)
        d = r.data
        self.assertEqual(d["a"], 10)
        self.assertEqual(d["a2"], 10)
        self.assertEqual(d["b"], {})
        self.assertEqual(d["l"], [1, 9, 2])
        self.assertEqual(d["moved"], "new")
        self.assertNotIn("n", d)
        got = await self.ok(self.alice.get(R), 200)
        self.assertEqual(got.data["moved"], "new")

    async def test_failing_test_op_is_400_and_changes_nothing(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"a": 1}}))
        r = await self.json_patch(self.alice, R, [
            {"op": "replace", "path": "/data/a", "value": 2},
            {"op": "test", "path": "/data/a", "value": 99},
        ])
        body = self.assertValidation(r)
        self.assertIn("JSON Patch operation failed", body["message"])
        got = await self.ok(self.alice.get(R), 200)
        self.assertEqual(got.data["a"], 1)

    async def test_remove_missing_path_is_400(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {}}))
        self.assertValidation(await self.json_patch(self.alice, R, [{"op": "remove", "path": "/data/nope"}]))

    async def test_non_array_body_is_400(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {}}))
        self.assertValidation(await self.json_patch(self.alice, R, {"op": "add", "path": "/data/a", "value": 1}))

    async def test_unknown_op_or_key_is_400(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {}}))
        self.assertValidation(await self.json_patch(self.alice, R, [{"op": "frobnicate", "path": "/data/a"}]))
        self.assertValidation(await self.json_patch(
            self.alice, R, [{"op": "add", "path": "/data/a", "value": 1, "extra": True}]))
        self.assertValidation(await self.json_patch(self.alice, R, [{"op": "add", "value": 1}]))

    async def test_valueless_read_write_ops(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {}}))
        r = await self.ok(self.json_patch(self.alice, R, [
            {"op": "add", "path": "/permissions/read/system.Everyone"},
            {"op": "add", "path": "/permissions/write/" + BOB},
        ]), 200)
        self.assertEqual(r.json["permissions"]["read"], ["system.Everyone"])
        self.assertEqual(sorted(r.json["permissions"]["write"]), sorted([ALICE, BOB]))
        self.assertEqual((await self.anon.get(R)).status, 200)
        r = await self.ok(self.json_patch(self.alice, R, [
            {"op": "remove", "path": "/permissions/read/system.Everyone"},
        ]), 200)
        self.assertFalse(r.json["permissions"].get("read"))
        self.assertEqual((await self.anon.get(R)).status, 401)

    async def test_valueless_collection_create_on_bucket(self):
        # kinto.js sends value-less ops for every permission name, even when
        # the ACE does not exist yet.
        await self.ok(self.alice.put(B))
        r = await self.ok(self.json_patch(self.alice, B, [
            {"op": "add", "path": "/permissions/collection:create/system.Authenticated"},
        ]), 200)
        self.assertEqual(r.json["permissions"]["collection:create"], ["system.Authenticated"])
        r = await self.bob.put(B + "/collections/bobs")
        self.assertEqual(r.status, 201, r)

    async def test_valueless_group_create_on_bucket(self):
        await self.ok(self.alice.put(B))
        r = await self.ok(self.json_patch(self.alice, B, [
            {"op": "add", "path": "/permissions/group:create/" + BOB},
        ]), 200)
        self.assertEqual(r.json["permissions"]["group:create"], [BOB])
        r = await self.bob.put(B + "/groups/bobs", {"data": {"members": []}})
        self.assertEqual(r.status, 201, r)

    async def test_valueless_record_create_on_collection(self):
        await self.tree()
        r = await self.ok(self.json_patch(self.alice, C, [
            {"op": "add", "path": "/permissions/record:create/system.Authenticated"},
        ]), 200)
        self.assertEqual(r.json["permissions"]["record:create"], ["system.Authenticated"])
        r = await self.bob.post(C + "/records", {"data": {"x": 1}})
        self.assertEqual(r.status, 201, r)

    async def test_valueless_remove_of_other_permission_name(self):
        await self.tree()
        await self.ok(self.alice.patch(C, {"permissions": {"record:create": [BOB, "other"]}}))
        r = await self.ok(self.json_patch(self.alice, C, [
            {"op": "remove", "path": "/permissions/record:create/" + BOB},
        ]), 200)
        self.assertEqual(r.json["permissions"]["record:create"], ["other"])
        r = await self.bob.post(C + "/records", {"data": {}})
        self.assertEqual(r.status, 403, r)

    async def test_explicit_value_ops_for_permissions(self):
        await self.ok(self.alice.put(B))
        r = await self.ok(self.json_patch(self.alice, B, [
            {"op": "add", "path": "/permissions/read/x", "value": "x"},
            {"op": "add", "path": "/permissions/collection:create/y", "value": "y"},
        ]), 200)
        self.assertEqual(r.json["permissions"]["read"], ["x"])
        self.assertEqual(r.json["permissions"]["collection:create"], ["y"])

    async def test_unknown_permission_name_is_400(self):
        await self.tree()
        self.assertValidation(await self.json_patch(self.alice, C, [
            {"op": "add", "path": "/permissions/collection:create/x"},
        ]))

    async def test_editor_stays_writer_and_data_unchanged_by_permission_ops(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {"a": 1}}))
        r = await self.ok(self.json_patch(self.alice, R, [
            {"op": "remove", "path": "/permissions/write/" + ALICE},
        ]), 200)
        self.assertIn(ALICE, r.json["permissions"]["write"])
        self.assertEqual(r.data["a"], 1)

    async def test_json_patch_result_is_validated(self):
        await self.ok(self.alice.put(B))
        await self.ok(self.alice.put(B + "/groups/g", {"data": {"members": []}}))
        r = await self.json_patch(self.alice, B + "/groups/g", [
            {"op": "replace", "path": "/data/members", "value": "notalist"}])
        self.assertValidation(r)
        r = await self.json_patch(self.alice, B + "/groups/g", [
            {"op": "add", "path": "/data/members/-", "value": "system.Everyone"}])
        self.assertValidation(r)

    async def test_json_patch_members_add_grants_group_principal(self):
        await self.ok(self.alice.put(B, {"permissions": {"read": ["/buckets/b/groups/g"]}}))
        await self.ok(self.alice.put(B + "/groups/g", {"data": {"members": []}}))
        self.assertEqual((await self.bob.get(B)).status, 403)
        await self.ok(self.json_patch(self.alice, B + "/groups/g", [
            {"op": "add", "path": "/data/members/-", "value": BOB}]), 200)
        self.assertEqual((await self.bob.get(B)).status, 200)

    async def test_json_patch_not_accepted_on_put_or_post(self):
        await self.tree()
        r = await self.alice.request("PUT", R, raw=b"[]", headers=dict(JSON_PATCH))
        self.assertValidation(r, 415)
        r = await self.alice.request("POST", C + "/records", raw=b"[]", headers=dict(JSON_PATCH))
        self.assertValidation(r, 415)

    async def test_malformed_json_patch_body_is_400(self):
        await self.tree()
        await self.ok(self.alice.put(R, {"data": {}}))
        r = await self.alice.request("PATCH", R, raw=b"[{", headers=dict(JSON_PATCH))
        self.assertValidation(r)


class ConcurrencyOnWritesTests(_Base):
    async def test_if_match_on_patch(self):
        await self.tree()
        r = await self.ok(self.alice.put(R, {"data": {"a": 1}}))
        etag = r.header("ETag")
        r2 = await self.ok(self.alice.patch(R, {"data": {"a": 2}}, headers={"If-Match": etag}), 200)
        stale = await self.alice.patch(R, {"data": {"a": 3}}, headers={"If-Match": etag})
        self.assertEqual(stale.status, 412, stale)
        self.assertEqual(stale.json["errno"], 114)
        self.assertEqual(stale.json["details"]["existing"]["a"], 2)
        self.assertEqual(stale.header("ETag"), r2.header("ETag"))

    async def test_put_if_none_match_star(self):
        await self.tree()
        r = await self.alice.put(R, {"data": {}}, headers={"If-None-Match": "*"})
        self.assertEqual(r.status, 201, r)
        r = await self.alice.put(R, {"data": {}}, headers={"If-None-Match": "*"})
        self.assertEqual(r.status, 412, r)

    async def test_put_if_match_on_missing_object_is_412_without_details(self):
        await self.tree()
        r = await self.alice.put(C + "/records/new", {"data": {}}, headers={"If-Match": '"123"'})
        self.assertEqual(r.status, 412, r)
        self.assertEqual(r.json["errno"], 114)
        self.assertNotIn("details", r.json)
        self.assertEqual((await self.alice.get(C + "/records/new")).status, 404)

    async def test_patch_if_match_star_on_missing_is_404(self):
        await self.tree()
        r = await self.alice.patch(C + "/records/new", {"data": {}}, headers={"If-Match": "*"})
        self.assertEqual(r.status, 404, r)


from jsonsync.testclient import with_postgresql_variants  # noqa: E402

with_postgresql_variants(globals())
