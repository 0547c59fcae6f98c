"""
Conformance tests for protocol section 6: principals, the inheritance table,
settings ACLs, groups as principals, permissions shown only to writers,
partial listings, 401 vs 403, and GET /permissions.
"""

from __future__ import annotations

from urllib.parse import quote

from jsonsync.testclient import ClientTestCase, basicauth_id

uid = basicauth_id


ALICE = uid("alice")
BOB = uid("bob")
CAROL = uid("carol")

B = "/v1/buckets/b"
C = B + "/collections/c"
G = B + "/groups/g"
RECS = C + "/records"
R = RECS + "/r"
GROUP_URI = "/buckets/b/groups/g"


class _Base(ClientTestCase):

    async def tree(self):
        """alice owns bucket b, collection c, record r, group g (empty)."""
        await self.ok(self.alice.put(B))
        await self.ok(self.alice.put(C))
        await self.ok(self.alice.put(R, {"data": {"v": 1}}))
        await self.ok(self.alice.put(G, {"data": {"members": []}}))

    async def grant(self, path, perms):
        await self.ok(self.alice.patch(path, {"permissions": perms}), 200)

    async def status(self, d):
        return (await d).status

    def assertForbidden(self, r):
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json["errno"], 121)
        self.assertEqual(r.json["error"], "Forbidden")
        self.assertIsNone(r.header("WWW-Authenticate"))

    def assertUnauthorized(self, r):
        self.assertEqual(r.status, 401, r)
        self.assertEqual(r.json["errno"], 104)
        self.assertEqual(r.json["error"], "Unauthorized")
        self.assertIn('Basic realm="Realm"', r.header("WWW-Authenticate") or "")

    async def ids(self, client, path):
        r = await client.get(path)
        self.assertEqual(r.status, 200, r)
        return sorted(o["id"] for o in r.data)


class PrincipalsTests(_Base):
    async def test_hello_principals(self):
        r = await self.ok(self.alice.get("/v1/"), 200)
        user = r.json["user"]
        self.assertEqual(user["id"], ALICE)
        self.assertEqual(set(user["principals"]), {ALICE, "system.Authenticated", "system.Everyone"})

    async def test_anonymous_hello_has_no_user(self):
        r = await self.ok(self.anon.get("/v1/"), 200)
        self.assertNotIn("user", r.json)

    async def test_userid_hmac_secret_changes_ids(self):
        await self.make({"userid_hmac_secret": "s3cr3t"})
        r = await self.ok(self.alice.get("/v1/"), 200)
        self.assertEqual(r.json["user"]["id"], uid("alice", secret="s3cr3t"))

    async def test_group_membership_in_principals(self):
        await self.tree()
        await self.ok(self.alice.patch(G, {"data": {"members": [BOB]}}), 200)
        r = await self.ok(self.bob.get("/v1/"), 200)
        self.assertIn(GROUP_URI, r.json["user"]["principals"])
        r = await self.ok(self.carol.get("/v1/"), 200)
        self.assertNotIn(GROUP_URI, r.json["user"]["principals"])

    async def test_group_grants_permission_and_revocation(self):
        await self.tree()
        await self.grant(B, {"read": [GROUP_URI]})
        self.assertForbidden(await self.bob.get(C))
        await self.ok(self.alice.patch(G, {"data": {"members": [BOB]}}), 200)
        self.assertEqual(await self.status(self.bob.get(C)), 200)
        self.assertEqual(await self.status(self.bob.get(RECS)), 200)
        # Removing the member revokes.
        await self.ok(self.alice.patch(G, {"data": {"members": []}}), 200)
        self.assertForbidden(await self.bob.get(C))

    async def test_deleting_group_revokes(self):
        await self.tree()
        await self.grant(B, {"read": [GROUP_URI]})
        await self.ok(self.alice.patch(G, {"data": {"members": [BOB]}}), 200)
        self.assertEqual(await self.status(self.bob.get(C)), 200)
        await self.ok(self.alice.delete(G), 200)
        self.assertForbidden(await self.bob.get(C))
        r = await self.ok(self.bob.get("/v1/"), 200)
        self.assertNotIn(GROUP_URI, r.json["user"]["principals"])

    async def test_group_of_system_authenticated(self):
        await self.tree()
        await self.ok(self.alice.patch(G, {"data": {"members": ["system.Authenticated"]}}), 200)
        await self.grant(C, {"read": [GROUP_URI]})
        self.assertEqual(await self.status(self.carol.get(RECS)), 200)
        r = await self.ok(self.carol.get("/v1/"), 200)
        self.assertIn(GROUP_URI, r.json["user"]["principals"])
        # Anonymous users are not authenticated.
        self.assertUnauthorized(await self.anon.get(RECS))

    async def test_group_members_cannot_be_everyone_or_groups(self):
        await self.tree()
        for bad in ("system.Everyone", "/buckets/b/groups/other"):
            r = await self.alice.patch(G, {"data": {"members": [bad]}})
            self.assertEqual(r.status, 400, r)
            self.assertEqual(r.json["errno"], 107)
            self.assertEqual(r.json["details"][0]["name"], "data.members.0")

    async def test_system_everyone_grants_anonymous(self):
        await self.tree()
        self.assertUnauthorized(await self.anon.get(R))
        await self.grant(R, {"read": ["system.Everyone"]})
        r = await self.ok(self.anon.get(R), 200)
        self.assertEqual(r.data["v"], 1)

    async def test_system_authenticated_grants_authenticated_only(self):
        await self.tree()
        await self.grant(R, {"read": ["system.Authenticated"]})
        self.assertEqual(await self.status(self.carol.get(R)), 200)
        self.assertUnauthorized(await self.anon.get(R))

    async def test_arbitrary_principal_string_accepted(self):
        await self.tree()
        r = await self.ok(self.alice.patch(R, {"permissions": {"read": ["account:whatever", "ldap:x y"]}}), 200)
        self.assertEqual(sorted(r.json["permissions"]["read"]), ["account:whatever", "ldap:x y"])


