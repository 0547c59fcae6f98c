#!/usr/bin/env bash
# Whether webhook deliveries keep pace with the writes while the server is fully loaded: a
# jsonsync server (PostgreSQL, --workers $JSONSYNC_WORKERS, the webhooks plugin) with one webhook on
# the benchmark's bucket takes W6 (or another write workload) for DURATION, and the script prints
# how many events were written, how many bench/webhook_receiver.py received while the load lasted,
# and how long the rest took after it. A side-by-side run (bench/ab.sh) is fair to the webhooks
# server only when its deliveries keep pace: work left for after a round is done during the other
# server's round.
#
#   bench/webhook_pace.sh [more twist arguments, e.g. -s webhooks.concurrency=16]
#   WORKLOAD=w1_create DURATION=20s bench/webhook_pace.sh
#   RECEIVER=c bench/webhook_pace.sh   # the C receiver (bench/webhook_receiver.c)
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
PORT=${PACE_PORT:-18902}; RPORT=${PACE_RECEIVER_PORT:-18903}; DB=bench_pace
WORKLOAD=${WORKLOAD:-w6_patch}; N_RECORDS=${N_RECORDS:-10000}
COUNT=$(mktemp); LOGF=$STATE/webhook_pace.log
trap 'stop_all; rm -f "$COUNT"' EXIT
recreate_db "$DB" 2>/dev/null
JSONSYNC_PORT=$PORT start_jsonsync postgresql "$DB" "$JSONSYNC_WORKERS" "$LOGF" \
  -s includes=webhooks -s webhooks.allow_private_targets=true "$@"
wait_http "http://127.0.0.1:$PORT/v1" "$JSONSYNC_PID" jsonsync "$LOGF"
start_receiver "$RPORT" "$COUNT"
python3 "$BENCH/seed.py" "http://127.0.0.1:$PORT/v1" --auth "$AUTH" --records "$N_RECORDS" --concurrency 2 --reset > /dev/null 2>&1
psql -q "$PGBASE/$DB" -c "ANALYZE"
python3 "$BENCH/make_webhook.py" "http://127.0.0.1:$PORT/v1" "http://127.0.0.1:$RPORT/hook" > /dev/null 2>&1
received() { cut -d' ' -f1 "$COUNT" 2>/dev/null || echo 0; }
sleep 1.5; before=$(received)
written=$(N_RECORDS=$N_RECORDS wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout "$TIMEOUT" \
  -s "$BENCH/lua/$WORKLOAD.lua" "http://127.0.0.1:$PORT/v1" | awk '/requests in/ {print $1}')
during=$(( $(received) - before ))
waited=0
while [ $(( $(received) - before )) -lt "$written" ] && [ "$waited" -lt 120 ]; do sleep 1; waited=$((waited + 1)); done
printf '%s for %s: %s events written, %s received while the load lasted (%s %%; the count is written every second), all %s received %s s after it\n' \
  "$WORKLOAD" "$DURATION" "$written" "$during" "$(( 100 * during / written ))" "$(( $(received) - before ))" "$waited"
