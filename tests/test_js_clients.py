"""
The real Kinto clients against a running `twist jsonsync` configured as a
Kinto server would be for them (accounts, default bucket, history, flush,
paginate_by = 5, the permissions endpoint): kinto.js (offline-first sync, two
devices, conflicts) and kinto-http.js from npm, and kinto-http from PyPI.
"""

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.pg import SKIP as PG_SKIP
from tests.pg import scratch_url
from tests.test_postgresql_processes import TWIST, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
JS = os.path.join(HERE, "js")
CONFIG = """\
[jsonsync]
includes = default_bucket history flush accounts
multiauth.policies = account
account_create_principals = system.Everyone
account_write_principals = account:user
bucket_create_principals = system.Authenticated
paginate_by = 5
experimental_permissions_endpoint = true
account_bcrypt_rounds = 4
"""

NODE_SKIP = None if shutil.which("node") and shutil.which("npm") else "node and npm are not installed"


def npm_install():
    if not os.path.isdir(os.path.join(JS, "node_modules", "kinto")):
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=JS, check=True,
                       capture_output=True, timeout=600)


class _Server:
    def __init__(self, test: TestCase, *settings: str):
        fd, self.config = tempfile.mkstemp(suffix=".ini")
        with os.fdopen(fd, "w") as f:
            f.write(CONFIG)
        test.addCleanup(os.unlink, self.config)
        port = free_port()
        args = [TWIST, "jsonsync", "--listen", f"tcp:{port}:interface=127.0.0.1", "--config", self.config]
        for s in settings:
            args += ["-s", s]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        test.addCleanup(self.stop)
        self.base = f"http://127.0.0.1:{port}/v1"
        for _ in range(300):
            if self.proc.poll() is not None:
                test.fail("server exited")
            try:
                urllib.request.urlopen(self.base + "/__lbheartbeat__", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        test.fail("server did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class KintoJsTests(TestCase):
    skip = NODE_SKIP
    timeout = 300
    backend: tuple[str, ...] = ()

    async def settings(self):
        return self.backend

    async def test_kinto_js_sync_and_kinto_http_js(self):
        await deferToThread(npm_install)
        server = _Server(self, *(await self.settings()))
        out = await deferToThread(
            subprocess.run, ["node", os.path.join(JS, "kinto-js-sync.mjs"), server.base],
            capture_output=True, text=True, timeout=240, cwd=JS,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("ALL OK", out.stdout)

    async def test_kinto_http_python_with_accounts(self):
        from kinto_http import Client, KintoException

        server = _Server(self, *(await self.settings()))

        def scenario():
            anonymous = Client(server_url=server.base)
            anonymous.session.request("put", "/accounts/alice", payload={"data": {"password": "pw-alice"}})
            alice = Client(server_url=server.base, auth=("alice", "pw-alice"), bucket="default", collection="notes")
            info = alice.server_info()
            assert info["user"]["id"] == "account:alice", info
            assert "accounts" in info["capabilities"] and "history" in info["capabilities"]
            alice.create_collection(if_not_exists=True)
            with alice.batch() as batch:
                for i in range(12):
                    batch.create_record(data={"n": i, "even": i % 2 == 0})
            records = alice.get_records()
            assert len(records) == 12, len(records)  # followed Next-Page over pages of 5
            evens = alice.get_records(even=True)
            assert sorted(r["n"] for r in evens) == [0, 2, 4, 6, 8, 10]
            first = records[0]
            alice.patch_record(id=first["id"], data={"tag": "x"})
            assert alice.get_record(id=first["id"])["data"]["tag"] == "x"
            alice.delete_record(id=first["id"])
            # a fresh client: kinto-http caches the ETag of its last listing
            since = Client(server_url=server.base, auth=("alice", "pw-alice"), bucket="default",
                           collection="notes").get_records_timestamp()
            alice.create_record(data={"n": 99})
            changed = alice.get_records(_since=since)
            assert [r["n"] for r in changed] == [99], changed
            history = alice.get_history()
            assert any(h["action"] == "delete" for h in history)
            try:
                Client(server_url=server.base, auth=("alice", "wrong")).get_records(
                    bucket="default", collection="notes")
            except KintoException as e:
                assert e.response.status_code in (401, 403), e
            else:
                raise AssertionError("a wrong password read alice's records")
            return True

        self.assertTrue(await deferToThread(scenario))


class KintoJsTestsOnPostgreSQL(KintoJsTests):
    skip = NODE_SKIP or PG_SKIP

    async def settings(self):
        url = await scratch_url(self)
        return ("storage_backend=postgresql", "permission_backend=postgresql", f"storage_url={url}",
                "storage_pool_size=3")
