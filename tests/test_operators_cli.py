"""
Operators (issue #15): failed starts of a real C{twist jsonsync} end the
process with a non-zero status and one clear line; the C{jsonsync} command
(init, check, migrate, create-user, purge-deleted, version) run as a user
would; settings help and shared environments.
"""

from __future__ import annotations

import configparser
import os
import socket
import subprocess
import sys
import tempfile

import orjson
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from jsonsync.registry import configure, discover
from tests import pg
from tests.test_smoke_network import TWIST, VENV_BIN, _ServerTest, clean_env

JSONSYNC = os.path.join(VENV_BIN, "jsonsync")
PG_URL = pg.URL
# A process still running after this long has not exited on its failure:
# the test fails instead of hanging (no speed is measured here).
PATIENCE = 60


def run(cmd, env=None, input=None):
    """Run a command to its end in a thread: (status, stdout + stderr)."""

    def go():
        try:
            done = subprocess.run(
                cmd, capture_output=True, env=env or clean_env(), timeout=PATIENCE,
                cwd=tempfile.gettempdir(), input=input,
            )
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"") + (e.stderr or b"")
            return None, out.decode(errors="replace")
        return done.returncode, (done.stdout + done.stderr).decode(errors="replace")

    return deferToThread(go)


def busy_port(test) -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    test.addCleanup(s.close)
    return s.getsockname()[1]


def write_ini(test, text: str) -> str:
    fd, path = tempfile.mkstemp(suffix=".ini")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    test.addCleanup(os.unlink, path)
    return path


def need_postgresql(test):
    # Like every PostgreSQL test: the test database by default, skipped only
    # where it does not answer (never under CI).
    pg.require(test)


PG_SETTINGS = ["-s", "storage_backend=postgresql", "-s", "permission_backend=postgresql"]


class FailedStartTests(unittest.TestCase):
    timeout = 3 * PATIENCE

    def assertFailedStart(self, status, output, *expected):
        self.assertIsNotNone(status, f"still running after {PATIENCE}s:\n{output}")
        self.assertNotEqual(status, 0, output)
        self.assertNotIn("Traceback", output)
        for text in expected:
            self.assertIn(text, output)

    async def test_port_in_use(self):
        port = busy_port(self)
        status, out = await run([TWIST, "jsonsync", "--listen", f"tcp:{port}:interface=127.0.0.1"])
        self.assertFailedStart(status, out, "jsonsync could not start", "Address already in use")
        self.assertEqual(status, 78)
        # Point 5: the empty secret is reported at start.
        self.assertIn("userid_hmac_secret is empty", out)

    async def test_port_in_use_with_workers(self):
        need_postgresql(self)
        port = busy_port(self)
        status, out = await run([
            TWIST, "jsonsync", "--workers", "2", "--listen", f"tcp:{port}:interface=127.0.0.1",
            *PG_SETTINGS, "-s", f"storage_url={PG_URL}",
        ])
        self.assertFailedStart(status, out, "jsonsync could not start", "Address already in use")

    async def test_storage_url_scheme_typo(self):
        status, out = await run([
            TWIST, "jsonsync", "--listen", "tcp:0:interface=127.0.0.1", *PG_SETTINGS,
            "-s", "storage_url=postgresqll://postgres@127.0.0.1:5432/x",
        ])
        self.assertFailedStart(status, out, "jsonsync could not start", "not a PostgreSQL URL")

    async def test_accounts_without_account_policy(self):
        status, out = await run([
            TWIST, "jsonsync", "--listen", "tcp:0:interface=127.0.0.1", "-s", "includes=accounts",
        ])
        self.assertFailedStart(status, out, "'account' policy is not in multiauth.policies")

    async def test_bad_setting(self):
        status, out = await run([
            TWIST, "jsonsync", "--listen", "tcp:0:interface=127.0.0.1", "-s", "paginate_by=many",
        ])
        self.assertFailedStart(status, out, "paginate_by")


