"""
The live feed over one WebSocket (C{/v1/live}, autobahn): a client
subscribes to several record lists, each with its own cursor, filters and
C{_fields}, and receives the same events with the same guarantees as the
Server-Sent Events of L{jsonsync.plugins.live} (the same readers, groups
and notices serve both). The protocol (JSON text messages) is in
docs/live-changes.md.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from jsonsync import jsonutil
from jsonsync.errors import InvalidParameters, JsonSyncError, UnexpectedError
from jsonsync.http import API_PREFIX, ApiRequest, ApiResponse, error_body
from jsonsync.plugins.live import FeedEnded, Hub, Reader, Subscriber, _Refused, parse_cursor
from jsonsync.registry import Route

_log = Logger()

# Messages a client may send, and subscriptions per connection.
_MAX_MESSAGE = 64 * 1024
_MAX_SUBSCRIPTIONS = 100
_ID = str


def _error(exc: JsonSyncError) -> dict:
    return error_body(exc)[1]


class LiveProtocol(WebSocketServerProtocol):
    hub: Hub
    view: Any

    def onConnect(self, request):
        self.authorization = (request.headers or {}).get("authorization")
        self.host = (request.headers or {}).get("host") or "localhost"
        self.subscriptions: dict[str, WSSubscriber] = {}
        self.starting: dict[str, Deferred] = {}
        return None

    def onClose(self, wasClean, code, reason):
        for sub in list(getattr(self, "subscriptions", {}).values()):
            sub.end(None)
        for d in list(getattr(self, "starting", {}).values()):
            d.cancel()

    def send(self, message: dict | bytes) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            payload = message if isinstance(message, bytes) else jsonutil.dumps(message)
            # autobahn applies the (incoming) message limit to what we send
            # as well; a page of large records is bigger, and bounded.
            limit: int = getattr(self, "maxMessagePayloadSize", 0)
            self.maxMessagePayloadSize = 0
            try:
                self.sendMessage(payload, isBinary=False)
            finally:
                self.maxMessagePayloadSize = limit

    def unsent(self) -> int:
        """Bytes the transport holds unsent (twisted's buffers), for the subscribers' bound."""
        transport = self.transport
        buffered = len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0)
        return buffered + getattr(transport, "_tempDataLen", 0)

    def onMessage(self, payload, isBinary):
        try:
            if isBinary or len(payload) > _MAX_MESSAGE:
                raise InvalidParameters("body", None, "messages are JSON text of at most 64 KiB")
            try:
                message = jsonutil.loads(payload)
            except ValueError:
                raise InvalidParameters("body", None, "a message must be a JSON object") from None
            if not isinstance(message, dict):
                raise InvalidParameters("body", None, "a message must be a JSON object")
            kind = message.get("type")
            if kind == "auth":
                value = message.get("authorization")
                if not isinstance(value, str):
                    raise InvalidParameters("body", "authorization", "authorization must be a string")
                self.authorization = value
                self.send({"type": "auth", "ok": True})
            elif kind == "subscribe":
                self.subscribe(message)
            elif kind == "unsubscribe":
                sid = message.get("id")
                sub = self.subscriptions.pop(sid, None) if isinstance(sid, str) else None
                if sub is not None:
                    sub.end(None)
                starting = self.starting.pop(sid, None) if isinstance(sid, str) else None
                if starting is not None:
                    starting.cancel()
                self.send({"type": "unsubscribed", "id": sid})
            else:
                raise InvalidParameters("body", "type", "type must be subscribe, unsubscribe or auth")
        except JsonSyncError as exc:
            self.send({"type": "error", "error": _error(exc)})

    def subscribe(self, message: dict) -> None:
        sid = message.get("id")
        if not isinstance(sid, str) or not sid or len(sid) > 200:
            raise InvalidParameters("body", "id", "id must be a non-empty string (the client's name for it)")
        if sid in self.subscriptions or sid in self.starting:
            raise InvalidParameters("body", "id", f"subscription {sid!r} exists already")
        if len(self.subscriptions) + len(self.starting) >= _MAX_SUBSCRIPTIONS:
            raise InvalidParameters("body", "id", f"at most {_MAX_SUBSCRIPTIONS} subscriptions per connection")
        bucket, collection = message.get("bucket"), message.get("collection")
        if not isinstance(bucket, str) or not isinstance(collection, str) or "/" in bucket + collection:
            raise InvalidParameters("body", "collection", "bucket and collection must be ids")
        since = message.get("since")
        if since is not None and not isinstance(since, (int, str)) or isinstance(since, bool):
            raise InvalidParameters("body", "since", "since must be a timestamp")
        cursor = parse_cursor(None if since is None else str(since), "body", "since")
        filters = message.get("filters") or {}
        if not isinstance(filters, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int, float, bool)) for k, v in filters.items()
        ):
            raise InvalidParameters("body", "filters", "filters must map querystring names to values")
        query = [(k, v if isinstance(v, str) else jsonutil.dumps(v).decode()) for k, v in filters.items()]
        fields = message.get("fields")
        if fields is not None:
            if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
                raise InvalidParameters("body", "fields", "fields must be a list of field names")
            query.append(("_fields", ",".join(fields)))
        d = Deferred.fromCoroutine(self.start(sid, bucket, collection, cursor, query))
        if not d.called:
            self.starting[sid] = d

        def failed(f):
            self.starting.pop(sid, None)
            if not f.check(CancelledError):
                _log.failure("live subscription {sid} failed", f, sid=sid)
                self.send({"type": "end", "id": sid, "error": _error(UnexpectedError())})

        d.addErrback(failed)

    async def start(self, sid: str, bucket: str, collection: str, cursor: int | None, query) -> None:
        hub = self.hub
        path = f"{API_PREFIX}/buckets/{bucket}/collections/{collection}/records"
        headers = {"authorization": self.authorization} if self.authorization else {}
        parent = f"/buckets/{bucket}/collections/{collection}"
        try:
            base = hub.feed_query(query)
            key = (("record", parent), self.authorization, tuple(base))

            def make_reader() -> Reader:
                template = ApiRequest("GET", path, [], headers, b"", host=self.host)
                template.params = {"bucket_id": bucket, "collection_id": collection}
                return Reader(hub.registry, self.view, template, base, hub.page)

            reader, events, position, more, seen = await hub.first_read(key, cursor, make_reader)
        except _Refused as refused:
            self.starting.pop(sid, None)
            self.send({"type": "end", "id": sid, "error": refused.body})
            return
        except JsonSyncError as exc:
            self.starting.pop(sid, None)
            self.send({"type": "end", "id": sid, "error": _error(exc)})
            return
        sub = WSSubscriber(hub, key, reader, position, seen, self, sid)
        try:
            if events:
                sub.send(events, 0, {})
            while more:
                if self.unsent() > hub.buffer_bytes:
                    # A backlog goes at the pace the client reads it.
                    while self.unsent() > hub.buffer_bytes // 2 and self.state == self.STATE_OPEN:
                        await _sleep(hub.registry.reactor, 0.01)
                if self.state != self.STATE_OPEN:
                    return
                events, position, more, seen = await hub.backlog_page(reader, position)
                if events:
                    sub.send(events, 0, {})
                sub.cursor, sub.seen = position, seen
        except FeedEnded as refused:
            self.starting.pop(sid, None)
            self.send({"type": "end", "id": sid, "error": refused.body})
            return
        self.starting.pop(sid, None)
        if self.state != self.STATE_OPEN:
            return
        sub.cursor = position
        self.subscriptions[sid] = sub
        self.send({"type": "ready", "id": sid, "cursor": position})
        hub.join(sub)


class WSSubscriber(Subscriber):
    """One subscription of a WebSocket connection."""

    __slots__ = ("protocol", "sid")

    def __init__(self, hub: Hub, key: tuple, reader: Reader, cursor: int, seen: int, protocol: LiveProtocol,
                 sid: str):
        super().__init__(hub, key, reader, cursor, seen)
        self.protocol = protocol
        self.sid = sid

    def send(self, events, start, cache):
        self.protocol.send(_changes(self.sid, events[start:] if start else events))

    def unsent(self) -> int:
        return self.protocol.unsent()

    def finish(self, body):
        self.protocol.subscriptions.pop(self.sid, None)
        if body is not None:
            self.protocol.send({"type": "end", "id": self.sid, "error": body})


def _changes(sid: str, events: list[tuple[int, bytes]]) -> bytes:
    return b'{"type":"changes","id":%s,"cursor":%d,"data":[%s]}' % (
        jsonutil.dumps(sid), events[-1][0], b",".join(text for _, text in events),
    )


def _sleep(reactor, seconds: float) -> Deferred:
    d: Deferred = Deferred()
    call = reactor.callLater(seconds, d.callback, None)
    d.addErrback(lambda f: (call.cancel() if call.active() else None, f)[1])
    return d


def install(registry, hub: Hub, view) -> None:
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(maxMessagePayloadSize=_MAX_MESSAGE, autoPingInterval=hub.heartbeat_seconds,
                               autoPingTimeout=max(hub.heartbeat_seconds * 2, 10))

    class Protocol(LiveProtocol):
        pass

    Protocol.hub = hub
    Protocol.view = staticmethod(view)
    factory.protocol = Protocol
    resource = WebSocketResource(factory)

    async def not_upgraded(req: ApiRequest) -> ApiResponse:
        body = {
            "code": 426, "errno": 107, "error": "Upgrade Required",
            "message": "This endpoint speaks WebSocket (see the live capability).",
        }
        return ApiResponse(body, 426, [("Upgrade", "websocket")])

    registry.add_route(Route("/live", ("GET",), not_upgraded, "live-websocket", summary="Live changes (WebSocket)",
                             upgrade=resource.render))
