#!/usr/bin/env bash
# Copied from ../shared/bench/kinto/sql-seed.sh.
# Kinto-PostgreSQL ONLY: fast seeding of a large collection straight into Kinto's
# schema (used for the 100k-record scaling runs, where seeding through /batch at
# ~100 records/s would take ~15 min). Produces the same records as seed.py
# (ids r000000.., same JSON, status a/b/c/d) plus the per-record write ACE that
# Kinto itself would add, with strictly increasing last_modified values.
# The bucket must exist and USERID must be the basicauth user id (GET /v1/ -> user.id).
# Usage: sql-seed.sh PSQL_URL BUCKET COLLECTION N USERID
set -euo pipefail
DB=$1; B=$2; C=$3; N=$4; USERID=$5
P="/buckets/$B/collections/$C"
psql -q -v ON_ERROR_STOP=1 "$DB" <<SQL
BEGIN;
INSERT INTO objects (id, parent_id, resource_name, last_modified, data, deleted)
VALUES ('$C', '/buckets/$B', 'collection', clock_timestamp()::timestamp - interval '2 hours', '{}'::jsonb, false)
ON CONFLICT DO NOTHING;
INSERT INTO access_control_entries (object_id, permission, principal)
VALUES ('$P', 'write', '$USERID') ON CONFLICT DO NOTHING;
DELETE FROM objects WHERE parent_id = '$P' AND resource_name = 'record';
DELETE FROM access_control_entries WHERE object_id LIKE '$P/records/%';
WITH base AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint - $N - 3600000 AS t0)
INSERT INTO objects (id, parent_id, resource_name, last_modified, data, deleted)
SELECT format('r%s', lpad(i::text, 6, '0')), '$P', 'record',
       from_epoch(base.t0 + i),
       jsonb_build_object('title', format('Benchmark record number %s', lpad(i::text, 6, '0')),
                          'status', (ARRAY['a','b','c','d'])[i % 4 + 1], 'n', i,
                          'tags', jsonb_build_array('alpha','beta','gamma'),
                          'owner', 'bench-user', 'payload', repeat('x', 160)),
       false
FROM generate_series(0, $N - 1) AS i, base;
INSERT INTO access_control_entries (object_id, permission, principal)
SELECT format('$P/records/r%s', lpad(i::text, 6, '0')), 'write', '$USERID'
FROM generate_series(0, $N - 1) AS i;
COMMIT;
ANALYZE objects; ANALYZE access_control_entries;
SQL
psql -At "$DB" -c "SELECT '$P', count(*) FROM objects WHERE parent_id = '$P' AND resource_name = 'record' AND NOT deleted"