class InheritanceTests(_Base):
    """The table of section 6.2, row by row, with bob as the grantee."""

    async def setUp(self):
        await super().setUp()
        await self.tree()

    async def test_bucket_write(self):
        await self.grant(B, {"write": [BOB]})
        self.assertEqual(await self.status(self.bob.patch(B, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.bob.patch(C, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.bob.patch(G, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.bob.patch(R, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.bob.put(B + "/collections/bc")), 201)
        self.assertEqual(await self.status(self.bob.put(B + "/groups/bg", {"data": {"members": []}})), 201)
        self.assertEqual(await self.status(self.bob.post(RECS, {"data": {}})), 201)
        self.assertEqual(await self.ids(self.bob, B + "/collections"), ["bc", "c"])
        self.assertEqual(await self.ids(self.bob, B + "/groups"), ["bg", "g"])
        self.assertEqual(len(await self.ids(self.bob, RECS)), 2)
        self.assertEqual(await self.status(self.bob.delete(R)), 200)

    async def test_bucket_read(self):
        await self.grant(B, {"read": [BOB]})
        self.assertEqual(await self.status(self.bob.get(B)), 200)
        self.assertEqual(await self.status(self.bob.get(C)), 200)
        self.assertEqual(await self.status(self.bob.get(G)), 200)
        self.assertEqual(await self.status(self.bob.get(R)), 200)
        self.assertEqual(await self.ids(self.bob, B + "/collections"), ["c"])
        self.assertEqual(await self.ids(self.bob, B + "/groups"), ["g"])
        self.assertEqual(await self.ids(self.bob, RECS), ["r"])
        self.assertForbidden(await self.bob.patch(B, {"data": {"x": 1}}))
        self.assertForbidden(await self.bob.patch(C, {"data": {"x": 1}}))
        self.assertForbidden(await self.bob.patch(R, {"data": {"x": 1}}))
        self.assertForbidden(await self.bob.put(B + "/collections/new"))
        self.assertForbidden(await self.bob.post(RECS, {"data": {}}))
        self.assertForbidden(await self.bob.delete(R))

    async def test_bucket_collection_create(self):
        await self.grant(B, {"collection:create": [BOB]})
        # read attributes of the bucket
        self.assertEqual(await self.status(self.bob.get(B)), 200)
        self.assertEqual(await self.status(self.bob.put(B + "/collections/mine")), 201)
        self.assertEqual(await self.status(self.bob.post(B + "/collections", {"data": {"id": "mine2"}})), 201)
        # partial listing: only what bob created (he is writer of those)
        self.assertEqual(await self.ids(self.bob, B + "/collections"), ["mine", "mine2"])
        self.assertForbidden(await self.bob.get(C))
        self.assertForbidden(await self.bob.patch(B, {"data": {"x": 1}}))
        self.assertForbidden(await self.bob.put(B + "/groups/x", {"data": {"members": []}}))
        # bob is the writer of his collection and can add records to it
        self.assertEqual(await self.status(self.bob.post(B + "/collections/mine/records", {"data": {}})), 201)

    async def test_bucket_collection_create_lists_empty_not_403(self):
        await self.grant(B, {"collection:create": [BOB]})
        r = await self.ok(self.bob.get(B + "/collections"), 200)
        self.assertEqual(r.data, [])

    async def test_bucket_group_create(self):
        await self.grant(B, {"group:create": [BOB]})
        self.assertEqual(await self.status(self.bob.get(B)), 200)
        self.assertEqual(await self.status(self.bob.put(B + "/groups/mine", {"data": {"members": []}})), 201)
        self.assertEqual(await self.ids(self.bob, B + "/groups"), ["mine"])
        self.assertForbidden(await self.bob.get(G))
        self.assertForbidden(await self.bob.put(B + "/collections/x"))

    async def test_collection_write(self):
        await self.grant(C, {"write": [BOB]})
        self.assertEqual(await self.status(self.bob.get(C)), 200)
        self.assertEqual(await self.status(self.bob.patch(C, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.bob.patch(R, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.bob.post(RECS, {"data": {}})), 201)
        self.assertEqual(len(await self.ids(self.bob, RECS)), 2)
        self.assertForbidden(await self.bob.get(B))
        self.assertForbidden(await self.bob.patch(B, {"data": {"x": 1}}))
        self.assertForbidden(await self.bob.get(G))

    async def test_collection_read(self):
        await self.grant(C, {"read": [BOB]})
        self.assertEqual(await self.status(self.bob.get(C)), 200)
        self.assertEqual(await self.ids(self.bob, RECS), ["r"])
        self.assertEqual(await self.status(self.bob.get(R)), 200)
        self.assertForbidden(await self.bob.patch(R, {"data": {"x": 1}}))
        self.assertForbidden(await self.bob.post(RECS, {"data": {}}))
        self.assertForbidden(await self.bob.patch(C, {"data": {"x": 1}}))
        self.assertForbidden(await self.bob.get(B))

    async def test_collection_record_create(self):
        await self.grant(C, {"record:create": [BOB]})
        self.assertEqual(await self.status(self.bob.get(C)), 200)
        r = await self.ok(self.bob.post(RECS, {"data": {"mine": True}}), 201)
        mine = r.data["id"]
        # partial listing: only his own record
        self.assertEqual(await self.ids(self.bob, RECS), [mine])
        self.assertForbidden(await self.bob.get(R))
        self.assertForbidden(await self.bob.patch(R, {"data": {"x": 1}}))
        self.assertForbidden(await self.bob.patch(C, {"data": {"x": 1}}))

    async def test_collection_record_create_lists_empty_not_403(self):
        await self.grant(C, {"record:create": [BOB]})
        r = await self.ok(self.bob.get(RECS), 200)
        self.assertEqual(r.data, [])

    async def test_group_write_and_read(self):
        await self.grant(G, {"write": [BOB], "read": [CAROL]})
        self.assertEqual(await self.status(self.bob.get(G)), 200)
        self.assertEqual(await self.status(self.bob.patch(G, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.carol.get(G)), 200)
        self.assertForbidden(await self.carol.patch(G, {"data": {"x": 2}}))
        self.assertForbidden(await self.bob.get(B))

    async def test_record_write(self):
        await self.grant(R, {"write": [BOB]})
        self.assertEqual(await self.status(self.bob.get(R)), 200)  # write implies read
        self.assertEqual(await self.status(self.bob.patch(R, {"data": {"x": 1}})), 200)
        self.assertForbidden(await self.bob.get(C))
        self.assertForbidden(await self.bob.post(RECS, {"data": {}}))
        self.assertEqual(await self.status(self.bob.delete(R)), 200)

    async def test_record_read(self):
        await self.grant(R, {"read": [BOB]})
        self.assertEqual(await self.status(self.bob.get(R)), 200)
        self.assertForbidden(await self.bob.patch(R, {"data": {"x": 1}}))
        self.assertForbidden(await self.bob.delete(R))
        self.assertForbidden(await self.bob.get(C))

    async def test_no_permission_at_all(self):
        self.assertForbidden(await self.bob.get(B))
        self.assertForbidden(await self.bob.get(C))
        self.assertForbidden(await self.bob.get(R))
        self.assertForbidden(await self.bob.get(RECS))
        self.assertForbidden(await self.bob.get(B + "/collections"))
        self.assertForbidden(await self.bob.get(B + "/groups"))
        self.assertForbidden(await self.bob.put(R, {"data": {}}))
        self.assertForbidden(await self.bob.delete(B))

    async def test_put_existing_needs_write_missing_needs_create(self):
        await self.grant(C, {"record:create": [BOB]})
        # PUT on an existing record: write needed
        self.assertForbidden(await self.bob.put(R, {"data": {}}))
        # PUT on a new id: create on the parent is enough
        self.assertEqual(await self.status(self.bob.put(RECS + "/new", {"data": {}})), 201)

    async def test_put_if_none_match_star_requires_create(self):
        await self.grant(R, {"write": [BOB]})
        # bob can write r but lacks record:create: 403, not 412
        self.assertForbidden(await self.bob.put(R, {"data": {}}, headers={"If-None-Match": "*"}))
        await self.grant(C, {"record:create": [CAROL]})
        r = await self.carol.put(R, {"data": {}}, headers={"If-None-Match": "*"})
        self.assertEqual(r.status, 412, r)

    async def test_post_existing_id_needs_read_returns_200(self):
        await self.grant(R, {"read": [BOB]})
        await self.grant(C, {"record:create": [BOB]})
        r = await self.ok(self.bob.post(RECS, {"data": {"id": "r", "v": 999}}), 200)
        self.assertEqual(r.data["v"], 1)  # unchanged
        # carol may create but cannot read r
        await self.grant(C, {"record:create": [BOB, CAROL]})
        self.assertForbidden(await self.carol.post(RECS, {"data": {"id": "r"}}))

    async def test_missing_object_404_if_parent_readable_else_403(self):
        self.assertForbidden(await self.bob.get(RECS + "/nope"))
        self.assertForbidden(await self.bob.patch(RECS + "/nope", {"data": {}}))
        self.assertForbidden(await self.bob.delete(RECS + "/nope"))
        await self.grant(C, {"read": [BOB]})
        for r in (await self.bob.get(RECS + "/nope"),
                  await self.bob.patch(RECS + "/nope", {"data": {}}),
                  await self.bob.delete(RECS + "/nope")):
            self.assertEqual(r.status, 404, r)
            self.assertEqual(r.json["errno"], 110)

    async def test_missing_bucket_for_non_admin_is_403(self):
        self.assertForbidden(await self.bob.put("/v1/buckets/nobucket/collections/x"))
        self.assertForbidden(await self.bob.get("/v1/buckets/nobucket/collections"))

    async def test_invalid_id_checked_after_authorization(self):
        bad = C + "/records/" + quote("bad id!")
        self.assertUnauthorized(await self.anon.put(bad, {"data": {}}))
        self.assertForbidden(await self.bob.put(bad, {"data": {}}))
        r = await self.alice.put(bad, {"data": {}})
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json["errno"], 107)
        self.assertEqual(r.json["details"][0]["location"], "path")

    async def test_delete_bucket_needs_bucket_write(self):
        await self.grant(C, {"write": [BOB]})
        self.assertForbidden(await self.bob.delete(B))
        self.assertEqual(await self.status(self.bob.delete(C)), 200)


class PermissionsVisibilityTests(_Base):
    async def setUp(self):
        await super().setUp()
        await self.tree()

    async def test_reader_gets_empty_permissions(self):
        await self.grant(R, {"read": [BOB]})
        r = await self.ok(self.bob.get(R), 200)
        self.assertIn("permissions", r.json)
        self.assertEqual(r.json["permissions"], {})

    async def test_inherited_writer_gets_empty_permissions(self):
        await self.grant(B, {"write": [BOB]})
        r = await self.ok(self.bob.get(C), 200)
        self.assertEqual(r.json["permissions"], {})
        r = await self.ok(self.bob.get(R), 200)
        self.assertEqual(r.json["permissions"], {})
        r = await self.ok(self.bob.patch(R, {"data": {"z": 1}}), 200)
        # after writing, bob is an explicit writer and sees the ACL
        self.assertIn(BOB, r.json["permissions"]["write"])

    async def test_explicit_writer_sees_permissions(self):
        await self.grant(R, {"write": [BOB], "read": [CAROL]})
        r = await self.ok(self.bob.get(R), 200)
        self.assertEqual(r.json["permissions"]["read"], [CAROL])
        self.assertIn(BOB, r.json["permissions"]["write"])

    async def test_writer_through_group_sees_permissions(self):
        await self.ok(self.alice.patch(G, {"data": {"members": [BOB]}}), 200)
        await self.grant(R, {"write": [GROUP_URI]})
        r = await self.ok(self.bob.get(R), 200)
        self.assertIn(GROUP_URI, r.json["permissions"]["write"])

    async def test_anonymous_public_reader_gets_empty_permissions(self):
        await self.grant(R, {"read": ["system.Everyone"]})
        r = await self.ok(self.anon.get(R), 200)
        self.assertEqual(r.json["permissions"], {})

    async def test_plural_has_no_permissions(self):
        r = await self.ok(self.alice.get(RECS), 200)
        self.assertNotIn("permissions", r.json)
        self.assertNotIn("permissions", r.data[0])


class PartialListingTests(_Base):
    async def setUp(self):
        await super().setUp()
        await self.tree()
        for rid in ("r2", "r3"):
            await self.ok(self.alice.put(RECS + "/" + rid, {"data": {"v": rid}}))

    async def test_records_shared_individually(self):
        await self.grant(RECS + "/r2", {"read": [BOB]})
        await self.grant(RECS + "/r3", {"write": [BOB]})
        self.assertEqual(await self.ids(self.bob, RECS), ["r2", "r3"])
        r = await self.ok(self.bob.head(RECS), 200)
        self.assertEqual(r.header("Total-Objects"), "2")
        self.assertEqual(r.header("Total-Records"), "2")
        # filters apply within the visible set
        r = await self.ok(self.bob.get(RECS + "?v=r3"), 200)
        self.assertEqual([o["id"] for o in r.data], ["r3"])

    async def test_partial_listing_via_public_record(self):
        await self.grant(RECS + "/r2", {"read": ["system.Everyone"]})
        self.assertEqual(await self.ids(self.anon, RECS), ["r2"])

    async def test_no_access_at_all_is_denied(self):
        self.assertForbidden(await self.bob.get(RECS))
        self.assertUnauthorized(await self.anon.get(RECS))

    async def test_partial_plural_delete(self):
        await self.grant(RECS + "/r2", {"read": [BOB]})
        await self.grant(RECS + "/r3", {"write": [BOB]})
        r = await self.ok(self.bob.delete(RECS), 200)
        self.assertEqual([o["id"] for o in r.data], ["r3"])
        self.assertTrue(r.data[0]["deleted"])
        self.assertEqual(await self.ids(self.alice, RECS), ["r", "r2"])

    async def test_partial_listing_pagination(self):
        await self.make({"paginate_by": "1"})
        await self.tree()
        for rid in ("r2", "r3"):
            await self.ok(self.alice.put(RECS + "/" + rid, {"data": {}}))
            await self.grant(RECS + "/" + rid, {"read": [BOB]})
        r = await self.ok(self.bob.get(RECS), 200)
        self.assertEqual(len(r.data), 1)
        seen = [r.data[0]["id"]]
        nxt = r.header("Next-Page")
        self.assertTrue(nxt)
        r = await self.ok(self.bob.get(nxt), 200)
        seen += [o["id"] for o in r.data]
        self.assertEqual(sorted(seen), ["r2", "r3"])
        self.assertIsNone(r.header("Next-Page"))

    async def test_buckets_list_only_readable(self):
        await self.ok(self.bob.put("/v1/buckets/bobs"))
        await self.ok(self.alice.put("/v1/buckets/shared", {"permissions": {"read": [BOB]}}))
        self.assertEqual(await self.ids(self.bob, "/v1/buckets"), ["bobs", "shared"])
        self.assertEqual(await self.ids(self.alice, "/v1/buckets"), ["b", "shared"])

    async def test_plural_delete_buckets_only_writable(self):
        await self.ok(self.bob.put("/v1/buckets/bobs"))
        await self.ok(self.alice.put("/v1/buckets/readonly", {"permissions": {"read": [BOB]}}))
        r = await self.ok(self.bob.delete("/v1/buckets"), 200)
        self.assertEqual([o["id"] for o in r.data], ["bobs"])
        self.assertEqual(await self.ids(self.alice, "/v1/buckets"), ["b", "readonly"])

    async def test_buckets_list_with_only_create_is_empty(self):
        r = await self.ok(self.carol.get("/v1/buckets"), 200)
        self.assertEqual(r.data, [])

    async def test_buckets_list_anonymous(self):
        # anonymous users have no bucket:create by default and read nothing
        self.assertUnauthorized(await self.anon.get("/v1/buckets"))
        await self.ok(self.alice.put("/v1/buckets/pub", {"permissions": {"read": ["system.Everyone"]}}))
        self.assertEqual(await self.ids(self.anon, "/v1/buckets"), ["pub"])


class SettingsAclTests(_Base):
    async def test_bucket_write_principals(self):
        await self.make({"bucket_write_principals": "system.Authenticated"})
        await self.tree()
        self.assertEqual(await self.status(self.bob.patch(B, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.bob.patch(R, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.bob.put(B + "/collections/other")), 201)
        self.assertEqual(await self.ids(self.bob, "/v1/buckets"), ["b"])
        self.assertUnauthorized(await self.anon.get(B))

    async def test_bucket_read_principals(self):
        await self.make({"bucket_read_principals": BOB})
        await self.tree()
        self.assertEqual(await self.status(self.bob.get(B)), 200)
        self.assertEqual(await self.ids(self.bob, RECS), ["r"])
        self.assertForbidden(await self.bob.patch(B, {"data": {"x": 1}}))
        self.assertForbidden(await self.carol.get(B))

    async def test_record_create_principals(self):
        await self.make({"record_create_principals": "system.Authenticated"})
        await self.tree()
        r = await self.ok(self.bob.post(RECS, {"data": {}}), 201)
        self.assertForbidden(await self.bob.patch(R, {"data": {"x": 1}}))
        self.assertEqual(await self.ids(self.bob, RECS), [r.data["id"]])
        # it does not allow creating collections
        self.assertForbidden(await self.bob.put(B + "/collections/x"))

    async def test_collection_create_principals(self):
        await self.make({"collection_create_principals": BOB})
        await self.tree()
        self.assertEqual(await self.status(self.bob.put(B + "/collections/x")), 201)
        self.assertForbidden(await self.carol.put(B + "/collections/y"))

    async def test_collection_write_principals(self):
        await self.make({"collection_write_principals": BOB})
        await self.tree()
        self.assertEqual(await self.status(self.bob.patch(C, {"data": {"x": 1}})), 200)
        self.assertEqual(await self.status(self.bob.patch(R, {"data": {"x": 1}})), 200)
        self.assertForbidden(await self.bob.patch(B, {"data": {"x": 1}}))

    async def test_record_read_principals_everyone(self):
        await self.make({"record_read_principals": "system.Everyone"})
        await self.tree()
        self.assertEqual(await self.status(self.anon.get(R)), 200)
        self.assertUnauthorized(await self.anon.get(C))

    async def test_group_write_principals(self):
        await self.make({"group_write_principals": BOB})
        await self.tree()
        self.assertEqual(await self.status(self.bob.patch(G, {"data": {"members": [CAROL]}})), 200)
        self.assertForbidden(await self.bob.patch(C, {"data": {}}))

    async def test_bucket_create_principals_restricts(self):
        await self.make({"bucket_create_principals": ALICE})
        self.assertEqual(await self.status(self.alice.put("/v1/buckets/a1")), 201)
        self.assertForbidden(await self.bob.put("/v1/buckets/b1"))
        self.assertForbidden(await self.bob.post("/v1/buckets", {"data": {"id": "b2"}}))
        self.assertUnauthorized(await self.anon.put("/v1/buckets/b3"))

    async def test_bucket_create_default_is_authenticated(self):
        self.assertEqual(await self.status(self.bob.post("/v1/buckets", {"data": {}})), 201)
        self.assertUnauthorized(await self.anon.post("/v1/buckets", {"data": {}}))

    async def test_bucket_create_everyone(self):
        await self.make({"bucket_create_principals": "system.Everyone"})
        r = await self.anon.put("/v1/buckets/anon")
        self.assertEqual(r.status, 201, r)

    async def test_settings_acl_with_group_principal(self):
        await self.make({"bucket_read_principals": GROUP_URI})
        await self.tree()
        self.assertForbidden(await self.bob.get(B))
        await self.ok(self.alice.patch(G, {"data": {"members": [BOB]}}), 200)
        self.assertEqual(await self.status(self.bob.get(B)), 200)


class ExplicitPermissionsFalseTests(_Base):
    settings = {"explicit_permissions": "false", "bucket_write_principals": ALICE}

    async def test_creator_gets_no_ace(self):
        r = await self.ok(self.bob.put("/v1/buckets/bobs"), 201)
        self.assertEqual(r.json["permissions"], {})
        # bob relies on inheritance only: nothing grants him read
        self.assertForbidden(await self.bob.get("/v1/buckets/bobs"))
        self.assertEqual(await self.status(self.alice.get("/v1/buckets/bobs")), 200)

    async def test_explicit_acl_still_honoured(self):
        await self.ok(self.alice.put(B, {"permissions": {"read": [BOB]}}), 201)
        self.assertEqual(await self.status(self.bob.get(B)), 200)


class UnauthorizedTests(_Base):
    async def test_401_vs_403(self):
        await self.tree()
        r = await self.anon.get(B)
        self.assertUnauthorized(r)
        self.assertEqual(r.json["message"], "Please authenticate yourself to use this endpoint.")
        self.assertEqual(r.json["code"], 401)
        r = await self.bob.get(B)
        self.assertForbidden(r)
        self.assertEqual(r.json["message"], "This user cannot access this resource.")
        self.assertEqual(r.json["code"], 403)

    async def test_401_on_every_write_verb(self):
        await self.tree()
        self.assertUnauthorized(await self.anon.put(R, {"data": {}}))
        self.assertUnauthorized(await self.anon.patch(R, {"data": {}}))
        self.assertUnauthorized(await self.anon.delete(R))
        self.assertUnauthorized(await self.anon.post(RECS, {"data": {}}))
        self.assertUnauthorized(await self.anon.delete(RECS))

    async def test_head_401(self):
        await self.tree()
        r = await self.anon.head(RECS)
        self.assertEqual(r.status, 401)
        self.assertIn("Basic", r.header("WWW-Authenticate") or "")

    async def test_malformed_authorization_is_anonymous(self):
        await self.tree()
        r = await self.stub.request("GET", B, headers={"Authorization": "Basic !!!notbase64"}, auth=False)
        self.assertIn(r.status, (401,), r)
        r = await self.stub.request("GET", B, headers={"Authorization": "Bearer xyz"}, auth=False)
        self.assertIn(r.status, (401,), r)


class PermissionsEndpointTests(_Base):
    settings = {"experimental_permissions_endpoint": "true"}

    async def entries(self, client, qs=""):
        r = await client.get("/v1/permissions" + qs)
        self.assertEqual(r.status, 200, r)
        return {e["uri"]: e for e in r.data}

    async def test_disabled_by_default(self):
        await self.make({})
        r = await self.alice.get("/v1/permissions")
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.json["errno"], 111)
        r = await self.ok(self.alice.get("/v1/"), 200)
        self.assertNotIn("permissions_endpoint", r.json["capabilities"])

    async def test_capability(self):
        r = await self.ok(self.alice.get("/v1/"), 200)
        self.assertIn("permissions_endpoint", r.json["capabilities"])

    async def test_lists_explicit_permissions(self):
        await self.tree()
        await self.grant(R, {"read": [BOB]})
        await self.grant(C, {"record:create": [BOB]})
        got = await self.entries(self.bob)
        rec = got["/buckets/b/collections/c/records/r"]
        self.assertEqual(rec["resource_name"], "record")
        self.assertEqual(rec["id"], "r")
        self.assertEqual(rec["bucket_id"], "b")
        self.assertEqual(rec["collection_id"], "c")
        self.assertEqual(rec["record_id"], "r")
        self.assertEqual(rec["permissions"], ["read"])
        col = got["/buckets/b/collections/c"]
        self.assertEqual(col["resource_name"], "collection")
        self.assertIn("record:create", col["permissions"])
        self.assertNotIn("write", col["permissions"])
        # bob has nothing on the bucket: no entry, children are not expanded
        self.assertNotIn("/buckets/b", got)
        self.assertNotIn("/buckets/b/groups/g", got)

    async def test_write_expands_to_implied(self):
        await self.tree()
        got = await self.entries(self.alice)
        bucket = got["/buckets/b"]
        self.assertEqual(bucket["resource_name"], "bucket")
        self.assertEqual(bucket["bucket_id"], "b")
        for perm in ("write", "read", "collection:create", "group:create"):
            self.assertIn(perm, bucket["permissions"])
        self.assertIn("record:create", got["/buckets/b/collections/c"]["permissions"])
        group = got["/buckets/b/groups/g"]
        self.assertEqual(group["group_id"], "g")
        self.assertEqual(group["resource_name"], "group")

    async def test_root_entry_for_bucket_create(self):
        got = await self.entries(self.alice)
        root = got["/"]
        self.assertEqual(root["resource_name"], "root")
        self.assertIn("bucket:create", root["permissions"])

    async def test_group_principal_counts(self):
        await self.tree()
        await self.ok(self.alice.patch(G, {"data": {"members": [BOB]}}), 200)
        await self.grant(C, {"read": [GROUP_URI]})
        got = await self.entries(self.bob)
        self.assertIn("read", got["/buckets/b/collections/c"]["permissions"])

    async def test_anonymous_sees_public_objects(self):
        await self.tree()
        await self.grant(R, {"read": ["system.Everyone"]})
        got = await self.entries(self.anon)
        self.assertEqual(set(got) - {"/"}, {"/buckets/b/collections/c/records/r"})

    async def test_filters_sort_exclude(self):
        await self.tree()
        got = await self.entries(self.alice, "?exclude_resource_name=record,group")
        names = {e["resource_name"] for e in got.values()}
        self.assertFalse(names & {"record", "group"})
        self.assertIn("/buckets/b", got)
        r = await self.ok(self.alice.get("/v1/permissions?resource_name=bucket"), 200)
        self.assertEqual([e["uri"] for e in r.data], ["/buckets/b"])
        r = await self.ok(self.alice.get("/v1/permissions?_sort=uri&in_resource_name=collection,record"), 200)
        self.assertEqual([e["uri"] for e in r.data],
                         ["/buckets/b/collections/c", "/buckets/b/collections/c/records/r"])

    async def test_unknown_filter_field_is_400(self):
        r = await self.alice.get("/v1/permissions?bogus=1")
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json["errno"], 107)
        self.assertEqual(r.json["details"][0]["location"], "querystring")
        r = await self.alice.get("/v1/permissions?_sort=bogus")
        self.assertEqual(r.status, 400, r)

    async def test_head_and_pagination(self):
        await self.tree()
        r = await self.ok(self.alice.head("/v1/permissions"), 200)
        total = int(r.header("Total-Objects"))
        self.assertGreaterEqual(total, 5)  # root, bucket, collection, group, record
        seen = []
        url = "/v1/permissions?_limit=2"
        while url:
            r = await self.ok(self.alice.get(url), 200)
            self.assertLessEqual(len(r.data), 2)
            seen += [e["uri"] for e in r.data]
            url = r.header("Next-Page")
        self.assertEqual(len(seen), total)
        self.assertEqual(len(set(seen)), total)

    async def test_deleted_objects_disappear(self):
        await self.tree()
        await self.ok(self.alice.delete(R), 200)
        got = await self.entries(self.alice)
        self.assertNotIn("/buckets/b/collections/c/records/r", got)

    async def test_settings_acl_shows_up(self):
        # Permissions granted by settings (not only by ACLs) are listed for
        # the objects the user can see.
        await self.make({"experimental_permissions_endpoint": "true",
                         "bucket_write_principals": BOB})
        # (Kinto adds every bucket, collection and group for settings ACLs.)
        await self.tree()
        got = await self.entries(self.bob)
        self.assertIn("/buckets/b", got)
        self.assertIn("write", got["/buckets/b"]["permissions"])
        self.assertIn("read", got["/buckets/b"]["permissions"])


from jsonsync.testclient import with_postgresql_variants  # noqa: E402

with_postgresql_variants(globals())
