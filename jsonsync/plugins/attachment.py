"""
The C{attachment} plugin: files on records, with kinto-attachment's
protocol. C{POST} or C{PUT} of a multipart/form-data body (the file in the
field C{attachment}, optional C{data} and C{permissions} fields as JSON) to
C{<record URL>/attachment} stores the file and creates or updates the record
with an C{attachment} field (C{location}, C{hash}, C{filename}, C{size},
C{mimetype}); C{DELETE} of that URL removes the field, and the file once
the change is committed. See docs/attachments.md.

The upload is never held in memory: twisted.web spools a body over 100 kB
to a temporary file, and the multipart parser below reads it in pieces
(in a thread for a large body), hashing the file as it copies it out.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import mimetypes
import os
import re
import shutil
import stat
import tempfile
import time
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import IO
from urllib.parse import unquote

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from jsonsync import jsonutil
from jsonsync.config import ConfigurationError, Setting
from jsonsync.errors import (
    InvalidParameters,
    InvalidPostedData,
    RequestTooLarge,
    WriteConflict,
)
from jsonsync.http import (
    API_PREFIX,
    ApiRequest,
    ApiResponse,
    check_accept,
    check_preconditions,
    validators,
)
from jsonsync.interfaces import IFileStore, IJsonSyncPlugin, IResourceListener
from jsonsync.plugins.attachment_types import HEAD, mismatch
from jsonsync.registry import Route
from jsonsync.routes import locate

_log = Logger()

FIELD = "attachment"
DOCS_URL = "https://github.com/Kinto/kinto-attachment/"
RULE = "/buckets/<bucket_id>/collections/<collection_id>/records/<record_id>/attachment"
DEFAULT_RULE = "/buckets/default/collections/<collection_id>/records/<record_id>/attachment"
GZIP_TYPE = "application/x-gzip"
# attachment.resources.<bucket>[.<collection>].<name>: the settings that
# may differ per bucket or collection, and how each is read.
RESOURCE_SETTINGS = ("gzipped",)
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
# The raw request target of an upload, for the channel's body limit (the
# record id may be percent-encoded; anything that does not route is refused
# by the app's own limit).
TARGET = re.compile(rb"^/v1/buckets/[^/?]+/collections/[^/?]+/records/[^/?]+/attachment$")
# What the plugin ever names a stored file: bucket/collection/uuid.ext. A
# location that does not look like this is never deleted.
STORED_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*/[a-zA-Z0-9][a-zA-Z0-9_-]*/[0-9a-f]{32}(\.[a-z0-9]{1,16})?$")
_PREFIX = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*(/[a-zA-Z0-9][a-zA-Z0-9_-]*)?$")
# What LocalFileStore.save writes before renaming it: <name>.<uuid hex>.part
PARTIAL = re.compile(r"^(.+)\.[0-9a-f]{32}\.part$")
_EXTENSION = re.compile(r"^\.[a-z0-9]{1,16}$")
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^;\s"]{1,70}))', re.IGNORECASE)
_PARAM = re.compile(r';\s*([a-zA-Z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))')

CHUNK = 64 * 1024
# The most a form field other than the file may hold (data, permissions).
FIELD_LIMIT = 1 << 20
# Part headers, preamble: small by nature.
HEAD_LIMIT = 16 * 1024
# Bodies up to this size are parsed on the reactor; larger ones in a thread.
INLINE_LIMIT = 256 * 1024


# --- storage -------------------------------------------------------------------

@implementer(IFileStore)
class LocalFileStore:
    """Files under C{base_path}, for the operator's web server to serve."""

    def __init__(self, base_path: str):
        self.base_path = os.path.abspath(base_path)

    def _path(self, name: str) -> str:
        # The plugin makes every name; this refuses anything else, so no
        # name can ever reach outside base_path.
        if not STORED_NAME.match(name):
            raise ValueError(f"not a stored file name: {name!r}")
        return os.path.join(self.base_path, *name.split("/"))

    def save(self, name, source):
        path = self._path(name)
        partial = f"{path}.{uuid.uuid4().hex}.part"
        for attempt in range(3):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                break
            except FileNotFoundError:
                # The emptied directory was removed meanwhile (a purge, the
                # cleanup command): make it again.
                if attempt == 2:
                    raise
        try:
            with os.fdopen(fd, "wb") as out:
                source.seek(0)
                shutil.copyfileobj(source, out, CHUNK * 16)
                out.flush()
                os.fsync(out.fileno())
            # Whole or not at all: a reader never sees half a file.
            os.replace(partial, path)
        except BaseException:
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
            raise

    def delete(self, name):
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def exists(self, name):
        return os.path.isfile(self._path(name))

    def url(self, name):
        return name

    def stored(self):
        """
        C{(name, time stored)} of every file the plugin made under
        base_path, and of the C{.part} leftovers of saves in progress or
        that never finished (for the cleanup command).
        """
        for bid in sorted(_listdir(self.base_path)):
            bdir = os.path.join(self.base_path, bid)
            if not _is_dir(bdir):
                continue
            for cid in sorted(_listdir(bdir)):
                cdir = os.path.join(bdir, cid)
                if not _is_dir(cdir):
                    continue
                for entry in sorted(_listdir(cdir)):
                    name = f"{bid}/{cid}/{entry}"
                    partial = PARTIAL.match(entry)
                    if not STORED_NAME.match(f"{bid}/{cid}/{partial.group(1)}" if partial else name):
                        continue
                    try:
                        st = os.lstat(os.path.join(cdir, entry))
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        yield name, st.st_mtime

    def discard(self, name):
        """Remove the C{.part} leftover C{name} (as L{stored} gives it)."""
        directory, _, entry = name.rpartition("/")
        partial = PARTIAL.match(entry)
        if partial is None or not STORED_NAME.match(f"{directory}/{partial.group(1)}"):
            raise ValueError(f"not an unfinished save: {name!r}")
        try:
            os.unlink(os.path.join(self.base_path, *name.split("/")))
        except FileNotFoundError:
            pass

    def tidy(self):
        """Remove the emptied bucket and collection directories."""
        for bid in _listdir(self.base_path):
            bdir = os.path.join(self.base_path, bid)
            if not _is_dir(bdir):
                continue
            for cid in _listdir(bdir):
                try:
                    os.rmdir(os.path.join(bdir, cid))
                except OSError:
                    pass  # not empty, or not a directory
            try:
                os.rmdir(bdir)
            except OSError:
                pass

    def purge(self, prefix, before):
        if not _PREFIX.match(prefix):
            raise ValueError(f"not a bucket or collection prefix: {prefix!r}")
        top = os.path.join(self.base_path, *prefix.split("/"))
        for root, _dirs, files in os.walk(top, topdown=False):
            for name in files:
                if name.endswith(".part"):
                    continue  # a save in progress: its request cleans up
                path = os.path.join(root, name)
                try:
                    if os.stat(path).st_mtime < before:
                        os.unlink(path)
                except FileNotFoundError:
                    pass
            try:
                os.rmdir(root)
            except OSError:
                pass  # not empty


