"""
Protocol conformance, section 4: concurrency control (If-Match /
If-None-Match on every verb, 304, 412 with details.existing).
"""

import hashlib
import hmac

from twisted.trial.unittest import TestCase

from jsonsync.testclient import StubClient, build_app

B = "/v1/buckets/b"
C = B + "/collections/c"
RECS = C + "/records"
R1 = RECS + "/r1"
MISSING = RECS + "/nope"


def uid(user, password="secret", secret=""):
    digest = hmac.new(secret.encode(), f"{user}:{password}".encode(), hashlib.sha256).hexdigest()
    return "basicauth:" + digest


def im(value):
    return {"If-Match": value}


def inm(value):
    return {"If-None-Match": value}


class PreconditionCase(TestCase):
    async def setUp(self):
        self.app = await build_app({})
        base = StubClient(self.app)
        self.alice = base.as_user("alice")
        self.bob = base.as_user("bob")
        self.assertEqual((await self.alice.put(B)).status, 201)
        self.assertEqual((await self.alice.put(C)).status, 201)
        r = await self.alice.put(R1, {"data": {"title": "one"}, "permissions": {"read": [uid("bob")]}})
        self.assertEqual(r.status, 201, r)
        self.rec = r.data
        self.ts = r.data["last_modified"]
        self.etag = f'"{self.ts}"'
        self.stale = f'"{self.ts - 1}"'

    async def list_etag(self):
        return (await self.alice.get(RECS)).header("ETag")

    def assert412(self, r, existing="absent"):
        self.assertEqual(r.status, 412, r)
        body = r.json
        self.assertEqual(body["code"], 412)
        self.assertEqual(body["errno"], 114)
        self.assertEqual(body["error"], "Precondition Failed")
        self.assertEqual(body["message"], "Resource was modified meanwhile")
        if existing == "absent":
            self.assertNotIn("details", body)
        else:
            self.assertEqual(body["details"], {"existing": existing})
        return body

    def assert404(self, r):
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.json["errno"], 110)

    async def assertUnchanged(self):
        r = await self.alice.get(R1)
        self.assertEqual(r.data, self.rec)


# ---------------------------------------------------------------------------------
# header syntax
# ---------------------------------------------------------------------------------
class HeaderSyntaxTests(PreconditionCase):
    async def test_invalid_if_match(self):
        for value in ("123", 'W/"123"', '"abc"', '"12"3', '"1", "2"'):
            r = await self.alice.get(R1, headers=im(value))
            self.assertEqual(r.status, 400, (value, r))
            body = r.json
            self.assertEqual(body["errno"], 107)
            self.assertEqual(body["error"], "Invalid parameters")
            self.assertEqual(body["details"][0]["location"], "header")
            self.assertEqual(body["details"][0]["name"], "If-Match")

    async def test_invalid_if_none_match(self):
        for value in ("123", f"W/{self.etag}"):
            r = await self.alice.put(R1, {"data": {}}, headers=inm(value))
            self.assertEqual(r.status, 400, (value, r))
            self.assertEqual(r.json["details"][0]["location"], "header")
            self.assertEqual(r.json["details"][0]["name"], "If-None-Match")
        await self.assertUnchanged()


