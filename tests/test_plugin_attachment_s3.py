"""
The attachment plugin's S3 store (L{jsonsync.plugins.attachment_s3}):
its Signature Version 4 against AWS's published example and against
signatures computed by botocore (the reference implementation) for the
requests the store makes; the store against a fake S3 served over a real
socket (which checks every signature and payload hash); the plugin and
the cleanup with that store.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import os
import time
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from jsonsync import testclient
from jsonsync.config import ConfigurationError
from jsonsync.plugins import attachment_cleanup
from jsonsync.plugins.attachment_s3 import S3Error, S3FileStore, sign
from jsonsync.testclient import build_app, with_postgresql_variants
from tests.test_operators_cli import JSONSYNC, run
from tests.test_plugin_attachment import PNG, REC, _Served

AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EMPTY = hashlib.sha256(b"").hexdigest()
WHEN = datetime.datetime(2013, 5, 24, tzinfo=datetime.timezone.utc)
NAME = "b/c/0123456789abcdef0123456789abcdef.txt"


class SigningTests(TestCase):
    memory_only = True

    def signature(self, *args, **kwargs) -> str:
        return sign(*args, **kwargs)["Authorization"].rpartition("Signature=")[2]

    def test_aws_published_example(self):
        # AWS's "GET Object" example of Signature Version 4 for S3.
        headers = {"host": "examplebucket.s3.amazonaws.com", "range": "bytes=0-9"}
        self.assertEqual(
            self.signature("GET", "/test.txt", [], headers, EMPTY, AK, SK, "us-east-1", WHEN),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        )

    def test_the_store_requests_as_botocore_signs_them(self):
        # Computed with botocore's S3SigV4Auth for the same requests and time.
        cases = [
            (("PUT", "/files/b/c/0123456789abcdef0123456789abcdef.txt", [],
              {"host": "127.0.0.1:9000", "content-type": "text/plain", "content-length": "5"},
              hashlib.sha256(b"hello").hexdigest(), AK, SK, "eu-west-3", WHEN),
             "ca0a83adf3e9a6058b9eb68f4b56b65ca464d498b202c2c7cb957b5c88dcf372"),
            (("GET", "/files/", [("list-type", "2"), ("max-keys", "1000"), ("prefix", "b/c/"),
                                 ("continuation-token", "a+b==")],
              {"host": "127.0.0.1:9000"}, EMPTY, AK, SK, "us-east-1", WHEN),
             "7f5526d211660d25af623b9699fbf138140cd16540e1fbb7afdf32ea50f905b8"),
            (("DELETE", "/my-bucket/b/c/0123456789abcdef0123456789abcdef", [],
              {"host": "s3.eu-west-3.amazonaws.com"}, EMPTY, AK, SK, "eu-west-3", WHEN),
             "9100e2f5509a54a39dbc4c78fcacc1be783a1c61bbccf88dc3a30d7c17523f00"),
        ]
        for args, expected in cases:
            self.assertEqual(self.signature(*args), expected, args[:2])

    def test_the_authorization_header(self):
        headers = sign("GET", "/x", [], {"host": "h"}, EMPTY, AK, SK, "us-east-1", WHEN)
        self.assertEqual(headers["x-amz-date"], "20130524T000000Z")
        self.assertEqual(headers["x-amz-content-sha256"], EMPTY)
        self.assertTrue(headers["Authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="
        ))


class FakeS3(resource.Resource):
    """
    One bucket (C{files}) of an S3 look-alike: PUT, HEAD, DELETE of objects
    and ListObjectsV2, each request's SigV4 signature and payload hash
    checked. C{page} bounds a listing page; C{fail} makes the next request
    answer that status.
    """

    isLeaf = True

    def __init__(self, access_key=AK, secret_key=SK, region="eu-west-3"):
        super().__init__()
        self.keys = {access_key: secret_key}
        self.region = region
        self.objects: dict[str, tuple[bytes, str, float]] = {}
        self.page = 1000
        self.fail: int | None = None
        self.seen: list[tuple[str, str]] = []

    def error(self, request, status, code):
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/xml")
        return f"<?xml version='1.0'?><Error><Code>{code}</Code></Error>".encode()

    def authorized(self, request, body: bytes) -> str | None:
        def h(name: str) -> str:
            return (request.getHeader(name.encode()) or b"").decode("latin-1")

        header = h("authorization")
        if not header.startswith("AWS4-HMAC-SHA256 "):
            return "AccessDenied"
        fields = dict(part.strip().split("=", 1) for part in header[len("AWS4-HMAC-SHA256 "):].split(","))
        access_key, day, region, service, _ = fields["Credential"].split("/")
        secret = self.keys.get(access_key)
        if secret is None:
            return "InvalidAccessKeyId"
        payload = h("x-amz-content-sha256")
        if request.method == b"PUT" and payload != hashlib.sha256(body).hexdigest():
            return "XAmzContentSHA256Mismatch"
        when = datetime.datetime.strptime(h("x-amz-date"), "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
        names = [n for n in fields["SignedHeaders"].split(";") if n not in ("x-amz-date", "x-amz-content-sha256")]
        headers = {n: h(n) for n in names}
        raw_path, _, raw_query = request.uri.decode().partition("?")
        query = parse_qsl(raw_query, keep_blank_values=True)
        expected = sign(request.method.decode(), unquote(raw_path), query, headers, payload, access_key,
                        secret, region, when, service)["Authorization"]
        if not hmac.compare_digest(expected, header) or region != self.region or day != when.strftime("%Y%m%d"):
            return "SignatureDoesNotMatch"
        return None

    def render(self, request):
        body = request.content.read()
        path = unquote(request.path.decode())
        self.seen.append((request.method.decode(), path))
        if self.fail is not None:
            status, self.fail = self.fail, None
            return self.error(request, status, "InternalError")
        refused = self.authorized(request, body)
        if refused is not None:
            return self.error(request, 403, refused)
        if not path.startswith("/files/"):
            return self.error(request, 404, "NoSuchBucket")
        key = path[len("/files/"):]
        method = request.method
        if method == b"PUT":
            self.objects[key] = (body, (request.getHeader(b"content-type") or b"").decode(), time.time())
            return b""
        if method == b"HEAD":
            if key not in self.objects:
                request.setResponseCode(404)
            return b""
        if method == b"DELETE":
            self.objects.pop(key, None)
            request.setResponseCode(204)
            return b""
        if method == b"GET" and not key:
            return self.listing(request)
        return self.error(request, 405, "MethodNotAllowed")

    def listing(self, request):
        args = dict(parse_qsl(request.uri.decode().partition("?")[2]))
        if args.get("list-type") != "2":
            return self.error(request, 400, "InvalidArgument")
        prefix = args.get("prefix", "")
        after = args.get("continuation-token", "")
        keys = sorted(k for k in self.objects if k.startswith(prefix) and k > after)
        limit = min(self.page, int(args.get("max-keys", "1000")))
        page, truncated = keys[:limit], len(keys) > limit
        items = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>"
            f"{datetime.datetime.fromtimestamp(self.objects[k][2], datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.000Z')}"
            f"</LastModified><Size>{len(self.objects[k][0])}</Size></Contents>"
            for k in page
        )
        more = f"<NextContinuationToken>{escape(page[-1])}</NextContinuationToken>" if truncated else ""
        request.setHeader(b"content-type", b"application/xml")
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>files</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{items}{more}</ListBucketResult>"
        ).encode()

    def age(self, key, seconds):
        content, ctype, stored = self.objects[key]
        self.objects[key] = (content, ctype, stored - seconds)


def serve_fake(test: TestCase, fake: FakeS3) -> str:
    site = server.Site(fake)
    site.displayTracebacks = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


class StoreTests(TestCase):
    memory_only = True

    def setUp(self):
        self.fake = FakeS3()
        self.endpoint = serve_fake(self, self.fake)
        self.store = S3FileStore(self.endpoint, "files", "eu-west-3", AK, SK)

    async def test_save_exists_delete(self):
        content = os.urandom(3 << 20)  # several blocks
        await deferToThread(self.store.save, NAME, io.BytesIO(content))
        self.assertEqual(self.fake.objects[NAME][0], content)
        self.assertEqual(self.fake.objects[NAME][1], "text/plain")
        self.assertTrue(await deferToThread(self.store.exists, NAME))
        gz = "b/c/0123456789abcdef0123456789abcdee.gz"
        await deferToThread(self.store.save, gz, io.BytesIO(b"\x1f\x8b"))
        self.assertEqual(self.fake.objects[gz][1], "application/x-gzip")
        await deferToThread(self.store.delete, NAME)
        self.assertFalse(await deferToThread(self.store.exists, NAME))
        await deferToThread(self.store.delete, NAME)  # already gone: not an error
        self.assertEqual(self.store.url(NAME), NAME)
        with self.assertRaises(ValueError):
            await deferToThread(self.store.save, "../etc/passwd", io.BytesIO(b"x"))

    async def test_listing_and_purge_page_by_page(self):
        self.fake.page = 2
        names = [f"b/{c}/{i:032x}.txt" for c in ("c", "d") for i in range(3)] + [f"other/c/{1:032x}"]
        for name in names:
            await deferToThread(self.store.save, name, io.BytesIO(name.encode()))
        listed = await deferToThread(lambda: list(self.store.stored()))
        self.assertEqual(sorted(n for n, _ in listed), sorted(names))
        self.assertEqual(
            sorted(n for n, _ in await deferToThread(lambda: list(self.store.stored("b/c/")))), sorted(names[:3])
        )
        # Purge spares what was stored after its time.
        for name in names[:2]:
            self.fake.age(name, 100)
        await deferToThread(self.store.purge, "b/c", time.time() - 50)
        self.assertEqual(sorted(self.fake.objects), sorted(names[2:]))
        await deferToThread(self.store.purge, "b", time.time() + 1)
        self.assertEqual(list(self.fake.objects), [names[-1]])

    async def test_failures_raise(self):
        wrong = S3FileStore(self.endpoint, "files", "eu-west-3", AK, "not the secret")
        with self.assertRaises(S3Error) as caught:
            await deferToThread(wrong.save, NAME, io.BytesIO(b"x"))
        self.assertIn("403 SignatureDoesNotMatch", str(caught.exception))
        self.fake.fail = 500
        with self.assertRaises(S3Error) as caught:
            await deferToThread(self.store.delete, NAME)
        self.assertIn("500 InternalError", str(caught.exception))
        self.fake.fail = 503  # a HEAD's answer has no body: the status alone
        with self.assertRaises(S3Error) as caught:
            await deferToThread(self.store.exists, NAME)
        self.assertIn("HTTP 503", str(caught.exception))
        closed = S3FileStore("http://127.0.0.1:1", "files", "eu-west-3", AK, SK, timeout=5)
        with self.assertRaises(S3Error):
            await deferToThread(closed.delete, NAME)
        self.assertEqual(self.fake.objects, {})

    async def test_virtual_hosted_addressing(self):
        # An empty bucket: the endpoint is the bucket's URL (here, the fake's /files).
        store = S3FileStore(self.endpoint + "/files", "", "eu-west-3", AK, SK)
        await deferToThread(store.save, NAME, io.BytesIO(b"v"))
        self.assertEqual(self.fake.objects[NAME][0], b"v")
        self.assertEqual([n for n, _ in await deferToThread(lambda: list(store.stored()))], [NAME])


class PluginOnS3Tests(_Served):
    async def setUp(self):
        self.fake = FakeS3()
        endpoint = serve_fake(self, self.fake)
        self.extra = {
            "attachment.s3.endpoint": endpoint, "attachment.s3.bucket": "files",
            "attachment.s3.region": "eu-west-3", "attachment.s3.access_key": AK, "attachment.s3.secret_key": SK,
        }
        await super().setUp()

    async def test_upload_replace_delete_on_s3(self):
        code, first, _ = await self.upload("r1", [("attachment", "a.png", "image/png", PNG)])
        self.assertEqual(code, 201, first)
        self.assertRegex(first["location"], r"^b/c/[0-9a-f]{32}\.png$")
        self.assertEqual(self.fake.objects[first["location"]][:2], (PNG, "image/png"))
        self.assertEqual(self.stored(), [])  # nothing on the local disk
        code, second, _ = await self.upload("r1", [("attachment", "b.txt", "text/plain", b"two")])
        self.assertEqual(code, 200, second)
        self.assertEqual(list(self.fake.objects), [second["location"]])
        await self.upload("r2", [("attachment", "c.txt", "text/plain", b"three")])
        code, _, _ = await self.call("DELETE", "/v1/buckets/b/collections/c")
        self.assertEqual(code, 200)
        self.assertEqual(self.fake.objects, {})

    async def test_a_failing_store_fails_the_upload_cleanly(self):
        self.fake.fail = 503
        code, body, _ = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"x")])
        self.assertEqual((code, body["errno"]), (500, 999))
        code, _, _ = await self.call("GET", f"{REC}/r1")
        self.assertEqual(code, 404)
        self.assertEqual(self.fake.objects, {})
        self.flushLoggedErrors(S3Error)

    async def test_cleanup_on_s3(self):
        _, kept, _ = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"kept")])
        store = S3FileStore(self.extra["attachment.s3.endpoint"], "files", "eu-west-3", AK, SK)
        orphan = f"b/c/{'e' * 32}.bin"
        young = f"b/c/{'f' * 32}.bin"
        for name in (orphan, young):
            await deferToThread(store.save, name, io.BytesIO(b"orphan"))
        self.fake.age(orphan, 7200)
        self.fake.age(kept["location"], 7200)

        report = await attachment_cleanup.cleanup(self.app.registry.storage, store, 600, dry_run=True)
        self.assertEqual(report.removed, [orphan])
        self.assertEqual(len(self.fake.objects), 3)
        report = await attachment_cleanup.cleanup(self.app.registry.storage, store, 600)
        self.assertEqual(report.removed, [orphan])
        self.assertEqual((report.kept, report.young), (1, 1))
        self.assertEqual(sorted(self.fake.objects), sorted([kept["location"], young]))

    async def test_the_command_on_s3(self):
        if self.app.settings["storage_backend"] == "memory":
            raise self.skipTest("the command reads the records of a database (the PostgreSQL variant runs it)")
        _, kept, _ = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"kept")])
        orphan = f"b/c/{'e' * 32}.bin"
        store = S3FileStore(self.extra["attachment.s3.endpoint"], "files", "eu-west-3", AK, SK)
        await deferToThread(store.save, orphan, io.BytesIO(b"orphan"))
        self.fake.age(orphan, 7200)
        command = [JSONSYNC, "-s", "includes=attachment", "-s", "attachment.base_url=http://f/",
                   "-s", "storage_backend=postgresql",
                   "-s", "permission_backend=postgresql", "-s", f"storage_url={testclient.TEST_POSTGRESQL_URL}"]
        for name, value in self.extra.items():
            command += ["-s", f"{name}={value}"]
        status, out = await run(command + ["attachments-cleanup", "--grace", "600"])
        self.assertEqual(status, 0, out)
        self.assertIn(f"removed {orphan}", out)
        self.assertEqual(list(self.fake.objects), [kept["location"]])
        self.fake.fail = 500
        status, out = await run(command + ["attachments-cleanup"])
        self.assertEqual(status, 1, out)
        self.assertIn("the attachment store failed: S3 GET", out)


class S3SettingsTests(TestCase):
    memory_only = True

    async def test_s3_settings(self):
        base = {"includes": "attachment", "attachment.base_url": "http://f/"}
        for extra, expected in [
            ({}, "attachment.base_path"),
            ({"attachment.s3.endpoint": "http://127.0.0.1:9"}, "attachment.s3.access_key"),
            ({"attachment.s3.endpoint": "ftp://x", "attachment.s3.access_key": "a", "attachment.s3.secret_key": "s"},
             "http(s) URL"),
            ({"attachment.s3.endpoint": "http://127.0.0.1:9", "attachment.s3.access_key": "a",
              "attachment.s3.secret_key": "s", "attachment.max_size": str(6 * 1024**3)}, "5 GiB"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                await build_app({**base, **extra})
            self.assertIn(expected, str(caught.exception.problems))
        # No base_path needed with S3.
        app = await build_app({**base, "attachment.s3.endpoint": "http://127.0.0.1:9", "attachment.s3.bucket": "f",
                               "attachment.s3.access_key": "a", "attachment.s3.secret_key": "s"})
        await app.registry.close()


with_postgresql_variants(globals())


def _s3rver() -> str:
    """The s3rver command (a fake S3 server for node, from npm), installed once in the temporary directory."""
    import shutil
    import subprocess
    import tempfile

    from twisted.trial.unittest import SkipTest

    if not (shutil.which("node") and shutil.which("npm")):
        raise SkipTest("node and npm are not installed")
    prefix = os.path.join(tempfile.gettempdir(), "jsonsync-s3rver-3.7.1")
    command = os.path.join(prefix, "node_modules", ".bin", "s3rver")
    if not os.path.exists(command):
        try:
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", "--no-save", "--prefix", prefix,
                            "s3rver@3.7.1"], check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as e:
            raise SkipTest(f"s3rver cannot be installed: {e}") from None
    return command


class S3rverTests(TestCase):
    """
    The store against another implementation of the S3 protocol: s3rver
    (its XML, its status codes; it does not check V4 signatures, the tests
    above do).
    """

    memory_only = True
    timeout = 300

    async def test_the_store_against_s3rver(self):
        import shutil
        import subprocess
        import tempfile

        from tests.test_postgresql_processes import free_port

        command = await deferToThread(_s3rver)
        data = tempfile.mkdtemp(prefix="jsonsync-s3rver-")
        self.addCleanup(shutil.rmtree, data, True)
        port = free_port()
        proc = subprocess.Popen([command, "-d", data, "-a", "127.0.0.1", "-p", str(port), "-s",
                                 "--configure-bucket", "files"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop():
            proc.terminate()
            proc.wait(10)

        self.addCleanup(stop)
        store = S3FileStore(f"http://127.0.0.1:{port}", "files", "us-east-1", "S3RVER", "S3RVER", timeout=10)

        def scenario():
            for _ in range(200):
                try:
                    list(store.stored())
                    break
                except S3Error:
                    time.sleep(0.05)
            content = os.urandom(3 << 20)
            names = [f"b/c/{i:032x}.bin" for i in range(3)] + [f"b/d/{9:032x}.txt"]
            for name in names:
                store.save(name, io.BytesIO(content))
            assert store.exists(names[0]) and not store.exists(f"b/c/{7:032x}.bin")
            listed = sorted(n for n, _ in store.stored())
            assert listed == sorted(names), listed
            assert sorted(n for n, _ in store.stored("b/c/")) == names[:3]
            assert all(abs(t - time.time()) < 120 for _, t in store.stored())
            store.delete(names[0])
            store.delete(names[0])
            assert not store.exists(names[0])
            store.purge("b/c", time.time() + 5)
            assert [n for n, _ in store.stored()] == [names[3]]
            with open(os.path.join(data, "files", *names[3].split("/")) + "._S3rver_object", "rb") as f:
                assert f.read() == content
            return True

        self.assertTrue(await deferToThread(scenario))