def _listdir(path):
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_dir(path):
    return os.path.isdir(path) and not os.path.islink(path)


def make_store(settings) -> IFileStore:
    """The store the settings choose: S3 when C{attachment.s3.endpoint} is set, else local disk."""
    if settings.get("attachment.s3.endpoint"):
        from jsonsync.plugins.attachment_s3 import S3FileStore

        return S3FileStore(
            settings["attachment.s3.endpoint"], settings.get("attachment.s3.bucket") or "",
            settings.get("attachment.s3.region") or "us-east-1",
            settings.get("attachment.s3.access_key") or "", settings.get("attachment.s3.secret_key") or "",
        )
    return LocalFileStore(settings["attachment.base_path"])


# --- multipart/form-data -------------------------------------------------------

@dataclass
class Upload:
    """A parsed upload: the file (copied to a temporary file) and the other fields."""

    fields: dict[str, bytes] = field(default_factory=dict)
    filename: str | None = None
    declared_type: str | None = None
    file: IO[bytes] | None = None
    size: int = 0
    sha256: str = ""
    # The file's first bytes, for the check of its real type.
    head: bytes = b""
    # The name the file was stored under (once, whatever the attempts), and
    # the record's attachment field describing it.
    stored: str | None = None
    described: dict | None = None

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def boundary_of(content_type: str | None) -> bytes:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise InvalidParameters(
            "header", "Content-Type", "Content-Type should be multipart/form-data"
        )
    found = _BOUNDARY.search(content_type or "")
    if found is None:
        raise InvalidParameters("header", "Content-Type", "multipart/form-data needs a boundary")
    return (found.group(1) or found.group(2)).encode("latin-1")