# ---------------------------------------------------------------------------------
# GET / HEAD object
# ---------------------------------------------------------------------------------
class ObjectReadTests(PreconditionCase):
    async def test_if_none_match_current_304(self):
        r = await self.alice.get(R1, headers=inm(self.etag))
        self.assertEqual(r.status, 304, r)
        self.assertEqual(r.raw, b"")
        self.assertEqual(r.header("ETag"), self.etag)
        self.assertIsNotNone(r.header("Last-Modified"))

    async def test_head_if_none_match_304(self):
        r = await self.alice.head(R1, headers=inm(self.etag))
        self.assertEqual(r.status, 304, r)
        self.assertEqual(r.header("ETag"), self.etag)

    async def test_if_none_match_other_200(self):
        r = await self.alice.get(R1, headers=inm(self.stale))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data, self.rec)

    async def test_if_none_match_star_existing_412(self):
        r = await self.alice.get(R1, headers=inm("*"))
        self.assert412(r, self.rec)
        self.assertEqual(r.header("ETag"), self.etag)

    async def test_if_none_match_star_missing_404(self):
        self.assert404(await self.alice.get(MISSING, headers=inm("*")))

    async def test_if_match_current_200(self):
        r = await self.alice.get(R1, headers=im(self.etag))
        self.assertEqual(r.status, 200, r)

    async def test_if_match_changed_412(self):
        r = await self.alice.get(R1, headers=im(self.stale))
        self.assert412(r, self.rec)
        self.assertEqual(r.header("ETag"), self.etag)
        self.assertIsNotNone(r.header("Last-Modified"))

    async def test_if_match_star(self):
        self.assertEqual((await self.alice.get(R1, headers=im("*"))).status, 200)
        self.assert404(await self.alice.get(MISSING, headers=im("*")))
        self.assert404(await self.alice.get(MISSING, headers=im(self.etag)))

    async def test_existing_has_no_permissions(self):
        r = await self.alice.get(R1, headers=im(self.stale))
        self.assertNotIn("permissions", r.json["details"]["existing"])

    async def test_reader_gets_304_too(self):
        r = await self.bob.get(R1, headers=inm(self.etag))
        self.assertEqual(r.status, 304, r)


# ---------------------------------------------------------------------------------
# PUT
# ---------------------------------------------------------------------------------
class PutTests(PreconditionCase):
    async def test_if_match_current_overwrites(self):
        r = await self.alice.put(R1, {"data": {"title": "two"}}, headers=im(self.etag))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data["title"], "two")

    async def test_if_match_changed_412(self):
        r = await self.alice.put(R1, {"data": {"title": "two"}}, headers=im(self.stale))
        self.assert412(r, self.rec)
        self.assertEqual(r.header("ETag"), self.etag)
        await self.assertUnchanged()

    async def test_if_match_after_concurrent_update(self):
        await self.alice.patch(R1, {"data": {"title": "alice"}})
        current = (await self.alice.get(R1)).data
        r = await self.alice.put(R1, {"data": {"title": "late"}}, headers=im(self.etag))
        self.assert412(r, current)
        self.assertEqual(r.header("ETag"), f'"{current["last_modified"]}"')

    async def test_if_match_star_existing_overwrites(self):
        r = await self.alice.put(R1, {"data": {"title": "two"}}, headers=im("*"))
        self.assertEqual(r.status, 200, r)

    async def test_if_match_star_missing_412(self):
        r = await self.alice.put(MISSING, {"data": {}}, headers=im("*"))
        self.assert412(r)
        self.assert404(await self.alice.get(MISSING))

    async def test_if_match_ts_missing_412(self):
        r = await self.alice.put(MISSING, {"data": {}}, headers=im(self.etag))
        self.assert412(r)
        self.assert404(await self.alice.get(MISSING))

    async def test_if_none_match_star_existing_412(self):
        r = await self.alice.put(R1, {"data": {"title": "two"}}, headers=inm("*"))
        self.assert412(r, self.rec)
        await self.assertUnchanged()

    async def test_if_none_match_star_missing_creates(self):
        r = await self.alice.put(MISSING, {"data": {"a": 1}}, headers=inm("*"))
        self.assertEqual(r.status, 201, r)

    async def test_if_none_match_ts_ignored_on_writes(self):
        r = await self.alice.put(R1, {"data": {"title": "two"}}, headers=inm(self.etag))
        self.assertEqual(r.status, 200, r)

    async def test_if_none_match_star_needs_create_permission(self):
        # bob may write the object but cannot create in the collection: 403, not 412.
        await self.alice.patch(R1, {"permissions": {"write": [uid("bob")]}})
        r = await self.bob.put(R1, {"data": {}}, headers=inm("*"))
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json["errno"], 121)
        await self.alice.patch(C, {"permissions": {"record:create": [uid("bob")]}})
        r = await self.bob.put(R1, {"data": {}}, headers=inm("*"))
        self.assertEqual(r.status, 412, r)

    async def test_bucket_put_preconditions(self):
        r = await self.alice.get(B)
        etag = r.header("ETag")
        r = await self.alice.put(B, {"data": {"x": 1}}, headers=inm("*"))
        self.assertEqual(r.status, 412, r)
        r = await self.alice.put(B, {"data": {"x": 1}}, headers=im(etag))
        self.assertEqual(r.status, 200, r)
        r = await self.alice.put(B, {"data": {"x": 2}}, headers=im(etag))
        self.assertEqual(r.status, 412, r)
        r = await self.alice.put("/v1/buckets/new", {"data": {}}, headers=inm("*"))
        self.assertEqual(r.status, 201, r)


