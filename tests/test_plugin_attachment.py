"""
The attachment plugin through a real socket: multipart uploads from treq
and from kinto-http, the record's field, the file on disk, replacement,
deletion, permissions, limits and hostile bodies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from base64 import b64encode

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from jsonsync.service import make_site
from jsonsync.testclient import build_app, with_postgresql_variants

REC = "/v1/buckets/b/collections/c/records"
# The first bytes of a PNG file: its signature and the start of its header chunk.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"


def auth(user: str) -> dict:
    return {"Authorization": "Basic " + b64encode(f"{user}:secret".encode()).decode()}


def multipart(parts, boundary="xYzZY") -> tuple[bytes, dict]:
    """A multipart/form-data body from C{(name, filename or None, content type or None, bytes)}."""
    out = b""
    for name, filename, ctype, content in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += disposition.encode() + b"\r\n"
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + content + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n"
    return out, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class _Served(TestCase):
    timeout = 120
    extra: dict = {}

    async def setUp(self):
        self.base_path = tempfile.mkdtemp(prefix="jsonsync-attach-")
        self.addCleanup(shutil.rmtree, self.base_path, True)
        settings = {
            "includes": "attachment",
            "attachment.base_path": self.base_path,
            "attachment.base_url": "https://files.example.org/att",
            **self.extra,
        }
        self.app = await build_app(settings)
        self.addCleanup(lambda: self.app.registry.close())
        site = make_site(self.app, self.app.settings)
        site.access_log = False
        self.ended: list[defer.Deferred] = []
        self.channels: list = []
        build = site.buildProtocol

        def watched(addr):
            channel = build(addr)
            done = defer.Deferred()
            lost = channel.connectionLost
            channel.connectionLost = lambda reason: (lost(reason), done.callback(None))
            self.channels.append(channel)
            self.ended.append(done)
            return channel

        site.buildProtocol = watched
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self._all_ended)
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        for path in ("/v1/buckets/b", "/v1/buckets/b/collections/c"):
            r = await self.call("PUT", path, body={})
            self.assertIn(r[0], (200, 201), r)

    async def _all_ended(self):
        # A refused upload leaves its connection lingering (LimitedChannel
        # reads what the client still sends): end them, then let the
        # client's body producer notice.
        for channel, done in zip(self.channels, self.ended, strict=True):
            if not done.called and channel.transport is not None:
                channel.transport.abortConnection()
        await defer.gatherResults(self.ended)
        await deferLater(reactor, 0.05, lambda: None)

    async def call(self, method, path, body=None, raw=None, headers=None, user="alice"):
        sent = dict(headers or {})
        if user:
            sent.update(auth(user))
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        r = await treq.request(
            method, self.url + path, data=data, headers={k: [v] for k, v in sent.items()}, persistent=False
        )
        content = await r.content()
        parsed = json.loads(content) if content else None
        return r.code, parsed, r.headers

    async def upload(self, record, parts, user="alice", method="POST", headers=None):
        raw, sent = multipart(parts)
        sent.update(headers or {})
        return await self.call(method, f"{REC}/{record}/attachment", raw=raw, headers=sent, user=user)

    async def chunked(self, raw: bytes, record="r1"):
        """POST C{raw} as one chunk of a chunked body, over a plain socket: C{(status, body)}."""
        port = self.port.getHost().port
        head = (
            f"POST {REC}/{record}/attachment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Connection: close\r\nAuthorization: {auth('alice')['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=xYzZY\r\n\r\n"
        ).encode()

        def send():
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(head)
                try:
                    sock.sendall(b"%x\r\n" % len(raw) + raw + b"\r\n0\r\n\r\n")
                except OSError:
                    pass  # refused while sending: the answer is already there
                answer = b""
                while True:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        break
                    if not data:
                        break
                    answer += data
                return answer

        answer = await deferToThread(send)
        status_line, _, rest = answer.partition(b"\r\n")
        return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])

    def stored(self) -> list[str]:
        found = []
        for root, _, files in os.walk(self.base_path):
            found += [os.path.relpath(os.path.join(root, f), self.base_path) for f in files]
        return sorted(found)

    def on_disk(self, location: str) -> bytes:
        with open(os.path.join(self.base_path, location), "rb") as f:
            return f.read()

    def assertKintoError(self, result, status, errno):
        code, body, headers = result
        self.assertEqual(code, status, body)
        self.assertEqual(body["code"], status)
        self.assertEqual(body["errno"], errno)
        if status != 404:  # the core's 404 for an object carries details, no message
            self.assertIn("message", body)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])


class UploadTests(_Served):
    async def test_upload_creates_the_record_with_its_attachment(self):
        content = b"hello, file\n" * 100
        code, body, headers = await self.upload(
            "r1",
            [("attachment", "notes.txt", "text/plain", content), ("data", None, None, b'{"title": "t"}')],
        )
        self.assertEqual(code, 201, body)
        self.assertEqual(body["hash"], hashlib.sha256(content).hexdigest())
        self.assertEqual(body["size"], len(content))
        self.assertEqual(body["filename"], "notes.txt")
        self.assertEqual(body["mimetype"], "text/plain")
        self.assertRegex(body["location"], r"^b/c/[0-9a-f]{32}\.txt$")
        self.assertEqual(self.on_disk(body["location"]), content)
        code, record, _ = await self.call("GET", f"{REC}/r1")
        self.assertEqual(code, 200)
        self.assertEqual(record["data"]["attachment"], body)
        self.assertEqual(record["data"]["title"], "t")
        self.assertEqual(len(record["permissions"]["write"]), 1)
        code, hello, _ = await self.call("GET", "/v1/")
        self.assertEqual(hello["capabilities"]["attachments"]["base_url"], "https://files.example.org/att/")

    async def test_upload_on_an_existing_record_keeps_its_fields(self):
        await self.call("PUT", f"{REC}/r1", body={"data": {"keep": 1}})
        code, body, headers = await self.upload("r1", [("attachment", "a.bin", None, b"\x00\x01")])
        # 200 on an existing record (201 when the upload creates it), as
        # kinto-attachment answers.
        self.assertEqual(code, 200, body)
        self.assertEqual(headers.getRawHeaders("location"), [f"{self.url}{REC}/r1"])
        self.assertEqual(body["mimetype"], "application/octet-stream")
        _, record, _ = await self.call("GET", f"{REC}/r1")
        self.assertEqual(record["data"]["keep"], 1)
        self.assertEqual(record["data"]["attachment"]["size"], 2)

    async def test_replace_removes_the_old_file_after_commit(self):
        _, first, _ = await self.upload("r1", [("attachment", "one.txt", "text/plain", b"one")])
        code, second, _ = await self.upload("r1", [("attachment", "two.txt", "text/plain", b"two")], method="PUT")
        self.assertEqual(code, 200, second)
        self.assertNotEqual(first["location"], second["location"])
        self.assertEqual(self.stored(), [second["location"]])
        self.assertEqual(self.on_disk(second["location"]), b"two")

    async def test_delete_attachment_removes_field_and_file(self):
        _, att, _ = await self.upload("r1", [("attachment", "one.txt", "text/plain", b"one")])
        code, body, _ = await self.call("DELETE", f"{REC}/r1/attachment")
        self.assertEqual(code, 204, body)
        _, record, _ = await self.call("GET", f"{REC}/r1")
        # As kinto-attachment leaves it (kinto-http's own test checks it).
        self.assertIsNone(record["data"]["attachment"])
        self.assertEqual(self.stored(), [])
        last_modified = record["data"]["last_modified"]
        # Deleting it again changes nothing.
        code, body, _ = await self.call("DELETE", f"{REC}/r1/attachment")
        self.assertEqual(code, 204, body)
        _, record, _ = await self.call("GET", f"{REC}/r1")
        self.assertEqual(record["data"]["last_modified"], last_modified)
        # A record that never had one gets the null field too; a missing
        # record is a 404.
        await self.call("PUT", f"{REC}/plain", body={"data": {"x": 1}})
        code, body, _ = await self.call("DELETE", f"{REC}/plain/attachment")
        self.assertEqual(code, 204, body)
        _, record, _ = await self.call("GET", f"{REC}/plain")
        self.assertEqual(record["data"]["attachment"], None)
        self.assertEqual(record["data"]["x"], 1)
        self.assertKintoError(await self.call("DELETE", f"{REC}/nope/attachment"), 404, 110)

    async def test_deleting_the_record_removes_the_file(self):
        _, att, _ = await self.upload("r1", [("attachment", "one.txt", "text/plain", b"one")])
        self.assertEqual(self.stored(), [att["location"]])
        code, _, _ = await self.call("DELETE", f"{REC}/r1")
        self.assertEqual(code, 200)
        self.assertEqual(self.stored(), [])
        # A plural DELETE too.
        await self.upload("r2", [("attachment", "two.txt", "text/plain", b"two")])
        await self.upload("r3", [("attachment", "three.txt", "text/plain", b"three")])
        self.assertEqual(len(self.stored()), 2)
        code, _, _ = await self.call("DELETE", REC)
        self.assertEqual(code, 200)
        self.assertEqual(self.stored(), [])

    async def test_deleting_a_collection_or_bucket_removes_its_files(self):
        await self.call("PUT", "/v1/buckets/b/collections/other", body={})
        _, kept, _ = await self.upload("r1", [("attachment", "one.txt", "text/plain", b"one")])
        other = "/v1/buckets/b/collections/other/records/r2/attachment"
        raw, headers = multipart([("attachment", "two.txt", "text/plain", b"two")])
        code, gone, _ = await self.call("POST", other, raw=raw, headers=headers)
        self.assertEqual(code, 201, gone)
        self.assertEqual(self.stored(), sorted([kept["location"], gone["location"]]))
        code, _, _ = await self.call("DELETE", "/v1/buckets/b/collections/other")
        self.assertEqual(code, 200)
        self.assertEqual(self.stored(), [kept["location"]])
        # Created again, the collection takes files again.
        await self.call("PUT", "/v1/buckets/b/collections/other", body={})
        code, again, _ = await self.call("POST", other, raw=raw, headers=headers)
        self.assertEqual(code, 201, again)
        code, _, _ = await self.call("DELETE", "/v1/buckets/b")
        self.assertEqual(code, 200)
        self.assertEqual(self.stored(), [])
        self.assertEqual(os.listdir(self.base_path), [])

    async def test_another_user_cannot_attach_nor_detach(self):
        _, att, _ = await self.upload("r1", [("attachment", "one.txt", "text/plain", b"one")])
        self.assertKintoError(
            await self.upload("r1", [("attachment", "x.txt", "text/plain", b"evil")], user="bob"), 403, 121
        )
        self.assertKintoError(
            await self.upload("new", [("attachment", "x.txt", "text/plain", b"evil")], user="bob"), 403, 121
        )
        self.assertKintoError(await self.call("DELETE", f"{REC}/r1/attachment", user="bob"), 403, 121)
        # Refused uploads leave no file behind; alice's is untouched.
        self.assertEqual(self.stored(), [att["location"]])

    async def test_the_field_is_only_written_through_the_endpoint(self):
        _, att, _ = await self.upload("r1", [("attachment", "one.txt", "text/plain", b"one")])
        forged = dict(att, location="b/c/" + "0" * 32 + ".txt")
        self.assertKintoError(
            await self.call("PUT", f"{REC}/r2", body={"data": {"attachment": forged}}), 400, 107
        )
        self.assertKintoError(
            await self.call("PATCH", f"{REC}/r1", body={"data": {"attachment": forged}}), 400, 107
        )
        # A PUT that leaves the field out keeps it (and the file).
        code, record, _ = await self.call("PUT", f"{REC}/r1", body={"data": {"other": 2}})
        self.assertEqual(code, 200, record)
        self.assertEqual(record["data"]["attachment"], att)
        self.assertEqual(self.stored(), [att["location"]])

    async def test_path_traversal_filenames_never_reach_the_disk(self):
        for i, name in enumerate(["../../../etc/passwd.txt", "..\\..\\win.ini", "/abs/olute.txt", ".."]):
            code, body, _ = await self.upload(f"r{i}", [("attachment", name, "text/plain", b"x")])
            if name == "..":
                self.assertEqual(code, 400, body)
                continue
            self.assertEqual(code, 201, body)
            self.assertNotIn("/", body["filename"])
            self.assertNotIn("\\", body["filename"])
            self.assertRegex(body["location"], r"^b/c/[0-9a-f]{32}(\.[a-z0-9]+)?$")
        for path in self.stored():
            self.assertRegex(path, r"^b/c/[0-9a-f]{32}(\.[a-z0-9]+)?$")

    async def test_a_file_larger_than_the_json_body_limit(self):
        # Over max_request_body_bytes (1 MiB), under attachment.max_size.
        content = os.urandom(3 * 1024 * 1024)
        code, body, _ = await self.upload("big", [("attachment", "big.bin", None, content)])
        self.assertEqual(code, 201, body)
        self.assertEqual(body["hash"], hashlib.sha256(content).hexdigest())
        self.assertEqual(self.on_disk(body["location"]), content)
        # Other routes keep the JSON limit.
        self.assertKintoError(
            await self.call("PUT", f"{REC}/json", raw=b"{" + b" " * (2 << 20) + b"}",
                            headers={"Content-Type": "application/json"}), 413, 113
        )

    async def test_a_chunked_upload_larger_than_the_json_body_limit(self):
        content = os.urandom(2 * 1024 * 1024)
        raw, _ = multipart([("attachment", "big.bin", None, content)])
        status, body = await self.chunked(raw)
        self.assertEqual(status, 201, body)
        self.assertEqual(body["hash"], hashlib.sha256(content).hexdigest())
        self.assertEqual(self.on_disk(body["location"]), content)

    async def test_bad_multipart_bodies_get_json_400(self):
        path = f"{REC}/r1/attachment"
        cases = [
            (b"garbage", {"Content-Type": "multipart/form-data; boundary=xYzZY"}),
            (b"--xYzZY\r\nno colon here\r\n\r\nx\r\n--xYzZY--", {"Content-Type": "multipart/form-data; boundary=xYzZY"}),
            (b"--xYzZY\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"a.txt\"\r\n\r\nnever ends",
             {"Content-Type": "multipart/form-data; boundary=xYzZY"}),
            (b"anything", {"Content-Type": "multipart/form-data"}),
            (b'{"data": {}}', {"Content-Type": "application/json"}),
        ]
        for raw, headers in cases:
            self.assertKintoError(await self.call("POST", path, raw=raw, headers=headers), 400, 107)
        # A well-formed form that lacks the file, or whose data is not JSON:
        # kinto-attachment's INVALID_POSTED_DATA.
        raw, headers = multipart([("data", None, None, b"{}")])
        self.assertKintoError(await self.call("POST", path, raw=raw, headers=headers), 400, 109)
        self.assertKintoError(
            await self.upload("r1", [("attachment", "a.txt", None, b"x"), ("data", None, None, b"{nope")]), 400, 109
        )
        self.assertKintoError(
            await self.upload("r1", [("attachment", "a.txt", None, b"x"), ("permissions", None, None, b'{"eat": []}')]),
            400, 107,
        )
        # Refused by the record's validation, after the file was stored:
        # the request removes it.
        self.assertKintoError(
            await self.upload("r1", [("attachment", "a.txt", None, b"x"), ("data", None, None, b'{"id": "zz"}')]),
            400, 107,
        )
        self.assertEqual(self.stored(), [])
        code, _, _ = await self.call("GET", f"{REC}/r1")
        self.assertEqual(code, 404)

    async def test_kinto_http_add_and_remove_attachment(self):
        import kinto_http

        client = kinto_http.Client(
            server_url=self.url + "/v1", auth=("alice", "secret"), bucket="b", collection="c"
        )
        fd, path = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(b'{"a": 1}')
        self.addCleanup(os.unlink, path)
        att = await deferToThread(client.add_attachment, id="k1", filepath=path, data={"t": 1})
        self.assertEqual(att["hash"], hashlib.sha256(b'{"a": 1}').hexdigest())
        self.assertEqual(att["mimetype"], "application/json")
        record = await deferToThread(client.get_record, id="k1")
        self.assertEqual(record["data"]["t"], 1)
        self.assertEqual(record["data"]["attachment"]["location"], att["location"])
        await deferToThread(client.remove_attachment, id="k1")
        record = await deferToThread(client.get_record, id="k1")
        self.assertIsNone(record["data"]["attachment"])
        self.assertEqual(self.stored(), [])


class LimitTests(_Served):
    extra = {
        "attachment.max_size": "1000",
        "attachment.extensions": "txt png",
        "attachment.mimetypes": "text/* image/png",
    }

    async def test_too_large_is_413_and_leaves_nothing(self):
        self.assertKintoError(
            await self.upload("r1", [("attachment", "a.txt", "text/plain", b"x" * 1001)]), 413, 113
        )
        code, body, _ = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"x" * 1000)])
        self.assertEqual(code, 201, body)
        # Far over the limit: the channel refuses it before reading it.
        self.assertKintoError(
            await self.upload("r2", [("attachment", "a.txt", "text/plain", b"x" * (3 << 20))]), 413, 113
        )
        self.assertEqual(self.stored(), [body["location"]])

    async def test_chunked_upload_over_the_route_limit_is_413(self):
        raw, _ = multipart([("attachment", "a.txt", "text/plain", b"x" * (3 << 20))])
        status, body = await self.chunked(raw)
        self.assertEqual((status, body["code"], body["errno"]), (413, 413, 113))
        self.assertEqual(self.stored(), [])

    async def test_extension_and_type_not_allowed_is_400(self):
        self.assertKintoError(
            await self.upload("r1", [("attachment", "a.exe", "text/plain", b"x")]), 400, 107
        )
        self.assertKintoError(
            await self.upload("r1", [("attachment", "noext", "text/plain", b"x")]), 400, 107
        )
        self.assertKintoError(
            await self.upload("r1", [("attachment", "a.png", "application/pdf", b"x")]), 400, 107
        )
        code, body, _ = await self.upload("r1", [("attachment", "a.PNG", "image/png", PNG)])
        self.assertEqual(code, 201, body)
        self.assertTrue(body["location"].endswith(".png"))
        self.assertEqual(self.stored(), [body["location"]])


class ConfigurationTests(TestCase):
    memory_only = True

    async def test_base_path_and_base_url_are_required(self):
        from jsonsync.config import ConfigurationError

        with self.assertRaises(ConfigurationError) as caught:
            await build_app({"includes": "attachment"})
        text = str(caught.exception.problems)
        self.assertIn("attachment.base_path", text)
        self.assertIn("attachment.base_url", text)


with_postgresql_variants(globals())