def _bad(description: str) -> InvalidParameters:
    return InvalidParameters("body", None, f"Invalid multipart body: {description}")


def _params(header: str) -> dict[str, str]:
    params = {}
    for match in _PARAM.finditer(header):
        name = match.group(1).lower()
        value = match.group(2) if match.group(2) is not None else (match.group(3) or "").strip()
        if match.group(2) is not None:
            value = re.sub(r"\\(.)", r"\1", value)
        params[name] = value
    star = params.get("filename*")
    if star and "'" in star:
        # RFC 5987: charset'language'percent-encoded
        charset, _, rest = star.partition("'")
        _, _, encoded = rest.partition("'")
        try:
            params["filename"] = unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    return params


class _Reader:
    def __init__(self, source):
        self.source = source
        self.buf = b""
        self.eof = False

    def fill(self):
        data = self.source.read(CHUNK)
        if not data:
            self.eof = True
        else:
            self.buf = self.buf + data if self.buf else data

    def until(self, marker: bytes, limit: int, what: str) -> bytes:
        """The bytes before C{marker} (consumed with it), at most C{limit} of them."""
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                found, self.buf = self.buf[:i], self.buf[i + len(marker):]
                return found
            if len(self.buf) > limit + len(marker) or self.eof:
                raise _bad(f"{what} not found")
            self.fill()

    def take(self, n: int) -> bytes:
        while len(self.buf) < n and not self.eof:
            self.fill()
        taken, self.buf = self.buf[:n], self.buf[n:]
        return taken

    def stream(self, marker: bytes, emit) -> None:
        """Hand everything before C{marker} to C{emit}, piece by piece."""
        keep = len(marker) - 1
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                if i:
                    emit(self.buf[:i])
                self.buf = self.buf[i + len(marker):]
                return
            if len(self.buf) > keep:
                emit(self.buf[:-keep] if keep else self.buf)
                self.buf = self.buf[-keep:] if keep else b""
            if self.eof:
                raise _bad("a part is not terminated by the boundary")
            self.fill()


def parse_upload(source, boundary: bytes, max_size: int, spool_dir: str | None) -> Upload:
    """
    Read a multipart/form-data body from the file C{source}: the part named
    C{attachment} is copied to a temporary file while its size is counted
    and its SHA-256 computed; other parts are kept (up to C{FIELD_LIMIT}).
    Blocking: called in a thread for large bodies.
    """
    upload = Upload()
    reader = _Reader(source)
    source.seek(0)
    dash = b"--" + boundary
    # The preamble (usually empty) before the first boundary.
    reader.until(dash, HEAD_LIMIT, "the first boundary")
    delimiter = b"\r\n" + dash
    try:
        while True:
            after = reader.take(2)
            if after == b"--":
                break  # the closing boundary
            if after != b"\r\n":
                raise _bad("a boundary must be followed by CRLF or --")
            raw_head = reader.until(b"\r\n\r\n", HEAD_LIMIT, "the end of a part's headers")
            headers: dict[str, str] = {}
            for line in raw_head.split(b"\r\n"):
                field, colon, value = line.partition(b":")
                if not colon:
                    raise _bad("a part header line has no colon")
                headers[field.strip().lower().decode("latin-1")] = value.strip().decode("utf-8", "replace")
            disposition = headers.get("content-disposition", "")
            if not disposition.lower().startswith("form-data"):
                raise _bad("every part needs Content-Disposition: form-data")
            params = _params(disposition)
            name = params.get("name")
            if name is None:
                raise _bad("a part has no name")
            if name == FIELD:
                if upload.file is not None:
                    raise InvalidParameters("body", FIELD, "only one file may be attached")
                _read_file(reader, delimiter, upload, params, headers, max_size, spool_dir)
            else:
                if params.get("filename") is not None:
                    # As kinto-attachment: only the attachment is a file.
                    raise InvalidPostedData("body", name, f"body: {name!r} field should be passed as form data, not files")
                chunks: list[bytes] = []
                size = [0]

                def keep(data, chunks=chunks, size=size, name=name):
                    size[0] += len(data)
                    if size[0] > FIELD_LIMIT:
                        raise InvalidParameters("body", name, f"{name} is larger than {FIELD_LIMIT} bytes")
                    chunks.append(data)

                reader.stream(delimiter, keep)
                upload.fields[name] = b"".join(chunks)
    except BaseException:
        upload.close()
        raise
    return upload