# ---------------------------------------------------------------------------------
# PATCH
# ---------------------------------------------------------------------------------
class PatchTests(PreconditionCase):
    async def test_if_match_current_modifies(self):
        r = await self.alice.patch(R1, {"data": {"b": 1}}, headers=im(self.etag))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data["b"], 1)

    async def test_if_match_changed_412(self):
        r = await self.alice.patch(R1, {"data": {"b": 1}}, headers=im(self.stale))
        self.assert412(r, self.rec)
        await self.assertUnchanged()

    async def test_if_match_star(self):
        r = await self.alice.patch(R1, {"data": {"b": 1}}, headers=im("*"))
        self.assertEqual(r.status, 200, r)
        self.assert404(await self.alice.patch(MISSING, {"data": {"b": 1}}, headers=im("*")))

    async def test_missing_object_404_before_preconditions(self):
        self.assert404(await self.alice.patch(MISSING, {"data": {"b": 1}}, headers=im(self.stale)))
        self.assert404(await self.alice.patch(MISSING, {"data": {"b": 1}}, headers=inm("*")))

    async def test_if_none_match_star_existing_412(self):
        r = await self.alice.patch(R1, {"data": {"b": 1}}, headers=inm("*"))
        self.assert412(r, self.rec)
        await self.assertUnchanged()

    async def test_merge_patch_with_if_match(self):
        r = await self.alice.request(
            "PATCH", R1, raw=b'{"data": {"title": null}}',
            headers={"Content-Type": "application/merge-patch+json", **im(self.stale)},
        )
        self.assert412(r, self.rec)
        r = await self.alice.request(
            "PATCH", R1, raw=b'{"data": {"title": null}}',
            headers={"Content-Type": "application/merge-patch+json", **im(self.etag)},
        )
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("title", r.data)

    async def test_json_patch_with_if_match(self):
        body = b'[{"op": "add", "path": "/data/z", "value": 1}]'
        r = await self.alice.request(
            "PATCH", R1, raw=body, headers={"Content-Type": "application/json-patch+json", **im(self.stale)}
        )
        self.assert412(r, self.rec)


# ---------------------------------------------------------------------------------
# DELETE object
# ---------------------------------------------------------------------------------
class DeleteTests(PreconditionCase):
    async def test_if_match_current_deletes(self):
        r = await self.alice.delete(R1, headers=im(self.etag))
        self.assertEqual(r.status, 200, r)
        self.assertIs(r.data["deleted"], True)

    async def test_if_match_changed_412(self):
        r = await self.alice.delete(R1, headers=im(self.stale))
        self.assert412(r, self.rec)
        self.assertEqual(r.header("ETag"), self.etag)
        await self.assertUnchanged()

    async def test_if_match_star(self):
        self.assert404(await self.alice.delete(MISSING, headers=im("*")))
        r = await self.alice.delete(R1, headers=im("*"))
        self.assertEqual(r.status, 200, r)

    async def test_if_none_match_star(self):
        r = await self.alice.delete(R1, headers=inm("*"))
        self.assert412(r, self.rec)
        await self.assertUnchanged()
        self.assert404(await self.alice.delete(MISSING, headers=inm("*")))

    async def test_deleted_object_with_if_match(self):
        await self.alice.delete(R1)
        self.assert404(await self.alice.delete(R1, headers=im(self.etag)))

    async def test_bucket_delete_with_if_match(self):
        etag = (await self.alice.get(B)).header("ETag")
        stale = f'"{int(etag.strip(chr(34))) - 1}"'
        r = await self.alice.delete(B, headers=im(stale))
        self.assertEqual(r.status, 412, r)
        self.assertEqual(r.json["details"]["existing"]["id"], "b")
        r = await self.alice.delete(B, headers=im(etag))
        self.assertEqual(r.status, 200, r)


