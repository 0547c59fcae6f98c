#!/usr/bin/env python3
# Adapted from ../shared/bench/tools/cpumon.py (SERVER_MATCH is a regex here).
"""cpumon.py snap FILE | cpumon.py diff FILE [LABEL] -- per-class CPU seconds between snapshots.
Classes: server (cmdline matches regex $SERVER_MATCH), wrk, pgmine (backends of bench_* databases), pgbg (postgres
background procs), foreign (everything else: other sessions' processes on this shared box)."""
import os, sys, json, time, re
HZ = os.sysconf("SC_CLK_TCK")
ME = os.getpid()
def snap():
    d = {}
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == ME: continue
        try:
            st = open(f"/proc/{p}/stat").read()
            rest = st[st.rindex(")")+2:].split()
            cpu = (int(rest[11]) + int(rest[12])) / HZ
            cmd = open(f"/proc/{p}/cmdline").read().replace("\0", " ").strip() or st[st.index("(")+1:st.rindex(")")]
            d[p] = (cpu, cmd[:400])
        except Exception: pass
    return {"t": time.time(), "p": d}
def klass(cmd):
    if re.search(os.environ.get("SERVER_MATCH", "/tmp/perf/"), cmd) and "cpumon" not in cmd: return "server"
    if cmd.startswith("wrk"): return "wrk"
    if re.match(r"postgres: .*\sbench_\w+\s", cmd): return "pgmine"
    if cmd.startswith("postgres:") or cmd.startswith("/usr/lib/postgresql"):
        return "foreign" if re.search(r"\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]", cmd) else "pgbg"
    return "foreign"
if sys.argv[1] == "snap":
    json.dump(snap(), open(sys.argv[2], "w"))
else:
    a = json.load(open(sys.argv[2])); b = snap(); dt = b["t"] - a["t"]
    tot = {}; top = []
    for p, (cpu, cmd) in b["p"].items():
        c = cpu - a["p"].get(p, (0, ""))[0]
        if c <= 0: continue
        k = klass(cmd); tot[k] = tot.get(k, 0) + c
        if k == "foreign" and c > 0.2: top.append((c, cmd[:70]))
    label = sys.argv[3] if len(sys.argv) > 3 else ""
    print(f"CPU {label} window={dt:.1f}s " + " ".join(f"{k}={tot.get(k,0):.1f}s" for k in ("server","wrk","pgmine","pgbg","foreign"))
          + (" | foreign top: " + "; ".join(f"{c:.1f}s {m}" for c, m in sorted(top, reverse=True)[:3]) if top else ""))
