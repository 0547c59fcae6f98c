#!/usr/bin/env bash
# Growth run: W3 (list a page, _limit=100) and W4 (_since returning 50 changes) at 10k, 100k
# and 1M records, jsonsync PostgreSQL vs Kinto PostgreSQL (uwsgi, 2 processes).
#
#   bench/growth.sh
#   SIZES="10000 100000" KINTO=0 DURATION=5s bench/growth.sh      # quicker, jsonsync only
#
# Each size is its own collection of bucket b (c10000, c100000, c1000000) in the databases
# bench_growth_jsonsync / bench_growth_kinto, seeded by SQL (bench/jsonsync-sql-seed.sh,
# bench/kinto/sql-seed.sh): same records as seed.py, strictly increasing last_modified.
# Workloads alternate servers per round like compare.sh. Stops everything it started on exit.
# Environment: SIZES ("10000 100000 1000000") KINTO (1; 0 = jsonsync only) DURATION (10s)
#   ROUNDS (1) WARMUP (3s) CONNS (32) JSONSYNC_WORKERS (2) KINTO_PROCESSES (2) POOL_SIZE (10)
set -euo pipefail
DURATION=${DURATION:-10s}; ROUNDS=${ROUNDS:-1}
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
SIZES=${SIZES:-10000 100000 1000000}; KINTO=${KINTO:-1}
OUT_DIR=${OUT_DIR:-$STATE/results/growth-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"; RESULTS=$OUT_DIR/results.jsonl; : > "$RESULTS"; : > "$OUT_DIR/cpu.log"
trap 'stop_all' EXIT
trap 'exit 130' INT TERM
JS=http://127.0.0.1:$JSONSYNC_PORT/v1
KI=http://127.0.0.1:$KINTO_PORT/v1
JSDB=$PGBASE/bench_growth_jsonsync; KIDB=$PGBASE/bench_growth_kinto

log "jsonsync: schema, then SQL seeding with the server stopped"
recreate_db bench_growth_jsonsync
start_jsonsync postgresql bench_growth_jsonsync 1 "$OUT_DIR/jsonsync-schema.log"
wait_http "$JS" "$JSONSYNC_PID" jsonsync "$OUT_DIR/jsonsync-schema.log"
stop_pid "$JSONSYNC_PID"
for n in $SIZES; do
  t=$(date +%s); "$BENCH/jsonsync-sql-seed.sh" "$JSDB" b "c$n" "$n" "$AUTH" >&2
  log "  jsonsync c$n seeded in $(( $(date +%s) - t )) s"
done
psql -q "$JSDB" -c "VACUUM ANALYZE" >&2
start_jsonsync postgresql bench_growth_jsonsync "$JSONSYNC_WORKERS" "$OUT_DIR/jsonsync.log"
wait_http "$JS" "$JSONSYNC_PID" jsonsync "$OUT_DIR/jsonsync.log"

if [ "$KINTO" = 1 ]; then
  ensure_kinto_venv
  recreate_db bench_growth_kinto
  kinto_config postgresql "$OUT_DIR/kinto.ini" bench_growth_kinto
  "$KVENV/bin/kinto" migrate --ini "$OUT_DIR/kinto.ini" > "$OUT_DIR/kinto-migrate.log" 2>&1
  start_kinto uwsgi "$OUT_DIR/kinto.ini" "$OUT_DIR/kinto.log"
  wait_http "$KI" "$KINTO_PID" Kinto "$OUT_DIR/kinto.log"
  KUSER=$(curl -s -u "$AUTH" "$KI/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["user"]["id"])')
  for n in $SIZES; do
    python3 "$BENCH/seed.py" "$KI" --auth "$AUTH" --collection "c$n" --records 0 >&2   # bucket + collection
    t=$(date +%s); "$BENCH/kinto/sql-seed.sh" "$KIDB" b "c$n" "$n" "$KUSER" >&2
    log "  Kinto c$n seeded in $(( $(date +%s) - t )) s"
  done
  psql -q "$KIDB" -c "VACUUM ANALYZE" >&2
fi

{
  echo "mode=growth (PostgreSQL), sizes: $SIZES"
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command=DURATION=$DURATION ROUNDS=$ROUNDS SIZES=\"$SIZES\" KINTO=$KINTO JSONSYNC_WORKERS=$JSONSYNC_WORKERS bench/growth.sh"
  if [ "$KINTO" = 1 ]; then echo "kinto=$KINTO_VERSION (uwsgi, $KINTO_PROCESSES processes)"; fi
  echo "jsonsync=$(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- jsonsync 2>/dev/null || echo '+uncommitted changes in jsonsync/') (workers=$JSONSYNC_WORKERS)"
  echo "postgresql=$(psql -At "$PGADMIN" -c 'SHOW server_version')  pool_size=$POOL_SIZE per process"
  echo "machine=nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "wrk=-t$THREADS -c$CONNS -d$DURATION --timeout $TIMEOUT, warm-up $WARMUP, rounds $ROUNDS"
} > "$OUT_DIR/env.txt"
cat "$OUT_DIR/env.txt" >&2

for n in $SIZES; do
  SJ=$(since_for "$JS" "c$n"); SK=
  if [ "$KINTO" = 1 ]; then SK=$(since_for "$KI" "c$n"); fi
  for wl in w3:w3_list.lua:W3_list100 w4:w4_since.lua:W4_since50; do
    IFS=: read -r key script label <<< "$wl"
    want "$key" || continue
    log "== $label on c$n (_since jsonsync $SJ${SK:+, Kinto $SK})"
    probe GET "$JS/buckets/b/collections/c$n/records?$([ "$key" = w3 ] && echo _limit=100 || echo "_since=$SJ")"
    for round in $(seq 1 "$ROUNDS"); do
      measure "${label}_n$n" jsonsync "$JS" "$script" "$round" COLLECTION="c$n" SINCE="$SJ"
      if [ "$KINTO" = 1 ]; then
        measure "${label}_n$n" kinto "$KI" "$script" "$round" COLLECTION="c$n" SINCE="$SK"
      fi
    done
  done
done

python3 "$BENCH/report.py" "$RESULTS" "$OUT_DIR/env.txt" | tee "$OUT_DIR/summary.md"
log "raw output in $OUT_DIR"