def _read_file(reader, delimiter, upload, params, headers, max_size, spool_dir):
    filename = params.get("filename")
    if filename is None:
        raise InvalidParameters("body", FIELD, "the attachment field must be a file")
    upload.filename = filename
    upload.declared_type = headers.get("content-type")
    digest = hashlib.sha256()
    out = tempfile.TemporaryFile(dir=spool_dir)
    upload.file = out
    size = [0]

    head = []

    def write(data):
        if size[0] < HEAD:
            head.append(data[:HEAD - size[0]])
        size[0] += len(data)
        if size[0] > max_size:
            raise RequestTooLarge(f"File size exceeds the maximum of {max_size} bytes.")
        digest.update(data)
        out.write(data)

    reader.stream(delimiter, write)
    out.flush()
    upload.size = size[0]
    upload.sha256 = digest.hexdigest()
    upload.head = b"".join(head)


def clean_filename(raw: str) -> str:
    """
    The name shown in the record: the last component of what the client
    sent, without control characters. It is never used as a path.
    """
    name = re.split(r"[\\/]", raw)[-1]
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C").strip()
    if name in ("", ".", ".."):
        raise InvalidParameters("body", FIELD, "the attachment has no file name")
    return name[:255]


def extension_of(filename: str) -> str:
    ext = os.path.splitext(filename)[1].lower()
    return ext if _EXTENSION.match(ext) else ""


class _HashingSink:
    """A write-only file that counts and hashes what goes through it."""

    def __init__(self, out):
        self.out = out
        self.size = 0
        self.digest = hashlib.sha256()

    def write(self, data):
        self.size += len(data)
        self.digest.update(data)
        self.out.write(data)
        return len(data)

    def flush(self):
        self.out.flush()


def gzip_copy(source, spool_dir: str | None = None):
    """
    C{(file, size, sha256)}: C{source} compressed into a new temporary file,
    piece by piece (blocking: called in a thread).
    """
    out = tempfile.TemporaryFile(dir=spool_dir)
    try:
        sink = _HashingSink(out)
        source.seek(0)
        # No name and a fixed time in the header: the same file always
        # gives the same bytes, so its hash only depends on its content.
        # Level 6, the gzip command's default (GzipFile's is 9, the slowest).
        with gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as compressed:
            shutil.copyfileobj(source, compressed, CHUNK * 16)
        out.flush()
    except BaseException:
        out.close()
        raise
    return out, sink.size, sink.digest.hexdigest()


def parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def resource_settings(settings) -> dict[str, dict[str, object]]:
    """
    The per-bucket and per-collection settings (kinto-attachment's
    C{attachment.resources.<bid>.<name>} and C{...<bid>.<cid>.<name>}), as
    C{{"/buckets/b" or "/buckets/b/collections/c": {name: value}}}.
    """
    found: dict[str, dict[str, object]] = {}
    problems = []
    for key in settings:
        if not key.startswith("attachment.resources."):
            continue
        parts = key[len("attachment.resources."):].split(".")
        if len(parts) == 2:
            uri = f"/buckets/{parts[0]}"
        elif len(parts) == 3:
            uri = f"/buckets/{parts[0]}/collections/{parts[1]}"
        else:
            problems.append(f"{key}: expected attachment.resources.<bucket>[.<collection>].<setting>")
            continue
        name = parts[-1]
        if name not in RESOURCE_SETTINGS or not all(_PREFIX.match(p) for p in parts[:-1]):
            problems.append(f"{key}: {name!r} is not a per-resource attachment setting "
                            f"(known: {', '.join(RESOURCE_SETTINGS)})")
            continue
        try:
            found.setdefault(uri, {})[name] = parse_bool(settings[key])
        except ValueError as e:
            problems.append(f"bad value for {key}: {e}")
    if problems:
        raise ConfigurationError(problems)
    return found


