"""
The live feed across real `twist jsonsync` processes on one PostgreSQL
database: a write on one process reaches a subscriber of the other
(LISTEN/NOTIFY); a subscriber of a process killed with SIGKILL resumes on
the other with its last event id, with no gap and no duplicate; and
`jsonsync purge-deleted` moves the sync horizon so that both servers refuse
an older `_since` (plain list and feed) while newer cursors work as before.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from jsonsync import jsonutil
from tests.pg import SKIP, scratch_url
from tests.test_live import SSEClient, sleep
from tests.test_postgresql_processes import AUTH, ServerProcesses

JSONSYNC = os.path.join(os.path.dirname(sys.executable), "jsonsync")
RECORDS = "/buckets/b/collections/c/records"


class LiveAcrossProcessesTests(TestCase):
    skip = SKIP
    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.url = await scratch_url(self)
        self.servers = ServerProcesses(
            self, self.url, "includes=live", "live.heartbeat_seconds=1", "live.poll_seconds=60",
            "sync_horizon_refresh_seconds=1",
        )
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.started = [self.servers.start(), self.servers.start()]
        for proc, base in self.started:
            await self.servers.wait_ready(base, self.pool, proc)
        self.bases = [base for _, base in self.started]
        await self.call("PUT", self.bases[0] + "/buckets/b")
        await self.call("PUT", self.bases[0] + "/buckets/b/collections/c")

    async def call(self, method, url, body=None):
        data = jsonutil.dumps(body) if body is not None else None
        r = await treq.request(method, url, headers=AUTH, data=data, pool=self.pool, timeout=30)
        content = await r.content()
        return r.code, (jsonutil.loads(content) if content else None)

    async def write(self, base, rid):
        code, body = await self.call("PUT", f"{base}{RECORDS}/{rid}", {"data": {"rid": rid}})
        self.assertIn(code, (200, 201), body)
        return body["data"]

    async def open(self, base, last_id=None, query=""):
        headers = Headers({"Accept": ["text/event-stream"], "Authorization": AUTH[b"Authorization"]})
        if last_id is not None:
            headers.addRawHeader("Last-Event-ID", str(last_id))
        response = await Agent(reactor, pool=self.pool).request(b"GET", (base + RECORDS + query).encode(), headers)
        client = SSEClient()
        client.code = response.code  # type: ignore[attr-defined]
        if response.code != 200:
            client.body = jsonutil.loads(await treq.content(response))  # type: ignore[attr-defined]
            return client
        response.deliverBody(client)

        async def close():
            if not client.closed.called:
                client.close()
            await client.closed

        self.addCleanup(close)
        return client

    async def until(self, check, timeout=15.0):
        for _ in range(int(timeout / 0.02)):
            if check():
                return
            await sleep(0.02)
        self.fail("condition not met in time")

    async def test_a_write_on_one_process_reaches_the_other(self):
        client = await self.open(self.bases[1])
        await self.until(lambda: any(e["event"] == "ready" for e in client.events))
        written = [await self.write(self.bases[0], f"r{i}") for i in range(5)]
        await self.until(lambda: len(client.records()) == 5, timeout=5)
        self.assertEqual([e["data"] for e in client.records()], written)

    async def test_resume_on_the_other_process_after_sigkill(self):
        client = await self.open(self.bases[0])
        await self.until(lambda: any(e["event"] == "ready" for e in client.events))
        written = [await self.write(self.bases[1], f"a{i}") for i in range(10)]
        await self.until(lambda: len(client.records()) == 10)
        self.started[0][0].send_signal(signal.SIGKILL)
        await client.closed
        written += [await self.write(self.bases[1], f"b{i}") for i in range(10)]
        again = await self.open(self.bases[1], last_id=client.records()[-1]["id"])
        await self.until(lambda: len(again.records()) == 10)
        await sleep(0.3)
        got = [e["data"] for e in client.records() + again.records()]
        self.assertEqual(got, written)

    async def test_purge_deleted_moves_the_sync_horizon(self):
        gone = await self.write(self.bases[0], "gone")
        code, tombstone = await self.call("DELETE", f"{self.bases[0]}{RECORDS}/gone")
        self.assertEqual(code, 200)
        before = gone["last_modified"]
        tomorrow = (datetime.date.today() + datetime.timedelta(days=1)).isoformat()
        done = await deferToThread(
            subprocess.run,
            [JSONSYNC, "-s", "storage_backend=postgresql", "-s", "permission_backend=postgresql",
             "-s", f"storage_url={self.url}", "-s", "sync_horizon_refresh_seconds=1",
             "purge-deleted", "--before", tomorrow],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("removed 1 tombstone", done.stdout)
        for base in self.bases:
            code, body = await self.call("GET", f"{base}{RECORDS}?_since={before}")
            self.assertEqual(code, 410, body)
            self.assertEqual(body["errno"], 107)
            refused = await self.open(base, last_id=before)
            self.assertEqual(refused.code, 410)  # type: ignore[attr-defined]
            code, body = await self.call("GET", f"{base}{RECORDS}?_since={tombstone['data']['last_modified']}")
            self.assertEqual((code, body), (200, {"data": []}))
