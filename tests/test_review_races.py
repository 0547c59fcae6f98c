"""
Reviewer's proofs for issue #10: writes that still decide on a read their
commit does not protect. Each test pauses one request at a chosen point
(after its reads, before its write) while another request commits, then
lets it go on: a deterministic interleaving, no timing.
"""

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from jsonsync.testclient import StubClient, build_app, with_postgresql_variants

B = "/v1/buckets/b"
C = B + "/collections/c"


def pause_engine(app, name):
    """
    Make the next call of C{app.registry.engine.<name>} wait: returns
    C{(reached, release)}: C{reached} fires when a request gets there,
    C{release()} lets it go on.
    """
    engine = app.registry.engine
    original = getattr(engine, name)
    reached, gate = Deferred(), Deferred()

    async def paused(*args, **kwargs):
        setattr(engine, name, original)  # once
        reached.callback(None)
        await gate
        return await original(*args, **kwargs)

    setattr(engine, name, paused)
    return reached, lambda: gate.callback(None)


class ParentDeletedMeanwhileTests(TestCase):
    async def setUp(self):
        self.app = await build_app({})
        self.alice = StubClient(self.app).as_user("alice")
        self.assertEqual((await self.alice.put(B)).status, 201)
        self.assertEqual((await self.alice.put(C)).status, 201)

    async def test_record_created_while_its_bucket_is_deleted_does_not_outlive_it(self):
        # PUT of a new record reads its parents (they exist), then pauses
        # before its write; the bucket is deleted (children purged) and
        # committed meanwhile; then the PUT writes.
        reached, release = pause_engine(self.app, "create")
        put = Deferred.fromCoroutine(self.alice.put(C + "/records/r", {"data": {"secret": 1}}))
        await reached
        self.assertEqual((await self.alice.delete(B)).status, 200)
        release()
        await put
        # Whoever creates a bucket and a collection of those names next must
        # not find the record in them.
        bob = StubClient(self.app).as_user("bob")
        self.assertEqual((await bob.put(B)).status, 201)
        self.assertEqual((await bob.put(C)).status, 201)
        r = await bob.get(C + "/records/r")
        self.assertEqual(r.status, 404, f"record resurrected in a re-created bucket: {r.json}")

    async def test_record_created_while_its_collection_is_deleted_does_not_outlive_it(self):
        reached, release = pause_engine(self.app, "create")
        post = Deferred.fromCoroutine(self.alice.post(C + "/records", {"data": {"id": "r", "v": 1}}))
        await reached
        self.assertEqual((await self.alice.delete(C)).status, 200)
        release()
        await post
        self.assertEqual((await self.alice.put(C)).status, 201)
        r = await self.alice.get(C + "/records")
        self.assertEqual(r.json["data"], [], "record of the deleted collection came back")


with_postgresql_variants(globals())