# ---------------------------------------------------------------------------------
# plural endpoints: the list always exists
# ---------------------------------------------------------------------------------
class PluralTests(PreconditionCase):
    async def test_get_if_none_match_current_304(self):
        etag = await self.list_etag()
        r = await self.alice.get(RECS, headers=inm(etag))
        self.assertEqual(r.status, 304, r)
        self.assertEqual(r.raw, b"")
        self.assertEqual(r.header("ETag"), etag)
        self.assertIsNotNone(r.header("Last-Modified"))

    async def test_get_if_none_match_after_change_200(self):
        etag = await self.list_etag()
        await self.alice.post(RECS, {"data": {}})
        r = await self.alice.get(RECS, headers=inm(etag))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(r.data), 2)
        self.assertNotEqual(r.header("ETag"), etag)

    async def test_head_if_none_match_304(self):
        etag = await self.list_etag()
        r = await self.alice.head(RECS, headers=inm(etag))
        self.assertEqual(r.status, 304, r)

    async def test_304_regardless_of_filters(self):
        etag = await self.list_etag()
        r = await self.alice.get(RECS + "?title=zzz&_limit=1", headers=inm(etag))
        self.assertEqual(r.status, 304, r)

    async def test_get_if_none_match_star_412(self):
        r = await self.alice.get(RECS, headers=inm("*"))
        self.assert412(r)
        r = await self.alice.get(B + "/collections/empty", headers=inm("*"))
        self.assertEqual(r.status, 404, r)

    async def test_get_if_none_match_star_on_empty_list_412(self):
        await self.alice.put(B + "/collections/empty")
        r = await self.alice.get(B + "/collections/empty/records", headers=inm("*"))
        self.assert412(r)

    async def test_get_if_match(self):
        etag = await self.list_etag()
        self.assertEqual((await self.alice.get(RECS, headers=im(etag))).status, 200)
        self.assertEqual((await self.alice.get(RECS, headers=im("*"))).status, 200)
        r = await self.alice.get(RECS, headers=im(self.stale))
        self.assert412(r)
        self.assertEqual(r.header("ETag"), etag)

    async def test_next_page_with_if_match_detects_changes(self):
        await self.alice.post(RECS, {"data": {}})
        await self.alice.post(RECS, {"data": {}})
        r = await self.alice.get(RECS + "?_limit=1")
        etag, nxt = r.header("ETag"), r.header("Next-Page")
        self.assertEqual((await self.alice.get(nxt, headers=im(etag))).status, 200)
        await self.alice.post(RECS, {"data": {}})
        self.assert412(await self.alice.get(nxt, headers=im(etag)))

    async def test_delete_plural_if_match(self):
        etag = await self.list_etag()
        r = await self.alice.delete(RECS, headers=im(self.stale))
        self.assert412(r)
        self.assertEqual(len((await self.alice.get(RECS)).data), 1)
        r = await self.alice.delete(RECS, headers=im(etag))
        self.assertEqual(r.status, 200, r)
        self.assertEqual([t["id"] for t in r.data], ["r1"])

    async def test_delete_plural_if_none_match_star_412(self):
        r = await self.alice.delete(RECS, headers=inm("*"))
        self.assert412(r)
        self.assertEqual(len((await self.alice.get(RECS)).data), 1)

    async def test_post_if_none_match_star(self):
        # posted id exists -> 412 with the existing object
        r = await self.alice.post(RECS, {"data": {"id": "r1", "title": "x"}}, headers=inm("*"))
        self.assert412(r, self.rec)
        await self.assertUnchanged()
        # new id / no id -> created
        r = await self.alice.post(RECS, {"data": {"id": "r2"}}, headers=inm("*"))
        self.assertEqual(r.status, 201, r)
        r = await self.alice.post(RECS, {"data": {}}, headers=inm("*"))
        self.assertEqual(r.status, 201, r)

    async def test_post_if_match_existing_id(self):
        r = await self.alice.post(RECS, {"data": {"id": "r1"}}, headers=im("*"))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.data, self.rec)
        r = await self.alice.post(RECS, {"data": {"id": "r1"}}, headers=im(self.etag))
        self.assertEqual(r.status, 200, r)
        r = await self.alice.post(RECS, {"data": {"id": "r1"}}, headers=im(self.stale))
        self.assert412(r, self.rec)

    async def test_post_if_match_star_unknown_id_412(self):
        r = await self.alice.post(RECS, {"data": {"id": "new"}}, headers=im("*"))
        self.assert412(r)
        self.assert404(await self.alice.get(RECS + "/new"))


