#!/usr/bin/env bash
# jsonsync vs Kinto, side by side, on this machine (issue 5, benchmark part).
#
#   bench/compare.sh              # PostgreSQL: jsonsync vs Kinto (uwsgi, 2 processes), same server
#   bench/compare.sh fresh        # PostgreSQL as a user's first import leaves it: both servers seeded
#                                 #   through /batch, measured at once, no ANALYZE (issue #18)
#   bench/compare.sh memory       # memory backends: jsonsync (1 process) vs Kinto (`kinto start`,
#                                 #   waitress, 1 process), then RSS after seeding 100,000 records
#   DURATION=5s ROUNDS=1 ONLY=w2,w3 bench/compare.sh      # a quick run
#
# What it does: creates/reuses a Kinto virtualenv in .bench/kinto-venv (current Kinto from
# PyPI + uwsgi + psycopg2), recreates the databases bench_kinto and bench_jsonsync, runs
# `kinto migrate`, starts both servers on 127.0.0.1 with equal PostgreSQL pool sizes, seeds
# both identically through HTTP (bench/seed.py: bucket b, collection c, 10,000 records),
# then runs W2-W5 (reads), W6, W1, W7 (writes) in that order; each workload runs ROUNDS times
# per server, alternating jsonsync, Kinto, jsonsync, Kinto ... so machine noise hits both alike.
# Prints, per workload, req/s, p50, p99, non-2xx for each server and jsonsync/Kinto ratios
# (the median over rounds; non-2xx summed). Everything it started is stopped on exit.
# Output: the table on stdout; raw wrk output, per-run JSON lines, CPU use per run, server
# logs and summary.md in $OUT_DIR (default .bench/results/<mode>-<timestamp>).
#
# Environment (defaults): DURATION (15s) ROUNDS (2) ONLY (all; e.g. w2,w3) CONNS (32)
#   WARMUP (3s, unrecorded, before every measured run) THREADS (1) TIMEOUT (10s)
#   JSONSYNC_WORKERS (2; --workers N is passed only when > 1) KINTO_PROCESSES (2)
#   POOL_SIZE (10 connections per server process, both; Kinto max_overflow=0)
#   N_RECORDS (10000) SEED_CONCURRENCY (2) ACCESS_LOG (0 = neither server logs each request)
#   RSS_RECORDS (100000, memory mode) RSS_SEED_TIMEOUT (600 s per server) JSONSYNC_PORT (18891) KINTO_PORT (18892)
#   KINTO_SPEC (kinto[postgresql]) PGADMIN (postgresql://postgres@127.0.0.1:5432/postgres)
#   JS_DB (bench_jsonsync) KINTO_DB (bench_kinto): the databases it drops and recreates
set -euo pipefail
MODE=${1:-postgresql}
# fresh: the postgresql run without the ANALYZE after seeding (what a server
# meets right after an import through its API, before autovacuum's first pass).
FRESH=0
case "$MODE" in postgresql|pg) MODE=postgresql ;; fresh) MODE=postgresql; FRESH=1 ;; memory) ;;
  *) echo "usage: $0 [postgresql|fresh|memory]" >&2; exit 2 ;; esac
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
JS_DB=${JS_DB:-bench_jsonsync}; KINTO_DB=${KINTO_DB:-bench_kinto}
N_RECORDS=${N_RECORDS:-10000}; RSS_RECORDS=${RSS_RECORDS:-100000}; RSS_SEED_TIMEOUT=${RSS_SEED_TIMEOUT:-600}
OUT_DIR=${OUT_DIR:-$STATE/results/$MODE$([ "$FRESH" = 1 ] && echo -fresh)-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"; RESULTS=$OUT_DIR/results.jsonl; : > "$RESULTS"; : > "$OUT_DIR/cpu.log"
trap 'stop_all' EXIT
trap 'exit 130' INT TERM

JS=http://127.0.0.1:$JSONSYNC_PORT/v1
KI=http://127.0.0.1:$KINTO_PORT/v1
ensure_kinto_venv

if [ "$MODE" = postgresql ]; then
  JS_WORKERS=$JSONSYNC_WORKERS; KMODE=uwsgi; KPROCS=$KINTO_PROCESSES
  recreate_db $KINTO_DB; recreate_db $JS_DB
  kinto_config postgresql "$OUT_DIR/kinto.ini" $KINTO_DB
  log "kinto migrate"
  "$KVENV/bin/kinto" migrate --ini "$OUT_DIR/kinto.ini" > "$OUT_DIR/kinto-migrate.log" 2>&1
else
  JS_WORKERS=1; KMODE=waitress; KPROCS=1   # memory data lives in one process
  kinto_config memory "$OUT_DIR/kinto.ini"
fi

start_servers() {
  start_jsonsync "$MODE" $JS_DB "$JS_WORKERS" "$OUT_DIR/jsonsync.log"
  start_kinto "$KMODE" "$OUT_DIR/kinto.ini" "$OUT_DIR/kinto.log"
  wait_http "$JS" "$JSONSYNC_PID" jsonsync "$OUT_DIR/jsonsync.log"
  wait_http "$KI" "$KINTO_PID" Kinto "$OUT_DIR/kinto.log"
}
start_servers
log "jsonsync pid $JSONSYNC_PID ($MODE, workers=$JS_WORKERS)  Kinto pid $KINTO_PID ($KMODE, processes=$KPROCS)"

{
  echo "mode=$MODE$([ "$FRESH" = 1 ] && echo ' (fresh: seeded through /batch, no ANALYZE)')"
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command=$(for v in DURATION ROUNDS ONLY CONNS WARMUP JSONSYNC_WORKERS POOL_SIZE N_RECORDS; do
      [ -n "${!v:-}" ] && printf '%s=%s ' "$v" "${!v}"; done)bench/compare.sh $([ "$FRESH" = 1 ] && echo fresh || echo "$MODE")"
  echo "kinto=$KINTO_VERSION ($KMODE, $KPROCS process(es))"
  echo "jsonsync=$(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- jsonsync 2>/dev/null || echo '+uncommitted changes in jsonsync/') (workers=$JS_WORKERS)"
  echo "python_jsonsync=$("$REPO/.venv/bin/python" -V 2>&1)  python_kinto=$("$KVENV/bin/python" -V 2>&1)"
  echo "postgresql=$(psql -At "$PGADMIN" -c 'SHOW server_version')  pool_size=$POOL_SIZE per process"
  echo "machine=nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GB RAM"
  echo "wrk=-t$THREADS -c$CONNS -d$DURATION --timeout $TIMEOUT, warm-up $WARMUP, rounds $ROUNDS"
} > "$OUT_DIR/env.txt"
cat "$OUT_DIR/env.txt" >&2

log "seeding $N_RECORDS records into each server (seed.py, /batch, concurrency ${SEED_CONCURRENCY:-2})"
for base in "$JS" "$KI"; do
  python3 "$BENCH/seed.py" "$base" --auth "$AUTH" --records "$N_RECORDS" \
    --concurrency "${SEED_CONCURRENCY:-2}" --reset 2>&1 | tee -a "$OUT_DIR/seed.log" >&2
done
if [ "$MODE" = postgresql ] && [ "$FRESH" = 1 ]; then
  for db in $KINTO_DB $JS_DB; do
    log "$db: no ANALYZE by the benchmark (fresh mode); latest ANALYZE of any table: $(psql -At "${PGADMIN%/*}/$db" -c \
      "SELECT coalesce(max(greatest(last_analyze, last_autoanalyze))::text, 'none') FROM pg_stat_user_tables")"
  done
elif [ "$MODE" = postgresql ]; then
  # Fresh tables have no statistics until autovacuum gets to them, and the
  # planner then picks poor plans for both servers alike: analyze both, as a
  # production database long since would have been.
  for db in $KINTO_DB $JS_DB; do
    psql "${PGADMIN%/*}/$db" -qc "ANALYZE" >&2
  done
fi

if want w4; then
  SINCE_JS=$(since_for "$JS" c); SINCE_KI=$(since_for "$KI" c)
  log "W4 _since: jsonsync $SINCE_JS, Kinto $SINCE_KI"
fi

R=buckets/b/collections/c/records
for wl in $WORKLOADS; do
  IFS=: read -r key script label <<< "$wl"
  want "$key" || continue
  log "== $label"
  for base in "$JS" "$KI"; do
    case $key in
      w2) probe GET "$base/$R/r000001" ;;
      w3) probe GET "$base/$R?_limit=100" ;;
      w4) probe GET "$base/$R?_since=$([ "$base" = "$JS" ] && echo "$SINCE_JS" || echo "$SINCE_KI")" ;;
      w5) probe GET "$base/$R?in_status=a,b&_limit=50&_sort=-last_modified" ;;
    esac
  done
  for round in $(seq 1 "$ROUNDS"); do
    measure "$label" jsonsync "$JS" "$script" "$round" N_RECORDS="$N_RECORDS" SINCE="${SINCE_JS:-0}"
    measure "$label" kinto    "$KI" "$script" "$round" N_RECORDS="$N_RECORDS" SINCE="${SINCE_KI:-0}"
  done
done

if [ "$MODE" = memory ] && [ "$RSS_RECORDS" -gt 0 ]; then
  log "RSS: restarting both servers empty, then seeding $RSS_RECORDS records into each"
  stop_all; start_servers
  JS_RSS0=$(rss_kb "$JSONSYNC_PID"); KI_RSS0=$(rss_kb "$KINTO_PID")
  for base in "$JS" "$KI"; do   # bounded: Kinto's memory backend slows down as it grows
    timeout "$RSS_SEED_TIMEOUT" python3 "$BENCH/seed.py" "$base" --auth "$AUTH" --collection c100k \
      --records "$RSS_RECORDS" --concurrency "${SEED_CONCURRENCY:-2}" >> "$OUT_DIR/seed.log" 2>&1 \
      || log "seeding $base stopped after ${RSS_SEED_TIMEOUT}s (or failed); RSS is reported at the count reached"
  done
  sleep 2
  count() { curl -sI -u "$AUTH" --max-time 60 "$1/buckets/b/collections/c100k/records" \
    | tr -d '\r' | awk -F': ' 'tolower($1)=="total-objects"{print $2}'; }
  JS_N=$(count "$JS"); KI_N=$(count "$KI")
  JS_RSS1=$(rss_kb "$JSONSYNC_PID"); KI_RSS1=$(rss_kb "$KINTO_PID")
  echo "{\"rss\": true, \"jsonsync\": [$JS_RSS0, $JS_RSS1, ${JS_N:-0}], \"kinto\": [$KI_RSS0, $KI_RSS1, ${KI_N:-0}]}" >> "$RESULTS"
fi

python3 "$BENCH/report.py" "$RESULTS" "$OUT_DIR/env.txt" | tee "$OUT_DIR/summary.md"
log "raw output in $OUT_DIR"
