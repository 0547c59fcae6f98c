"""
Request and response plumbing: the transport-independent request that
views (and batch sub-requests) work on, the response they return, JSON
bodies, conditional headers and content negotiation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import parse_qsl, quote, urlencode

from twisted.logger import Logger

from jsonsync import jsonutil
from jsonsync.errors import (
    BackendUnavailable,
    Forbidden,
    HeaderFieldsTooLarge,
    InvalidParameters,
    InvalidPostedData,
    JsonSyncError,
    ListenerRejected,
    MethodNotAllowed,
    NotAcceptable,
    ObjectExists,
    ObjectNotFound,
    ParentNotFound,
    PreconditionFailed,
    RequestHeadTimeout,
    RequestLineTooLong,
    RequestTooLarge,
    RouteNotFound,
    ServiceDeprecated,
    SyncHorizonPassed,
    Unauthenticated,
    UnexpectedError,
    UnsupportedMediaType,
    VersionNotAvailable,
    WriteConflict,
)

if TYPE_CHECKING:
    from jsonsync.events import ResourceEvent
    from jsonsync.interfaces import ITransaction

_log = Logger()

API_PREFIX = "/v1"

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class RequestContext:
    """
    What a request shares with its batch siblings: the transaction, the
    events waiting for the listeners, and authentication results.
    """

    def __init__(self, txn: ITransaction):
        self.txn = txn
        self.events: list[ResourceEvent] = []
        self.auth_cache: dict[Any, Any] = {}
        # True once a /batch runs its sub-requests in this transaction.
        self.shared = False
        # Checks granted to the batch's sub-requests (Access.fetch): the
        # parent URI, the first check, the principals.
        self.granted: set[tuple[str, tuple[str, str], frozenset[str]]] = set()


class ApiRequest:
    """
    One API request, from the network or from a C{/batch}, and everything
    the server learns about it while it runs. Every piece of per-request
    state is declared here (C{__slots__}: setting anything else fails); a
    plugin keeps its own under its name in L{extras}.

    @ivar path: the path with its C{/v1} prefix, percent-decoded.
    @ivar query: C{[(name, value)]} in the order sent.
    @ivar headers: lower-cased header names to values.
    @ivar params: the route's path parameters.
    @ivar ctx: the L{RequestContext} of the attempt (its transaction): set
        by the application before anything of the request runs, so every
        view, hook and policy reads it as is. It is not set before (reading
        it then raises L{AttributeError}).
    @ivar registry: the server's L{jsonsync.interfaces.IRegistry}.
    @ivar user_id: the prefixed user id, or C{None} when anonymous.
    @ivar principals: the user's principals (groups once loaded).
    @ivar groups_loaded: whether C{principals} holds the groups yet.
    @ivar authenticated: whether a policy recognised the credentials.
    @ivar auth_entry: what the policy chain decided, shared by a batch's
        sub-requests with the same credentials (L{jsonsync.auth}).
    @ivar acl_cache: ACLs read along with permission checks, by URI.
    @ivar page_ahead: a list page read along with the permission check.
    @ivar in_batch: a sub-request of a C{/batch}.
    @ivar spent_token: the DELETE pagination token this request spent.
    @ivar attempt: attempts made (a request runs again after a write conflict).
    @ivar upload: the spooled body of a route that streams its body.
    @ivar request_id, route_name, errno: for the request summary and metrics.
    @ivar extras: plugins' own state for this request, C{{plugin name: value}};
        kept across attempts.
    @ivar restriction: an L{jsonsync.interfaces.IRestriction} narrowing what
        the request may do (a scoped token), or C{None}: set by the policy
        chain from the policy's L{jsonsync.auth.Identity}.
    @ivar client: the client's address (after trusted proxies), set only
        when a response observer wants it.
    """

    __slots__ = (
        "method", "path", "query", "headers", "body", "scheme", "host", "raw_query",
        "ctx", "page_ahead", "registry", "user_id", "principals", "groups_loaded",
        "authenticated", "auth_entry", "acl_cache", "in_batch", "_json", "params",
        "spent_token", "attempt", "upload", "request_id", "route_name", "errno", "extras",
        "restriction", "client",
    )

    # Declared, not assigned in __init__: a slot left empty until the
    # application sets it (see the ivar), so that it needs no Optional.
    ctx: RequestContext

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
        self.page_ahead: Any = None
        self.registry: Any = None
        self.user_id: str | None = None
        self.principals: list[str] = ["system.Everyone"]
        self.groups_loaded = True
        self.authenticated = False
        self.auth_entry: Any = None
        self.acl_cache: dict[str, dict] = {}
        self.in_batch = False
        self._json: Any = _UNPARSED
        self.params: Mapping[str, str] = {}
        self.spent_token: str | None = None
        self.attempt = 0
        self.upload: Any = None
        self.request_id: str | None = None
        self.route_name: str | None = None
        self.errno: int | None = None
        self.extras: dict[str, Any] = {}
        self.restriction: Any = None
        self.client: str | None = None

    def set_json(self, value: Any) -> None:
        """Replace the body by C{value} (views that rewrite a request before dispatching it)."""
        self.body = jsonutil.dumps(value)
        self._json = value

    def reset_attempt(self) -> None:
        """Forget what one attempt learnt, before the request runs again (C{ctx}: the next attempt sets its own)."""
        self.page_ahead = None
        self.user_id = None
        self.principals = ["system.Everyone"]
        self.groups_loaded = True
        self.authenticated = False
        self.restriction = None
        self.acl_cache = {}
        self.attempt += 1

    @property
    def txn(self) -> ITransaction:
        return self.ctx.txn

    @overload
    def header(self, name: str) -> str | None: ...
    @overload
    def header(self, name: str, default: str) -> str: ...
    @overload
    def header(self, name: str, default: str | None) -> str | None: ...

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
_LAST_HTTP_SECOND = 253402300799  # 9999-12-31T23:59:59Z


def http_date(ms: int) -> str:
    """An HTTP date (second precision), memoised for the current second."""
    # A client may set an object's last_modified (and a tombstone's): HTTP
    # dates stop at year 9999, beyond which formatdate fails.
    second = min(max(ms // 1000, 0), _LAST_HTTP_SECOND)
    if _last_date[0] != second:
        _last_date[0] = second
        _last_date[1] = formatdate(second, usegmt=True)
    return _last_date[1]


def validators(timestamp: int) -> list[tuple[str, str]]:
    return [("ETag", f'"{timestamp}"'), ("Last-Modified", http_date(timestamp))]


# ASCII digits, at most what a 64-bit timestamp holds (int() refuses
# decimal strings of over 4,300 digits with an error of its own).
_ETAG = re.compile(r'^"([0-9]{1,19})"$')


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

def check_accept(req: ApiRequest, also: tuple[str, ...] = ()) -> None:
    """Refuse (406) an C{Accept} that takes neither JSON nor one of C{also} (a route's other media types)."""
    accept = req.header("Accept")
    if not accept:
        return
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        if re.search(r"(^|;)\s*q\s*=\s*0(\.0*)?\s*($|;)", params):
            continue  # q=0 means "not this one"
        if media in ("*/*", "application/*", JSON, "") or media in also:
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


# --- errors as HTTP answers --------------------------------------------------

# exception class -> (HTTP status, errno); the most specific class wins.
ERRORS: dict[type, tuple[int, int]] = {
    NotAcceptable: (406, 107),
    UnsupportedMediaType: (415, 107),
    InvalidPostedData: (400, 109),
    InvalidParameters: (400, 107),
    Unauthenticated: (401, 104),
    Forbidden: (403, 121),
    ParentNotFound: (404, 111),
    ObjectNotFound: (404, 110),
    RouteNotFound: (404, 111),
    VersionNotAvailable: (404, 116),
    MethodNotAllowed: (405, 115),
    PreconditionFailed: (412, 114),
    ObjectExists: (409, 122),
    WriteConflict: (409, 122),
    RequestTooLarge: (413, 113),
    RequestHeadTimeout: (408, 107),
    RequestLineTooLong: (414, 113),
    HeaderFieldsTooLarge: (431, 113),
    BackendUnavailable: (503, 201),
    ServiceDeprecated: (410, 202),
    SyncHorizonPassed: (410, 107),
    ListenerRejected: (400, 107),
    UnexpectedError: (500, 999),
}


def status_of(exc: JsonSyncError) -> tuple[int, int]:
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return ERRORS[UnexpectedError]


def error_body(exc: JsonSyncError, info_link: str | None = None) -> tuple[int, dict]:
    """
    Kinto's error body for C{exc}: C{code}, C{errno}, C{error}, and
    C{message}, C{info}, C{details} when they have something to say.
    """
    status, errno = status_of(exc)
    body: dict[str, Any] = {
        "code": status,
        "errno": errno,
        "error": HTTPStatus(status).phrase,
    }
    if isinstance(exc, InvalidParameters) and status == 400:
        body["error"] = "Invalid parameters"
    if exc.message:
        body["message"] = exc.message
    if status == 500 and info_link:
        body["info"] = info_link
    if exc.details is not None:
        body["details"] = exc.details
    return status, body


def error_headers(exc: JsonSyncError, retry_after: int) -> list[tuple[str, str]]:
    """The headers an error carries beside its body."""
    headers: list[tuple[str, str]] = []
    if isinstance(exc, Unauthenticated):
        headers.extend(("WWW-Authenticate", c) for c in exc.challenges)
    elif isinstance(exc, MethodNotAllowed) and exc.allowed:
        headers.append(("Allow", ", ".join(exc.allowed)))
    elif isinstance(exc, (BackendUnavailable, ObjectExists, WriteConflict)):
        headers.append(("Retry-After", str(retry_after)))
    elif isinstance(exc, PreconditionFailed) and exc.timestamp is not None:
        headers.extend(validators(exc.timestamp))
    return headers
