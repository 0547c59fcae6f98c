"""
The attachment plugin, continued (issue 14): the uploaded bytes' real type,
the gzip option, uploads through the default bucket, /batch, history.
Real uploads over a socket, as in tests/test_plugin_attachment.py.
"""

from __future__ import annotations

import gzip
import hashlib
import os

from twisted.trial.unittest import TestCase

from jsonsync.config import ConfigurationError
from jsonsync.plugins import attachment_types
from jsonsync.testclient import build_app, with_postgresql_variants
from tests.test_plugin_attachment import PNG, REC, _Served, multipart

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
ZIP = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 20
GZ = gzip.compress(b"hello")


class SignatureTableTests(TestCase):
    """The table itself, without a server."""

    memory_only = True

    def test_known_types_need_their_signature(self):
        ok = [
            ("image/png", PNG), ("image/jpeg", JPEG), ("application/pdf", PDF), ("application/zip", ZIP),
            ("application/gzip", GZ), ("application/x-gzip", GZ), ("image/gif", b"GIF89a\x01\x00"),
            ("image/webp", b"RIFF\x10\x00\x00\x00WEBPVP8 "),
            ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", ZIP),
        ]
        for mimetype, head in ok:
            self.assertIsNone(attachment_types.mismatch(mimetype, head, True), mimetype)
        bad = [("image/png", JPEG), ("image/png", b"just text"), ("application/pdf", PNG),
               ("application/zip", GZ), ("image/jpeg", b""), ("image/gif", PDF)]
        for mimetype, head in bad:
            self.assertIsNotNone(attachment_types.mismatch(mimetype, head, True), (mimetype, head))

    def test_text_and_json(self):
        self.assertIsNone(attachment_types.mismatch("text/plain", "héllo wörld\n".encode(), True))
        self.assertIsNone(attachment_types.mismatch("text/plain", "héllo".encode("latin-1"), True))
        self.assertIsNone(attachment_types.mismatch("text/csv", b"", True))
        self.assertIsNone(attachment_types.mismatch("application/json", b'\xef\xbb\xbf  {"a": 1}', True))
        self.assertIsNone(attachment_types.mismatch("application/json", b"[1, 2]", True))
        # A multi-byte character cut at the end of the head of a longer file.
        self.assertIsNone(attachment_types.mismatch("text/plain", "aé".encode()[:-1], False))
        self.assertIn("not text", attachment_types.mismatch("text/plain", PNG, True))
        self.assertIn("binary", attachment_types.mismatch("text/plain", b"ab\x00cd", True))
        self.assertIn("not JSON", attachment_types.mismatch("application/json", b"hello", True))
        self.assertIn("not text", attachment_types.mismatch("image/svg+xml", GZ, True))

    def test_unknown_types_are_never_refused(self):
        for mimetype in ("application/octet-stream", "application/x-protobuf", "video/x-unknown"):
            self.assertIsNone(attachment_types.mismatch(mimetype, PNG, True))
            self.assertIsNone(attachment_types.mismatch(mimetype, b"\x00\x01", True))


class TypeCheckTests(_Served):
    async def test_bytes_that_do_not_match_the_declared_type_are_400(self):
        cases = [
            ("a.png", "image/png", b"<html><script>alert(1)</script></html>"),
            ("a.pdf", "application/pdf", PNG),
            ("a.txt", "text/plain", PNG),
            ("a.json", "application/json", b"<not>json</not>"),
            # No declared type: the one the name implies is checked.
            ("a.jpg", None, b"plain text"),
            ("a.zip", "application/octet-stream", b"plain text"),
        ]
        for i, (name, ctype, content) in enumerate(cases):
            result = await self.upload(f"r{i}", [("attachment", name, ctype, content)])
            self.assertKintoError(result, 400, 107)
            self.assertIn("does not match its type", result[1]["message"])
            self.assertEqual(result[1]["details"][0]["name"], "attachment")
        self.assertEqual(self.stored(), [])
        code, _, _ = await self.call("GET", f"{REC}/r0")
        self.assertEqual(code, 404)

    async def test_bytes_that_match_are_stored(self):
        cases = [
            ("a.png", "image/png", PNG), ("a.pdf", None, PDF), ("a.jpg", "image/jpeg", JPEG),
            ("a.zip", None, ZIP), ("a.txt.gz", "application/gzip", GZ), ("a.json", None, b' {"a": 1}'),
            ("a.txt", "text/plain", "é".encode() * 50000),  # past the head, cut in a character
            ("a.bin", "application/x-protobuf", PNG), ("noext", None, b"\x00\x01"),
        ]
        for i, (name, ctype, content) in enumerate(cases):
            code, body, _ = await self.upload(f"r{i}", [("attachment", name, ctype, content)])
            self.assertEqual(code, 201, (name, body))
            self.assertEqual(self.on_disk(body["location"]), content)
        self.assertEqual(len(self.stored()), len(cases))