class WorkerStartFailureTests(unittest.SynchronousTestCase):
    """A worker that could not start stops the server instead of being restarted forever."""

    def make(self):
        from twisted.internet.task import Clock

        from jsonsync.service import JsonSyncService, Workers, _WorkerProtocol

        clock = Clock()
        workers = Workers(JsonSyncService({}, None, "tcp:1", reactor=clock), 2, [], reactor=clock)
        calls = []
        workers.on_start_failure = calls.append
        return workers, _WorkerProtocol(workers, 1), clock, calls

    def test_worker_start_failure_stops_server(self):
        from jsonsync.service import START_FAILED

        workers, proto, clock, calls = self.make()
        workers.ended(proto, START_FAILED)
        self.assertEqual(calls, ["worker 1 could not start"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_worker_crash_is_restarted(self):
        workers, proto, clock, calls = self.make()
        workers.ended(proto, 1)
        self.assertEqual(calls, [])
        self.assertEqual(len(clock.getDelayedCalls()), 1)


class EnvironmentTests(unittest.TestCase):
    timeout = 2 * PATIENCE

    def test_unrelated_variable_warns(self):
        settings, _ = configure(None, {"JSONSYNC_UNRELATED_TOOL": "1"}, {}, discover())
        self.assertIn("JSONSYNC_UNRELATED_TOOL", " ".join(settings.warnings))

    async def test_unrelated_variable_does_not_stop_check(self):
        env = {**clean_env(), "JSONSYNC_UNRELATED_TOOL": "1"}
        status, out = await run([JSONSYNC, "check"], env=env)
        self.assertEqual(status, 0, out)
        self.assertIn("ignoring environment variable JSONSYNC_UNRELATED_TOOL", out)
        self.assertIn("configuration OK", out)

    async def test_unknown_setting_on_command_line_still_stops(self):
        status, out = await run([JSONSYNC, "-s", "not_a_setting=1", "check"])
        self.assertEqual(status, 1, out)
        self.assertIn("not_a_setting", out)

    async def test_help_settings_lists_plugin_settings(self):
        status, out = await run([TWIST, "jsonsync", "--help-settings"])
        self.assertEqual(status, 0, out)
        for name in ("storage_url", "account_bcrypt_rounds", "default_bucket_hmac_secret",
                     "history.auto_trim_threshold", "paginate_by"):
            self.assertIn(name, out)


class CommandTests(unittest.TestCase):
    timeout = 4 * PATIENCE

    async def test_version(self):
        from jsonsync import __version__

        status, out = await run([JSONSYNC, "version"])
        self.assertEqual((status, out.strip()), (0, __version__))

    async def test_tap_check_module(self):
        """The command the old comment advertised."""
        good = write_ini(self, "[jsonsync]\npaginate_by = 10\n")
        status, out = await run([sys.executable, "-m", "jsonsync.tap", "--check", "-c", good])
        self.assertEqual(status, 0, out)
        self.assertIn("configuration OK", out)

    async def test_check_lists_every_problem(self):
        bad = write_ini(self, "[jsonsync]\npaginate_by = many\nnot_a_setting = 1\nincludes = nosuchplugin\n")
        status, out = await run([JSONSYNC, "-c", bad, "check"])
        self.assertEqual(status, 1, out)
        for text in ("paginate_by", "not_a_setting", "nosuchplugin"):
            self.assertIn(text, out)
        self.assertNotIn("Traceback", out)

    async def test_check_storage_url_typo(self):
        status, out = await run([
            JSONSYNC, *PG_SETTINGS, "-s", "storage_url=postgresqll://x@127.0.0.1/x", "check",
        ])
        self.assertEqual(status, 1, out)
        self.assertIn("not a PostgreSQL URL", out)

    async def test_init_writes_secrets_and_refuses_overwrite(self):
        folder = tempfile.mkdtemp()
        path = os.path.join(folder, "jsonsync.ini")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        status, out = await run([JSONSYNC, "init", "--backend", "memory", path])
        self.assertEqual(status, 0, out)
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path)
        first = parser["jsonsync"]["userid_hmac_secret"]
        self.assertGreaterEqual(len(first), 32)
        self.assertGreaterEqual(len(parser["jsonsync"]["default_bucket_hmac_secret"]), 32)
        self.assertEqual(os.stat(path).st_mode & 0o077, 0)
        # The file it writes is a valid configuration.
        status, out = await run([JSONSYNC, "-c", path, "check"])
        self.assertEqual(status, 0, out)
        with open(path, "rb") as f:
            before = f.read()
        status, out = await run([JSONSYNC, "init", "--backend", "memory", path])
        self.assertEqual(status, 1, out)
        self.assertIn("not overwritten", out)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)
        # Fresh secrets each time.
        other = os.path.join(folder, "other.ini")
        self.addCleanup(lambda: os.path.exists(other) and os.unlink(other))
        await run([JSONSYNC, "init", "--backend", "memory", other])
        parser.read(other)
        self.assertNotEqual(parser["jsonsync"]["userid_hmac_secret"], first)

    async def test_create_user_refuses_memory(self):
        status, out = await run([
            JSONSYNC, "-s", "includes=accounts", "-s", "multiauth.policies=account",
            "create-user", "admin", "--password", "x",
        ])
        self.assertEqual(status, 1, out)
        self.assertIn("memory", out)

    async def test_purge_deleted_on_memory_says_so(self):
        status, out = await run([JSONSYNC, "purge-deleted", "--older-than", "1"])
        self.assertEqual(status, 0, out)
        self.assertIn("nothing to purge", out)


