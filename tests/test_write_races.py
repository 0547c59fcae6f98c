"""
Write races over real sockets (C{tests.race}): many clients PATCH, PUT and
DELETE a few hot records, with and without If-Match, against one memory
server and against two `twist jsonsync` processes on one PostgreSQL
database; nothing acknowledged may be lost, no two If-Match writes over one
version may both succeed, no deleted record may come back. Also: batches
writing two collections in opposite orders never deadlock (no 503).
"""

from __future__ import annotations

import base64
import json

import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.pg import SKIP, scratch_url
from tests.race import Race
from tests.test_postgresql_processes import ServerProcesses, free_port


class _Servers(ServerProcesses):
    def start_memory(self):
        import os
        import subprocess

        from tests.test_postgresql_processes import TWIST

        port = free_port()
        args = [TWIST, "jsonsync", "--listen", f"tcp:{port}:interface=127.0.0.1", "-s", "access_log=false"]
        proc = subprocess.Popen(args, stdout=open(os.devnull, "wb"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, f"http://127.0.0.1:{port}/v1"


class WriteRaceTests(TestCase):
    timeout = 240

    async def race(self, started, seconds=4.0):
        pool = HTTPConnectionPool(reactor, persistent=False)
        for proc, base in started:
            await self.servers.wait_ready(base, pool, proc)
        verdict = await Race(reactor, [base for _, base in started], records=3, clients=12, seed=7).run(seconds)
        self.assertTrue(verdict.clean(), verdict.line() + "\n" + "\n".join(verdict.problems[:20]))
        # The race really raced: writes were refused by If-Match and many acknowledged.
        self.assertGreater(verdict.conflicts_412, 0, verdict.line())
        self.assertGreater(verdict.acknowledged, 100, verdict.line())
        return verdict

    async def test_memory_server(self):
        self.servers = _Servers(self, "")
        await self.race([self.servers.start_memory()])

    async def test_two_processes_on_postgresql(self):
        if SKIP:
            raise self.skipTest(SKIP)
        self.servers = _Servers(self, await scratch_url(self))
        await self.race([self.servers.start(), self.servers.start()])


class OppositeOrderBatchTests(TestCase):
    """Batches writing two collections in opposite orders: every one commits, none meets a deadlock (503)."""

    skip = SKIP
    timeout = 120

    async def test_no_deadlock(self):
        servers = _Servers(self, await scratch_url(self))
        started = [servers.start(), servers.start()]
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 16
        self.addCleanup(pool.closeCachedConnections)
        for proc, base in started:
            await servers.wait_ready(base, pool, proc)
        auth = {b"Authorization": [b"Basic " + base64.b64encode(b"u:p")], b"Content-Type": [b"application/json"]}

        async def call(method, url, body=None):
            r = await treq.request(method, url, headers=auth, data=json.dumps(body).encode() if body else None, pool=pool)
            return r.code, json.loads(await r.content() or b"null")

        base = started[0][1]
        await call("PUT", base + "/buckets/b", {"data": {}})
        for cid in ("x", "y"):
            await call("PUT", f"{base}/buckets/b/collections/{cid}", {"data": {}})
        statuses = []

        async def batches(n, order, base):
            for i in range(n):
                requests = [
                    {"method": "PUT", "path": f"/buckets/b/collections/{cid}/records/r{k}", "body": {"data": {"i": i}}}
                    for cid in order for k in range(3)
                ]
                code, body = await call("POST", base + "/batch", {"requests": requests})
                statuses.append(code)
                if code == 200:
                    statuses.extend(r["status"] for r in body["responses"])

        await DeferredList([
            ensureDeferred(batches(15, order, started[n % 2][1]))
            for n, order in enumerate([("x", "y"), ("y", "x"), ("x", "y"), ("y", "x")])
        ], fireOnOneErrback=True)
        self.assertEqual(sorted(set(statuses)), [200, 201], statuses)