# --- the plugin ----------------------------------------------------------------

@implementer(IResourceListener)
class FileJanitor:
    """Removes the files records stopped pointing to, once that change is committed."""

    actions = frozenset({"update", "delete"})
    resource_names = frozenset({"record"})

    def __init__(self, plugin):
        self.plugin = plugin

    async def before_commit(self, event, txn):
        return None

    async def after_commit(self, event):
        gone = []
        for impacted in event.impacted_objects:
            old = _location((impacted.get("old") or {}).get(FIELD))
            new = _location((impacted.get("new") or {}).get(FIELD))
            if old is not None and old != new:
                gone.append(old)
        for name in gone:
            await self.plugin.delete_file(name)


@implementer(IResourceListener)
class TreeJanitor:
    """Removes the files of a deleted bucket or collection, after the commit."""

    actions = frozenset({"delete"})
    resource_names = frozenset({"bucket", "collection"})

    def __init__(self, plugin):
        self.plugin = plugin

    async def before_commit(self, event, txn):
        return None

    async def after_commit(self, event):
        # Files stored from now on belong to objects created after the
        # deletion: they stay (see IFileStore.purge).
        now = time.time()
        bucket_id = event.parent_id.rpartition("/")[2]
        for impacted in event.impacted_objects:
            oid = (impacted.get("old") or impacted.get("new") or {}).get("id")
            if not isinstance(oid, str):
                continue
            prefix = oid if event.resource_name == "bucket" else f"{bucket_id}/{oid}"
            if not _PREFIX.match(prefix):
                continue
            try:
                await self.plugin._blocking(self.plugin.store.purge, prefix, now)
            except Exception:
                _log.failure("attachment: could not remove the files under {prefix}", prefix=prefix)


def _location(attachment) -> str | None:
    if isinstance(attachment, dict):
        location = attachment.get("location")
        if isinstance(location, str) and STORED_NAME.match(location):
            return location
    return None


