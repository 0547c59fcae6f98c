"""
Discovery and activation of providers: the dropin `twist` finds, built-in
plugins by name, a third-party package installed from its own directory,
and the failures that must stop the server at start.
"""

import importlib
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jsonsync import config
from jsonsync.registry import configure, discover
from jsonsync.testclient import StubClient, build_app

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(os.path.dirname(HERE), "examples", "jsonsync-hello")
TWIST = os.path.join(os.path.dirname(sys.executable), "twist")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DropinTests(SynchronousTestCase):
    def test_twist_finds_the_service_maker(self):
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("jsonsync", makers)
        self.assertEqual(makers["jsonsync"].module, "jsonsync.tap")

    def test_builtin_providers_are_discovered(self):
        found = discover()
        self.assertEqual(found.problems, [])
        self.assertLessEqual({"memory", "postgresql"}, set(found.backends))
        self.assertLessEqual({"basicauth", "account"}, set(found.policies))
        self.assertLessEqual({"default_bucket", "history", "accounts", "schema", "flush"}, set(found.plugins))


def _fake_package(source: str):
    """A throwaway plugin package holding one dropin module with C{source}."""
    parent = tempfile.mkdtemp()
    name = f"fakeplugins_{os.path.basename(parent)}"
    os.mkdir(os.path.join(parent, name))
    open(os.path.join(parent, name, "__init__.py"), "w").close()
    with open(os.path.join(parent, name, "dropin_under_test.py"), "w") as f:
        f.write(textwrap.dedent(source))
    sys.path.insert(0, parent)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(parent)


class ActivationFailureTests(SynchronousTestCase):
    def test_broken_provider_refused_by_name(self):
        package = _fake_package(
            """
            from twisted.plugin import IPlugin
            from zope.interface import implementer
            from jsonsync.interfaces import IJsonSyncPlugin

            @implementer(IPlugin, IJsonSyncPlugin)
            class Broken:
                name = "broken"
                settings = {}
                # no install(): verifyObject must refuse it

            broken = Broken()
            """
        )
        discovered = discover()
        extra = discover(package)
        discovered.plugins.update(extra.plugins)
        with self.assertRaises(config.ConfigurationError) as caught:
            configure(None, {}, {"includes": "broken"}, discovered)
        self.assertIn("'broken'", str(caught.exception))
        self.assertIn("install", str(caught.exception))

    def test_same_name_twice_is_a_problem(self):
        package = _fake_package(
            """
            from jsonsync._dropin import LazyPlugin
            one = LazyPlugin("twin", "jsonsync.plugins.flush:FlushPlugin")
            two = LazyPlugin("twin", "jsonsync.plugins.flush:FlushPlugin")
            """
        )
        found = discover(package)
        self.assertTrue(any("'twin'" in p for p in found.problems))
        with self.assertRaises(config.ConfigurationError):
            configure(None, {}, {}, found)

    def test_unknown_plugin_lists_installed(self):
        with self.assertRaises(config.ConfigurationError) as caught:
            configure(None, {}, {"includes": "nope"}, discover())
        message = str(caught.exception)
        self.assertIn("'nope'", message)
        for name in ("accounts", "default_bucket", "flush", "history", "schema"):
            self.assertIn(name, message)


class CapabilityTests(TestCase):
    async def test_active_plugins_show_their_capability(self):
        app = await build_app({"includes": "flush default_bucket"})
        hello = (await StubClient(app).get("/v1/")).json
        self.assertIn("flush_endpoint", hello["capabilities"])
        self.assertIn("default_bucket", hello["capabilities"])
        self.assertNotIn("history", hello["capabilities"])

    async def test_inactive_plugin_routes_absent(self):
        app = await build_app({})
        r = await StubClient(app).post("/v1/__flush__")
        self.assertEqual(r.status, 404)


class ThirdPartyPackageTests(TestCase):
    """The worked example of docs/writing-plugins.md, installed as a user would."""

    timeout = 240

    def setUp(self):
        self.target = tempfile.mkdtemp()
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", self.target, EXAMPLE],
            check=True, capture_output=True,
        )
        self.env = dict(os.environ, PYTHONPATH=self.target)

    def start(self, *args):
        port = free_port()
        proc = subprocess.Popen(
            [TWIST, "jsonsync", "--listen", f"tcp:{port}:interface=127.0.0.1", *args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: (proc.poll() is None and proc.kill(), proc.wait(), proc.stdout.close()))
        base = f"http://127.0.0.1:{port}/v1"
        for _ in range(200):
            if proc.poll() is not None:
                self.fail(f"server exited: {proc.stdout.read().decode()}")
            try:
                urllib.request.urlopen(base + "/__lbheartbeat__", timeout=1)
                return base
            except OSError:
                time.sleep(0.05)
        self.fail("server did not start")

    def call(self, method, url, body=None, auth="alice:pw"):
        import base64
        import json

        req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None)
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def test_twist_activates_the_installed_plugin(self):
        base = self.start("-s", "includes=hello", "-s", "hello.greeting=bonjour")
        status, hello = self.call("GET", base + "/")
        self.assertIn("hello", hello["capabilities"])
        self.call("PUT", base + "/buckets/b")
        self.call("PUT", base + "/buckets/b/collections/c")
        status, _ = self.call("POST", base + "/buckets/b/collections/c/records", {"data": {"title": "ok"}})
        self.assertEqual(status, 201)
        status, body = self.call("POST", base + "/buckets/b/collections/c/records", {"data": {"title": "forbidden"}})
        self.assertEqual(status, 400)
        self.assertEqual(body["message"], "hello plugin: this title is not allowed")
        status, listing = self.call("GET", base + "/buckets/b/collections/c/records")
        self.assertEqual([r["title"] for r in listing["data"]], ["ok"])  # the rejected one rolled back
        status, counts = self.call("GET", base + "/hello/counts")
        self.assertEqual(counts, {"greeting": "bonjour", "records_created": 1})

    def test_the_example_resource_type_gets_every_verb(self):
        base = self.start("-s", "includes=hello")
        self.assertEqual(self.call("PUT", base + "/buckets/b")[0], 201)
        status, note = self.call("POST", base + "/buckets/b/notes", {"data": {"text": "buy milk"}})
        self.assertEqual(status, 201, note)
        nid = note["data"]["id"]
        status, body = self.call("POST", base + "/buckets/b/notes", {"data": {"text": ""}})
        self.assertEqual((status, body["errno"], body["details"][0]["name"]), (400, 107, "data.text"))
        status, body = self.call("PATCH", base + f"/buckets/b/notes/{nid}", {"data": {"done": True}})
        self.assertEqual((status, body["data"]["text"], body["data"]["done"]), (200, "buy milk", True))
        status, listing = self.call("GET", base + "/buckets/b/notes?done=true")
        self.assertEqual([n["id"] for n in listing["data"]], [nid])
        self.assertEqual(self.call("GET", base + "/buckets/missing/notes")[0], 403)
        status, body = self.call("GET", base + f"/buckets/b/notes/{nid}", auth="bob:pw")
        self.assertEqual(status, 403)  # the bucket is alice's
        status, tomb = self.call("DELETE", base + f"/buckets/b/notes/{nid}")
        self.assertEqual((status, tomb["data"]["deleted"]), (200, True))
        status, body = self.call("GET", base + f"/buckets/b/notes/{nid}")
        self.assertEqual(status, 404)

    def test_not_activated_unless_included(self):
        base = self.start()
        status, hello = self.call("GET", base + "/")
        self.assertNotIn("hello", hello["capabilities"])
        status, _ = self.call("GET", base + "/hello/counts")
        self.assertEqual(status, 404)
