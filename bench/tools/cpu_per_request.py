#!/usr/bin/env python3
"""CPU per request of each server in a bench/ab.sh report (what it prints), from its "every run" table.

    bench/ab.sh > /tmp/ab.md && python3 bench/tools/cpu_per_request.py /tmp/ab.md

For each workload and server: the median over the rounds of (CPU seconds of the server, of
PostgreSQL and of the other processes during the run) / (req/s x the run's duration), in
microseconds, the total and its three parts. DURATION (default 10s) must be the run's.
"""

import os
import statistics
import sys


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]] if duration[-1] in units else float(duration)


def main(path: str) -> None:
    length = seconds(os.environ.get("DURATION", "10s"))
    runs: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 10 or not cells[2].isdigit():
            continue
        workload, server, rps = cells[0], cells[1], float(cells[3])
        parts = [float(c) for c in cells[7:10]]
        served = rps * length
        runs.setdefault((workload, server), []).append(tuple(p / served * 1e6 for p in [sum(parts), *parts]))
    for (workload, server), rows in runs.items():
        total, own, pg, other = (statistics.median(col) for col in zip(*rows, strict=True))
        print(f"{workload} {server}: {total:.0f} us of CPU per request (server {own:.0f},"
              f" PostgreSQL {pg:.0f}, other processes {other:.0f}), median of {len(rows)} rounds")


if __name__ == "__main__":
    main(sys.argv[1])