ACCOUNTS_INI = """\
[jsonsync]
storage_backend = postgresql
permission_backend = postgresql
storage_url = {url}
includes = accounts
multiauth.policies = account
account_create_principals = account:admin
account_write_principals = account:admin
account_bcrypt_rounds = 4
"""


class PostgresCommandTests(_ServerTest):
    timeout = 4 * PATIENCE

    def setUp(self):
        need_postgresql(self)

    def _clear(self, *statements):
        import psycopg2

        with psycopg2.connect(PG_URL) as conn, conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
        conn.close()

    async def test_migrate_then_create_first_admin(self):
        ini = ACCOUNTS_INI.format(url=PG_URL)
        path = write_ini(self, ini)
        status, out = await run([JSONSYNC, "-c", path, "migrate"])
        self.assertEqual(status, 0, out)
        self.assertIn("schema at version", out)
        await deferToThread(
            self._clear,
            "DELETE FROM objects WHERE resource_name = 'account' AND id IN ('admin', 'bob')",
            "DELETE FROM access_control_entries WHERE object_id IN ('/accounts/admin', '/accounts/bob')",
        )
        # Only admins may create accounts: without the command there is no first admin.
        status, out = await run([JSONSYNC, "-c", path, "create-user", "bob", "--admin", "--password", "x"])
        self.assertEqual(status, 1, out)
        self.assertIn("account_write_principals", out)
        status, out = await run([JSONSYNC, "-c", path, "create-user", "admin", "--admin",
                                 "--password", "s3cret-pass"])
        self.assertEqual(status, 0, out)
        status, out = await run([JSONSYNC, "-c", path, "create-user", "admin", "--password", "y"])
        self.assertEqual(status, 1, out)
        self.assertIn("exists", out)

        await self.start_server(ini=ini)
        r, body = await self.request("GET", "/v1/", auth=("admin", "s3cret-pass"))
        self.assertEqual(r.code, 200, body)
        self.assertEqual(orjson.loads(body)["user"]["id"], "account:admin")
        # The admin can create other accounts, as the setting says.
        r, body = await self.request("PUT", "/v1/accounts/bob", {"data": {"password": "pw-of-bob"}},
                                     auth=("admin", "s3cret-pass"))
        self.assertEqual(r.code, 201, body)
        r, body = await self.request("GET", "/v1/", auth=("admin", "wrong"))
        self.assertNotIn("user", orjson.loads(body))

    async def test_purge_deleted(self):
        path = write_ini(self, f"[jsonsync]\nstorage_backend = postgresql\npermission_backend = postgresql\n"
                               f"storage_url = {PG_URL}\ntombstones_retention_days = 30\n")
        status, out = await run([JSONSYNC, "-c", path, "migrate"])
        self.assertEqual(status, 0, out)
        import time

        now = int(time.time() * 1000)
        old = now - 40 * 86400 * 1000
        await deferToThread(
            self._clear,
            "DELETE FROM objects WHERE parent_id = '/buckets/purge-test/collections/c'",
            "INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data) VALUES "
            f"('record', '/buckets/purge-test/collections/c', 'old', {old}, TRUE, '{{}}'),"
            f"('record', '/buckets/purge-test/collections/c', 'new', {now}, TRUE, '{{}}'),"
            f"('record', '/buckets/purge-test/collections/c', 'alive', {old}, FALSE, '{{}}')",
        )
        self.addCleanup(deferToThread, self._clear,
                        "DELETE FROM objects WHERE parent_id = '/buckets/purge-test/collections/c'")
        status, out = await run([JSONSYNC, "-c", path, "purge-deleted"])  # the retention setting
        self.assertEqual(status, 0, out)
        self.assertIn("removed", out)

        def remaining():
            import psycopg2

            with psycopg2.connect(PG_URL) as conn, conn.cursor() as cur:
                cur.execute("SELECT id FROM objects WHERE parent_id = '/buckets/purge-test/collections/c'"
                            " ORDER BY id")
                rows = [r[0] for r in cur.fetchall()]
            conn.close()
            return rows

        self.assertEqual(await deferToThread(remaining), ["alive", "new"])
