"""
The C{audit} plugin over HTTP: what an entry holds for writes, failures,
tokens and batches, reads when asked, the bucket owners' listing with
filters and pages, retention, and that no verb changes it.
"""

from __future__ import annotations

from jsonsync.testclient import ClientTestCase, StubClient, basicauth_id, with_postgresql_variants

ALICE, BOB = basicauth_id("alice"), basicauth_id("bob")
B = "/v1/buckets/b"
C = B + "/collections/c"
A = B + "/audit"


class _Base(ClientTestCase):
    settings = {"includes": "audit tokens", "multiauth.policies": "tokens basicauth"}

    async def make(self, settings):
        await super().make(settings)
        self.log = next(o.__self__ for o in self.app.registry.response_observers
                        if type(o.__self__).__name__ == "AuditLog")
        self.addCleanup(self.log.flush)

    async def entries(self, query="", client=None):
        await self.log.flush()
        r = await (client or self.alice).get(A + query)
        self.assertEqual(r.status, 200, r)
        return r.json["data"]


class AuditTests(_Base):
    async def test_writes_are_recorded_with_who_what_where(self):
        await self.ok(self.alice.put(B, {"permissions": {"read": [BOB]}}))
        await self.ok(self.alice.put(C, {}))
        r = await self.alice.post(C + "/records", {"data": {"a": 1}}, headers={"X-Request-Id": "req-one"})
        rid = r.json["data"]["id"]
        await self.bob.post(C + "/records", {"data": {}})  # 403
        await self.ok(self.alice.get(C + "/records"))  # a read: not recorded by default
        entries = await self.entries()
        self.assertEqual([(e["method"], e["uri"], e["status"]) for e in entries], [
            ("POST", "/buckets/b/collections/c/records", 403),
            ("POST", "/buckets/b/collections/c/records", 201),
            ("PUT", "/buckets/b/collections/c", 201),
            ("PUT", "/buckets/b", 201),
        ])
        denied, created = entries[0], entries[1]
        self.assertEqual(denied["user_id"], BOB)
        self.assertEqual(denied["errno"], 121)
        self.assertEqual(created["ids"], [rid])
        self.assertEqual(created["request_id"], "req-one")
        self.assertEqual(created["user_id"], ALICE)
        self.assertIsNone(created["token"])
        self.assertEqual(created["action"], "write")
        self.assertEqual(created["client"], "127.0.0.1")
        self.assertIn("date", created)

    async def test_token_and_batch_entries(self):
        await self.ok(self.alice.put(B, {}))
        await self.ok(self.alice.put(C, {}))
        r = await self.alice.post("/v1/tokens", {"data": {"name": "t", "scopes": [{"path": C, "level": "contribute"}]}})
        made = r.json["data"]
        tok = StubClient(self.app, "Bearer " + made["secret"])
        r = await tok.post("/v1/batch", {"requests": [
            {"method": "POST", "path": "/buckets/b/collections/c/records", "body": {"data": {}}},
            {"method": "DELETE", "path": "/buckets/b"},
        ]}, headers={"X-Request-Id": "batch-1"})
        self.assertEqual([s["status"] for s in r.json["responses"]], [201, 403])
        entries = await self.entries("?request_id=batch-1")
        self.assertEqual(len(entries), 2)
        for e in entries:
            self.assertEqual(e["token"], made["id"])
            self.assertEqual(e["user_id"], ALICE)
            self.assertTrue(e["batch"])
        self.assertEqual(sorted(e["status"] for e in entries), [201, 403])

    async def test_reads_when_asked(self):
        await self.make({**self.settings, "audit.record_reads": "true"})
        await self.ok(self.alice.put(B, {}))
        await self.ok(self.alice.put(C, {}))
        await self.ok(self.alice.get(C))
        entries = await self.entries("?action=read")
        self.assertEqual([(e["method"], e["uri"], e["ids"]) for e in entries], [("GET", "/buckets/b/collections/c", ["c"])])
        # reading the audit itself is not recorded (its pages would move)
        await self.entries()
        self.assertEqual(len(await self.entries("?action=read")), 1)
        hello = (await self.anon.get("/v1/")).json
        self.assertTrue(hello["capabilities"]["audit"]["record_reads"])

    async def test_filters_and_pages(self):
        await self.ok(self.alice.put(B, {}))
        await self.ok(self.alice.put(C, {}))
        for i in range(7):
            await self.ok(self.alice.put(f"{C}/records/r{i}", {"data": {}}))
        await self.bob.put(f"{C}/records/x", {"data": {}})
        self.assertEqual(len(await self.entries("?method=PUT&status=201")), 9)
        self.assertEqual([e["user_id"] for e in await self.entries("?status=403")], [BOB])
        await self.log.flush()
        r = await self.alice.get(A + "?_limit=4&_sort=last_modified")
        first = r.json["data"]
        self.assertEqual(len(first), 4)
        nxt = r.header("Next-Page")
        self.assertTrue(nxt)
        seen = [e["id"] for e in first]
        while nxt:
            r = await self.alice.get(nxt)
            seen += [e["id"] for e in r.json["data"]]
            nxt = r.header("Next-Page")
        self.assertEqual(len(seen), 10)
        self.assertEqual(len(set(seen)), 10)
        r = await self.alice.get(A + "?nope_field=1")
        self.assertEqual(r.status, 400)

    async def test_only_owners_read_it_and_nobody_changes_it(self):
        await self.ok(self.alice.put(B, {"permissions": {"read": [BOB]}}))
        await self.entries()
        self.assertEqual((await self.bob.get(A)).status, 403)
        self.assertEqual((await self.anon.get(A)).status, 401)
        self.assertEqual((await self.alice.get("/v1/buckets/missing/audit")).status, 403)
        before = await self.entries()
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in (A, A + "/" + before[0]["id"]):
                r = await self.alice.request(method, path, {"data": {"status": 200}})
                self.assertIn(r.status, (404, 405), (method, path, r))
        r = await self.alice.request("POST", "/v1/batch", {"requests": [{"method": "DELETE", "path": "/buckets/b/audit"}]})
        self.assertIn(r.json["responses"][0]["status"], (404, 405))
        after = await self.entries()
        self.assertEqual([e["id"] for e in after[-len(before):]], [e["id"] for e in before])
        self.assertEqual(after[-1], before[-1])
        # Deleting the bucket does not erase the record of who deleted it.
        await self.ok(self.alice.delete(B))
        await self.ok(self.alice.put(B, {}))
        methods = [e["method"] for e in await self.entries()]
        self.assertIn("DELETE", methods)

    async def test_retention(self):
        await self.ok(self.alice.put(B, {}))
        await self.entries()
        storage = self.app.registry.storage
        cutoff = self.log.cutoff()
        self.assertIsNotNone(cutoff)
        # Entries older than the retention are hidden, then trimmed.
        self.log.retention_ms = 1
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(await self.entries(), [])
        removed = await self.log.trim("b", self.log.cutoff())
        self.assertEqual(removed, 1)
        txn = storage.transaction()
        from jsonsync.query import Query

        left = await storage.list(txn, "audit", "/__audit__/buckets/b", Query())
        await txn.rollback()
        self.assertEqual(left, [])


with_postgresql_variants(globals())