class FormFieldTests(_Served):
    async def test_only_data_and_permissions_as_plain_fields(self):
        result = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"x"), ("my_field", None, None, b"v")])
        self.assertKintoError(result, 400, 109)  # kinto-attachment's INVALID_POSTED_DATA
        self.assertIn("'my_field' not in ('data', 'permissions')", result[1]["message"])
        result = await self.upload(
            "r1", [("attachment", "a.txt", "text/plain", b"x"), ("data", "data.json", "application/json", b"{}")]
        )
        self.assertKintoError(result, 400, 109)  # kinto-attachment's INVALID_POSTED_DATA
        self.assertIn("'data' field should be passed as form data, not files", result[1]["message"])
        result = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"x"), ("data", None, None, b"{x")])
        self.assertKintoError(result, 400, 109)  # kinto-attachment's INVALID_POSTED_DATA
        self.assertIn("body: data is not valid JSON", result[1]["message"])
        self.assertEqual(self.stored(), [])
        code, _, _ = await self.call("GET", f"{REC}/r1")
        self.assertEqual(code, 404)

    async def test_a_form_without_the_file_is_invalid_posted_data(self):
        result = await self.upload("r1", [("data", None, None, b'{"a": 1}')])
        self.assertKintoError(result, 400, 109)
        self.assertIn("Attachment missing", result[1]["message"])


class TypeCheckOffTests(_Served):
    extra = {"attachment.check_type": "false"}

    async def test_the_check_can_be_turned_off(self):
        code, body, _ = await self.upload("r1", [("attachment", "a.png", "image/png", b"text")])
        self.assertEqual(code, 201, body)
        self.assertEqual(body["mimetype"], "image/png")


class GzipTests(_Served):
    extra = {
        "attachment.gzipped": "true",
        "attachment.resources.b.plain.gzipped": "false",
    }

    async def test_files_are_stored_gzipped_with_the_original_described(self):
        content = b"hello, gzip\n" * 1000
        code, att, _ = await self.upload(
            "r1", [("attachment", "notes.txt", "text/plain", content), ("data", None, None, b'{"t": 1}')]
        )
        self.assertEqual(code, 201, att)
        stored = self.on_disk(att["location"])
        self.assertRegex(att["location"], r"^b/c/[0-9a-f]{32}\.gz$")
        self.assertEqual(gzip.decompress(stored), content)
        self.assertEqual(att["hash"], hashlib.sha256(stored).hexdigest())
        self.assertEqual(att["size"], len(stored))
        self.assertLess(att["size"], len(content))
        self.assertEqual(att["filename"], "notes.txt.gz")
        self.assertEqual(att["mimetype"], "application/x-gzip")
        self.assertEqual(att["original"], {
            "filename": "notes.txt", "hash": hashlib.sha256(content).hexdigest(),
            "mimetype": "text/plain", "size": len(content),
        })
        _, record, _ = await self.call("GET", f"{REC}/r1")
        self.assertEqual(record["data"]["attachment"], att)
        _, hello, _ = await self.call("GET", "/v1/")
        self.assertIs(hello["capabilities"]["attachments"]["gzipped"], True)
        # The same content gives the same gzip (no name nor time in it).
        _, again, _ = await self.upload("r2", [("attachment", "notes.txt", "text/plain", content)])
        self.assertEqual(again["hash"], att["hash"])
        # Replaced: the old gzip goes.
        code, third, _ = await self.upload("r1", [("attachment", "b.txt", "text/plain", b"other")])
        self.assertEqual(code, 200, third)
        self.assertEqual(sorted(self.stored()), sorted([again["location"], third["location"]]))

    async def test_a_large_file_is_gzipped_in_pieces(self):
        content = os.urandom(1 << 20) + b"z" * (2 << 20)
        code, att, _ = await self.upload("big", [("attachment", "big.bin", None, content)])
        self.assertEqual(code, 201, att)
        self.assertEqual(gzip.decompress(self.on_disk(att["location"])), content)
        self.assertEqual(att["original"]["size"], len(content))
        self.assertEqual(att["original"]["mimetype"], "application/octet-stream")

    async def test_a_collection_can_opt_out(self):
        await self.call("PUT", "/v1/buckets/b/collections/plain", body={})
        raw, headers = multipart([("attachment", "a.txt", "text/plain", b"plain")])
        code, att, _ = await self.call(
            "POST", "/v1/buckets/b/collections/plain/records/r/attachment", raw=raw, headers=headers
        )
        self.assertEqual(code, 201, att)
        self.assertNotIn("original", att)
        self.assertEqual(att["mimetype"], "text/plain")
        self.assertEqual(self.on_disk(att["location"]), b"plain")

    async def test_the_type_is_checked_before_compressing(self):
        self.assertKintoError(await self.upload("r1", [("attachment", "a.png", "image/png", b"no")]), 400, 107)
        self.assertEqual(self.stored(), [])


