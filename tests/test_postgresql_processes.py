"""
Several real `twist jsonsync` processes on one PostgreSQL database, driven
over HTTP: concurrent writers never fail and a `_since` reader never misses
or repeats a change; acknowledged writes survive SIGKILL; the server rides
out a database outage (503 + Retry-After, heartbeat false) and recovers by
itself.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time

import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.pg import SKIP, scratch_url
from tests.test_postgresql_recovery import Proxy

TWIST = os.path.join(os.path.dirname(sys.executable), "twist")
AUTH = {b"Authorization": [b"Basic " + base64.b64encode(b"writer:pw")], b"Content-Type": [b"application/json"]}
RECORDS = "/buckets/b/collections/c/records"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def sleep(seconds):
    await deferLater(reactor, seconds, lambda: None)


class ServerProcesses:
    """Starts `twist jsonsync` processes on a database URL; stops them in cleanup."""

    def __init__(self, test: TestCase, url: str, *settings: str):
        self.test = test
        self.url = url
        self.settings = settings
        self.procs: list[subprocess.Popen] = []
        test.addCleanup(self.stop_all)

    def start(self, port: int | None = None) -> tuple[subprocess.Popen, str]:
        port = port or free_port()
        args = [
            TWIST, "jsonsync", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "-s", "storage_backend=postgresql", "-s", "permission_backend=postgresql",
            "-s", f"storage_url={self.url}", "-s", "storage_pool_size=4", "-s", "access_log=false",
            "-s", "retry_after_seconds=7",
        ]
        for setting in self.settings:
            args += ["-s", setting]
        log = open(os.devnull, "wb")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc, f"http://127.0.0.1:{port}/v1"

    async def wait_ready(self, base: str, pool, proc):
        for _ in range(300):
            if proc.poll() is not None:
                self.test.fail(f"server exited with {proc.returncode}")
            try:
                r = await treq.get(base + "/__lbheartbeat__", pool=pool, timeout=2)
                await r.content()
                if r.code == 200:
                    return
            except Exception:
                pass
            await sleep(0.05)
        self.test.fail("server did not start")

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _Client:
    def __init__(self, test: TestCase, persistent=True):
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool.maxPersistentPerHost = 64
        test.addCleanup(self.pool.closeCachedConnections)

    async def call(self, method, url, body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        r = await treq.request(method, url, headers=AUTH, data=data, pool=self.pool, timeout=timeout)
        content = await r.content()
        return r, (json.loads(content) if content else None)


class ConcurrentWritersTests(TestCase):
    skip = SKIP
    timeout = 180

    async def test_two_processes_many_writers_one_reader(self):
        url = await scratch_url(self)
        servers = ServerProcesses(self, url)
        client = _Client(self)
        started = [servers.start(), servers.start()]
        for proc, base in started:
            await servers.wait_ready(base, client.pool, proc)
        bases = [base for _, base in started]
        await client.call("PUT", bases[0] + "/buckets/b")
        await client.call("PUT", bases[1] + "/buckets/b/collections/c")

        writers, seconds = 32, 6.0
        acked: dict[str, int] = {}
        failures: list = []
        deadline = time.monotonic() + seconds

        async def writer(n):
            base = bases[n % 2]
            i = 0
            while time.monotonic() < deadline:
                i += 1
                r, body = await client.call("POST", base + RECORDS, {"data": {"w": n, "i": i}})
                if r.code != 201:
                    failures.append((r.code, body))
                    continue
                acked[body["data"]["id"]] = body["data"]["last_modified"]

        seen: dict[str, list[int]] = {}
        stamps: list[int] = []
        cursor = {"etag": None}
        polls = {"n": 0}

        async def sync_once(base):
            url = base + RECORDS + (f"?_since={cursor['etag']}" if cursor["etag"] else "")
            first = True
            while url:
                r, body = await client.call("GET", url)
                self.assertEqual(r.code, 200, body)
                if first:
                    etag = r.headers.getRawHeaders("ETag")[0].strip('"')
                    first = False
                for rec in body["data"]:
                    seen.setdefault(rec["id"], []).append(rec["last_modified"])
                    stamps.append(rec["last_modified"])
                    if cursor["etag"] is not None:
                        self.assertGreater(rec["last_modified"], int(cursor["etag"]))
                next_page = r.headers.getRawHeaders("Next-Page")
                url = next_page[0] if next_page else None
            cursor["etag"] = etag
            polls["n"] += 1

        async def reader():
            n = 0
            while time.monotonic() < deadline:
                n += 1
                await sync_once(bases[n % 2])
                await sleep(0.01)

        tasks = [ensureDeferred(writer(n)) for n in range(writers)] + [ensureDeferred(reader())]
        results = await DeferredList(tasks, consumeErrors=True)
        for ok, value in results:
            if not ok:
                value.raiseException()
        await sync_once(bases[0])  # a last sync after every writer stopped

        duplicates = {rid: ts for rid, ts in seen.items() if len(ts) > 1}
        missed = set(acked) - set(seen)
        repeated_stamps = len(stamps) - len(set(stamps))
        report = (
            f"{writers} writers on 2 processes for {seconds}s: {len(acked)} acknowledged, "
            f"{len(failures)} failed, reader polls {polls['n']}, missed {len(missed)}, "
            f"seen twice {len(duplicates)}, repeated timestamps {repeated_stamps}"
        )
        print(report)
        self.assertEqual(failures, [], report)
        self.assertEqual(missed, set(), report)
        self.assertEqual(duplicates, {}, report)
        self.assertEqual(repeated_stamps, 0, report)
        self.assertGreater(len(acked), 100, report)
        for rid, ts in acked.items():
            self.assertEqual(seen[rid], [ts])


class DurabilityTests(TestCase):
    skip = SKIP
    timeout = 120

    async def test_acknowledged_writes_survive_sigkill(self):
        url = await scratch_url(self)
        servers = ServerProcesses(self, url)
        client = _Client(self, persistent=False)
        proc, base = servers.start()
        await servers.wait_ready(base, client.pool, proc)
        await client.call("PUT", base + "/buckets/b")
        await client.call("PUT", base + "/buckets/b/collections/c")

        acked: dict[str, int] = {}
        state = {"killed": False}

        async def writer(n):
            i = 0
            while not state["killed"]:
                i += 1
                try:
                    r, body = await client.call("PUT", f"{base}{RECORDS}/w{n}-{i}", {"data": {"n": n}}, timeout=5)
                except Exception:
                    return  # the connection died with the server
                if r.code == 201:
                    acked[body["data"]["id"]] = body["data"]["last_modified"]

        tasks = [ensureDeferred(writer(n)) for n in range(8)]
        await sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state["killed"] = True
        await DeferredList(tasks, consumeErrors=True)
        self.assertGreater(len(acked), 20)

        proc, base2 = servers.start()
        await servers.wait_ready(base2, client.pool, proc)
        stored = {}
        next_url = base2 + RECORDS + "?_limit=1000"
        while next_url:
            r, body = await client.call("GET", next_url)
            self.assertEqual(r.code, 200, body)
            stored.update({rec["id"]: rec["last_modified"] for rec in body["data"]})
            page = r.headers.getRawHeaders("Next-Page")
            next_url = page[0] if page else None
        lost = {rid for rid in acked if stored.get(rid) != acked[rid]}
        print(f"SIGKILL during writes: {len(acked)} acknowledged, {len(lost)} lost")
        self.assertEqual(lost, set())


class OutageTests(TestCase):
    skip = SKIP
    timeout = 120

    async def test_database_outage_over_http(self):
        url = await scratch_url(self)
        proxy = Proxy(self, url)
        proxy.start()
        servers = ServerProcesses(self, proxy.url())
        client = _Client(self, persistent=False)
        proc, base = servers.start()
        await servers.wait_ready(base, client.pool, proc)
        r, _ = await client.call("PUT", base + "/buckets/b")
        self.assertEqual(r.code, 201)

        await proxy.cut()
        started = time.monotonic()
        r, body = await client.call("PUT", base + "/buckets/b/collections/c")
        self.assertEqual(r.code, 503, body)
        self.assertEqual(body["errno"], 201)
        self.assertEqual(r.headers.getRawHeaders("Retry-After"), ["7"])
        r, body = await client.call("GET", base + "/buckets/b")
        self.assertEqual(r.code, 503, body)
        r, body = await client.call("GET", base + "/__heartbeat__")
        self.assertEqual(r.code, 503)
        self.assertIs(body["storage"], False)
        r, body = await client.call("GET", base + "/__lbheartbeat__")
        self.assertEqual(r.code, 200)
        down_for = time.monotonic() - started

        proxy.start()
        back = time.monotonic()
        while True:
            r, body = await client.call("PUT", base + "/buckets/b/collections/c")
            if r.code == 201:
                break
            self.assertEqual(r.code, 503, body)
            self.assertLess(time.monotonic() - back, 15, "did not recover")
            await sleep(0.05)
        recovered_in = time.monotonic() - back
        r, body = await client.call("GET", base + "/__heartbeat__")
        self.assertEqual(r.code, 200, body)
        r, body = await client.call("GET", base + "/buckets/b")
        self.assertEqual(body["data"]["id"], "b")  # nothing acknowledged before the outage was lost
        print(f"outage: answered 503 for {down_for:.2f}s of probing; recovered {recovered_in:.2f}s after the database returned")

    async def test_starts_while_database_is_down(self):
        url = await scratch_url(self)
        proxy = Proxy(self, url)
        proxy.reserve()
        servers = ServerProcesses(self, proxy.url())
        client = _Client(self, persistent=False)
        proc, base = servers.start()
        await servers.wait_ready(base, client.pool, proc)
        r, body = await client.call("PUT", base + "/buckets/b")
        self.assertEqual(r.code, 503, body)
        proxy.start()
        deadline = time.monotonic() + 15
        while True:
            r, body = await client.call("PUT", base + "/buckets/b")
            if r.code == 201:
                break
            self.assertLess(time.monotonic(), deadline, body)
            await sleep(0.1)
