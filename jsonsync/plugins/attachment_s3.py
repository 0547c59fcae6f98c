"""
An S3-compatible store for the attachment plugin (L{IFileStore}): AWS S3,
MinIO, Ceph, Garage... Objects are written with a plain C{PUT}, signed with
AWS Signature Version 4 (the signing below follows AWS's published
algorithm and is checked against its published examples), removed with
C{DELETE}, listed with C{ListObjectsV2}.

Like every IFileStore, its methods block: the plugin calls them in the
reactor's thread pool (never on the reactor), over the standard library's
C{http.client}: no dependency. A C{PUT} is limited to 5 GiB by S3 itself
(larger objects need a multipart upload, not offered here).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import mimetypes
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

from zope.interface import implementer

from jsonsync.interfaces import IFileStore

MAX_OBJECT = 5 * 1024**3
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SPACES = re.compile(r"\s+")
_KEY = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*/[a-zA-Z0-9][a-zA-Z0-9_-]*/[0-9a-f]{32}(\.[a-z0-9]{1,16})?$")
_PREFIX = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*(/[a-zA-Z0-9][a-zA-Z0-9_-]*)?$")
READ_BLOCK = 1 << 20


def _plain(root):
    """The tree with its XML namespaces dropped (S3 look-alikes do not all use AWS's)."""
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]
    return root


class S3Error(Exception):
    """An S3 request that failed: its method, key, status and S3's error code."""


# --- AWS Signature Version 4 ----------------------------------------------------

def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _encode(text: str, keep_slash: bool) -> str:
    # RFC 3986 unreserved characters stay; everything else is %XX (upper case).
    return quote(text, safe="/~" if keep_slash else "~")


def signing_key(secret_key: str, day: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret_key).encode("utf-8"), day)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def sign(method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], payload_hash: str,
         access_key: str, secret_key: str, region: str, when: datetime.datetime,
         service: str = "s3") -> dict[str, str]:
    """
    The headers to send: C{headers} (which must hold C{host}) with
    C{x-amz-date}, C{x-amz-content-sha256} and C{Authorization} added.
    C{path} is the object's path, not yet encoded.
    """
    stamp = when.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    signed = {k.lower(): _SPACES.sub(" ", str(v).strip()) for k, v in headers.items()}
    signed["x-amz-date"] = stamp
    signed["x-amz-content-sha256"] = payload_hash
    names = sorted(signed)
    canonical_query = "&".join(
        f"{_encode(k, False)}={_encode(v, False)}" for k, v in sorted(query)
    )
    canonical = "\n".join([
        method,
        _encode(path, True),
        canonical_query,
        "".join(f"{n}:{signed[n]}\n" for n in names),
        ";".join(names),
        payload_hash,
    ])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    signature = hmac.new(signing_key(secret_key, day, region, service), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    out = {**headers, "x-amz-date": stamp, "x-amz-content-sha256": payload_hash}
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


# --- the store ------------------------------------------------------------------

@implementer(IFileStore)
class S3FileStore:
    """
    Objects in one bucket. C{endpoint} is the service's URL (C{https://s3.eu-west-3.amazonaws.com},
    C{http://127.0.0.1:9000}); with C{bucket}, objects are addressed by path
    (C{endpoint/bucket/key}); with an empty C{bucket}, C{endpoint} is the
    bucket's own URL (virtual-hosted: C{https://mybucket.s3.eu-west-3.amazonaws.com}).
    """

    def __init__(self, endpoint: str, bucket: str, region: str, access_key: str, secret_key: str,
                 timeout: float = 60.0, clock=None):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        base = parts.path.rstrip("/")
        self.base = f"{base}/{bucket}" if bucket else base
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self.timeout = timeout
        self.clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc))

    # -- plumbing -------------------------------------------------------------------
    def _connection(self):
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.netloc, timeout=self.timeout, blocksize=READ_BLOCK)

    def _request(self, method, key, query=(), body=None, payload_hash=EMPTY_SHA256, headers=None,
                 ok=(200,), length=None):
        # An object, or the bucket itself (to list it).
        path = f"{self.base}/{key}" if key is not None else f"{self.base}/"
        sent = {"host": self.netloc, **(headers or {})}
        if length is not None:
            sent["content-length"] = str(length)
        sent = sign(method, path, list(query), sent, payload_hash, self.access_key, self.secret_key,
                    self.region, self.clock())
        target = _encode(path, True)
        if query:
            target += "?" + "&".join(f"{_encode(k, False)}={_encode(v, False)}" for k, v in query)
        conn = self._connection()
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in sent.items():
                conn.putheader(name, value)
            conn.endheaders()
            if body is not None:
                while True:
                    block = body.read(READ_BLOCK)
                    if not block:
                        break
                    conn.send(block)
            response = conn.getresponse()
            data = response.read()
        except OSError as e:
            raise S3Error(f"S3 {method} {key or path}: {e}") from e
        finally:
            conn.close()
        if response.status not in ok:
            code = ""
            try:
                code = (_plain(ET.fromstring(data)).findtext("Code") or "") if data else ""
            except ET.ParseError:
                pass
            raise S3Error(f"S3 {method} {key or path}: HTTP {response.status} {code}".rstrip())
        return response.status, data

    @staticmethod
    def _check(name: str) -> str:
        if not _KEY.match(name):
            raise ValueError(f"not a stored file name: {name!r}")
        return name

    # -- IFileStore -----------------------------------------------------------------
    def save(self, name, source):
        self._check(name)
        digest = hashlib.sha256()
        size = 0
        source.seek(0)
        while True:
            block = source.read(READ_BLOCK)
            if not block:
                break
            digest.update(block)
            size += len(block)
        if size > MAX_OBJECT:
            raise S3Error(f"S3 PUT {name}: {size} bytes is over the 5 GiB of one PUT")
        source.seek(0)
        ctype = "application/x-gzip" if name.endswith(".gz") else (
            mimetypes.guess_type(name)[0] or "application/octet-stream"
        )
        self._request("PUT", name, body=source, payload_hash=digest.hexdigest(),
                      headers={"content-type": ctype}, length=size)

    def delete(self, name):
        self._request("DELETE", self._check(name), ok=(200, 204, 404))

    def exists(self, name):
        status, _ = self._request("HEAD", self._check(name), ok=(200, 404))
        return status == 200

    def url(self, name):
        return name

    def stored(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """C{(name, time stored)} of every object under C{prefix} (ListObjectsV2, page by page)."""
        token = None
        while True:
            query = [("list-type", "2"), ("max-keys", "1000")]
            if prefix:
                query.append(("prefix", prefix))
            if token:
                query.append(("continuation-token", token))
            _, data = self._request("GET", None, query=query)
            try:
                root = _plain(ET.fromstring(data))
            except ET.ParseError as e:
                raise S3Error(f"S3 list: not XML ({e})") from None
            for item in root.iter("Contents"):
                key = item.findtext("Key") or ""
                modified = item.findtext("LastModified") or ""
                try:
                    when = datetime.datetime.fromisoformat(modified.replace("Z", "+00:00")).timestamp()
                except ValueError:
                    continue
                yield key, when
            if (root.findtext("IsTruncated") or "").lower() != "true":
                return
            token = root.findtext("NextContinuationToken")
            if not token:
                return

    def purge(self, prefix, before):
        if not _PREFIX.match(prefix):
            raise ValueError(f"not a bucket or collection prefix: {prefix!r}")
        for key, when in list(self.stored(prefix + "/")):
            if when < before and _KEY.match(key):
                self.delete(key)
