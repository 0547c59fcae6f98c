#!/usr/bin/env python3
"""Summarise bench results (JSON lines written by lib.sh `measure`) as Markdown tables.

Usage: report.py RESULTS.jsonl [ENV.txt]
Per workload and server: median req/s, p50, p99 over rounds, non-2xx summed; then the
ratios jsonsync/Kinto (req/s: > 1 means jsonsync serves more; p99: < 1 means jsonsync is
faster), and the median of the rounds' own req/s ratios (round i of the first server against
round i of the second, run one after the other: on a machine whose speed drifts during a run,
the steadier figure). A second table lists every run with the CPU seconds per process class.
"""
import json
import statistics
import sys


def fmt(x, nd=1):
    return ("%%.%df" % nd) % x


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    env = open(sys.argv[2]).read().strip() if len(sys.argv) > 2 else ""
    runs = [r for r in rows if "wl" in r]
    servers = []
    for r in runs:
        if r["server"] not in servers:
            servers.append(r["server"])
    order = []
    for r in runs:
        key = r.get("group", ""), r["wl"]
        if key not in order:
            order.append(key)
    out = []
    if env:
        out += ["```", env, "```", ""]
    two = len(servers) == 2
    first, second = (servers + ["", ""])[:2]
    names = ("js", "Kinto") if servers == ["jsonsync", "kinto"] else (first, second)
    head = ["workload"]
    for s in servers:
        head += ["%s req/s" % s, "p50 ms", "p99 ms", "non-2xx"]
    if two:
        head += ["req/s ratio %s/%s" % names, "p99 ratio %s/%s" % names, "paired req/s ratio (range)"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for group, wl in order:
        cells = [(group + " " if group else "") + wl]
        agg = {}
        for s in servers:
            rs = [r for r in runs if r["wl"] == wl and r.get("group", "") == group and r["server"] == s]
            if not rs:
                cells += ["-"] * 4
                continue
            a = {
                "rps": statistics.median(r["rps"] for r in rs),
                "p50": statistics.median(r["p50_ms"] for r in rs),
                "p99": statistics.median(r["p99_ms"] for r in rs),
                "bad": sum(int(r["non2xx"]) for r in rs),
                "sock": sum(int(r["sockerr"]) for r in rs),
                "sub": sum(int(r.get("subfail", 0)) for r in rs),
            }
            agg[s] = a
            bad = str(a["bad"])
            if a["sub"]:
                bad += " (%d failed sub-req.)" % a["sub"]
            if a["sock"]:
                bad += " +%d sock.err" % a["sock"]
            spread = ""
            if len(rs) > 1:
                spread = " (%s–%s)" % (fmt(min(r["rps"] for r in rs), 0), fmt(max(r["rps"] for r in rs), 0))
            cells += [fmt(a["rps"]) + spread, fmt(a["p50"], 2), fmt(a["p99"], 2), bad]
        if two:
            j, k = agg.get(first), agg.get(second)
            cells.append("**%.2f**" % (j["rps"] / k["rps"]) if j and k and k["rps"] else "-")
            cells.append("%.2f" % (j["p99"] / k["p99"]) if j and k and k["p99"] else "-")
            by_round = {}
            for r in runs:
                if r["wl"] == wl and r.get("group", "") == group:
                    by_round.setdefault(r["round"], {})[r["server"]] = r["rps"]
            paired = [v[first] / v[second] for v in by_round.values() if v.get(first) and v.get(second)]
            cells.append("%.2f (%.2f–%.2f)" % (statistics.median(paired), min(paired), max(paired)) if paired else "-")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("req/s: median over rounds (min–max of the rounds in brackets); p50/p99: median over rounds; "
               "non-2xx: summed over rounds; paired ratio: median of the per-round ratios.")
    for r in rows:
        if r.get("rss"):
            out += ["", "RSS of the whole process tree (kB), empty and after seeding (the record count reached "
                    "is shown: seeding is time-bounded):", "",
                    "| server | RSS empty | records seeded | RSS seeded | bytes/record |", "|---|---|---|---|---|"]
            for s in ("jsonsync", "kinto"):
                a, b, n = r[s]
                out.append("| %s | %d | %d | %d | %s |" % (s, a, n, b, "%.0f" % ((b - a) * 1024 / n) if n else "-"))
    out += ["", "<details><summary>every run (CPU seconds used during the run by the server under test, by "
            "PostgreSQL (bench databases + background) and by other processes on this shared machine; wrk "
            "itself is not counted)</summary>", "", "| workload | server | round | req/s | p50 ms | p99 ms | non-2xx | "
            "CPU server | PostgreSQL | foreign |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = r.get("cpu", {})
        out.append("| %s%s | %s | %d | %s | %s | %s | %d | %s | %s | %s |" % (
            (r["group"] + " ") if r.get("group") else "", r["wl"], r["server"], r["round"], fmt(r["rps"]),
            fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2), int(r["non2xx"]), fmt(c.get("server", 0)),
            fmt(c.get("pgmine", 0) + c.get("pgbg", 0)), fmt(c.get("foreign", 0))))
    out += ["", "</details>"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
