"""
The module boundaries docs/architecture.md promises, checked: imports go
downwards only, the contract suite needs no server, and every provider
declares the interface it is verified against.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from jsonsync import registry as registry_module
from jsonsync.interfaces import (
    IAuthenticationPolicyFactory,
    IJsonSyncPlugin,
    IRegistry,
    IStorageBackend,
)
from jsonsync.registry import Registry, discover
from jsonsync.testclient import build_app

ROOT = pathlib.Path(__file__).resolve().parent.parent / "jsonsync"


def jsonsync_imports(path: pathlib.Path) -> set[str]:
    """The jsonsync modules a source file imports (at any level, type-checking ones excepted)."""
    tree = ast.parse(path.read_text())
    found = set()
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jsonsync"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jsonsync"))
    return found


class ImportDirectionTests(TestCase):
    def test_errors_import_nothing_of_jsonsync(self):
        self.assertEqual(jsonsync_imports(ROOT / "errors.py"), set())

    def test_storage_knows_nothing_of_http_or_resources(self):
        above = ("jsonsync.http", "jsonsync.app", "jsonsync.channel", "jsonsync.resources",
                 "jsonsync.registry", "jsonsync.routes", "jsonsync.plugins")
        for path in sorted((ROOT / "storage").rglob("*.py")):
            bad = sorted(m for m in jsonsync_imports(path) if m.startswith(above))
            self.assertEqual(bad, [], path)

    def test_the_contract_suite_imports_interfaces_and_domain_types_only(self):
        allowed = {"jsonsync.errors", "jsonsync.interfaces", "jsonsync.query"}
        modules = {m for m in jsonsync_imports(ROOT / "testing.py") if m.count(".") == 1 or m in allowed}
        self.assertEqual({m for m in modules if m.rsplit(".", 1)[0] not in allowed and m not in allowed}, set())

    def test_the_contract_suite_needs_no_server(self):
        # In a fresh interpreter: importing it must not bring the HTTP side.
        code = (
            "import sys, jsonsync.testing\n"
            "server = [m for m in ('jsonsync.http', 'jsonsync.app', 'jsonsync.registry',"
            " 'jsonsync.channel', 'jsonsync.testclient', 'twisted.web.server') if m in sys.modules]\n"
            "print(','.join(server))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "")


class ProviderTests(TestCase):
    def test_every_installed_provider_declares_its_interface(self):
        # The object behind each lazy dropin, not the dropin's proxy.
        found = discover()
        self.assertEqual(found.problems, [])
        kinds = ((found.backends, IStorageBackend), (found.policies, IAuthenticationPolicyFactory),
                 (found.plugins, IJsonSyncPlugin))
        for providers, interface in kinds:
            for name, provider in providers.items():
                real = registry_module._provider(provider)
                self.assertTrue(interface.providedBy(real), f"{name}: {type(real).__name__} does not declare it")
                verifyObject(interface, real)

    async def test_the_registry_provides_the_plugin_api(self):
        app = await build_app({"includes": "default_bucket history accounts schema",
                               "multiauth.policies": "account basicauth", "account_bcrypt_rounds": "4"})
        self.addCleanup(app.registry.close)
        self.assertIsInstance(app.registry, Registry)
        verifyObject(IRegistry, app.registry)