class GzipPerBucketTests(_Served):
    extra = {"attachment.resources.b.gzipped": "yes"}

    async def test_a_bucket_can_opt_in(self):
        code, att, _ = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"abc")])
        self.assertEqual(code, 201, att)
        self.assertEqual(att["original"]["size"], 3)
        self.assertEqual(gzip.decompress(self.on_disk(att["location"])), b"abc")
        _, hello, _ = await self.call("GET", "/v1/")
        self.assertIs(hello["capabilities"]["attachments"]["gzipped"], False)


class ResourceSettingsTests(TestCase):
    memory_only = True

    async def test_bad_per_resource_settings_are_refused(self):
        base = {"includes": "attachment", "attachment.base_path": "/tmp/x", "attachment.base_url": "http://f/"}
        for extra, expected in [
            ({"attachment.resources.b.randomize": "true"}, "randomize"),
            ({"attachment.resources.b.c.d.gzipped": "true"}, "attachment.resources.b.c.d.gzipped"),
            ({"attachment.resources.b.gzipped": "maybe"}, "not a boolean"),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                await build_app({**base, **extra})
            self.assertIn(expected, str(caught.exception.problems))


class DefaultBucketTests(_Served):
    extra = {"includes": "default_bucket attachment"}

    async def test_upload_through_the_default_bucket(self):
        _, hello, _ = await self.call("GET", "/v1/")
        bid = hello["user"]["bucket"]
        path = "/v1/buckets/default/collections/pix/records/r1"
        content = os.urandom(2 << 20)  # over the JSON body limit: streamed
        raw, headers = multipart([("attachment", "p.bin", None, content), ("data", None, None, b'{"k": 2}')])
        code, att, response_headers = await self.call("POST", path + "/attachment", raw=raw, headers=headers)
        self.assertEqual(code, 201, att)
        # As kinto-attachment: Location names the real bucket.
        self.assertEqual(response_headers.getRawHeaders("location"),
                         [f"{self.url}/v1/buckets/{bid}/collections/pix/records/r1"])
        self.assertTrue(att["location"].startswith(f"{bid}/pix/"), att)
        self.assertEqual(self.on_disk(att["location"]), content)
        code, record, _ = await self.call("GET", f"/v1/buckets/{bid}/collections/pix/records/r1")
        self.assertEqual(code, 200, record)
        self.assertEqual(record["data"]["attachment"], att)
        self.assertEqual(record["data"]["k"], 2)
        # Replace, then remove, through the alias too.
        raw, headers = multipart([("attachment", "q.txt", "text/plain", b"q")])
        code, second, _ = await self.call("PUT", path + "/attachment", raw=raw, headers=headers)
        self.assertEqual(code, 200, second)
        self.assertEqual(self.stored(), [second["location"]])
        code, _, _ = await self.call("DELETE", path + "/attachment")
        self.assertEqual(code, 204)
        self.assertEqual(self.stored(), [])
        # Another user's default bucket is another bucket.
        raw, headers = multipart([("attachment", "q.txt", "text/plain", b"bob")])
        code, bobs, _ = await self.call("POST", path + "/attachment", raw=raw, headers=headers, user="bob")
        self.assertEqual(code, 201, bobs)
        self.assertFalse(bobs["location"].startswith(bid))

    async def test_anonymous_uploads_to_the_default_bucket_are_401(self):
        raw, headers = multipart([("attachment", "q.txt", "text/plain", b"q")])
        self.assertKintoError(
            await self.call("POST", "/v1/buckets/default/collections/pix/records/r1/attachment",
                            raw=raw, headers=headers, user=None), 401, 104,
        )
        self.assertEqual(self.stored(), [])


class DefaultBucketAbsentTests(_Served):
    async def test_without_the_plugin_default_is_a_bucket_name(self):
        raw, headers = multipart([("attachment", "q.txt", "text/plain", b"q")])
        path = "/v1/buckets/default/collections/pix/records/r1/attachment"
        self.assertKintoError(await self.call("POST", path, raw=raw, headers=headers), 403, 121)
        await self.call("PUT", "/v1/buckets/default", body={})
        await self.call("PUT", "/v1/buckets/default/collections/pix", body={})
        code, att, _ = await self.call("POST", path, raw=raw, headers=headers)
        self.assertEqual(code, 201, att)
        self.assertTrue(att["location"].startswith("default/pix/"))


class BatchTests(_Served):
    async def test_batch_as_kinto_attachment(self):
        _, att, _ = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"one")])
        _, other, _ = await self.upload("r2", [("attachment", "b.txt", "text/plain", b"two")])
        raw, headers = multipart([("attachment", "c.txt", "text/plain", b"three")])
        code, body, _ = await self.call("POST", "/v1/batch", body={"requests": [
            # No file can travel in a batch (its bodies are JSON), even one
            # that smuggles a multipart text in a JSON string.
            {"method": "POST", "path": "/buckets/b/collections/c/records/r3/attachment",
             "headers": headers, "body": {"x": raw.decode()}},
            {"method": "POST", "path": "/buckets/b/collections/c/records/r3/attachment", "body": {"data": {}}},
            # Removing an attachment, or a record, works.
            {"method": "DELETE", "path": "/buckets/b/collections/c/records/r1/attachment"},
            {"method": "DELETE", "path": "/buckets/b/collections/c/records/r2"},
        ]})
        self.assertEqual(code, 200, body)
        statuses = [r["status"] for r in body["responses"]]
        self.assertEqual(statuses, [400, 400, 204, 200], body)
        for refused in body["responses"][:2]:
            self.assertEqual(refused["body"]["errno"], 107)
            self.assertIn("multipart/form-data", refused["body"]["message"])
        self.assertEqual(self.stored(), [])
        _, record, _ = await self.call("GET", f"{REC}/r1")
        self.assertIsNone(record["data"]["attachment"])
        code, _, _ = await self.call("GET", f"{REC}/r3")
        self.assertEqual(code, 404)
        del att, other


class HistoryTests(_Served):
    extra = {"includes": "history attachment"}

    async def test_history_records_the_record_changes(self):
        _, first, _ = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"one")])
        _, second, _ = await self.upload("r1", [("attachment", "b.txt", "text/plain", b"two")])
        await self.call("DELETE", f"{REC}/r1/attachment")
        code, history, _ = await self.call("GET", "/v1/buckets/b/history?resource_name=record&_sort=last_modified")
        self.assertEqual(code, 200, history)
        entries = history["data"]
        self.assertEqual([e["action"] for e in entries], ["create", "update", "update"])
        self.assertTrue(all(e["uri"] == "/buckets/b/collections/c/records/r1" for e in entries))
        self.assertEqual(entries[0]["target"]["data"]["attachment"], first)
        self.assertEqual(entries[1]["target"]["data"]["attachment"], second)
        self.assertIsNone(entries[2]["target"]["data"]["attachment"])
        self.assertEqual(entries[0]["user_id"], entries[2]["user_id"])


with_postgresql_variants(globals())
