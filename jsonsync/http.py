"""
Request and response plumbing: the transport-independent request that
views (and batch sub-requests) work on, the response they return, JSON
bodies, conditional headers and content negotiation.
"""

from __future__ import annotations

import re
from email.utils import formatdate
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from twisted.web.server import Request

from jsonsync import jsonutil
from jsonsync.errors import (
    InvalidParameters,
    NotAcceptable,
    PreconditionFailed,
    RequestTooLarge,
    UnsupportedMediaType,
)

API_PREFIX = "/v1"

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class RequestContext:
    """
    What a request shares with its batch siblings: the transaction, the
    events waiting for the listeners, and authentication results.
    """

    def __init__(self, txn):
        self.txn = txn
        self.events: list = []
        self.auth_cache: dict[Any, Any] = {}
        # True once a /batch runs its sub-requests in this transaction.
        self.shared = False
        # Checks granted to the batch's sub-requests (Engine.fetch).
        self.granted: set = set()


class ApiRequest:
    """
    One API request, from the network or from a C{/batch}.

    @ivar path: the path with its C{/v1} prefix, percent-decoded.
    @ivar query: C{[(name, value)]} in the order sent.
    @ivar headers: lower-cased header names to values.
    """

    def __init__(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
        scheme: str = "http",
        host: str = "localhost",
        raw_query: str = "",
    ):
        self.method = method.upper()
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.scheme = scheme
        self.host = host
        self.raw_query = raw_query
        self.ctx: RequestContext | None = None
        # A list page read along with the permission check (Engine.fetch).
        self.page_ahead = None
        self.registry: Any = None
        self.user_id: str | None = None
        self.principals: list[str] = ["system.Everyone"]
        self.groups_loaded = True
        self.authenticated = False
        self.acl_cache: dict[str, dict] = {}
        self.in_batch = False
        self._json: Any = _UNPARSED
        self.params: dict[str, str] = {}
        # The DELETE pagination token this request spent (Engine.spend_token).
        self.spent_token: str | None = None
        # Attempts made (a request runs again after a write conflict).
        self.attempt = 0

    def reset_attempt(self) -> None:
        """Forget what one attempt learnt, before the request runs again."""
        self.ctx = None
        self.page_ahead = None
        self.user_id = None
        self.principals = ["system.Everyone"]
        self.groups_loaded = True
        self.authenticated = False
        self.acl_cache = {}
        self.attempt += 1

    @property
    def txn(self):
        return self.ctx.txn

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def arg(self, name: str) -> str | None:
        """The last value of a query parameter."""
        found = None
        for key, value in self.query:
            if key == name:
                found = value
        return found

    def json(self, max_depth: int = 64) -> Any:
        """The body as JSON (C{None} when empty); 400 when it is not JSON."""
        if self._json is _UNPARSED:
            body = self.body
            if not body or not body.strip():
                self._json = None
            else:
                try:
                    self._json = jsonutil.loads(body)
                except jsonutil.JSONError as e:
                    raise InvalidParameters("body", None, f"Invalid JSON: {e}") from None
                if not jsonutil.depth(self._json, max_depth):
                    raise InvalidParameters(
                        "body", None, f"JSON nested deeper than {max_depth} levels"
                    )
                # PostgreSQL cannot store NUL in text or JSONB: refuse it on every
                # backend alike rather than fail on one.
                if b"\\u0000" in body and jsonutil.has_nul(self._json):
                    raise InvalidParameters("body", None, "Invalid character 0x00 in a string")
        return self._json

    def url(self, path: str | None = None, query: list[tuple[str, str]] | None = None) -> str:
        """An absolute URL on this server."""
        path = self.path if path is None else path
        url = f"{self.scheme}://{self.host}{quote(path, safe='/:@!$&()*+,;=-._~')}"
        if query:
            url += "?" + urlencode(query)
        return url


_UNPARSED = object()


class ApiResponse:
    """What a view returns: a status, headers, and a JSON-able body (or bytes)."""

    def __init__(self, body: Any = None, status: int = 200, headers=None):
        self.status = status
        self.body = body
        self.headers: list[tuple[str, str]] = list(headers or [])

    def add_header(self, name: str, value: str):
        self.headers.append((name, value))

    def set_header(self, name: str, value: str):
        low = name.lower()
        self.headers = [(n, v) for n, v in self.headers if n.lower() != low]
        self.headers.append((name, value))

    def get_header(self, name: str) -> str | None:
        low = name.lower()
        for n, v in self.headers:
            if n.lower() == low:
                return v
        return None

    def encoded_body(self) -> bytes:
        if self.body is None and self.status in (204, 304):
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return jsonutil.dumps(self.body)


class NotModified(Exception):
    """Raised by a view to answer 304 with the current validators."""

    def __init__(self, timestamp: int):
        super().__init__(timestamp)
        self.timestamp = timestamp


# --- validators ---------------------------------------------------------------

_last_date: list = [None, ""]


