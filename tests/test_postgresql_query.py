"""
The SQL translation of L{jsonsync.query} agrees with the memory backend (a
randomised comparison over values of every JSON type), and the hot list
queries use the indexes.
"""

from __future__ import annotations

import random

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from jsonsync.query import MISSING, Filter, Op, Query, Sort, keyset_rules
from jsonsync.storage.memory import MemoryBackend
from jsonsync.storage.postgresql.select import build_select
from tests.pg import SKIP, open_backend

R = "record"
P = "/buckets/b/collections/query"

VALUES = [
    None,
    "",
    "a",
    "B",
    "b",
    "10",
    "hello World",
    "h_l%o",
    "caf\u00e9",
    0,
    1,
    2,
    10,
    -3,
    1.5,
    2.0,
    True,
    False,
    [],
    [1],
    ["red"],
    ["red", "blue"],
    [1, "1"],
    [[1]],
    [{"k": 1}],
    {},
    {"k": 1},
    {"k": "1"},
    {"k": [1, 2]},
]
FIELDS = ["x", "y", "sub.k", "dotted.key", "id", "deleted"]


def random_object(rng: random.Random, n: int) -> dict:
    obj: dict = {"id": f"o{n:03d}"}
    for name in ("x", "y"):
        if rng.random() < 0.8:
            obj[name] = rng.choice(VALUES)
    if rng.random() < 0.6:
        obj["sub"] = {"k": rng.choice(VALUES)} if rng.random() < 0.8 else rng.choice(VALUES)
    if rng.random() < 0.3:
        obj["dotted.key"] = rng.choice(VALUES)
    return obj


def random_filter(rng: random.Random) -> Filter:
    op = rng.choice(list(Op))
    field = rng.choice(FIELDS)
    if op in (Op.IN, Op.EXCLUDE, Op.CONTAINS, Op.CONTAINS_ANY):
        value = rng.sample(VALUES, rng.randint(0, 3))
    elif op is Op.LIKE:
        value = rng.choice(["a", "*b", "h*o", "", "_", "%", "10", "WORLD", "*"])
    elif op is Op.HAS:
        value = rng.choice([True, False])
    else:
        value = rng.choice(VALUES + [MISSING, "o010"])
    return Filter(field, value, op)


class QueryAgreementTests(TestCase):
    skip = SKIP

    async def setUp(self):
        self.pg, _ = await open_backend(self)
        await self.pg.flush()
        self.addCleanup(self.pg.flush)
        self.mem = await MemoryBackend().open_storage({}, reactor)
        rng = random.Random(42)
        for n in range(120):
            obj = random_object(rng, n)
            for storage in (self.pg, self.mem):
                txn = storage.transaction()
                await storage.create(txn, R, P, obj)
                await txn.commit()
        for n in range(0, 120, 7):
            for storage in (self.pg, self.mem):
                txn = storage.transaction()
                await storage.delete(txn, R, P, f"o{n:03d}")
                await txn.commit()

    async def ids(self, storage, query):
        txn = storage.transaction()
        try:
            return [o["id"] for o in await storage.list(txn, R, P, query)]
        finally:
            await txn.rollback()

    async def count(self, storage, query):
        txn = storage.transaction()
        try:
            return await storage.count(txn, R, P, query)
        finally:
            await txn.rollback()

    async def test_filters_agree_with_memory(self):
        rng = random.Random(7)
        for _ in range(400):
            filters = [random_filter(rng) for _ in range(rng.choice([1, 1, 2]))]
            query = Query(
                filters=filters,
                sorting=(Sort("id", 1),),
                include_deleted=rng.random() < 0.3,
            )
            self.assertEqual(
                await self.ids(self.pg, query), await self.ids(self.mem, query), repr(filters)
            )
            self.assertEqual(
                await self.count(self.pg, query), await self.count(self.mem, query), repr(filters)
            )

    async def test_sorting_and_pages_agree_with_memory(self):
        rng = random.Random(11)
        # Objects with the same keys, so that JSONB's storage order of keys
        # and Python's sorted keys agree; strings compare by code point.
        for _ in range(60):
            fields = rng.sample(["x", "y", "sub.k", "dotted.key"], rng.randint(1, 2))
            sorting = tuple(Sort(f, rng.choice([1, -1])) for f in fields) + (
                Sort("id", rng.choice([1, -1])),
            )
            limit = rng.randint(3, 20)
            query = Query(sorting=sorting, limit=limit)
            pages_pg, pages_mem = [], []
            for pages, storage in ((pages_pg, self.pg), (pages_mem, self.mem)):
                q = query
                while True:
                    txn = storage.transaction()
                    page = await storage.list(txn, R, P, q)
                    await txn.rollback()
                    pages.append([o["id"] for o in page])
                    if len(page) < limit:
                        break
                    last = {s.field: _resolve(page[-1], s.field) for s in sorting}
                    q = Query(sorting=sorting, limit=limit, pagination=keyset_rules(sorting, last))
            self.assertEqual(pages_pg, pages_mem, repr(sorting))
            seen = [i for page in pages_pg for i in page]
            self.assertEqual(len(seen), len(set(seen)))


