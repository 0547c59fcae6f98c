#!/usr/bin/env bash
# The CPU cost of one webhook delivery, without the API in the way: a jsonsync process
# (PostgreSQL, the webhooks plugin, its worker) delivers a backlog of N events written straight
# into its event log (10 transactions of N/10 events, a record-sized body each) to
# bench/webhook_receiver.py, and the script prints, per event, the CPU seconds of the server
# process (user and all), of the receiver, and the time of the worker's statements in PostgreSQL
# when pg_stat_statements is loaded (it is not by default; nothing is printed then).
#
#   bench/webhook_backlog.sh [N=50000]
#   RATE=1000 bench/webhook_backlog.sh 20000   # a trickle: N events at RATE per second, 5 per transaction
#   RECEIVER=c bench/webhook_backlog.sh            # the C receiver (bench/webhook_receiver.c)
#   JSONSYNC_TWIST=/work/old/.venv/bin/twist bench/webhook_backlog.sh 50000   # another checkout
#
# One process, so that the CPU it uses is the delivery's: the figures are comparable from one
# run to the next on a quiet machine (unlike req/s on a shared one).
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
N=${1:-50000}
PORT=${BACKLOG_PORT:-18897}; RPORT=${BACKLOG_RECEIVER_PORT:-18899}; DB=bench_backlog
COUNT=$(mktemp); LOGF=$STATE/webhook_backlog.log
trap 'stop_all; rm -f "$COUNT"' EXIT
recreate_db "$DB" 2>/dev/null
JSONSYNC_PORT=$PORT start_jsonsync postgresql "$DB" 1 "$LOGF" \
  -s includes=webhooks -s webhooks.allow_private_targets=true
wait_http "http://127.0.0.1:$PORT/v1" "$JSONSYNC_PID" jsonsync "$LOGF"
start_receiver "$RPORT" "$COUNT"
RPID=$RECEIVER_PID
curl -sf -u "$AUTH" -X PUT "http://127.0.0.1:$PORT/v1/buckets/b" > /dev/null
curl -sf -u "$AUTH" -X PUT "http://127.0.0.1:$PORT/v1/buckets/b/collections/c" > /dev/null
python3 "$BENCH/make_webhook.py" "http://127.0.0.1:$PORT/v1" "http://127.0.0.1:$RPORT/hook" > /dev/null 2>&1
sleep 1
body='{"action":"update","resource_name":"record","uri":"/buckets/b/collections/c/records/4a1b2c3d-0000-4000-8000-00000000abcd","bucket_id":"b","collection_id":"c","timestamp":1765000000000,"data":{"id":"4a1b2c3d-0000-4000-8000-00000000abcd","last_modified":1765000000000,"title":"record number 1234","counter":42,"tags":["a","b"],"done":false},"webhook":"/buckets/b/webhooks/bench"}'
pgss=$(psql -At "$PGADMIN" -c "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'
  AND current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'" 2>/dev/null || echo 0)
[ "$pgss" = 1 ] && psql -qAt "$PGADMIN" -c "SELECT pg_stat_statements_reset()" > /dev/null
ticks() { awk '{print $14 + $15, $14}' "/proc/$1/stat"; }
read -r s0 u0 < <(ticks "$JSONSYNC_PID"); read -r r0 _ < <(ticks "$RPID")
t0=$(date +%s.%N)
if [ -n "${RATE:-}" ]; then
  # As API writes make them (group commits of about 5 events), at a steady pace: the worker
  # claims small batches, as it does under load.
  "$REPO/.venv/bin/python" - "$PGBASE/$DB" "$N" "$RATE" "$body" <<'PY'
import sys, time, psycopg2
url, n, rate, body = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
conn = psycopg2.connect(url); conn.autocommit = True; cur = conn.cursor()
start = time.monotonic()
for i in range(0, n, 5):
    cur.execute("INSERT INTO jsonsync_webhook_events (target, body) SELECT '/buckets/b/webhooks/bench', %s"
                " FROM generate_series(1, %s)", (body, min(5, n - i)))
    wait = start + (i + 5) / rate - time.monotonic()
    if wait > 0:
        time.sleep(wait)
PY
else
  for _ in $(seq 10); do
    psql -q "$PGBASE/$DB" -c "INSERT INTO jsonsync_webhook_events (target, body)
      SELECT '/buckets/b/webhooks/bench', '$body' FROM generate_series(1, $((N / 10)))"
  done
fi
for _ in $(seq 1200); do
  [ "$(cut -d' ' -f1 "$COUNT" 2>/dev/null || echo 0)" -ge "$N" ] && break; sleep 0.25
done
t1=$(date +%s.%N)
read -r s1 u1 < <(ticks "$JSONSYNC_PID"); read -r r1 _ < <(ticks "$RPID")
hz=$(getconf CLK_TCK)
per() { python3 -c "print(f'{($1) * 1e6 / $hz / $N:.0f}')"; }
printf 'delivered %s of %s events in %.1f s; per event: server %s us CPU (%s us user), receiver %s us\n' \
  "$(cut -d' ' -f1 "$COUNT")" "$N" "$(python3 -c "print($t1 - $t0)")" \
  "$(per "$s1 - $s0")" "$(per "$u1 - $u0")" "$(per "$r1 - $r0")"
if [ "$pgss" = 1 ]; then
  psql -At "$PGADMIN" -c "SELECT 'PostgreSQL, the worker''s statements: ' || round(sum(total_exec_time)::numeric * 1000 / $N, 1)
    || ' us per event' FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$DB')
    AND query NOT LIKE 'INSERT INTO jsonsync_webhook_events%'"
fi