def http_date(ms: int) -> str:
    """An HTTP date (second precision), memoised for the current second."""
    second = ms // 1000
    if _last_date[0] != second:
        _last_date[0] = second
        _last_date[1] = formatdate(second, usegmt=True)
    return _last_date[1]


def validators(timestamp: int) -> list[tuple[str, str]]:
    return [("ETag", f'"{timestamp}"'), ("Last-Modified", http_date(timestamp))]


_ETAG = re.compile(r'^"(\d+)"$')


def _parse_condition(req: ApiRequest, name: str) -> int | str | None:
    raw = req.header(name)
    if raw is None:
        return None
    raw = raw.strip()
    if raw == "*":
        return "*"
    match = _ETAG.match(raw)
    if match is None:
        raise InvalidParameters(
            "header", name, 'Invalid value for If-Match. The value should be integer between double quotes.'
            if name == "If-Match"
            else 'Invalid value for If-None-Match. The value should be integer between double quotes.'
        )
    return int(match.group(1))


def check_preconditions(
    req: ApiRequest, current: int | None, existing: dict | None = None
) -> None:
    """
    Kinto's algorithm for C{If-Match} / C{If-None-Match}. C{current} is the
    target's timestamp, or C{None} when the target does not exist.
    """
    if_match = _parse_condition(req, "If-Match")
    if_none_match = _parse_condition(req, "If-None-Match")
    reading = req.method in ("GET", "HEAD")
    if reading and isinstance(if_none_match, int) and current is not None:
        if if_none_match == current:
            raise NotModified(current)
    if if_none_match == "*" and current is not None:
        raise PreconditionFailed(existing, current)
    if if_match is not None:
        if current is None:
            raise PreconditionFailed()
        if if_match != "*" and if_match != current:
            raise PreconditionFailed(existing, current)


# --- negotiation --------------------------------------------------------------

def check_accept(req: ApiRequest) -> None:
    accept = req.header("Accept")
    if not accept:
        return
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        if re.search(r"(^|;)\s*q\s*=\s*0(\.0*)?\s*($|;)", params):
            continue  # q=0 means "not this one"
        if media in ("*/*", "application/*", JSON, ""):
            return
    raise NotAcceptable()


def content_type(req: ApiRequest) -> str | None:
    raw = req.header("Content-Type")
    if not raw:
        return None
    return raw.split(";", 1)[0].strip().lower()


def check_content_type(req: ApiRequest, accepted=(JSON,)) -> str | None:
    media = content_type(req)
    if media is None or media in accepted:
        return media
    raise UnsupportedMediaType(media, accepted)


def parse_query(raw: bytes | str) -> list[tuple[str, str]]:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidParameters("querystring", None, "query string is not UTF-8") from None
    try:
        return parse_qsl(raw, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise InvalidParameters("querystring", None, "query string is not UTF-8") from None


# --- the network request ------------------------------------------------------

class LimitedRequest(Request):
    """
    A twisted.web request that stops buffering a body larger than the
    site's C{max_body} (the view then answers 413), so a hostile upload
    cannot fill the memory.
    """

    too_large = False
    _received = 0

    def __init__(self, channel, *args, **kwargs):
        # No form parsing: the API takes JSON only, and twisted.web parsed a
        # POST's Content-Type through email.headerregistry, which builds two
        # classes per call (a quarter of a memory-backend create's garbage),
        # and answered a malformed multipart body with a plain-text 400.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        if channel is not None and not getattr(channel, "_jsonsync_memo", False):
            # A connection's local address and TLS state never change: ask
            # the socket once per connection instead of on every request
            # (twisted.web and Klein each ask several times).
            host, secure = channel.getHost(), channel.isSecure()
            channel.getHost = lambda: host
            channel.isSecure = lambda: secure
            channel._jsonsync_memo = True
        super().__init__(channel, *args, **kwargs)

    def _limit(self) -> int:
        return getattr(self.channel.site, "max_body", 1 << 20)

    def requestReceived(self, command, path, version):
        # The absolute form of the target (GET http://host/v1/ HTTP/1.1, what
        # a client talking through a proxy sends) must be accepted (RFC 9112,
        # 3.2.2): route on its path, and its authority wins over Host.
        if path[:8].lower().startswith((b"http://", b"https://")):
            rest = path.split(b"//", 1)[1].partition(b"#")[0]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
            authority, path = rest[:cut].rpartition(b"@")[2], rest[cut:]  # no user:password@
            if not path.startswith(b"/"):
                path = b"/" + path
            if authority:
                self.requestHeaders.setRawHeaders(b"host", [authority])
        super().requestReceived(command, path, version)

    def gotLength(self, length):
        if length is not None and length > self._limit():
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.too_large:
            return
        self._received += len(data)
        if self._received > self._limit():
            self.too_large = True
            self.content = BytesIO()
            return
        super().handleContentChunk(data)


def read_body(request, limit: int) -> bytes:
    if getattr(request, "too_large", False):
        raise RequestTooLarge()
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    body = content.read(limit + 1)
    if len(body) > limit:
        raise RequestTooLarge()
    return body
