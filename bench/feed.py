#!/usr/bin/env python3
"""
The live feed benchmark (issue #11): `twist jsonsync --workers 2` with the
`live` plugin on one PostgreSQL database, subscribers and writers on this
machine.

Modes:

  latency  N SSE subscribers over M collections, W writes/s for S seconds:
           delivery latency p50/p99 (from the write being sent, an upper
           bound of commit-to-delivery, and from its 201 being received, a
           lower bound, clipped at 0), events delivered, server CPU (all its
           processes), and RSS per idle subscriber (server RSS with the
           subscribers connected and idle, minus before, divided by N).
  resume   the same load; half-way, kill -9 the worker process (not the
           main one); its subscribers reconnect with Last-Event-ID (to
           whichever process takes the connection). Counts gaps (acknowledged
           writes never delivered to a subscriber of their collection) and
           duplicates: both must be 0.
  catchup  one subscriber K changes behind (K records written through
           /batch first) streams them from Last-Event-ID 0: changes/s, and the
           server's RSS growth while it does (bounded memory).

Tiny check (what the helper ran):
  python bench/feed.py latency --subscribers 50 --collections 5 --writes 20 --seconds 10
Full size (the issue's figures):
  python bench/feed.py latency --subscribers 10000 --collections 100 --writes 100 --seconds 60
  python bench/feed.py resume  --subscribers 2000 --collections 100 --writes 100 --seconds 30
  python bench/feed.py catchup --changes 100000

The database (--db, default bench_feed) is dropped and created again.
Subscribers share --users accounts (default 1: one read per collection and
notice serves all; --users 100 makes 100 groups per collection, each with its
own reads). Subscribers connect at --connect-rate per second (default 2000);
one answered 503 (admission control: too many feeds opening at once) comes
back after its Retry-After, jittered, with its cursor, as a client should.
The benchmark raises its open-files limit to the hard limit (the server it
starts inherits it): 10,000 subscribers need 10,000 descriptors on each side.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from array import array

import psycopg2
import treq
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.web.client import HTTPConnectionPool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWIST = os.path.join(os.path.dirname(sys.executable), "twist")


def auth_header(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()


class Histogram:
    """Latencies in 0.1 ms bins up to 30 s (fixed memory whatever the sample count)."""

    def __init__(self):
        self.bins = array("q", [0]) * 300_000
        self.count = 0

    def add(self, seconds: float) -> None:
        i = min(max(int(seconds * 10_000), 0), len(self.bins) - 1)
        self.bins[i] += 1
        self.count += 1

    def percentile(self, p: float) -> float | None:
        if not self.count:
            return None
        goal = p / 100 * self.count
        seen = 0
        for i, n in enumerate(self.bins):
            seen += n
            if seen >= goal:
                return i / 10.0  # ms
        return None


class Subscriber(Protocol):
    """A raw-socket SSE client: HTTP/1.1, chunked body, SSE blocks."""

    def __init__(self, bench, collection: str, user: str, last_id=None, slot: int = -1):
        self.bench = bench
        self.slot = slot
        self.retrying = False
        self.collection = collection
        self.user = user
        self.last_id = last_id
        self.head = b""
        self.in_body = False
        self.chunk_left = 0
        self.raw = b""
        self.text = b""
        self.received: list[int] = []
        self.ready = False
        self.start_cursor = None
        self.ended = False

    def connectionMade(self):
        lines = [
            f"GET /v1/buckets/feed/collections/{self.collection}/records HTTP/1.1",
            f"Host: 127.0.0.1:{self.bench.port}",
            f"Authorization: {auth_header(self.user)}",
            "Accept: text/event-stream",
        ]
        if self.last_id is not None:
            lines.append(f"Last-Event-ID: {self.last_id}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def dataReceived(self, data):
        if not self.in_body:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, data = self.head.split(b"\r\n\r\n", 1)
            if not head.startswith(b"HTTP/1.1 200"):
                if head.startswith(b"HTTP/1.1 503"):
                    # Admission control: come back after Retry-After (as a
                    # client should), with the same cursor.
                    delay = 1.0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"retry-after:"):
                            delay = float(line.split(b":", 1)[1])
                    self.retrying = True
                    self.bench.retry(self, delay)
                else:
                    self.bench.refused += 1
                self.transport.loseConnection()
                return
            self.in_body = True
        self.raw += data
        self._dechunk()
        while b"\n\n" in self.text:
            block, self.text = self.text.split(b"\n\n", 1)
            self._block(block)

    def _dechunk(self):
        while self.raw:
            if self.chunk_left == 0:
                if b"\r\n" not in self.raw:
                    return
                size, rest = self.raw.split(b"\r\n", 1)
                if not size:
                    self.raw = rest
                    continue
                self.chunk_left = int(size.split(b";")[0], 16)
                self.raw = rest
                if self.chunk_left == 0:
                    return
            take = self.raw[: self.chunk_left]
            self.text += take
            self.raw = self.raw[len(take):]
            self.chunk_left -= len(take)
            if self.chunk_left == 0 and self.raw.startswith(b"\r\n"):
                self.raw = self.raw[2:]

    def _block(self, block: bytes):
        now = time.time()
        event, ident, data = b"message", None, None
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                continue
            if line.startswith(b"event: "):
                event = line[7:]
            elif line.startswith(b"id: "):
                ident = int(line[4:])
            elif line.startswith(b"data: "):
                data = line[6:]
        if event == b"ready":
            self.ready = True
            if self.start_cursor is None:
                self.start_cursor = json.loads(data)["cursor"]
            self.bench.on_ready(self)
        elif event == b"end":
            self.bench.ends.append(json.loads(data))
        elif event == b"message" and ident is not None:
            self.last_id = ident
            self.received.append(ident)
            self.bench.on_event(self, json.loads(data), now)

    def connectionLost(self, reason=None):
        self.ended = True
        self.bench.on_lost(self)


class Factory(ClientFactory):
    def __init__(self, sub):
        self.sub = sub

    def buildProtocol(self, addr):
        return self.sub


class Bench:
    def __init__(self, args):
        self.args = args
        self.port = args.port
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.subs: list[Subscriber] = []
        self.ready_count = 0
        self.refused = 0
        self.ends: list = []
        self.sent = Histogram()
        self.acked_h = Histogram()
        self.delivered = 0
        self.acked: dict[tuple[str, int], float] = {}
        self.acked_by_collection: dict[str, list[int]] = {}
        self.write_errors = 0
        self.reconnect = False
        self.retries = 0
        self.reconnects = 0
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 64
        self.server: subprocess.Popen | None = None

    # -- the server -------------------------------------------------------------
    def start_server(self):
        admin = psycopg2.connect(self.args.pg_admin)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.args.db}"')
            cur.execute(f'CREATE DATABASE "{self.args.db}"')
        admin.close()
        url = self.args.pg_admin.rsplit("/", 1)[0] + "/" + self.args.db
        cmd = [
            TWIST, "jsonsync", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "-s", "storage_backend=postgresql", "-s", "permission_backend=postgresql",
            "-s", f"storage_url={url}", "-s", f"storage_pool_size={self.args.pool_size}",
            "-s", "access_log=false", "-s", "includes=live", "-s", "bucket_create_principals=system.Authenticated",
            "-s", "retry_after_seconds=1",
        ]
        if self.args.open_concurrency is not None:
            cmd += ["-s", f"live.open_concurrency={self.args.open_concurrency}"]
        for setting in self.args.setting:
            cmd += ["-s", setting]
        if self.args.workers > 1:
            cmd += ["--workers", str(self.args.workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("JSONSYNC_")}
        self.log = open(os.path.join(self.args.out, "server.log"), "wb")
        self.server = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def server_pids(self) -> list[int]:
        pids = [self.server.pid]
        try:
            out = subprocess.run(["pgrep", "-P", str(self.server.pid)], capture_output=True, text=True).stdout
            pids += [int(p) for p in out.split()]
        except OSError:
            pass
        return pids

    def cpu_seconds(self) -> float:
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in self.server_pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except OSError:
                pass
        return total

    def rss_kb(self) -> int:
        total = 0
        for pid in self.server_pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop_server(self):
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()

    async def call(self, method, path, body=None, user="writer"):
        headers = {"Authorization": [auth_header(user)], "Content-Type": ["application/json"]}
        r = await treq.request(method, self.base + path, headers=headers, pool=self.pool,
                               data=json.dumps(body).encode() if body is not None else None, timeout=30)
        content = await r.content()
        return r.code, (json.loads(content) if content else None)

    async def wait_ready(self):
        for _ in range(600):
            try:
                code, _ = await self.call("GET", "/__lbheartbeat__")
                if code == 200:
                    return
            except Exception:
                pass
            await sleep(0.1)
        raise SystemExit("the server did not start (see server.log)")

    async def setup(self, collections: int):
        await self.call("PUT", "/buckets/feed", {"permissions": {"read": ["system.Authenticated"]}})
        for i in range(collections):
            await self.call("PUT", f"/buckets/feed/collections/c{i}", {})

    # -- subscribers --------------------------------------------------------------
    def subscribe(self, collection, user, last_id=None, slot=-1) -> Subscriber:
        sub = Subscriber(self, collection, user, last_id, slot)
        reactor.connectTCP("127.0.0.1", self.port, Factory(sub), timeout=60)
        return sub

    def retry(self, sub, delay):
        """A subscription answered 503: open it again after C{delay} seconds (jittered)."""
        self.retries += 1

        def again():
            new = self.subscribe(sub.collection, sub.user, sub.last_id, sub.slot)
            new.start_cursor = sub.start_cursor
            new.received = sub.received
            if sub.slot >= 0:
                self.subs[sub.slot] = new

        reactor.callLater(delay * (1 + random.random()), again)

    def on_ready(self, sub):
        self.ready_count += 1

    def on_event(self, sub, obj, now):
        self.delivered += 1
        t = obj.get("t")
        if t is not None:
            self.sent.add(now - t)
        ack = self.acked.get((sub.collection, obj["last_modified"]))
        self.acked_h.add(now - ack if ack is not None else 0.0)

    def on_lost(self, sub):
        if self.reconnect and not sub.retrying and sub.slot >= 0 and self.subs[sub.slot] is sub:
            # Resume where it stopped, as an EventSource does (after its retry delay).
            self.reconnects += 1

            def again():
                new = self.subscribe(sub.collection, sub.user, sub.last_id, sub.slot)
                new.start_cursor = sub.start_cursor
                new.received = sub.received
                self.subs[sub.slot] = new

            reactor.callLater(0.5, again)

    async def open_subscribers(self, n, collections, users):
        t0 = time.time()
        step = max(1, int(self.args.connect_rate / 20))
        for i in range(n):
            # (users and collections vary independently: --users U gives U groups per collection)
            self.subs.append(self.subscribe(f"c{i % collections}", f"user{(i // collections) % users}", slot=i))
            if i % step == step - 1:
                await sleep(0.05)  # at most --connect-rate new connections per second
        for _ in range(int(self.args.connect_timeout * 10)):
            if self.ready_count >= n:
                break
            await sleep(0.1)
        self.connect_seconds = round(time.time() - t0, 1)
        return self.ready_count

    # -- writers ------------------------------------------------------------------
    async def write_for(self, seconds, rate, collections):
        seq = [0]
        inflight = []

        async def one(collection, rid):
            sent = time.time()
            try:
                code, body = await self.call("PUT", f"/buckets/feed/collections/{collection}/records/{rid}",
                                             {"data": {"t": sent}})
            except Exception:
                self.write_errors += 1
                return
            if code not in (200, 201):
                self.write_errors += 1
                return
            lm = body["data"]["last_modified"]
            self.acked[(collection, lm)] = time.time()
            self.acked_by_collection.setdefault(collection, []).append(lm)

        start = time.time()
        tick = 0.01
        while time.time() - start < seconds:
            # Writes due by now (a late tick sends what it owes: the rate holds).
            due = int(rate * (time.time() - start)) - seq[0]
            for _ in range(due):
                seq[0] += 1
                collection = f"c{seq[0] % collections}"
                inflight.append(defer.ensureDeferred(one(collection, f"w{seq[0]}")))
            await sleep(tick)
        await defer.DeferredList(inflight)
        return seq[0]


async def sleep(seconds):
    await task.deferLater(reactor, seconds, lambda: None)


def figures(bench: Bench) -> dict:
    return {
        "delivered": bench.delivered,
        "latency_from_send_ms": {"p50": bench.sent.percentile(50), "p99": bench.sent.percentile(99)},
        "latency_from_ack_ms": {"p50": bench.acked_h.percentile(50), "p99": bench.acked_h.percentile(99)},
        "write_errors": bench.write_errors,
        "refused": bench.refused,
        "retries_after_503": bench.retries,
        "ends": bench.ends[:5],
    }


async def run(args):
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    os.makedirs(args.out, exist_ok=True)
    bench = Bench(args)
    bench.start_server()
    result: dict = {"mode": args.mode, "args": {k: v for k, v in vars(args).items() if k != "func"}}
    try:
        await bench.wait_ready()
        await sleep(1)
        if args.mode == "catchup":
            await bench.setup(1)
            done = 0
            per_batch = 25
            t0 = time.time()

            async def batch(start):
                requests = [{"method": "PUT", "path": f"/buckets/feed/collections/c0/records/k{start + j}",
                             "body": {"data": {"n": start + j}}} for j in range(per_batch)]
                await bench.call("POST", "/batch", {"requests": requests})

            sem = defer.DeferredSemaphore(args.seed_concurrency)
            await defer.DeferredList([sem.run(lambda s=s: defer.ensureDeferred(batch(s)))
                                      for s in range(0, args.changes, per_batch)])
            result["seeding_seconds"] = round(time.time() - t0, 1)
            rss0 = bench.rss_kb()
            peak = [rss0]
            sampler = task.LoopingCall(lambda: peak.__setitem__(0, max(peak[0], bench.rss_kb())))
            sampler.start(0.5)
            t0 = time.time()
            sub = bench.subscribe("c0", "user0", last_id=0)
            bench.subs.append(sub)
            while len(sub.received) < args.changes and not sub.ended and time.time() - t0 < args.seconds * 20:
                await sleep(0.05)
            elapsed = time.time() - t0
            sampler.stop()
            done = len(sub.received)
            result.update({
                "changes": done, "seconds": round(elapsed, 2), "changes_per_s": round(done / elapsed),
                "server_rss_kb_before": rss0, "server_rss_kb_peak": peak[0],
                "duplicates": done - len(set(sub.received)),
            })
        else:
            await bench.setup(args.collections)
            await sleep(1)
            rss0 = bench.rss_kb()
            ready = await bench.open_subscribers(args.subscribers, args.collections, args.users)
            await sleep(2)
            rss1 = bench.rss_kb()
            result["subscribers_ready"] = ready
            result["connect_seconds"] = bench.connect_seconds
            result["retries_after_503_while_connecting"] = bench.retries
            result["rss_per_idle_subscriber_kb"] = round((rss1 - rss0) / max(ready, 1), 2)
            result["server_rss_kb"] = {"before": rss0, "idle_subscribed": rss1}
            cpu0, wall0 = bench.cpu_seconds(), time.time()
            if args.mode == "resume":
                bench.reconnect = True

                async def kill_later():
                    await sleep(args.seconds / 2)
                    victims = [p for p in bench.server_pids() if p != bench.server.pid]
                    if victims:
                        os.kill(victims[0], signal.SIGKILL)
                        result["killed_pid"] = victims[0]

                killer = defer.ensureDeferred(kill_later())
            writes = await bench.write_for(args.seconds, args.writes, args.collections)
            await sleep(3)  # drain
            cpu1, wall1 = bench.cpu_seconds(), time.time()
            result["writes"] = writes
            result["writes_per_s"] = round(writes / args.seconds, 1)
            result["server_cpu_percent"] = round((cpu1 - cpu0) / (wall1 - wall0) * 100, 1)
            result.update(figures(bench))
            if args.mode == "resume":
                await killer
                gaps = dups = 0
                for sub in bench.subs:
                    expected = {lm for lm in bench.acked_by_collection.get(sub.collection, [])
                                if sub.start_cursor is not None and lm > sub.start_cursor}
                    got = sub.received
                    dups += len(got) - len(set(got))
                    gaps += len(expected - set(got))
                result["reconnected_after_kill"] = bench.reconnects
                result["gaps"] = gaps
                result["duplicates"] = dups
    finally:
        bench.reconnect = False
        for sub in bench.subs:
            if sub.transport is not None:
                sub.transport.loseConnection()
        await bench.pool.closeCachedConnections()
        bench.stop_server()
    print(json.dumps(result, indent=2))
    with open(os.path.join(args.out, f"feed-{args.mode}.json"), "w") as f:
        json.dump(result, f, indent=2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("latency", "resume", "catchup"))
    p.add_argument("--subscribers", type=int, default=50)
    p.add_argument("--collections", type=int, default=5)
    p.add_argument("--users", type=int, default=1)
    p.add_argument("--writes", type=float, default=20, help="writes per second (all collections)")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--changes", type=int, default=100_000, help="catchup: changes behind")
    p.add_argument("--seed-concurrency", type=int, default=1, help="catchup: /batch requests at once while seeding")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--port", type=int, default=18893)
    p.add_argument("--db", default="bench_feed")
    p.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--connect-timeout", type=float, default=300)
    p.add_argument("--connect-rate", type=float, default=2000, help="new subscriber connections per second")
    p.add_argument("--open-concurrency", type=int, default=None, help="server live.open_concurrency")
    p.add_argument("-s", "--setting", action="append", default=[], help="more server settings, NAME=VALUE")
    p.add_argument("--out", default=os.path.join(ROOT, ".bench", "results", "feed"))
    args = p.parse_args()
    task.react(lambda _: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