def _resolve(obj, field):
    from jsonsync.query import resolve

    return resolve(obj, field)


class IndexUsageTests(TestCase):
    """
    The hot queries walk C{objects_list_last_modified_idx}. On a small table
    the planner prefers a sequential scan, hence C{enable_seqscan = off};
    C{scripts/explain_1m.py} shows the same plans on a million rows.
    """

    skip = SKIP

    async def setUp(self):
        self.storage, self.permissions = await open_backend(self)
        await self.storage.flush()
        self.addCleanup(self.storage.flush)
        txn = self.storage.transaction()
        unit = await self.storage.unit(txn)
        await unit.execute(
            "INSERT INTO objects (resource_name, parent_id, id, last_modified, data)"
            " SELECT 'record', '/buckets/b/collections/c' || (i % 10), 'r' || i, i,"
            " jsonb_build_object('id', 'r' || i, 'last_modified', i, 'n', i % 7)"
            " FROM generate_series(1, 2000) AS i;"
            " ANALYZE objects"
        )
        await txn.commit()

    async def plan(self, sql, params) -> str:
        txn = self.storage.transaction()
        unit = await self.storage.unit(txn)
        rows, _ = await unit.execute("SET LOCAL enable_seqscan = off; EXPLAIN " + sql, params)
        await txn.rollback()
        return "\n".join(r[0] for r in rows)

    async def assert_index_walk(self, query: Query, what="o.data", sort_free=True):
        sql, params = build_select(
            what, R, "/buckets/b/collections/c3", query, listing=what == "o.data"
        )
        plan = await self.plan(sql, params)
        self.assertIn("objects_list_last_modified_idx", plan, plan)
        if sort_free:
            self.assertNotIn("Sort", plan, plan)
        return plan

    async def test_default_first_page(self):
        await self.assert_index_walk(Query(limit=25))

    async def test_next_page(self):
        rules = keyset_rules((Sort("last_modified", -1),), {"last_modified": 1003})
        await self.assert_index_walk(Query(limit=25, pagination=rules))

    async def test_since(self):
        await self.assert_index_walk(
            Query(
                filters=[Filter("last_modified", 1500, Op.GT)],
                include_deleted=True,
                limit=25,
            )
        )

    async def test_since_ascending(self):
        await self.assert_index_walk(
            Query(
                filters=[Filter("last_modified", 1500, Op.GT)],
                sorting=(Sort("last_modified", 1),),
                include_deleted=True,
                limit=25,
            )
        )

    async def test_count(self):
        sql, params = build_select(
            "count(*)", R, "/buckets/b/collections/c3", Query(), listing=False
        )
        plan = await self.plan(sql, params)
        self.assertRegex(plan, r"Index|Bitmap", plan)

    async def test_permission_prefix_delete_and_children(self):
        plan = await self.plan(
            "DELETE FROM access_control_entries WHERE object_id = %s OR object_id LIKE %s",
            ("/buckets/b", "/buckets/b/%"),
        )
        self.assertIn("access_control_entries_pkey", plan, plan)
        plan = await self.plan(
            "SELECT DISTINCT substr(object_id, 29) FROM access_control_entries"
            " WHERE principal = ANY(%s::text[]) AND permission = ANY(%s::text[])"
            " AND object_id LIKE %s AND strpos(substr(object_id, 29), '/') = 0",
            (["u", "system.Everyone"], ["read", "write"], "/buckets/b/collections/c/records/_%"),
        )
        self.assertIn("access_control_entries_principal_idx", plan, plan)
