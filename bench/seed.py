#!/usr/bin/env python3
# Copied from ../shared/bench/seed.py (Kinto HTTP API benchmark kit).
"""Seed a Kinto-compatible server: bucket, collection and N records via /batch.

Records get deterministic ids r000000, r000001, ... (PUT inside /batch), a
~300-byte body identical in shape to the Lua workloads, and status a/b/c/d
cycling (so in_status=a,b matches half of them).

Usage:
  python3 seed.py BASE_URL [--auth user:pass] [--bucket b] [--collection c]
                  [--records 10000] [--batch-size 25] [--concurrency 4] [--reset]

BASE_URL includes the API prefix, e.g. http://127.0.0.1:8892/v1
Only the Python standard library is used. Talks only to BASE_URL's host.
"""
import argparse
import base64
import http.client
import json
import sys
import threading
import time
import urllib.parse

STATUSES = "abcd"


def record_data(i):
    return {
        "title": "Benchmark record number %06d" % i,
        "status": STATUSES[i % 4],
        "n": i,
        "tags": ["alpha", "beta", "gamma"],
        "owner": "bench-user",
        "payload": "x" * 160,
    }


class Client:
    def __init__(self, base_url, auth, timeout=120):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http":
            raise SystemExit("only http:// base URLs are supported")
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        self.headers = {
            "Authorization": "Basic " + base64.b64encode(auth.encode()).decode(),
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.local = threading.local()

    def _conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.local.conn = c
        return c

    def request(self, method, path, body=None, extra=None):
        headers = dict(self.headers)
        headers.update(extra or {})
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(3):
            try:
                c = self._conn()
                c.request(method, self.prefix + path, body=data, headers=headers)
                r = c.getresponse()
                raw = r.read()
                return r.status, dict((k.lower(), v) for k, v in r.getheaders()), raw
            except (http.client.HTTPException, OSError):
                self.local.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base_url")
    ap.add_argument("--auth", default="bench:bench")
    ap.add_argument("--bucket", default="b")
    ap.add_argument("--collection", default="c")
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-retries", type=int, default=20,
                    help="retries of a whole batch that had a non-2xx sub-response")
    ap.add_argument("--reset", action="store_true",
                    help="DELETE the collection first (its records go away)")
    args = ap.parse_args()

    cl = Client(args.base_url, args.auth)
    bpath = "/buckets/%s" % args.bucket
    cpath = bpath + "/collections/%s" % args.collection
    rpath = cpath + "/records"

    st, _, raw = cl.request("GET", "/")
    if st != 200:
        raise SystemExit("server root answered %s: %r" % (st, raw[:200]))

    if args.reset:
        st, _, raw = cl.request("DELETE", cpath)
        if st not in (200, 404, 403):
            raise SystemExit("DELETE collection -> %s %r" % (st, raw[:200]))

    for path in (bpath, cpath):
        st, _, raw = cl.request("PUT", path, {"data": {}}, {"If-None-Match": "*"})
        if st not in (200, 201, 412):
            raise SystemExit("PUT %s -> %s %r" % (path, st, raw[:300]))

    ids = list(range(args.records))
    chunks = [ids[i:i + args.batch_size] for i in range(0, len(ids), args.batch_size)]
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "errors": 0, "retries": 0, "first_error": None}

    def worker():
        while True:
            with lock:
                k = state["next"]
                state["next"] += 1
            if k >= len(chunks):
                return
            reqs = [{"method": "PUT", "path": "%s/r%06d" % (rpath, i),
                     "body": {"data": record_data(i)}} for i in chunks[k]]
            # Kinto runs a batch in one transaction: if ANY sub-request fails (e.g. a 409
            # from concurrent writers colliding on the collection timestamp), the whole
            # batch is rolled back even though earlier sub-responses say 201. So a batch
            # only counts when every sub-response is 2xx; otherwise retry it whole.
            bad, retries = len(reqs), 0
            for attempt in range(args.max_retries + 1):
                st, _, raw = cl.request("POST", "/batch", {"requests": reqs})
                if st == 200:
                    statuses = [r["status"] for r in json.loads(raw)["responses"]]
                    bad = sum(1 for x in statuses if not 200 <= x < 300)
                else:
                    bad = len(reqs)
                if not bad:
                    break
                retries += 1
                time.sleep(0.05 * (attempt + 1))
            with lock:
                state["retries"] += retries
                if bad:
                    state["errors"] += len(reqs)
                    if state["first_error"] is None:
                        state["first_error"] = raw[:300]
                else:
                    state["done"] += len(reqs)

    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(max(1, args.concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0

    st, headers, _ = cl.request("HEAD", rpath)
    total = headers.get("total-objects") or headers.get("total-records")
    print("seeded %d records into %s in %.1fs (%.0f records/s), failed=%d, "
          "batch retries=%d, Total-Objects=%s"
          % (state["done"], rpath, dt, state["done"] / dt if dt else 0, state["errors"],
             state["retries"], total))
    if state["errors"]:
        print("first error: %r" % state["first_error"], file=sys.stderr)
        sys.exit(1)
    if total is not None and int(total) < args.records:
        print("Total-Objects %s < %d requested" % (total, args.records), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
