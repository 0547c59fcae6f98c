#!/usr/bin/env bash
# jsonsync A vs jsonsync B, side by side on this machine and one PostgreSQL: the cost of a
# setting, a plugin, an authentication method, or of a code change (another checkout's twist).
#
#   A_NAME=before A_TWIST=/work/old/.venv/bin/twist B_NAME=after bench/ab.sh
#   A_NAME=off B_NAME=audit B_ARGS="-s includes=audit" ONLY=w1,w2 bench/ab.sh
#   A_NAME=basic B_NAME=bearer B_ARGS="-s includes=tokens -s multiauth.policies=tokens,basicauth" \
#     B_AUTH_CMD='python3 bench/make_token.py "$BASE"' bench/ab.sh
#
# Each server has its own database (bench_ab_a, bench_ab_b), both seeded identically through
# HTTP (bench/seed.py: bucket b, collection c, N_RECORDS records, Basic auth bench:bench) and
# analysed; then the workloads run ROUNDS times per server, alternating A, B, A, B ... so that
# machine noise hits both alike. The table gives req/s, p50, p99, non-2xx per server and the
# ratios A/B (req/s above 1: A serves more).
#
# Environment (defaults):
#   A_NAME (a) B_NAME (b)            labels in the table
#   A_TWIST B_TWIST (.venv/bin/twist) the twist of each server (another checkout's venv for before/after)
#   A_ARGS B_ARGS ("")               more twist arguments (word-split), e.g. "-s includes=audit"
#   A_AUTH_CMD B_AUTH_CMD ("")       a shell command run after seeding, with BASE set to that
#                                    server's /v1 URL, that prints the Authorization header value
#                                    the workloads then send (default: Basic bench:bench)
#   A_PORT (18893) B_PORT (18894), and compare.sh's DURATION ROUNDS ONLY CONNS WARMUP
#   JSONSYNC_WORKERS POOL_SIZE N_RECORDS. Workloads: w2 w3 w4 w5 (reads) w6 w1 w7 (writes).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
A_NAME=${A_NAME:-a}; B_NAME=${B_NAME:-b}
A_TWIST=${A_TWIST:-$JSONSYNC_TWIST}; B_TWIST=${B_TWIST:-$JSONSYNC_TWIST}
A_ARGS=${A_ARGS:-}; B_ARGS=${B_ARGS:-}; A_AUTH_CMD=${A_AUTH_CMD:-}; B_AUTH_CMD=${B_AUTH_CMD:-}
A_PORT=${A_PORT:-18893}; B_PORT=${B_PORT:-18894}
N_RECORDS=${N_RECORDS:-10000}
OUT_DIR=${OUT_DIR:-$STATE/results/ab-$A_NAME-$B_NAME-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"; RESULTS=$OUT_DIR/results.jsonl; : > "$RESULTS"; : > "$OUT_DIR/cpu.log"
trap 'stop_all' EXIT
trap 'exit 130' INT TERM
# cpumon counts the processes listening on these two ports as "the server".
JSONSYNC_PORT=$A_PORT; KINTO_PORT=$B_PORT

start_one() {  # start_one A|B -> sets <X>_PID and <X>_BASE
  local x=$1 name twist port extra=()
  name=$([ "$x" = A ] && echo "$A_NAME" || echo "$B_NAME")
  twist=$([ "$x" = A ] && echo "$A_TWIST" || echo "$B_TWIST")
  port=$([ "$x" = A ] && echo "$A_PORT" || echo "$B_PORT")
  read -ra extra <<< "$([ "$x" = A ] && echo "$A_ARGS" || echo "$B_ARGS")"
  local db="bench_ab_${x,,}"
  recreate_db "$db"
  JSONSYNC_PORT=$port JSONSYNC_TWIST=$twist start_jsonsync postgresql "$db" "$JSONSYNC_WORKERS" \
    "$OUT_DIR/$name.log" "${extra[@]}"
  wait_http "http://127.0.0.1:$port/v1" "$JSONSYNC_PID" "$name" "$OUT_DIR/$name.log"
  printf -v "${x}_PID" %s "$JSONSYNC_PID"
  printf -v "${x}_BASE" %s "http://127.0.0.1:$port/v1"
}
start_one A
start_one B

{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "command=$(for v in A_NAME A_ARGS B_NAME B_ARGS DURATION ROUNDS ONLY CONNS JSONSYNC_WORKERS POOL_SIZE N_RECORDS; do
      [ -n "${!v:-}" ] && printf '%s="%s" ' "$v" "${!v}"; done)bench/ab.sh"
  echo "$A_NAME=$A_TWIST $A_ARGS"
  echo "$B_NAME=$B_TWIST $B_ARGS"
  echo "jsonsync=$(git -C "$REPO" rev-parse --short HEAD) (workers=$JSONSYNC_WORKERS)"
  echo "postgresql=$(psql -At "$PGADMIN" -c 'SHOW server_version')  pool_size=$POOL_SIZE per process"
  echo "machine=nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "wrk=-t$THREADS -c$CONNS -d$DURATION --timeout $TIMEOUT, warm-up $WARMUP, rounds $ROUNDS"
} > "$OUT_DIR/env.txt"
cat "$OUT_DIR/env.txt" >&2

for base in "$A_BASE" "$B_BASE"; do
  python3 "$BENCH/seed.py" "$base" --auth "$AUTH" --records "$N_RECORDS" \
    --concurrency "${SEED_CONCURRENCY:-2}" --reset 2>&1 | tee -a "$OUT_DIR/seed.log" >&2
done
for x in a b; do psql "$PGBASE/bench_ab_$x" -qc "ANALYZE" >&2; done

header_for() {  # header_for CMD BASE : the Authorization value for the workloads
  if [ -z "$1" ]; then echo "Basic $(printf %s "$AUTH" | base64)"; else BASE=$2 bash -c "$1"; fi
}
A_HEADER=$(header_for "$A_AUTH_CMD" "$A_BASE"); B_HEADER=$(header_for "$B_AUTH_CMD" "$B_BASE")
log "$A_NAME sends Authorization: ${A_HEADER:0:16}...  $B_NAME sends Authorization: ${B_HEADER:0:16}..."

if want w4; then SINCE_A=$(since_for "$A_BASE" c); SINCE_B=$(since_for "$B_BASE" c); fi
R=buckets/b/collections/c/records
for wl in $WORKLOADS; do
  IFS=: read -r key script label <<< "$wl"
  want "$key" || continue
  log "== $label"
  for round in $(seq 1 "$ROUNDS"); do
    measure "$label" "$A_NAME" "$A_BASE" "$script" "$round" N_RECORDS="$N_RECORDS" SINCE="${SINCE_A:-0}" \
      AUTH_HEADER="$A_HEADER"
    measure "$label" "$B_NAME" "$B_BASE" "$script" "$round" N_RECORDS="$N_RECORDS" SINCE="${SINCE_B:-0}" \
      AUTH_HEADER="$B_HEADER"
  done
done

python3 "$BENCH/report.py" "$RESULTS" "$OUT_DIR/env.txt" | tee "$OUT_DIR/summary.md"
log "raw output in $OUT_DIR"
