#!/usr/bin/env bash
# jsonsync-PostgreSQL ONLY: seed a large collection straight into jsonsync's tables
# (seeding 1M records through /batch takes too long). Same records as seed.py (ids r000000..,
# same JSON, status a/b/c/d) with strictly increasing last_modified, plus what jsonsync itself
# writes for them: the bucket and collection objects, the list timestamps, the write ACEs of
# the bench user on the bucket, the collection and every record (explicit_permissions).
# The schema must exist (start jsonsync once on the database). Run it while jsonsync is
# stopped, or restart jsonsync afterwards.
# Usage: jsonsync-sql-seed.sh DB_URL BUCKET COLLECTION N [AUTH]     (AUTH default bench:bench)
set -euo pipefail
DB=$1; B=$2; C=$3; N=$4; AUTH=${5:-bench:bench}
# basicauth user id: "basicauth:" + hex(HMAC-SHA256(key=userid_hmac_secret (default ""), "user:password"))
USERID=basicauth:$(python3 -c 'import hashlib,hmac,sys; print(hmac.new(b"", sys.argv[1].encode(), hashlib.sha256).hexdigest())' "$AUTH")
BP="/buckets/$B"; P="$BP/collections/$C"
psql -q -v ON_ERROR_STOP=1 "$DB" <<SQL
BEGIN;
CREATE TEMP TABLE t0 AS SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint - $N - 3600000 AS t0;
-- bucket and collection: created before the records
INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data)
SELECT 'bucket', '', '$B', t0 - 2, false, jsonb_build_object('id', '$B', 'last_modified', t0 - 2) FROM t0
ON CONFLICT DO NOTHING;
INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data)
SELECT 'collection', '$BP', '$C', t0 - 1, false, jsonb_build_object('id', '$C', 'last_modified', t0 - 1) FROM t0
ON CONFLICT DO NOTHING;
INSERT INTO timestamps (resource_name, parent_id, last_modified)
SELECT 'bucket', '', t0 - 2 FROM t0 ON CONFLICT DO NOTHING;
INSERT INTO timestamps (resource_name, parent_id, last_modified)
SELECT 'collection', '$BP', t0 - 1 FROM t0
ON CONFLICT (resource_name, parent_id) DO UPDATE SET last_modified = GREATEST(timestamps.last_modified, EXCLUDED.last_modified);
INSERT INTO access_control_entries (object_id, permission, principal) VALUES
  ('$BP', 'write', '$USERID'), ('$P', 'write', '$USERID') ON CONFLICT DO NOTHING;
-- records
DELETE FROM objects WHERE resource_name = 'record' AND parent_id = '$P';
DELETE FROM access_control_entries WHERE object_id LIKE '$P/records/%';
-- Schema version 2 keeps each object's JSON text beside its JSONB (the server
-- writes both; lists read the text).
INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data, body)
SELECT 'record', '$P', d->>'id', (d->>'last_modified')::bigint, false, d, d::text
FROM (
  SELECT jsonb_build_object('id', format('r%s', lpad(i::text, 6, '0')), 'last_modified', t0 + i,
                            'title', format('Benchmark record number %s', lpad(i::text, 6, '0')),
                            'status', (ARRAY['a','b','c','d'])[i % 4 + 1], 'n', i,
                            'tags', jsonb_build_array('alpha','beta','gamma'),
                            'owner', 'bench-user', 'payload', repeat('x', 160)) AS d
  FROM generate_series(0, $N - 1) AS i, t0
) AS seeded;
INSERT INTO access_control_entries (object_id, permission, principal)
SELECT format('$P/records/r%s', lpad(i::text, 6, '0')), 'write', '$USERID'
FROM generate_series(0, $N - 1) AS i;
INSERT INTO timestamps (resource_name, parent_id, last_modified)
SELECT 'record', '$P', t0 + $N - 1 FROM t0
ON CONFLICT (resource_name, parent_id) DO UPDATE SET last_modified = EXCLUDED.last_modified;
COMMIT;
ANALYZE objects; ANALYZE access_control_entries; ANALYZE timestamps;
SQL
psql -At "$DB" -c "SELECT '$P', count(*) FROM objects WHERE parent_id = '$P' AND resource_name = 'record' AND NOT deleted"
