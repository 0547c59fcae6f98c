"""Hostile or unusual input: a clear 4xx, nothing lost, the same on every backend."""

from twisted.trial.unittest import TestCase

from jsonsync.testclient import StubClient, build_app, with_postgresql_variants

RECS = "/v1/buckets/b/collections/c/records"


class HostileInputTests(TestCase):
    async def setUp(self):
        self.app = await build_app({})
        self.alice = StubClient(self.app).as_user("alice")
        await self.alice.put("/v1/buckets/b")
        await self.alice.put("/v1/buckets/b/collections/c")
        r = await self.alice.put(RECS + "/keep", {"data": {"v": 1}})
        self.assertEqual(r.status, 201)

    async def assert_rejected(self, r, status=400):
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertEqual(r.json["code"], status)
        # nothing stored before was lost
        kept = await self.alice.get(RECS + "/keep")
        self.assertEqual(kept.data["v"], 1)

    async def test_nul_in_body_string(self):
        r = await self.alice.request("PUT", RECS + "/keep", raw=b'{"data": {"v": "a\\u0000b"}}',
                                     headers={"Content-Type": "application/json"})
        await self.assert_rejected(r)
        r = await self.alice.request("POST", RECS, raw=b'{"data": {"a\\u0000": 1}}',
                                     headers={"Content-Type": "application/json"})
        await self.assert_rejected(r)

    async def test_escaped_backslash_before_u0000_is_fine(self):
        r = await self.alice.request("PUT", RECS + "/text", raw=b'{"data": {"v": "\\\\u0000"}}',
                                     headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.data["v"], "\\u0000")

    async def test_nul_in_path(self):
        await self.assert_rejected(await self.alice.get("/v1/buckets/%00"))
        await self.assert_rejected(await self.alice.put(RECS + "/a%00b", {"data": {}}))

    async def test_nul_in_batch_path(self):
        r = await self.alice.post("/v1/batch", {"requests": [{"path": "/buckets/b%00"}]})
        await self.assert_rejected(r)

    async def test_deep_json(self):
        body = b'{"data": {"x": ' + b"[" * 200 + b"]" * 200 + b"}}"
        r = await self.alice.request("PUT", RECS + "/keep", raw=body, headers={"Content-Type": "application/json"})
        await self.assert_rejected(r)

    async def test_very_deep_json_does_not_crash(self):
        body = b'{"data": {"x": ' + b"[" * 100000 + b"]" * 100000 + b"}}"
        r = await self.alice.request("PUT", RECS + "/keep", raw=body, headers={"Content-Type": "application/json"})
        await self.assert_rejected(r)

    async def test_not_json(self):
        for raw in (b"{", b"NaN", b'{"data": Infinity}', b"\xff\xfe", b"[]", b'"x"'):
            r = await self.alice.request("PUT", RECS + "/keep", raw=raw, headers={"Content-Type": "application/json"})
            await self.assert_rejected(r)

    async def test_unpaired_surrogate_beside_a_big_integer(self):
        # Big integers take the standard library's parser, which would keep "\ud800".
        for raw in (b'{"data": {"v": 123456789012345678901234567890, "s": "\\ud800"}}',
                    b'{"data": {"v": 123456789012345678901234567890, "\\udfff": 1}}'):
            r = await self.alice.request("PUT", RECS + "/keep", raw=raw, headers={"Content-Type": "application/json"})
            await self.assert_rejected(r)
        # a proper pair beside a big integer is kept
        raw = b'{"data": {"v": 123456789012345678901234567890, "s": "\\ud83d\\ude00"}}'
        r = await self.alice.request("PUT", RECS + "/pair", raw=raw, headers={"Content-Type": "application/json"})
        self.assertEqual(r.status, 201, r)
        self.assertEqual((await self.alice.get(RECS + "/pair")).data["s"], "\U0001f600")

    async def test_big_integers_kept_exactly(self):
        big = 123456789012345678901234567890
        r = await self.alice.put(RECS + "/big", {"data": {"n": big, "neg": -big}})
        self.assertEqual(r.status, 201, r)
        got = await self.alice.get(RECS + "/big")
        self.assertEqual(got.data["n"], big)
        self.assertEqual(got.data["neg"], -big)

    async def test_unicode_roundtrip(self):
        text = "caf\u00e9 \u2603 \U0001f600 \u202e"
        r = await self.alice.put(RECS + "/u", {"data": {"t": text, text: 1}})
        self.assertEqual(r.status, 201, r)
        got = await self.alice.get(RECS + "/u")
        self.assertEqual(got.data["t"], text)
        self.assertEqual(got.data[text], 1)

    async def test_body_too_large(self):
        app = await build_app({"max_request_body_bytes": "1000"})
        client = StubClient(app).as_user("alice")
        r = await client.put("/v1/buckets/x", {"data": {"pad": "x" * 5000}})
        self.assertEqual(r.status, 413, r)
        self.assertEqual(r.json["errno"], 113)
        self.assertEqual((await client.get("/v1/buckets/x")).status, 403)


with_postgresql_variants(globals())


class AnonymousCacheTests(TestCase):
    async def test_cache_headers_for_anonymous_reads(self):
        app = await build_app({"record_cache_expires_seconds": "60", "b.c2.record_cache_expires_seconds": "600"})
        alice = StubClient(app).as_user("alice")
        anon = StubClient(app)
        await alice.put("/v1/buckets/b", {"permissions": {"read": ["system.Everyone"]}})
        for cid in ("c", "c2", "c3"):
            await alice.put(f"/v1/buckets/b/collections/{cid}")
        await alice.patch("/v1/buckets/b/collections/c3", {"data": {"cache_expires": 0}})
        r = await anon.get("/v1/buckets/b/collections/c/records")
        self.assertEqual(r.header("Cache-Control"), "max-age=60")
        self.assertIsNotNone(r.header("Expires"))
        r = await anon.get("/v1/buckets/b/collections/c2/records")
        self.assertEqual(r.header("Cache-Control"), "max-age=600")
        r = await anon.get("/v1/buckets/b/collections/c3/records")
        self.assertEqual(r.header("Cache-Control"), "max-age=60")  # the larger of setting and attribute
        r = await alice.get("/v1/buckets/b/collections/c/records")
        self.assertEqual(r.header("Cache-Control"), "no-cache, no-store")  # never for authenticated users
        r = await anon.get("/v1/buckets/b")
        self.assertEqual(r.header("Cache-Control"), "no-cache, no-store")  # no bucket setting
