"""
The Klein application: mounts every route of the registry, runs each
request in its transaction, and is the one place that turns exceptions into
Kinto's JSON error responses (for the network and for batch sub-requests).
"""

from __future__ import annotations

import datetime
import fnmatch
import random
import re
import time
from collections.abc import Mapping
from urllib.parse import unquote

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.exceptions import MethodNotAllowed as WzMethodNotAllowed
from werkzeug.routing import MapAdapter

from jsonsync import events, jsonutil, logs, proxies
from jsonsync.auth import authenticate
from jsonsync.channel import read_body
from jsonsync.errors import (
    InvalidParameters,
    JsonSyncError,
    MethodNotAllowed,
    RequestTooLarge,
    RouteNotFound,
    ServiceDeprecated,
    UnexpectedError,
    VersionNotAvailable,
    WriteConflict,
)
from jsonsync.http import (
    API_PREFIX,
    ApiRequest,
    ApiResponse,
    NotModified,
    RequestContext,
    check_accept,
    check_content_type,
    error_body,
    error_headers,
    parse_query,
    status_of,
    validators,
)
from jsonsync.registry import Registry, Route
from jsonsync.streaming import StreamingResponse
from jsonsync.streaming import start as start_stream

_log = Logger()

# How many times a request runs before a write conflict reaches the client.
_ATTEMPTS = 8


class _Root(Resource):
    """
    The site's root. Routing is the Klein application's: its werkzeug map
    matches the path and method, and C{Klein.execute_endpoint} runs the
    endpoint registered with C{Klein.route}. The root drives that itself
    instead of through C{KleinResource.render}, whose per-request closures
    include a recursive one: a reference cycle that kept every request's
    objects (request, headers, adapters) alive until the cyclic garbage
    collector ran, about fifty objects per request. Here an answered request
    is freed by reference counting the moment it is done. Errors are answered as
    Klein's handlers would: werkzeug's routing errors and crashes become our
    JSON errors; a URL that is not UTF-8 gets a JSON 400 too.
    """

    isLeaf = True

    def __init__(self, app: JsonSyncApp):
        super().__init__()
        self._app = app

    def render(self, request):
        try:
            result = self._dispatch(request)
            if result is NOT_DONE_YET:
                return NOT_DONE_YET  # a protocol upgrade took the connection over
            if isinstance(result, bytes):
                self._respond(result, request)
                return NOT_DONE_YET
        except Exception:
            self._last_resort(Failure(), request)
            return NOT_DONE_YET
        # The client went away: stop the work. What was not yet sent to the
        # database rolls back; a write already on its way may still commit,
        # as when a connection drops just after a request was answered.
        request.notifyFinish().addErrback(lambda _: result.cancel())
        result.addCallbacks(self._respond, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        result.addErrback(self._last_resort, request)
        return NOT_DONE_YET

    def _dispatch(self, request):
        """The response body, or a L{Deferred} of it."""
        app = self._app
        try:
            # Decoded once here; the ApiRequest takes this path.
            path = request.jsonsync_path = unquote(request.path.decode("ascii", "strict"), errors="strict")
        except UnicodeDecodeError:
            return app.bad_url(request, "URL path is not valid UTF-8")
        if "\x00" in path:
            return app.bad_url(request, "Invalid character 0x00 in the URL path")
        try:
            route, params = app.match(path, request.method.decode("ascii", "replace"))
            if route.upgrade is not None and (request.getHeader(b"upgrade") or b"").lower() == b"websocket":
                # The route's own twisted.web resource takes the connection
                # (WebSocket), which then has its own keep-alive (pings).
                channel = getattr(request, "channel", None)
                if channel is not None and hasattr(channel, "setTimeout"):
                    channel.setTimeout(None)
                return route.upgrade(request)
            return app.klein.execute_endpoint(route.name, request, **params)
        except JsonSyncError as exc:
            return app.routing_error(request, exc)
        except Exception:
            return app.crash(request, Failure())

    @staticmethod
    def _respond(body: bytes | StreamingResponse, request):
        if isinstance(body, StreamingResponse):
            # Status and headers are set; the transaction has ended.
            if not request.finished and not request._disconnected:
                start_stream(body, request)
            return
        if not request.finished and not request._disconnected:
            request.write(body)
            request.finish()

    def _failed(self, failure, request):
        if failure.check(CancelledError) and request._disconnected:
            return None
        if request.finished or request._disconnected:
            _log.failure("error after the response on {uri}", failure, uri=request.uri)
            return None
        self._respond(self._app.crash(request, failure), request)

    @staticmethod
    def _last_resort(failure, request):
        """Answering failed too (even the error answer): a plain JSON 500, always."""
        _log.failure("could not answer {uri}", failure, uri=request.uri)
        if request.finished or request._disconnected:
            return
        request.setResponseCode(500)
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        request.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(_LAST_RESORT)])
        request.write(_LAST_RESORT)
        request.finish()