class TombstonePreconditionTests(PreconditionCase):
    async def setUp(self):
        await super().setUp()
        r = await self.alice.delete(R1)
        self.tomb_etag = r.header("ETag")

    async def test_put_if_match_on_deleted_object_412(self):
        r = await self.alice.put(R1, {"data": {}}, headers=im(self.etag))
        self.assert412(r)
        r = await self.alice.put(R1, {"data": {}}, headers=im(self.tomb_etag))
        self.assert412(r)

    async def test_put_if_none_match_star_recreates(self):
        r = await self.alice.put(R1, {"data": {"again": True}}, headers=inm("*"))
        self.assertEqual(r.status, 201, r)

    async def test_get_if_none_match_on_deleted_404(self):
        self.assert404(await self.alice.get(R1, headers=inm(self.etag)))

    async def test_list_etag_moves_on_delete(self):
        r = await self.alice.get(RECS, headers=inm(self.etag))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("ETag"), self.tomb_etag)
        r = await self.alice.get(RECS, headers=inm(self.tomb_etag))
        self.assertEqual(r.status, 304, r)


class AuthorizationBeforePreconditionTests(PreconditionCase):
    """A 412 carries the object: users without access must get 401/403 instead."""

    async def test_reader_cannot_write_even_with_stale_if_match(self):
        r = await self.bob.put(R1, {"data": {}}, headers=im(self.stale))
        self.assertEqual(r.status, 403, r)
        self.assertNotIn("details", r.json)
        r = await self.bob.delete(R1, headers=im(self.stale))
        self.assertEqual(r.status, 403, r)

    async def test_stranger_gets_403_not_412(self):
        carol = StubClient(self.app).as_user("carol")
        r = await carol.get(R1, headers=im(self.stale))
        self.assertEqual(r.status, 403, r)
        r = await carol.get(R1, headers=inm("*"))
        self.assertEqual(r.status, 403, r)
        r = await carol.patch(R1, {"data": {}}, headers=inm("*"))
        self.assertEqual(r.status, 403, r)

    async def test_anonymous_gets_401_not_304(self):
        anon = StubClient(self.app).as_user(None)
        r = await anon.get(R1, headers=inm(self.etag))
        self.assertEqual(r.status, 401, r)
        r = await anon.get(RECS, headers=inm("*"))
        self.assertEqual(r.status, 401, r)


from jsonsync.testclient import with_postgresql_variants  # noqa: E402

with_postgresql_variants(globals())
