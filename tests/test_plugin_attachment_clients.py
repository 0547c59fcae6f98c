"""
The real clients' attachment calls against a running C{twist jsonsync} with
the attachment plugin (issue 14):

 - kinto-http's own functional tests for attachments, taken from its
   source distribution (the version installed here) and run with pytest
   against this server, as kinto-http runs them against Kinto with
   kinto-attachment (its tests/config/kinto.ini: accounts, flush,
   kinto_attachment). Skipped when the source distribution cannot be had
   (C{JSONSYNC_KINTO_HTTP_SDIST} names a local copy; otherwise pip fetches
   it once into the temporary directory) or when pytest, pytest-mock or
   pytest-asyncio are missing;
 - kinto-http.js's C{addAttachment} / C{removeAttachment}, through the
   harness of tests/test_js_clients.py (skipped without node and npm).
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.test_js_clients import JS, NODE_SKIP, _Server, npm_install

NEEDED = ("pytest", "pytest_mock", "pytest_asyncio")
# kinto-http's attachment tests, by node id.
FUNCTIONAL = [
    "tests/test_functional.py::test_adding_an_attachment",
    "tests/test_functional.py::test_removing_an_attachment",
    "tests/test_functional_async.py::test_adding_an_attachment",
    "tests/test_functional_async.py::test_removing_an_attachment",
]
# A pytest plugin, loaded before kinto-http's conftest imports SERVER_URL:
# the tests then talk to this server instead of localhost:8888.
URL_PLUGIN = """\
import os
import kinto_http.constants

kinto_http.constants.SERVER_URL = os.environ["JSONSYNC_KINTO_HTTP_SERVER_URL"]
"""


def _missing_modules() -> list[str]:
    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def kinto_http_sources() -> str:
    """The unpacked source distribution of the installed kinto-http (its directory), or raise C{SkipTest}."""
    from twisted.trial.unittest import SkipTest

    version = importlib.metadata.version("kinto-http")
    cache = os.path.join(tempfile.gettempdir(), f"jsonsync-kinto-http-{version}")
    unpacked = os.path.join(cache, f"kinto_http-{version}")
    if os.path.isfile(os.path.join(unpacked, "tests", "test_functional.py")):
        return unpacked
    archive = os.environ.get("JSONSYNC_KINTO_HTTP_SDIST")
    if not archive:
        found = glob.glob(os.path.join(cache, f"kinto_http-{version}.tar.gz"))
        if not found:
            os.makedirs(cache, exist_ok=True)
            try:
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                     "-d", cache, f"kinto-http=={version}"],
                    check=True, capture_output=True, timeout=180,
                )
            except (subprocess.SubprocessError, OSError) as e:
                raise SkipTest(f"kinto-http {version}'s source distribution cannot be had: {e}") from None
            found = glob.glob(os.path.join(cache, f"kinto_http-{version}.tar.gz"))
        if not found:
            raise SkipTest(f"pip fetched no kinto_http-{version}.tar.gz")
        archive = found[0]
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")
    except (OSError, tarfile.TarError) as e:
        raise SkipTest(f"cannot unpack {archive}: {e}") from None
    if not os.path.isfile(os.path.join(unpacked, "tests", "test_functional.py")):
        raise SkipTest(f"{archive} holds no tests/test_functional.py")
    return unpacked


def attachment_server(test: TestCase) -> _Server:
    files = tempfile.mkdtemp(prefix="jsonsync-attach-clients-")
    test.addCleanup(shutil.rmtree, files, True)
    return _Server(
        test,
        "includes=default_bucket history flush accounts attachment",
        f"attachment.base_path={files}",
        "attachment.base_url=http://files.example.org/",
    )


class KintoHttpFunctionalTests(TestCase):
    timeout = 300

    async def test_kinto_http_attachment_functional_tests(self):
        missing = _missing_modules()
        if missing:
            self.skipTest(f"kinto-http's tests need {', '.join(missing)} (pip install pytest pytest-mock pytest-asyncio)")
        sources = await deferToThread(kinto_http_sources)
        server = attachment_server(self)
        plugin_dir = tempfile.mkdtemp(prefix="jsonsync-pytest-plugin-")
        self.addCleanup(shutil.rmtree, plugin_dir, True)
        with open(os.path.join(plugin_dir, "jsonsync_kinto_http_url.py"), "w") as f:
            f.write(URL_PLUGIN)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([plugin_dir, sources]),
            "JSONSYNC_KINTO_HTTP_SERVER_URL": server.base,
        }
        out = await deferToThread(
            subprocess.run,
            [sys.executable, "-m", "pytest", "-p", "jsonsync_kinto_http_url", "-p", "no:cacheprovider",
             "-q", "-o", "asyncio_mode=auto", "--rootdir", sources, *FUNCTIONAL],
            cwd=sources, env=env, capture_output=True, text=True, timeout=240,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn(f"{len(FUNCTIONAL)} passed", out.stdout)


class KintoHttpJsTests(TestCase):
    skip = NODE_SKIP
    timeout = 300

    async def test_kinto_http_js_add_and_remove_attachment(self):
        await deferToThread(npm_install)
        server = attachment_server(self)
        out = await deferToThread(
            subprocess.run, ["node", os.path.join(JS, "kinto-http-attachment.mjs"), server.base],
            capture_output=True, text=True, timeout=240, cwd=JS,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("ALL OK", out.stdout)
