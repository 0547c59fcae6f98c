"""Resource events as listeners see them: merged writes, reads only when asked for, rollback on rejection."""

from twisted.trial.unittest import TestCase
from zope.interface import implementer

from jsonsync.errors import ListenerRejected
from jsonsync.interfaces import IResourceListener
from jsonsync.testclient import StubClient, build_app, with_postgresql_variants

RECS = "/v1/buckets/b/collections/c/records"


@implementer(IResourceListener)
class Recorder:
    def __init__(self, actions=None, resource_names=None, reject=None):
        self.actions = actions
        self.resource_names = resource_names
        self.reject = reject
        self.before = []
        self.after = []

    async def before_commit(self, event, txn):
        self.before.append((event.action, event.resource_name, len(event.impacted_objects)))
        if self.reject and any(c["new"].get("title") == self.reject for c in event.impacted_objects):
            raise ListenerRejected("no such title here")

    async def after_commit(self, event):
        self.after.append((event.action, event.resource_name, [c["new"]["id"] for c in event.impacted_objects]))


class EventTests(TestCase):
    async def setUp(self):
        self.app = await build_app({})
        self.alice = StubClient(self.app).as_user("alice")
        await self.alice.put("/v1/buckets/b")
        await self.alice.put("/v1/buckets/b/collections/c")

    async def test_reads_reach_only_listeners_that_ask(self):
        writes, reads = Recorder(), Recorder(actions={"read"}, resource_names={"record"})
        self.app.registry.add_listener(writes)
        self.app.registry.add_listener(reads)
        await self.alice.put(RECS + "/a", {"data": {}})
        await self.alice.get(RECS)
        await self.alice.get(RECS + "/a")
        self.assertEqual(writes.after, [("create", "record", ["a"])])
        self.assertEqual(reads.after, [("read", "record", ["a"]), ("read", "record", ["a"])])

    async def test_batch_events_merged_per_resource_and_action(self):
        rec = Recorder()
        self.app.registry.add_listener(rec)
        r = await self.alice.post("/v1/batch", {"defaults": {"method": "PUT"}, "requests": [
            {"path": "/buckets/b/collections/c/records/x"}, {"path": "/buckets/b/collections/c/records/y"},
            {"path": "/buckets/b/collections/d"}]})
        self.assertEqual(r.status, 200)
        self.assertEqual(sorted(rec.before), [("create", "collection", 1), ("create", "record", 2)])

    async def test_rejection_rolls_back_the_whole_batch(self):
        rec = Recorder(reject="bad")
        self.app.registry.add_listener(rec)
        r = await self.alice.post("/v1/batch", {"requests": [
            {"method": "PUT", "path": "/buckets/b/collections/c/records/ok", "body": {"data": {"title": "fine"}}},
            {"method": "PUT", "path": "/buckets/b/collections/c/records/ko", "body": {"data": {"title": "bad"}}}]})
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json["message"], "no such title here")
        self.assertEqual((await self.alice.get(RECS)).data, [])
        self.assertEqual(rec.after, [])


with_postgresql_variants(globals())
