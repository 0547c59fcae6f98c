"""
Seed a one-million-record collection in a scratch PostgreSQL schema and print
the plans (EXPLAIN ANALYZE) of the hot list queries, as the backend builds
them: first page, a deep keyset page, a C{_since} sync, the count, and the
permission look-ups. Not part of the test run (it takes a minute).

    .venv/bin/python scripts/explain_1m.py [--url postgresql://postgres@127.0.0.1:5432/test]
        [--rows 1000000] [--keep]

Blocking psycopg2 is fine here: there is no reactor to keep responsive.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))

from jsonsync.query import Filter, Op, Query, Sort, keyset_rules  # noqa: E402
from jsonsync.storage.postgresql.schema import schema_scripts  # noqa: E402
from jsonsync.storage.postgresql.select import build_select  # noqa: E402

SCHEMA = "jsonsync_explain_1m"
R = "record"
P = "/buckets/big/collections/c"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch schema")
    args = parser.parse_args()

    conn = psycopg2.connect(args.url)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
    cur.execute(f"SET search_path = {SCHEMA}")
    for _, _, sql in schema_scripts():
        cur.execute(sql)
    started = time.monotonic()
    n = args.rows
    cur.execute(
        "INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data)"
        " SELECT %s, %s, 'r' || i, 1600000000000 + i, i %% 50 = 0,"
        " CASE WHEN i %% 50 = 0"
        "  THEN jsonb_build_object('id', 'r' || i, 'last_modified', 1600000000000 + i,"
        "   'deleted', true)"
        "  ELSE jsonb_build_object('id', 'r' || i, 'last_modified', 1600000000000 + i,"
        "   'title', 'record ' || i, 'n', i %% 97, 'tags', jsonb_build_array('t' || (i %% 5)))"
        " END"
        " FROM generate_series(1, %s) AS i",
        (R, P, n),
    )
    # Other lists around it, so the index is not a single-list index.
    cur.execute(
        "INSERT INTO objects (resource_name, parent_id, id, last_modified, data)"
        " SELECT 'record', '/buckets/big/collections/other' || (i %% 100), 'x' || i, i,"
        " jsonb_build_object('id', 'x' || i, 'last_modified', i)"
        " FROM generate_series(1, %s) AS i",
        (n // 10,),
    )
    cur.execute("INSERT INTO timestamps VALUES (%s, %s, %s)", (R, P, 1600000000000 + n))
    cur.execute(
        "INSERT INTO access_control_entries"
        " SELECT %s || '/records/r' || i, 'read', 'account:u' || (i %% 1000)"
        " FROM generate_series(1, %s) AS i",
        (P, n // 10),
    )
    cur.execute("ANALYZE")
    print(f"seeded {n} records (+{n // 10} elsewhere) in {time.monotonic() - started:.1f}s\n")

    last = 1600000000000 + n
    sort = (Sort("last_modified", -1),)
    cases = [
        ("first page, default order", Query(limit=25), "o.data", True),
        (
            "page 20000 (keyset, default order)",
            Query(limit=25, pagination=keyset_rules(sort, {"last_modified": last - 500_000})),
            "o.data",
            True,
        ),
        (
            "_since (sync), newest first",
            Query(
                filters=[Filter("last_modified", last - 100, Op.GT)], include_deleted=True, limit=25
            ),
            "o.data",
            True,
        ),
        (
            "_since (sync), oldest first, deep",
            Query(
                filters=[Filter("last_modified", last - 400_000, Op.GT)],
                sorting=(Sort("last_modified", 1),),
                include_deleted=True,
                limit=25,
            ),
            "o.data",
            True,
        ),
        ("count (Total-Records)", Query(), "count(*)", False),
        (
            "filter on a JSON field, first page",
            Query(filters=[Filter("n", 3)], limit=25),
            "o.data",
            True,
        ),
    ]
    for title, query, what, listing in cases:
        sql, params = build_select(what, R, P, query, listing=listing)
        explain(cur, title, sql, params)
    explain(
        cur,
        "accessible_children (records one user can read)",
        "SELECT DISTINCT substr(object_id, %s) FROM access_control_entries"
        " WHERE principal = ANY(%s::text[]) AND permission = ANY(%s::text[])"
        " AND object_id LIKE %s AND strpos(substr(object_id, %s), '/') = 0",
        (
            len(P) + 10,
            ["account:u7", "system.Authenticated"],
            ["read", "write"],
            P + "/records/_%",
            len(P) + 10,
        ),
    )
    explain(
        cur,
        "delete_object_permissions (prefix)",
        "DELETE FROM access_control_entries WHERE object_id = %s OR object_id LIKE %s",
        (P + "/records/r1", P + "/records/r1/%"),
    )
    if not args.keep:
        cur.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    conn.close()


def explain(cur, title, sql, params):
    cur.execute("BEGIN")
    cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
    plan = "\n".join("    " + row[0] for row in cur.fetchall())
    cur.execute("ROLLBACK")
    print(f"== {title}\n{plan}\n")


if __name__ == "__main__":
    main()