_LAST_RESORT = jsonutil.dumps(error_body(UnexpectedError())[1])


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BASE_EXPOSED = ["Backoff", "Retry-After", "Alert", "Content-Length", "Content-Type", "X-Request-Id"]
_READ_EXPOSED = ["Next-Page", "Last-Modified", "ETag", "Cache-Control", "Expires", "Pragma"]
_COUNT_EXPOSED = ["Total-Objects", "Total-Records"]
_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none';"
_VERSIONED = re.compile(r"^/v\d+(/|$)")


class JsonSyncApp:
    """The HTTP face of one server, built from an activated L{Registry}."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.settings = registry.settings
        self.klein = Klein()
        self.routes: dict[str, Route] = {}
        for route in registry.routes:
            self._mount(route)
        self._adapter: MapAdapter | None = None

    # -- mounting ----------------------------------------------------------------
    def _mount(self, route: Route):
        methods = set(route.methods) | {"OPTIONS"}
        if "GET" in methods:
            methods.add("HEAD")
        self.routes[route.name] = route

        def handler(request, **params):
            return Deferred.fromCoroutine(self._serve(request, route, params))

        self.klein.route(API_PREFIX + route.rule, methods=sorted(methods), endpoint=route.name)(handler)

    def resource(self):
        return _Root(self)

    def adapter(self) -> MapAdapter:
        """The Klein application's werkzeug map, bound once (only path and method are matched)."""
        if self._adapter is None:
            self._adapter = self.klein.url_map.bind("localhost")
        return self._adapter

    def match(self, path: str, method: str) -> tuple[Route, Mapping[str, str]]:
        """
        C{(route, params)} for a path (with its C{/v1} prefix) and a method.
        The one place where werkzeug's routing errors become ours:
        L{RouteNotFound} (no route, or one only with another trailing
        slash), L{MethodNotAllowed} (with the methods the path takes),
        L{InvalidParameters} for anything else werkzeug refuses.
        """
        try:
            endpoint, params = self.adapter().match(path, method)
        except WzMethodNotAllowed as exc:
            raise MethodNotAllowed(exc.valid_methods or ()) from None
        except NotFound:
            raise RouteNotFound() from None
        except HTTPException as exc:
            if getattr(exc, "code", None) in (301, 308):
                raise RouteNotFound() from None  # werkzeug's slash redirects: not ours
            raise InvalidParameters("path", None, str(exc.description)) from None
        return self.routes[endpoint], params

    # -- the network ---------------------------------------------------------------
    def _api_request(self, request) -> ApiRequest:
        headers = {
            k.decode("latin-1").lower(): v[-1].decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        raw_path, _, raw_query = request.uri.partition(b"?")
        fwd_scheme = fwd_host = None
        if getattr(request, "jsonsync_request_id", None) is None:
            # Once per request (routing errors build a second ApiRequest):
            # when it started, its id, and who sent it.
            request.jsonsync_started = time.monotonic()
            request.jsonsync_request_id = logs.request_id(headers.get("x-request-id"))
            trusted = self.settings.get("trusted_proxies")
            if trusted:
                peer = getattr(request.getClientAddress(), "host", None)
                client, fwd_scheme, fwd_host = proxies.resolve(
                    peer, headers, tuple(trusted), self.settings.get("trusted_proxy_headers", "x-forwarded")
                )
                request.jsonsync_client = client
                request.jsonsync_forwarded = (fwd_scheme, fwd_host)
        else:
            fwd_scheme, fwd_host = getattr(request, "jsonsync_forwarded", (None, None))
        scheme = self.settings.get("http_scheme") or fwd_scheme or ("https" if request.isSecure() else "http")
        host = self.settings.get("http_host") or fwd_host or headers.get("host") or "localhost"
        path = getattr(request, "jsonsync_path", None)
        if path is None:  # a path that is not UTF-8 (answered 400): shown as it can be
            path = unquote(raw_path.decode("latin-1"), errors="replace")
        req = ApiRequest(
            request.method.decode("ascii", "replace"),
            path,
            [],
            headers,
            b"",
            scheme=scheme,
            host=host,
            raw_query=raw_query.decode("latin-1"),
        )
        req.request_id = request.jsonsync_request_id
        if self.registry.response_observers:
            req.client = getattr(request, "jsonsync_client", None) or logs.peer(request)
        request.jsonsync = req
        return req

    async def _serve(self, request, route: Route, params: dict) -> bytes | StreamingResponse:
        req = self._api_request(request)
        try:
            req.query = parse_query(req.raw_query)
            if route.streams_body:
                # The view reads the body from twisted.web's spooled file
                # itself (attachment uploads, larger than the JSON limit).
                if getattr(request, "too_large", False):
                    raise RequestTooLarge()
                req.upload = request.content
            else:
                req.body = read_body(request)
        except JsonSyncError as exc:
            return self._write(request, req, self.finish(req, self.error_response(exc), route))
        req.params = params
        response = await self.process(req, route)
        return self._write(request, req, response)

    def _write(self, request, req: ApiRequest, response: ApiResponse) -> bytes:
        request.setResponseCode(response.status)
        for name, value in response.headers:
            request.responseHeaders.addRawHeader(name, value)
        if isinstance(response, StreamingResponse):
            # Written by _Root._respond as the view's writer produces it.
            return response  # type: ignore[return-value]
        body = response.encoded_body()
        if response.status != 304:
            request.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
        return body

    # -- the request pipeline ----------------------------------------------------
    async def process(self, req: ApiRequest, route: Route, ctx: RequestContext | None = None) -> ApiResponse:
        """
        Run one request (in its own transaction, or in C{ctx}'s for a batch
        sub-request) and return its response, errors included. In a batch,
        server errors propagate so that the whole batch rolls back.
        """
        if ctx is not None:
            ctx.shared = True
            return await self._attempt(req, route, ctx, own=False)
        # A write that finds its object (or list) changed since the reads it
        # decided on fails with WriteConflict, and nothing of the attempt
        # commits: the request then runs again from the start, on the new
        # state; from its second attempt on, the lists it writes are locked
        # before it reads, so that a hot record cannot starve it. A batch
        # runs again whole.
        path, params = req.path, req.params
        locks: frozenset = frozenset()
        shared: frozenset = frozenset()
        for attempt in range(_ATTEMPTS):
            if attempt:
                req.reset_attempt()
                req.path, req.params = path, params
            ctx = RequestContext(self.registry.storage.transaction())
            if attempt:
                ctx.txn.lock_lists = tuple(locks)
                ctx.txn.lock_shared = tuple(shared - locks)
            try:
                return await self._attempt(req, route, ctx, own=True)
            except WriteConflict as conflict:
                if conflict.deadlock:
                    # Worth knowing: the lock order should make this rare.
                    _log.warn("{method} {path}: the database broke a deadlock; running it again",
                              method=req.method, path=path)
                locks |= conflict.lists
                shared |= conflict.shared
                if attempt >= 2:
                    # Let the writers ahead finish (a few ms, jittered).
                    await deferLater(self.registry.reactor, random.uniform(0.001, 0.005) * attempt, lambda: None)
        _log.warn("{method} {path}: write conflict after {n} attempts", method=req.method, path=path, n=_ATTEMPTS)
        return self.finish(req, self.error_response(WriteConflict()), route)

    async def _attempt(self, req: ApiRequest, route: Route, ctx: RequestContext, own: bool) -> ApiResponse:
        req.ctx = ctx
        req.registry = self.registry
        try:
            response = await self._run(req, route)
            if own:
                await events.before_commit(self.registry, ctx)
                await ctx.txn.commit()
        except WriteConflict:
            if own:
                await ctx.txn.rollback()
            raise
        except NotModified as nm:
            if own:
                await ctx.txn.rollback()
            response = ApiResponse(None, 304, validators(nm.timestamp))
        except JsonSyncError as exc:
            if own:
                await ctx.txn.rollback()
            elif status_of(exc)[0] >= 500:
                raise
            response = self.error_response(exc)
        except CancelledError:
            # The client hung up (see _Root.render): nobody to answer.
            if own:
                await ctx.txn.rollback()
            raise
        except Exception:
            _log.failure("unexpected error on {method} {path}", method=req.method, path=req.path)
            if own:
                await ctx.txn.rollback()
                response = self.error_response(UnexpectedError())
            else:
                raise
        return self.finish(req, response, route)

    async def _run(self, req: ApiRequest, route: Route) -> ApiResponse:
        self.check_service(req)
        if req.method == "OPTIONS":
            return self.preflight(req, route)
        if self.settings["readonly"] and req.method in WRITE_METHODS:
            raise MethodNotAllowed([m for m in route.methods if m not in WRITE_METHODS])
        if route.kind == "resource":
            check_accept(req, route.accepts)
            if req.method in ("POST", "PUT"):
                check_content_type(req)
        if route.authenticate:
            await authenticate(self.registry, req)
        return await route.view(req)

    def check_service(self, req: ApiRequest):
        eos = self.settings.get("eos")
        if eos and datetime.date.fromisoformat(eos) <= datetime.date.today():
            raise ServiceDeprecated()
        # A disallowed Origin gets no CORS headers (the browser then keeps the
        # answer from the page); Kinto instead fails every such request with
        # 400, which also breaks non-browser clients that happen to send one.
        origin = req.header("Origin")
        if req.method == "OPTIONS" and origin is not None and not self.origin_allowed(origin):
            raise InvalidParameters("header", "Origin", f"{origin} not allowed")

    def origin_allowed(self, origin: str) -> bool:
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in self.settings["cors_origins"])

    def preflight(self, req: ApiRequest, route: Route) -> ApiResponse:
        origin = req.header("Origin")
        wanted = req.header("Access-Control-Request-Method")
        if not origin or not wanted:
            raise InvalidParameters(
                "header", "Origin" if not origin else "Access-Control-Request-Method",
                "CORS preflight needs Origin and Access-Control-Request-Method headers",
            )
        methods = set(route.methods) | {"OPTIONS"}
        if "GET" in methods:
            methods.add("HEAD")
        asked = [h.strip() for h in (req.header("Access-Control-Request-Headers") or "").split(",") if h.strip()]
        allowed_headers = [
            "Authorization", "Content-Type", "If-Match", "If-None-Match", "Response-Behavior",
            "Cache-Control", "Pragma", "X-Request-Id", *asked,
        ]
        headers = [
            ("Access-Control-Allow-Methods", ",".join(sorted(methods))),
            ("Access-Control-Allow-Headers", ",".join(dict.fromkeys(allowed_headers))),
            ("Access-Control-Max-Age", str(self.settings["cors_max_age_seconds"])),
        ]
        return ApiResponse(None, 200, headers)

    def error_response(self, exc: JsonSyncError) -> ApiResponse:
        status, body = error_body(exc, self.settings.get("error_info_link"))
        headers = error_headers(exc, self.settings["retry_after_seconds"])
        return ApiResponse(body, status, headers)

    def finish(self, req: ApiRequest, response: ApiResponse, route: Route | None) -> ApiResponse:
        """The headers every response carries."""
        h = response.headers
        if not (isinstance(response.body, bytes) and response.get_header("Content-Type")):
            h.append(("Content-Type", "application/json"))
        request_id = req.request_id
        if request_id is not None:
            # For the request summary (jsonsync.logs) and the metrics.
            req.route_name = route.name if route is not None else None
            if response.status >= 400 and isinstance(response.body, dict):
                req.errno = response.body.get("errno")
            h.append(("X-Request-Id", request_id))
        h.append(("X-Content-Type-Options", "nosniff"))
        h.append(("Content-Security-Policy", _CSP))
        origin = req.header("Origin")
        if origin is not None and self.origin_allowed(origin):
            allow = "*" if "*" in self.settings["cors_origins"] else origin
            h.append(("Access-Control-Allow-Origin", allow))
            exposed = list(_BASE_EXPOSED)
            if route is not None and route.kind == "resource" and req.method in ("GET", "HEAD"):
                exposed += _READ_EXPOSED
                if req.method == "HEAD":
                    exposed += _COUNT_EXPOSED
            h.append(("Access-Control-Expose-Headers", ", ".join(exposed)))
        backoff = self.settings.get("backoff")
        if backoff is not None:
            share = self.settings.get("backoff_percentage")
            if share is None or random.random() * 100 < share:
                h.append(("Backoff", str(backoff)))
        eos = self.settings.get("eos")
        if eos:
            past = datetime.date.fromisoformat(eos) <= datetime.date.today()
            alert = {"code": "hard-eol" if past else "soft-eol", "message": self.settings.get("eos_message") or "", "url": self.settings.get("eos_url") or ""}
            h.append(("Alert", jsonutil.dumps(alert).decode()))
        if (
            route is not None
            and route.kind == "resource"
            and req.method in ("GET", "HEAD")
            and response.status == 200
            and response.get_header("Cache-Control") is None
        ):
            h.append(("Cache-Control", "no-cache, no-store"))
        for observe in self.registry.response_observers:
            observe(req, response)
        return response

    # -- what routing and crashes answer -------------------------------------------
    def routing_error(self, request, exc: JsonSyncError) -> bytes:
        req = self._api_request(request)
        if isinstance(exc, RouteNotFound):
            response = self.not_found(req)
        else:
            response = self.error_response(exc)
        return self._write(request, req, self.finish(req, response, None))

    def not_found(self, req: ApiRequest) -> ApiResponse:
        path = req.path
        qs = ("?" + req.raw_query) if req.raw_query else ""
        if not path.startswith("/"):
            # Neither a path nor an absolute URL (LimitedRequest takes those):
            # nothing to redirect to.
            return self.error_response(InvalidParameters("path", None, "the request target must be a path"))
        if not _VERSIONED.match(path):
            if self.settings["version_prefix_redirect_enabled"]:
                if req.method == "OPTIONS":
                    return ApiResponse(None, 200)
                return self.redirect(req, API_PREFIX + path + qs, self.settings["version_prefix_redirect_ttl_seconds"])
            return self.error_response(RouteNotFound())
        if not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            return self.error_response(VersionNotAvailable())
        if path == API_PREFIX:
            return self.redirect(req, API_PREFIX + "/" + qs, -1)
        if path.endswith("/") and path != API_PREFIX + "/" and self.settings["trailing_slash_redirect_enabled"]:
            return self.redirect(req, path.rstrip("/") + qs, self.settings["trailing_slash_redirect_ttl_seconds"])
        return self.error_response(RouteNotFound())

    def redirect(self, req: ApiRequest, target: str, ttl: int) -> ApiResponse:
        location = f"{req.scheme}://{req.host}{target}"
        headers = [("Location", location)]
        if ttl is not None and ttl >= 0:
            headers.append(("Cache-Control", f"max-age={ttl}"))
        return ApiResponse(None, 307, headers)

    def bad_url(self, request, reason: str) -> bytes:
        req = self._api_request(request)
        exc = InvalidParameters("path", None, reason)
        return self._write(request, req, self.finish(req, self.error_response(exc), None))

    def crash(self, request, failure) -> bytes:
        _log.failure("unhandled error on {uri}", failure, uri=request.uri)
        req = self._api_request(request)
        return self._write(request, req, self.finish(req, self.error_response(UnexpectedError()), None))