@implementer(IJsonSyncPlugin)
class AttachmentPlugin:
    name = "attachment"
    settings = {
        "attachment.base_path": Setting(
            "attachment.base_path", "opt_str", None, "(plugin attachment) directory of the stored files"
        ),
        "attachment.base_url": Setting(
            "attachment.base_url", "opt_str", None, "(plugin attachment) URL at which base_path is served"
        ),
        "attachment.max_size": Setting(
            "attachment.max_size", "int", 10 * 1024 * 1024, "(plugin attachment) largest file, in bytes"
        ),
        "attachment.extensions": Setting(
            "attachment.extensions", "list", [], "(plugin attachment) allowed file extensions (empty: any)"
        ),
        "attachment.mimetypes": Setting(
            "attachment.mimetypes", "list", [], "(plugin attachment) allowed media types, * allowed (empty: any)"
        ),
        "attachment.gzipped": Setting(
            "attachment.gzipped", "bool", False,
            "(plugin attachment) store files gzipped (per resource: attachment.resources.<bid>[.<cid>].gzipped)",
        ),
        "attachment.check_type": Setting(
            "attachment.check_type", "bool", True,
            "(plugin attachment) refuse a file whose bytes do not match its media type",
        ),
        "attachment.s3.endpoint": Setting(
            "attachment.s3.endpoint", "opt_str", None,
            "(plugin attachment) store files in S3 at this URL instead of base_path",
        ),
        "attachment.s3.bucket": Setting(
            "attachment.s3.bucket", "opt_str", None, "(plugin attachment) S3 bucket (empty: the endpoint is the bucket's URL)"
        ),
        "attachment.s3.region": Setting("attachment.s3.region", "str", "us-east-1", "(plugin attachment) S3 region"),
        "attachment.s3.access_key": Setting("attachment.s3.access_key", "opt_str", None, "(plugin attachment) S3 access key"),
        "attachment.s3.secret_key": Setting("attachment.s3.secret_key", "opt_str", None, "(plugin attachment) S3 secret key"),
        "attachment.resources.*": None,
    }

    @staticmethod
    def check_settings(settings):
        problems = []
        s3 = settings.get("attachment.s3.endpoint")
        if s3:
            from urllib.parse import urlsplit

            if urlsplit(s3).scheme not in ("http", "https") or not urlsplit(s3).hostname:
                problems.append(f"attachment.s3.endpoint must be an http(s) URL, got {s3!r}")
            for name in ("attachment.s3.access_key", "attachment.s3.secret_key"):
                if not settings.get(name):
                    problems.append(f"plugin attachment needs {name} to store files in S3")
            if settings.get("attachment.max_size", 1) > 5 * 1024**3:
                problems.append("attachment.max_size cannot be over 5 GiB with S3 (the most one PUT takes)")
        elif not settings.get("attachment.base_path"):
            problems.append(
                "plugin attachment needs attachment.base_path (where files are stored) or attachment.s3.endpoint"
            )
        if not settings.get("attachment.base_url"):
            problems.append(
                "plugin attachment needs attachment.base_url (the URL at which a web server serves base_path)"
            )
        if settings.get("attachment.max_size", 1) < 1:
            problems.append("attachment.max_size must be a positive number of bytes")
        try:
            resource_settings(settings)
        except ConfigurationError as e:
            problems.extend(e.problems)
        if problems:
            raise ConfigurationError(problems)

    def install(self, registry, settings):
        self.check_settings(settings)
        self.registry = registry
        self.store: IFileStore = make_store(settings)
        self.max_size = settings["attachment.max_size"]
        self.extensions = frozenset(
            "." + e.lower().lstrip(".") for e in settings["attachment.extensions"] if e.strip(".")
        )
        self.mimetypes = tuple(m.lower() for m in settings["attachment.mimetypes"])
        self.gzipped = settings["attachment.gzipped"]
        self.check_type = settings["attachment.check_type"]
        self.resources = resource_settings(settings)
        base_url = settings["attachment.base_url"]
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.record_type = registry.resource_types["record"]
        self.record_type.validators.append(self.keep_attachment_field)
        registry.add_listener(FileJanitor(self))
        registry.add_listener(TreeJanitor(self))
        registry.add_route(Route(RULE, ("POST", "PUT", "DELETE"), self.view, "attachment", "service",
                                 "Attach a file to a record, or remove it", streams_body=True))
        # The default bucket's routes read JSON bodies only: its uploads get
        # a streaming route of their own, more specific than both.
        registry.add_route(Route(DEFAULT_RULE, ("POST", "PUT", "DELETE"), self.default_bucket_view,
                                 "attachment-default-bucket", "service",
                                 "Attach a file to a record of the user's personal bucket, or remove it",
                                 streams_body=True))
        # Room for the file plus the form's other fields and headers.
        registry.add_body_limit(TARGET, self.max_size + FIELD_LIMIT + HEAD_LIMIT)
        registry.add_capability(
            "attachments", "Add file attachments to records", DOCS_URL,
            base_url=self.base_url, gzipped=self.gzipped,
        )

    def setting(self, params: Mapping[str, str], name: str):
        """A setting's value for a bucket and collection (the most specific wins)."""
        value = getattr(self, name)
        bucket_uri = f"/buckets/{params['bucket_id']}"
        for uri in (bucket_uri, f"{bucket_uri}/collections/{params['collection_id']}"):
            value = self.resources.get(uri, {}).get(name, value)
        return value

    # -- threads ------------------------------------------------------------------
    async def _blocking(self, fn, *args):
        reactor = self.registry.reactor
        return await deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    async def delete_file(self, name: str):
        try:
            await self._blocking(self.store.delete, name)
        except Exception:
            _log.failure("attachment: could not delete {name}", name=name)

    # -- the record's field ---------------------------------------------------------
    async def keep_attachment_field(self, req, loc, data, existing):
        """
        Only this plugin writes a record's C{attachment} field: a write that
        leaves it out keeps it, one that changes it is refused. Otherwise a
        client could point its record at another record's file, and have it
        deleted with its own record.
        """
        if req.extras.get("attachment_write", False):
            return data
        old = existing.get(FIELD) if existing else None
        if FIELD not in data:
            if old is not None:
                data = {**data, FIELD: old}
            return data
        if data[FIELD] != old:
            raise InvalidParameters(
                "body", f"data.{FIELD}", f"{FIELD} is set through the record's /attachment endpoint"
            )
        return data

    # -- the views ------------------------------------------------------------------
    async def view(self, req: ApiRequest) -> ApiResponse:
        check_accept(req)
        loc = locate(self.registry, self.record_type, req.params, req.params["record_id"])
        if req.method == "DELETE":
            return await self.detach(req, loc)
        if req.in_batch:
            # A /batch sub-request's body is JSON (as in Kinto, whose batch
            # sends every sub-request as application/json): no file can come
            # through it. DELETE does work there.
            raise InvalidParameters(
                "header", "Content-Type",
                "Content-Type should be multipart/form-data (a file cannot be sent through /batch)",
            )
        return await self.attach(req, loc)

    async def default_bucket_view(self, req: ApiRequest) -> ApiResponse:
        """
        C{/buckets/default/...}: through the default_bucket plugin (which
        creates the user's bucket and the collection, then routes to the
        real bucket's URL, landing in L{view} with the body still spooled),
        or, without it, as the bucket named C{default}.
        """
        through = self.registry.route("default-bucket-sub")
        if through is None:
            req.params = {**req.params, "bucket_id": "default"}
            return await self.view(req)
        sub = f"collections/{req.params['collection_id']}/records/{req.params['record_id']}/attachment"
        req.params = {"subpath": sub}
        return await through.view(req)

    async def parse(self, req: ApiRequest) -> Upload:
        boundary = boundary_of(req.header("Content-Type"))
        source = req.upload
        if source is None:
            # Not a network request (a test's, or another plugin's): the
            # body is in memory.
            source = BytesIO(req.body)
        source.seek(0, os.SEEK_END)
        size = source.tell()
        spool = None
        if size <= INLINE_LIMIT:
            upload = parse_upload(source, boundary, self.max_size, spool)
        else:
            upload = await self._blocking(parse_upload, source, boundary, self.max_size, spool)
        if upload.file is None:
            upload.close()
            raise InvalidPostedData("body", FIELD, "Attachment missing.")
        return upload

    def describe(self, upload: Upload, location: str) -> dict:
        filename = clean_filename(upload.filename or "")
        mimetype = (upload.declared_type or "").split(";", 1)[0].strip().lower()
        if not mimetype or mimetype == "application/octet-stream":
            mimetype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        return {
            "filename": filename,
            "hash": upload.sha256,
            "location": location,
            "mimetype": mimetype,
            "size": upload.size,
        }

    def check_upload(self, upload: Upload) -> tuple[str, str]:
        """The file's extension and media type, if the settings allow them."""
        filename = clean_filename(upload.filename or "")
        ext = extension_of(filename)
        if self.extensions and ext not in self.extensions:
            raise InvalidParameters(
                "body", FIELD, f"File extension not allowed: {ext or '(none)'}. Allowed: "
                + ", ".join(sorted(self.extensions)),
            )
        mimetype = self.describe(upload, "")["mimetype"]
        if self.mimetypes and not any(fnmatch.fnmatchcase(mimetype, m) for m in self.mimetypes):
            raise InvalidParameters("body", FIELD, f"File type not allowed: {mimetype}")
        if self.check_type:
            why = mismatch(mimetype, upload.head, complete=upload.size <= len(upload.head))
            if why is not None:
                raise InvalidParameters("body", FIELD, f"File content does not match its type: {why}")
        return ext, mimetype

    def json_field(self, upload: Upload, name: str):
        raw = upload.fields.get(name)
        if raw is None:
            return None
        try:
            value = jsonutil.loads(raw)
        except jsonutil.JSONError as e:
            raise InvalidPostedData("body", name, f"body: {name} is not valid JSON ({e})") from None
        if not isinstance(value, dict):
            raise InvalidParameters("body", name, f"{name} should be a JSON object")
        return value

    async def attach(self, req: ApiRequest, loc) -> ApiResponse:
        # A request that runs again after a write conflict keeps its parsed,
        # stored upload (see JsonSyncApp.process).
        upload: Upload | None = req.extras.get("attachment_upload")
        if upload is None:
            upload = await self.parse(req)
            req.extras["attachment_upload"] = upload
        try:
            return await self._attach(req, loc, upload)
        except WriteConflict:
            raise
        except BaseException:
            # The request fails: the file it stored is nobody's.
            upload.close()
            if upload.stored is not None:
                name, upload.stored = upload.stored, None
                await self.delete_file(name)
            raise

    async def store_upload(self, req: ApiRequest, upload: Upload, ext: str) -> dict:
        """Store the file (gzipped if so configured): the record's attachment field."""
        params = req.params
        described = self.describe(upload, "")
        source, gzipped = upload.file, self.setting(params, "gzipped")
        if gzipped:
            # As kinto-attachment did: the stored file, its name, hash, size
            # and type are the gzip's; "original" describes what was sent.
            original = {k: described[k] for k in ("filename", "hash", "mimetype", "size")}
            source, size, digest = await self._blocking(gzip_copy, upload.file)
            upload.close()
            upload.file = source
            described = {**described, "filename": described["filename"] + ".gz", "hash": digest,
                         "mimetype": GZIP_TYPE, "size": size, "original": original}
            ext = ".gz"
        name = f"{params['bucket_id']}/{params['collection_id']}/{uuid.uuid4().hex}{ext}"
        await self._blocking(self.store.save, name, source)
        upload.stored = name
        upload.close()
        described["location"] = self.store.url(name)
        return described

    async def _attach(self, req: ApiRequest, loc, upload: Upload) -> ApiResponse:
        engine = self.registry.engine
        rt = loc.resource
        ext, _ = self.check_upload(upload)
        unknown = sorted(set(upload.fields) - {"data", "permissions"})
        if unknown:
            raise InvalidPostedData("body", unknown[0], f"body: {unknown[0]!r} not in ('data', 'permissions')")
        data = self.json_field(upload, "data") or {}
        perms = engine.clean_permissions(rt, self.json_field(upload, "permissions"))
        checks = [(loc.uri, "write"), (loc.parent_uri, rt.create_permission)]
        missing, existing, (can_write, can_create) = await engine.fetch(req, loc, checks)
        if not (can_write if existing is not None else can_create):
            raise engine.deny(req)
        engine.check_id(loc)
        if missing is not None:
            raise missing
        check_preconditions(req, existing["last_modified"] if existing else None, existing)
        if upload.described is None:
            upload.described = await self.store_upload(req, upload, ext)
        attachment = dict(upload.described)
        req.extras["attachment_write"] = True
        try:
            if existing is None:
                record = {**data, FIELD: attachment}
                response = await engine.create(req, loc, record, perms)
            else:
                base = {k: v for k, v in existing.items() if k != "last_modified"}
                record = {**base, **data, FIELD: attachment}
                new = await engine.validate(req, loc, record, existing)
                response = await engine.replace(req, loc, existing, new, perms, replace_acl=False)
        finally:
            req.extras["attachment_write"] = False
        obj = response.body["data"]
        headers = validators(obj["last_modified"])
        headers.append(("Location", self.record_url(req)))
        # As kinto-attachment answers: 201 when the record was created.
        return ApiResponse(obj[FIELD], 201 if existing is None else 200, headers)

    def record_url(self, req: ApiRequest) -> str:
        p = req.params
        return (f"{req.scheme}://{req.host}{API_PREFIX}/buckets/{p['bucket_id']}/collections/{p['collection_id']}"
                f"/records/{p['record_id']}")

    async def detach(self, req: ApiRequest, loc) -> ApiResponse:
        engine = self.registry.engine
        existing = await engine.existing_for_write(req, loc)
        if FIELD in existing and existing[FIELD] is None:
            return ApiResponse(None, 204)
        # As kinto-attachment does, the field stays, set to null.
        base = {k: v for k, v in existing.items() if k != "last_modified"}
        base[FIELD] = None
        req.extras["attachment_write"] = True
        try:
            new = await engine.validate(req, loc, base, existing)
            await engine.replace(req, loc, existing, new, None, replace_acl=False)
        finally:
            req.extras["attachment_write"] = False
        # The file goes after the commit (FileJanitor), never before.
        return ApiResponse(None, 204)
