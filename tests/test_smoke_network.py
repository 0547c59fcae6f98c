"""
Real-network smoke tests: start C{twist jsonsync} in a subprocess as a user
would, then drive it with treq and with the real kinto-http client.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

VENV_BIN = os.path.dirname(sys.executable)
TWIST = os.path.join(VENV_BIN, "twist")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JSONSYNC_")}
    return env


class _ServerTest(unittest.TestCase):
    timeout = 120

    async def start_server(self, args=(), ini: str | None = None):
        port = free_port()
        cmd = [TWIST, "jsonsync", "--listen", f"tcp:{port}:interface=127.0.0.1", *args]
        if ini is not None:
            fd, path = tempfile.mkstemp(suffix=".ini")
            with os.fdopen(fd, "w") as f:
                f.write(ini)
            self.addCleanup(os.unlink, path)
            cmd += ["--config", path]
        log = tempfile.TemporaryFile()
        self.addCleanup(log.close)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
                                cwd=tempfile.gettempdir())
        self.addCleanup(self.stop, proc)
        self.proc, self.log = proc, log
        self.base = f"http://127.0.0.1:{port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                log.seek(0)
                self.fail(f"server exited with {proc.returncode}: {log.read().decode(errors='replace')}")
            try:
                r = await self.http.get(self.base + "/v1/__heartbeat__")
                await r.content()
                if r.code == 200:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                self.fail("server did not answer /v1/__heartbeat__ in time")
            await deferLater(reactor, 0.2, lambda: None)

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    async def request(self, method, path, json_body=None, auth=("alice", "secret"), headers=None):
        kwargs = {"headers": headers or {}, "allow_redirects": False}
        if auth:
            kwargs["auth"] = auth
        if json_body is not None:
            kwargs["json"] = json_body
        r = await self.http.request(method, self.base + path, **kwargs)
        body = await r.content()
        return r, body

    def kinto(self, user="alice", **kw):
        import kinto_http

        return kinto_http.Client(server_url=self.base + "/v1", auth=(user, "secret"), retry=0, timeout=20, **kw)


class TreqSmokeTests(_ServerTest):
    async def test_treq_round_trip(self):
        await self.start_server(["--setting", "paginate_by=5"])
        r, body = await self.request("GET", "/v1/", auth=None)
        self.assertEqual(r.code, 200)
        hello = treq_json(body)
        self.assertEqual(hello["http_api_version"], "1.23")
        self.assertEqual(hello["url"], self.base + "/v1/")

        r, body = await self.request("PUT", "/v1/buckets/b", {"data": {"x": 1}})
        self.assertEqual(r.code, 201, body)
        r, body = await self.request("PUT", "/v1/buckets/b/collections/c")
        self.assertEqual(r.code, 201, body)
        for i in range(7):
            r, body = await self.request("POST", "/v1/buckets/b/collections/c/records", {"data": {"n": i}})
            self.assertEqual(r.code, 201, body)
        r, body = await self.request("GET", "/v1/buckets/b/collections/c/records?_sort=n")
        self.assertEqual(r.code, 200)
        self.assertEqual([o["n"] for o in treq_json(body)["data"]], [0, 1, 2, 3, 4])
        next_page = r.headers.getRawHeaders("Next-Page")[0]
        self.assertTrue(next_page.startswith(self.base + "/v1/buckets/b/collections/c/records?"), next_page)
        self.assertIn("_limit=5", next_page)
        r = await self.http.get(next_page, auth=("alice", "secret"))
        page2 = treq_json(await r.content())
        self.assertEqual([o["n"] for o in page2["data"]], [5, 6])
        self.assertIsNone(r.headers.getRawHeaders("Next-Page"))

        r, body = await self.request("HEAD", "/v1/buckets/b/collections/c/records")
        self.assertEqual(r.headers.getRawHeaders("Total-Objects"), ["7"])
        self.assertEqual(body, b"")

        r, body = await self.request("GET", "/v1/buckets/b", auth=None)
        self.assertEqual(r.code, 401)
        self.assertEqual(r.headers.getRawHeaders("WWW-Authenticate"), ['Basic realm="Realm"'])
        self.assertEqual(treq_json(body)["errno"], 104)

        r, body = await self.request("GET", "/buckets", auth=None)
        self.assertEqual(r.code, 307)
        self.assertEqual(r.headers.getRawHeaders("Location"), [self.base + "/v1/buckets"])

        # the body size limit applies on the real network path too
        r, body = await self.request("PUT", "/v1/buckets/b/collections/c/records/big",
                                     {"data": {"blob": "x" * 2_000_000}})
        self.assertEqual(r.code, 413, body[:200])
        self.assertEqual(treq_json(body)["errno"], 113)

    async def test_non_utf8_path_gets_json_error(self):
        await self.start_server()
        r, body = await self.request("GET", "/v1/buckets/b/collections/c/records/%ff")
        self.assertLess(r.code, 500)
        self.assertEqual(r.headers.getRawHeaders("Content-Type"), ["application/json"], body)
        self.assertEqual(treq_json(body)["code"], r.code)

    async def test_config_file_and_cli(self):
        await self.start_server(["--setting", "batch_max_requests=7"],
                                ini="[jsonsync]\npaginate_by = 5\nkinto.readonly = false\n")
        r, body = await self.request("GET", "/v1/", auth=None)
        self.assertEqual(treq_json(body)["settings"]["batch_max_requests"], 7)
        r, body = await self.request("POST", "/v1/batch", {"requests": [{"path": "/"}] * 8})
        self.assertEqual(r.code, 400)
        self.assertIn("limited to 7", treq_json(body)["message"])
        await self.request("PUT", "/v1/buckets/b")
        await self.request("PUT", "/v1/buckets/b/collections/c")
        for i in range(6):
            await self.request("PUT", f"/v1/buckets/b/collections/c/records/r{i}")
        r, body = await self.request("GET", "/v1/buckets/b/collections/c/records")
        self.assertEqual(len(treq_json(body)["data"]), 5)
        self.assertTrue(r.headers.getRawHeaders("Next-Page"))


class KintoHttpSmokeTests(_ServerTest):
    async def test_kinto_http_client(self):
        await self.start_server(["--setting", "paginate_by=5"])
        client = self.kinto()

        def scenario():
            out = {}
            client.create_bucket(id="b", permissions={"read": ["system.Authenticated"]})
            client.create_collection(id="c", bucket="b")
            for i in range(12):
                client.create_record(data={"n": i, "status": "a" if i % 3 == 0 else "b"},
                                     collection="c", bucket="b")
            out["all"] = client.get_records(collection="c", bucket="b")
            out["first_page"] = client.get_records(collection="c", bucket="b", _limit=2)
            out["limited_all"] = client.get_records(collection="c", bucket="b", _limit=2, pages=float("inf"))
            out["filtered"] = client.get_records(collection="c", bucket="b", status="a", _sort="n")
            out["in"] = client.get_records(collection="c", bucket="b", in_n=["1", "2"], _sort="-n")
            out["timestamp"] = client.get_records_timestamp(collection="c", bucket="b")
            rec = out["filtered"][0]
            out["patched"] = client.patch_record(id=rec["id"], data={"extra": True},
                                                 collection="c", bucket="b", safe=True,
                                                 if_match=rec["last_modified"])
            out["got"] = client.get_record(id=rec["id"], collection="c", bucket="b")
            with client.batch() as batch:
                batch.create_collection(id="c2", bucket="b")
                batch.create_record(data={"id": "x1", "k": 1}, collection="c2", bucket="b")
                batch.create_record(data={"id": "x2", "k": 2}, collection="c2", bucket="b")
                batch.update_record(data={"id": "x1", "k": 10}, collection="c2", bucket="b")
            out["batch_results"] = batch.results()
            out["c2"] = client.get_records(collection="c2", bucket="b", _sort="id")
            out["deleted"] = client.delete_record(id=rec["id"], collection="c", bucket="b")
            out["after_delete"] = client.get_records(collection="c", bucket="b")
            out["deleted_many"] = client.delete_records(collection="c2", bucket="b")
            out["buckets"] = client.get_buckets()
            out["server_info"] = client.server_info()
            bob = self.kinto("bob")
            out["bob_reads"] = bob.get_records(collection="c", bucket="b", status="b")
            out["bob_bucket"] = bob.get_bucket(id="b")
            return out

        out = await deferToThread(scenario)
        self.assertEqual(len(out["all"]), 12)  # followed Next-Page through paginate_by=5
        self.assertEqual(len({r["id"] for r in out["all"]}), 12)
        self.assertEqual(len(out["first_page"]), 2)
        self.assertEqual(len(out["limited_all"]), 12)
        self.assertEqual([r["n"] for r in out["filtered"]], [0, 3, 6, 9])
        self.assertEqual([r["n"] for r in out["in"]], [2, 1])
        self.assertTrue(out["timestamp"].isdigit())
        self.assertIs(out["patched"]["data"]["extra"], True)
        self.assertIs(out["got"]["data"]["extra"], True)
        self.assertEqual(len(out["batch_results"]), 4)
        self.assertEqual([r["id"] for r in out["c2"]], ["x1", "x2"])
        self.assertEqual([r["k"] for r in out["c2"]], [10, 2])
        self.assertTrue(out["deleted"]["deleted"])
        self.assertEqual(len(out["after_delete"]), 11)
        self.assertEqual(sorted(r["id"] for r in out["deleted_many"]), ["x1", "x2"])
        self.assertEqual([b["id"] for b in out["buckets"]], ["b"])
        self.assertEqual(out["server_info"]["http_api_version"], "1.23")
        self.assertEqual(len(out["bob_reads"]), 8)  # n not multiple of 3
        self.assertEqual(out["bob_bucket"]["permissions"], {})

    async def test_kinto_http_errors_and_safe_writes(self):
        await self.start_server()
        import kinto_http

        client = self.kinto()

        def scenario():
            out = {}
            client.create_bucket(id="b")
            client.create_collection(id="c", bucket="b")
            rec = client.create_record(data={"id": "r", "v": 1}, collection="c", bucket="b")["data"]
            client.update_record(data={"id": "r", "v": 2}, collection="c", bucket="b")
            try:
                client.update_record(data={"id": "r", "v": 3, "last_modified": rec["last_modified"]},
                                     collection="c", bucket="b", safe=True)
                out["stale"] = None
            except kinto_http.KintoException as e:
                out["stale"] = e.response.status_code
            try:
                client.create_record(data={"id": "r"}, collection="c", bucket="b", safe=True)
                out["exists"] = None
            except kinto_http.KintoException as e:
                out["exists"] = e.response.status_code
            try:
                self.kinto("bob").get_collection(id="c", bucket="b")
                out["forbidden"] = None
            except kinto_http.KintoException as e:
                out["forbidden"] = e.response.status_code
            try:
                client.get_record(id="nope", collection="c", bucket="b")
                out["missing"] = None
            except kinto_http.KintoException as e:
                out["missing"] = e.response.status_code
            out["final"] = client.get_record(id="r", collection="c", bucket="b")["data"]["v"]
            return out

        out = await deferToThread(scenario)
        self.assertEqual(out["stale"], 412)
        self.assertEqual(out["exists"], 412)
        self.assertEqual(out["forbidden"], 403)
        self.assertEqual(out["missing"], 404)
        self.assertEqual(out["final"], 2)


class StartupErrorTests(unittest.TestCase):
    timeout = 120

    def run_twist(self, *args):
        cmd = [TWIST, "jsonsync", "--listen", f"tcp:{free_port()}:interface=127.0.0.1", *args]
        return deferToThread(subprocess.run, cmd, capture_output=True, text=True, timeout=60,
                             env=clean_env(), cwd=tempfile.gettempdir())

    async def test_all_problems_in_one_message(self):
        done = await self.run_twist("--setting", "no_such_setting=1",
                                    "--setting", "includes=no_such_plugin",
                                    "--setting", "paginate_by=abc")
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0, output)
        self.assertIn("no_such_setting", output)
        self.assertIn("no_such_plugin", output)
        self.assertIn("paginate_by", output)
        self.assertIn("abc", output)
        self.assertNotIn("Traceback", output)
        # one message, listing every problem
        self.assertEqual(output.count("cannot start"), 1, output)

    async def test_each_problem_alone_fails(self):
        for args in (("--setting", "no_such_setting=1"), ("--setting", "includes=no_such_plugin"),
                     ("--setting", "batch_max_requests=many")):
            done = await self.run_twist(*args)
            output = done.stdout + done.stderr
            self.assertNotEqual(done.returncode, 0, (args, output))
            self.assertIn(args[1].split("=")[1] if "includes" in args[1] or "many" in args[1]
                          else "no_such_setting", output)
            self.assertNotIn("Traceback", output)

    async def test_problems_from_config_file(self):
        fd, path = tempfile.mkstemp(suffix=".ini")
        with os.fdopen(fd, "w") as f:
            f.write("[jsonsync]\nbogus_option = 1\nstorage_max_fetch_size = lots\n")
        self.addCleanup(os.unlink, path)
        done = await self.run_twist("--config", path)
        output = done.stdout + done.stderr
        self.assertNotEqual(done.returncode, 0, output)
        self.assertIn("bogus_option", output)
        self.assertIn("storage_max_fetch_size", output)
        self.assertNotIn("Traceback", output)


def treq_json(body: bytes):
    import json

    return json.loads(body)


__all__ = ["treq"]
