# Shared functions for bench/compare.sh and bench/growth.sh (sourced, not run).
# Everything listens on / talks to 127.0.0.1 only. Every wait loop is bounded.

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
STATE=${STATE:-$REPO/.bench}                 # Kinto venv, configs, logs (self-gitignored)
KVENV=${KVENV:-$STATE/kinto-venv}
KINTO_SPEC=${KINTO_SPEC:-kinto[postgresql]}  # e.g. KINTO_SPEC='kinto[postgresql]==26.5.0'
JSONSYNC_TWIST=${JSONSYNC_TWIST:-$REPO/.venv/bin/twist}
PGADMIN=${PGADMIN:-postgresql://postgres@127.0.0.1:5432/postgres}
PGBASE=${PGADMIN%/*}
AUTH=${AUTH:-bench:bench}
JSONSYNC_PORT=${JSONSYNC_PORT:-18891}
KINTO_PORT=${KINTO_PORT:-18892}
POOL_SIZE=${POOL_SIZE:-10}                   # PostgreSQL connections per server process, both servers
JSONSYNC_WORKERS=${JSONSYNC_WORKERS:-2}      # passed as --workers N only when > 1
KINTO_PROCESSES=${KINTO_PROCESSES:-2}        # uwsgi processes (PostgreSQL runs)
ACCESS_LOG=${ACCESS_LOG:-0}                  # 0: no per-request log line on either server
DURATION=${DURATION:-15s}; CONNS=${CONNS:-32}; THREADS=${THREADS:-1}; TIMEOUT=${TIMEOUT:-10s}
WARMUP=${WARMUP:-3s}; ROUNDS=${ROUNDS:-2}; ONLY=${ONLY:-}
PAUSE=${PAUSE:-2}                            # seconds of rest after each measured run
# The standard workloads, key:script:label, in the order they run (reads on the
# untouched collection first, then the writes); compare.sh and ab.sh both run them.
WORKLOADS="w2:w2_get.lua:W2_get_one w3:w3_list.lua:W3_list100 w4:w4_since.lua:W4_since50
w5:w5_filter.lua:W5_filter w6:w6_patch.lua:W6_patch w1:w1_create.lua:W1_create w7:w7_batch.lua:W7_batch25
w6p:w6_paced.lua:W6_paced"
export AUTH CONNS

mkdir -p "$STATE"
# The state dir ignores itself, so the repository's root .gitignore needs no line for it.
[ -f "$STATE/.gitignore" ] || echo '*' > "$STATE/.gitignore"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
# w6p (W6 at a fixed pace, for CPU per request) runs only when ONLY names it.
want() { if [ -z "$ONLY" ]; then [ "$1" != w6p ]; else [[ ",$ONLY," == *",$1,"* ]]; fi; }
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 2; }

STARTED_PIDS=()
stop_all() {
  local p i
  for p in "${STARTED_PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${STARTED_PIDS[@]}"; do
    for i in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$p" 2>/dev/null || true
  done
  STARTED_PIDS=()
}
stop_pid() {  # stop_pid PID : TERM, wait up to 10 s, then KILL; forget it
  local p=$1 i rest=()
  kill -TERM "$p" 2>/dev/null || true
  for i in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "$p" 2>/dev/null || true
  for i in "${STARTED_PIDS[@]}"; do [ "$i" = "$p" ] || rest+=("$i"); done
  STARTED_PIDS=("${rest[@]}")
}

ensure_kinto_venv() {
  if [ ! -x "$KVENV/bin/kinto" ] || [ ! -x "$KVENV/bin/uwsgi" ]; then
    log "creating Kinto virtualenv in $KVENV ($KINTO_SPEC uwsgi psycopg2-binary from PyPI)"
    python3 -m venv "$KVENV"
    "$KVENV/bin/pip" install -q --upgrade pip
    "$KVENV/bin/pip" install -q "$KINTO_SPEC" uwsgi psycopg2-binary
  fi
  KINTO_VERSION=$("$KVENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kinto"))')
  log "Kinto $KINTO_VERSION in $KVENV"
}

recreate_db() {  # recreate_db NAME
  psql -q "$PGADMIN" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
}

# kinto_config MODE(memory|postgresql) OUT.ini [DBNAME]: `kinto init` + the edits of the
# shared kit's make-configs.sh (basicauth, any authenticated user creates buckets,
# paginate_by=100), plus: equal pool size, no max_overflow, loopback, logging per ACCESS_LOG.
kinto_config() {
  local mode=$1 out=$2 db=${3:-}
  rm -f "$out"
  "$KVENV/bin/kinto" init --ini "$out" --backend "$mode" --cache-backend "$mode" >/dev/null 2>&1
  python3 - "$out" "$PGBASE/$db" "$POOL_SIZE" "$ACCESS_LOG" <<'PY'
import sys
path, pg, pool, access_log = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
s = open(path).read()
s = s.replace("postgresql://postgres:postgres@localhost/postgres", pg)
s = s.replace("multiauth.policies = account\n", "multiauth.policies = basicauth\n")
s = s.replace("kinto.bucket_create_principals = account:admin\n",
              "kinto.bucket_create_principals = system.Authenticated\n")
s = s.replace("# kinto.paginate_by =\n", "kinto.paginate_by = 100\n")
for p in ("storage", "cache", "permission"):   # one engine per URL is shared by all three
    s = s.replace("# kinto.%s_pool_size = 25\n" % p, "kinto.%s_pool_size = %s\n" % (p, pool))
    s = s.replace("# kinto.%s_max_overflow = 5\n" % p, "kinto.%s_max_overflow = 0\n" % p)
s = s.replace("formatter = color\n", "formatter = json\n")
if access_log == "1":
    s = s.replace("[logger_kinto]\nlevel = DEBUG", "[logger_kinto]\nlevel = INFO")
else:
    s = s.replace("[logger_root]\nlevel = INFO", "[logger_root]\nlevel = WARNING")
    s = s.replace("[logger_kinto]\nlevel = DEBUG", "[logger_kinto]\nlevel = WARNING")
assert "host = 127.0.0.1" in s, "waitress must listen on loopback"
open(path, "w").write(s)
PY
}

# start_kinto MODE(uwsgi|waitress) INI LOG -> sets KINTO_PID
start_kinto() {
  local mode=$1 ini; ini=$(readlink -f "$2"); local logf=$3
  case "$mode" in
    uwsgi)
      ( cd "$BENCH/kinto" && KINTO_INI=$ini exec "$KVENV/bin/uwsgi" --http-socket "127.0.0.1:$KINTO_PORT" \
          --master --processes "$KINTO_PROCESSES" --enable-threads --lazy-apps --single-interpreter \
          --die-on-term --need-app --wsgi-file app.py --buffer-size 65535 --post-buffering 65535 \
          --harakiri 120 --disable-logging --listen 128 --add-header "Connection: close" ) > "$logf" 2>&1 &
      ;;
    waitress)
      "$KVENV/bin/kinto" start --ini "$ini" --port "$KINTO_PORT" > "$logf" 2>&1 &
      ;;
    *) echo "unknown Kinto mode $mode" >&2; return 2 ;;
  esac
  KINTO_PID=$!; STARTED_PIDS+=("$KINTO_PID")
}

# start_jsonsync BACKEND(memory|postgresql) DBNAME WORKERS LOG -> sets JSONSYNC_PID
start_jsonsync() {  # start_jsonsync BACKEND DBNAME WORKERS LOG [more twist arguments...]
  local backend=$1 db=$2 workers=$3 logf=$4 args=(); shift 4
  args=(jsonsync --listen "tcp:$JSONSYNC_PORT:interface=127.0.0.1" -s paginate_by=100
        -s "access_log=$([ "$ACCESS_LOG" = 1 ] && echo true || echo false)")
  if [ "$backend" = postgresql ]; then
    args+=(-s storage_backend=postgresql -s permission_backend=postgresql
           -s "storage_url=$PGBASE/$db" -s "storage_pool_size=$POOL_SIZE")
  fi
  [ "$workers" -gt 1 ] && args+=(--workers "$workers")
  args+=("$@")
  # jsonsync reads JSONSYNC_<SETTING> variables: keep this script's own (JSONSYNC_WORKERS, ...) away
  local unset=(); local v; for v in $(compgen -e | grep '^JSONSYNC_' || true); do unset+=(-u "$v"); done
  env "${unset[@]}" "$JSONSYNC_TWIST" "${args[@]}" > "$logf" 2>&1 &
  JSONSYNC_PID=$!; STARTED_PIDS+=("$JSONSYNC_PID")
}

wait_http() {  # wait_http URL PID NAME LOG : up to 60 s for a 200 on URL
  local i
  for i in $(seq 1 120); do
    kill -0 "$2" 2>/dev/null || { log "$3 exited; log:"; tail -30 "$4" >&2; return 1; }
    [ "$(curl -s -o /dev/null -w '%{http_code}' -u "$AUTH" --max-time 2 "$1/" 2>/dev/null)" = 200 ] && return 0
    sleep 0.5
  done
  log "$3 did not answer 200 on $1 within 60 s; log:"; tail -30 "$4" >&2; return 1
}

rss_kb() {  # total VmRSS (kB) of PID and all its descendants
  python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1]); kids = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            st = open("/proc/%s/stat" % p).read(); ppid = int(st[st.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(p))
        except Exception:
            pass
tot, todo = 0, [root]
while todo:
    p = todo.pop(); todo += kids.get(p, [])
    try:
        for line in open("/proc/%d/status" % p):
            if line.startswith("VmRSS:"):
                tot += int(line.split()[1])
    except Exception:
        pass
print(tot)
PY
}

since_for() {  # since_for BASE COLLECTION : last_modified of the 51st newest record
  curl -s -u "$AUTH" --max-time 30 "$1/buckets/b/collections/$2/records?_sort=-last_modified&_limit=51&_fields=id" \
    | python3 -c 'import json,sys
d=json.load(sys.stdin)["data"]
print(d[-1]["last_modified"] if len(d) >= 51 else 0)'
}

probe() {  # probe METHOD URL [BODY] : one request like the workload's (status, bytes, items)
  local m=$1 u=$2 b=${3:-}
  local args=(-s -o "$OUT_DIR/probe.body" -w '%{http_code} %{size_download}' -u "$AUTH" -X "$m" --max-time 30)
  [ -n "$b" ] && args+=(-H 'Content-Type: application/json' --data "$b")
  local r; r=$(curl "${args[@]}" "$u")
  local n; n=$(python3 -c 'import json,sys
try:
    d=json.load(open(sys.argv[1])); x=d.get("data", d.get("responses"))
    print(len(x) if isinstance(x, list) else 1)
except Exception: print("?")' "$OUT_DIR/probe.body")
  log "  probe $m ${u#http://127.0.0.1:} -> HTTP ${r% *}, ${r#* } bytes, items=$n"
}

# measure LABEL SERVER BASE SCRIPT ROUND [extra env...]: warm-up + one measured wrk run;
# appends "label server round rps p50 p99 non2xx sockerr requests subfail cpu..." to $RESULTS
measure() {
  local label=$1 server=$2 base=$3 script=$4 round=$5; shift 5
  local raw="$OUT_DIR/$label.$server.r$round.txt" snap="$OUT_DIR/cpu.snap"
  if [ "$WARMUP" != "0" ]; then
    env "$@" WL_NAME="$label-warmup" wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" --timeout "$TIMEOUT" \
      -s "$BENCH/lua/$script" "$base" > "$raw.warmup" 2>&1 || true
  fi
  python3 "$BENCH/tools/cpumon.py" snap "$snap"
  env "$@" WL_NAME="$label" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout "$TIMEOUT" --latency \
    -s "$BENCH/lua/$script" "$base" > "$raw" 2>&1 || true
  local cpu; cpu=$(SERVER_MATCH="tcp:$JSONSYNC_PORT:|tcp:$KINTO_PORT:|127\.0\.0\.1:$KINTO_PORT|--port $KINTO_PORT" \
    python3 "$BENCH/tools/cpumon.py" diff "$snap" "$label/$server/r$round")
  echo "$cpu" >> "$OUT_DIR/cpu.log"
  local line; line=$(grep '^RESULT ' "$raw" | tail -1)
  if [ -z "$line" ]; then
    log "no RESULT line for $label/$server; see $raw"; tail -5 "$raw" >&2
    line="RESULT $label rps=0 p50_ms=0 p99_ms=0 non2xx=-1 sockerr=-1 requests=0 mean_ms=0 max_ms=0 subfail=0"
  fi
  python3 - "$label" "$server" "$round" "$cpu" ${line#RESULT * } >> "$RESULTS" <<'PY'
import json, re, sys
label, server, rnd, cpu = sys.argv[1:5]
f = dict(kv.split("=", 1) for kv in sys.argv[5:])
c = dict(re.findall(r"(\w+)=([\d.]+)s", cpu))
print(json.dumps({"wl": label, "server": server, "round": int(rnd), **{k: float(v) for k, v in f.items()},
                  "cpu": {k: float(v) for k, v in c.items() if k != "window"}}))
PY
  log "  $label $server r$round: $(echo "$line" | cut -d' ' -f3-7)  [$cpu]"
  sleep "$PAUSE"
}

# start_receiver PORT COUNT_FILE: the benchmarks' webhook receiver in the background (its pid in
# RECEIVER_PID): bench/webhook_receiver.py, or with RECEIVER=c bench/webhook_receiver.c, built
# with cc into $STATE (it costs the shared machine about 10 us per event instead of 30-45).
start_receiver() {
  if [ "${RECEIVER:-py}" = c ]; then
    cc -O2 -o "$STATE/webhook_receiver" "$BENCH/webhook_receiver.c"
    "$STATE/webhook_receiver" "$1" "$2" > /dev/null 2>&1 &
  else
    python3 "$BENCH/webhook_receiver.py" --port "$1" --count-file "$2" > /dev/null 2>&1 &
  fi
  RECEIVER_PID=$!; STARTED_PIDS+=("$RECEIVER_PID")
}
