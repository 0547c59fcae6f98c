"""
The C{live} plugin: a resumable, permission-filtered change feed of record
lists, as Server-Sent Events on every records URL (C{Accept:
text/event-stream}) and over one WebSocket for many collections
(C{/v1/live}, see L{jsonsync.plugins.live_ws}). docs/live-changes.md
describes the protocol; the design in short:

  - B{An event is a read.} Every event is an object (record or tombstone)
    exactly as C{GET <records>?_since=<cursor>&_sort=last_modified} with the
    subscriber's filters and C{_fields} shows it, read through the records
    route itself (authentication, permissions, filters, the sync horizon),
    each read in a transaction of its own: none stays open while a stream
    does. The SSE C{id} is the object's C{last_modified}, the C{_since}
    cursor: C{Last-Event-ID} resumes with no gap and no duplicate.
  - B{Notices say only "read again".} The storage's change notifier
    (L{jsonsync.interfaces.IChangeNotifier}: in-process on memory,
    C{LISTEN}/C{NOTIFY} across processes on PostgreSQL) says that a list
    moved; a lost notice costs latency (every group reads again each
    C{live.poll_seconds}), never an event.
  - B{One read per group.} Subscribers of one list with the same
    credentials, filters and C{_fields} form a group: a notice costs one
    read for the group, from the oldest cursor among them, and each member
    gets the part after its own cursor. A subscriber first reads its backlog
    alone (page by page, at the pace its socket takes), then joins its group.
  - B{Permissions at each read.} Each read sees one state of the storage
    (C{ITransaction.snapshot}: one REPEATABLE READ transaction on
    PostgreSQL), so a record shared between the permission check and the
    page cannot fall behind the cursor. A read answered with an error (access
    revoked: 403; collection deleted: 404; ...) ends the stream with an
    C{end} event carrying Kinto's error body. Changes to the bucket, its
    collections or groups make every group below read again at once.
  - B{Bounded memory.} Past C{live.buffer_bytes} unsent to a slow client,
    its stream ends with a resumable C{end} event (429, errno 117); a
    backlog is read one page at a time, only when the socket drained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode
from weakref import WeakKeyDictionary

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from jsonsync import jsonutil
from jsonsync.auth import authenticate
from jsonsync.errors import InvalidParameters, JsonSyncError, NotAcceptable, UnexpectedError
from jsonsync.http import ApiRequest, ApiResponse, RequestContext, error_body
from jsonsync.interfaces import IJsonSyncPlugin, IResourceListener
from jsonsync.resources import querystring
from jsonsync.streaming import Stream, StreamingResponse

_log = Logger()

EVENT_STREAM = "text/event-stream"
# Query parameters a feed fixes itself: it reads in timestamp order, from its cursor.
_NOT_IN_FEEDS = ("_sort", "_limit", "_token", "_before", "_to")


class FeedEnded(Exception):
    """A read of a feed answered an error: C{body} is Kinto's error body."""

    def __init__(self, body: dict):
        super().__init__(body.get("message"))
        self.body = body


def overflow_body() -> dict:
    return {
        "code": 429,
        "errno": 117,
        "error": "Too Many Requests",
        "message": "The client did not read the feed fast enough; reconnect with its last event id to resume.",
    }


def wants_stream(req: ApiRequest) -> bool:
    accept = req.header("Accept") or ""
    for part in accept.split(","):
        media, _, params = part.partition(";")
        if media.strip().lower() == EVENT_STREAM and "q=0" not in params.replace(" ", ""):
            return True
    return False


def parse_cursor(raw: str | None, where: str, name: str) -> int | None:
    """A cursor given by a client (C{Last-Event-ID}, C{_since}): an integer timestamp, or a 400."""
    if raw is None or raw.strip() in ("", "null"):
        return None
    try:
        return querystring.since_value(raw)
    except InvalidParameters:
        raise InvalidParameters(where, name, f"{name} must be a timestamp (an event id), got {raw[:64]!r}") from None


class Reader:
    """
    Reads one feed: the records route's view, as a GET with the feed's
    filters and C{_fields}, from a cursor, in a transaction of its own.
    """

    def __init__(self, registry, view: Callable, template: ApiRequest, base_query: list[tuple[str, str]], page: int):
        self.registry = registry
        self.view = view
        self.path = template.path
        self.params = dict(template.params)
        self.scheme = template.scheme
        self.host = template.host
        # Only what decides the answer: the credentials (and the request id for the logs).
        self.headers = {k: v for k, v in template.headers.items() if k in ("authorization",)}
        self.base_query = list(base_query)
        self.page = page

    def request(self, query: list[tuple[str, str]]) -> ApiRequest:
        raw = urlencode(query)
        req = ApiRequest("GET", self.path, list(query), dict(self.headers), b"",
                         scheme=self.scheme, host=self.host, raw_query=raw)
        req.params = dict(self.params)
        return req

    def query(self, since: int | None) -> list[tuple[str, str]]:
        query = list(self.base_query)
        if since is None:
            return query + [("_limit", "1")]
        return query + [("_since", str(since)), ("_sort", "last_modified"), ("_limit", str(self.page))]

    async def read(self, since: int | None) -> tuple[list[tuple[int, bytes]], int, bool]:
        """
        C{(events, timestamp, more)}: the objects after C{since} as
        C{(last_modified, JSON)} in timestamp order, the list timestamp the
        read saw, whether more follow; with C{since=None}, no objects, only
        the timestamp (the feed starts there).
        @raise FeedEnded: the read was refused (Kinto's error body).
        """
        req = self.request(self.query(since))
        ctx = RequestContext(self.registry.storage.transaction())
        # The permission check and the page it filters must see one state:
        # a record shared between the two would else fall behind the cursor.
        ctx.txn.snapshot = True
        req.ctx = ctx
        req.registry = self.registry
        try:
            await authenticate(self.registry, req)
            response = await self.view(req)
            await ctx.txn.commit()
        except JsonSyncError as exc:
            await ctx.txn.rollback()
            raise FeedEnded(error_body(exc)[1]) from None
        except CancelledError:
            await ctx.txn.rollback()
            raise
        except Exception:
            _log.failure("live feed read failed on {path}", path=self.path)
            await ctx.txn.rollback()
            raise FeedEnded(error_body(UnexpectedError())[1]) from None
        return self.events_of(response, since)

    @staticmethod
    def events_of(response: ApiResponse, since: int | None) -> tuple[list[tuple[int, bytes]], int, bool]:
        if response.status != 200:
            body = response.body if isinstance(response.body, dict) else jsonutil.loads(response.encoded_body())
            raise FeedEnded(body)
        etag = response.get_header("ETag") or '"0"'
        timestamp = int(etag.strip('"'))
        if since is None:
            return [], timestamp, False
        objects = jsonutil.loads(response.encoded_body())["data"]
        events = [(obj["last_modified"], jsonutil.dumps(obj)) for obj in objects]
        more = response.get_header("Next-Page") is not None
        return events, timestamp, more


class Subscriber:
    """One open feed (an SSE response, or one subscription of a WebSocket)."""

    def __init__(self, hub: Hub, key: tuple, list_key: tuple[str, str], reader: Reader, cursor: int,
                 send: Callable[[list[tuple[int, bytes]]], None], end: Callable[[dict | None], None],
                 unsent: Callable[[], int]):
        self.hub = hub
        self.key = key
        self.list_key = list_key
        self.reader = reader
        self.cursor = cursor
        self._send = send
        self._end = end
        self._unsent = unsent
        self.group: Group | None = None
        self.ended = False

    def deliver(self, events: list[tuple[int, bytes]], size: int) -> None:
        if self.ended:
            return
        # What the client has not taken yet, before this delivery: memory
        # stays under the bound plus one read's worth.
        if self._unsent() > self.hub.buffer_bytes:
            self.end(overflow_body())
            return
        self._send(events)

    def end(self, body: dict | None) -> None:
        """Stop the feed (C{body}: why, as Kinto's error body; C{None}: the client left)."""
        if self.ended:
            return
        self.ended = True
        self.hub.leave(self)
        self._end(body)


class Group:
    """
    The subscribers of one list that read alike (credentials, filters,
    C{_fields}): one read per notice serves them all.
    """

    def __init__(self, hub: Hub, key: tuple, reader: Reader):
        self.hub = hub
        self.key = key
        self.reader = reader
        self.members: set[Subscriber] = set()
        self.joining: list[Subscriber] = []
        self.dirty = False
        self.running: Deferred | None = None

    def add(self, sub: Subscriber) -> None:
        sub.group = self
        self.joining.append(sub)
        self.poke()

    def remove(self, sub: Subscriber) -> None:
        self.members.discard(sub)
        if sub in self.joining:
            self.joining.remove(sub)

    @property
    def empty(self) -> bool:
        return not self.members and not self.joining

    def poke(self, timestamp: int | None = None) -> None:
        """The list may have moved (to C{timestamp}): read again unless every member has seen it."""
        if timestamp is not None and not self.joining and all(s.cursor >= timestamp for s in self.members):
            return
        self.dirty = True
        if self.running is None:
            running = Deferred.fromCoroutine(self._run())
            running.addErrback(lambda f: None if f.check(CancelledError) else _log.failure("live group", f))
            # (On memory a read may finish at once, before this line.)
            self.running = None if running.called else running

    async def _run(self) -> None:
        self.running = Deferred()  # (replaced by the caller; marks "running" meanwhile)
        try:
            while self.dirty and not self.empty:
                self.dirty = False
                # Those who joined since the last read come in now: the read
                # starts at the oldest cursor, so nobody misses anything.
                self.members.update(s for s in self.joining if not s.ended)
                self.joining = []
                await self.refresh()
        finally:
            self.running = None

    async def refresh(self) -> None:
        since = min(s.cursor for s in self.members)
        while True:
            try:
                events, timestamp, more = await self.reader.read(since)
            except FeedEnded as ended:
                for sub in list(self.members):
                    sub.end(ended.body)
                return
            if events:
                sizes = [len(text) for _, text in events]
                total = sum(sizes)
                for sub in list(self.members):
                    if sub.cursor < events[0][0]:
                        sub.deliver(events, total)
                    else:
                        mine = [e for e in events if e[0] > sub.cursor]
                        if mine:
                            sub.deliver(mine, sum(len(t) for _, t in mine))
            reached = events[-1][0] if more else max(timestamp, events[-1][0] if events else timestamp)
            for sub in self.members:
                if sub.cursor < reached:
                    sub.cursor = reached
            if not more:
                return
            since = reached


@implementer(IResourceListener)
class _Publisher:
    """Tells the change notifier about each committed write (every process on the database hears it)."""

    actions = None
    resource_names = None

    def __init__(self, notifier):
        self.notifier = notifier

    async def before_commit(self, event, txn):
        return None

    async def after_commit(self, event):
        self.notifier.publish(event.resource_name, event.parent_id, event.timestamp)


class Hub:
    """Every open feed of this process, grouped, and the notices that wake them."""

    def __init__(self, registry, settings):
        self.registry = registry
        self.reactor = registry.reactor
        self.heartbeat_seconds = float(settings["live.heartbeat_seconds"])
        self.poll_seconds = float(settings["live.poll_seconds"])
        self.buffer_bytes = int(settings["live.buffer_bytes"])
        self.page = int(settings["live.page_size"])
        self.groups: dict[tuple, Group] = {}
        # list -> the groups that read again when it moves: the group's own
        # list, and the lists that hold its ancestors (a bucket's ACL, its
        # collections, its groups: what decides the permissions).
        self.watchers: dict[tuple[str, str], set[Group]] = {}
        self.subscribers: set[Subscriber] = set()
        self.heartbeats: dict[Subscriber, Callable[[], None]] = {}
        self._timers: list[LoopingCall] = []
        self.notifier = registry.storage.change_notifier()
        self._unsubscribe = self.notifier.subscribe(self.notice)

    # -- notices ---------------------------------------------------------------
    def notice(self, resource_name, parent_id, timestamp) -> None:
        if resource_name is None:
            for group in list(self.groups.values()):
                group.poke()
            return
        for group in list(self.watchers.get((resource_name, parent_id), ())):
            own = group.key[0] == (resource_name, parent_id)
            group.poke(timestamp if own else None)

    @staticmethod
    def watched(list_key: tuple[str, str]) -> list[tuple[str, str]]:
        """The lists whose changes may change what a feed of C{list_key} shows."""
        resource_name, parent_id = list_key
        keys = [list_key, ("bucket", "")]
        parts = parent_id.strip("/").split("/")
        if len(parts) >= 2 and parts[0] == "buckets":
            bucket = f"/buckets/{parts[1]}"
            keys += [("collection", bucket), ("group", bucket)]
        return keys

    # -- subscribers -------------------------------------------------------------
    def join(self, sub: Subscriber, heartbeat: Callable[[], None]) -> None:
        """C{sub} has read its backlog: from now on its group reads for it."""
        group = self.groups.get(sub.key)
        if group is None:
            group = self.groups[sub.key] = Group(self, sub.key, sub.reader)
            for key in self.watched(sub.list_key):
                self.watchers.setdefault(key, set()).add(group)
        self.subscribers.add(sub)
        self.heartbeats[sub] = heartbeat
        if not self._timers:
            self._start_timers()
        group.add(sub)

    def leave(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self.heartbeats.pop(sub, None)
        group = sub.group
        if group is not None:
            group.remove(sub)
            if group.empty and self.groups.get(group.key) is group:
                del self.groups[group.key]
                for key in self.watched(sub.list_key):
                    watchers = self.watchers.get(key)
                    if watchers is not None:
                        watchers.discard(group)
                        if not watchers:
                            del self.watchers[key]
                # A read under way finishes and delivers to nobody.
        if not self.subscribers:
            self._stop_timers()

    def _start_timers(self) -> None:
        beat = LoopingCall(self._beat)
        beat.clock = self.reactor
        beat.start(self.heartbeat_seconds, now=False)
        poll = LoopingCall(lambda: self.notice(None, None, None))
        poll.clock = self.reactor
        poll.start(self.poll_seconds, now=False)
        self._timers = [beat, poll]

    def _stop_timers(self) -> None:
        for timer in self._timers:
            if timer.running:
                timer.stop()
        self._timers = []

    def _beat(self) -> None:
        for heartbeat in list(self.heartbeats.values()):
            heartbeat()

    def close(self) -> None:
        for sub in list(self.subscribers):
            sub.end(None)
        self._stop_timers()
        self._unsubscribe()

    # -- opening a feed ------------------------------------------------------------
    def feed_query(self, query: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A feed's filters and C{_fields}, checked: what every read of the feed adds."""
        base = []
        for name, value in query:
            if name in _NOT_IN_FEEDS:
                raise InvalidParameters("querystring", name, f"{name} does not apply to a live feed")
            if name != "_since":
                base.append((name, value))
        return base

    async def open(self, req: ApiRequest, view: Callable, cursor: int | None) -> tuple[Reader, list, int, bool]:
        """
        The first read of a feed, in the request's own transaction (so that
        a refusal is an ordinary error response): C{(reader, events,
        cursor, more)}.
        """
        base = self.feed_query(req.query)
        reader = Reader(self.registry, view, req, base, self.page)
        original = req.query
        req.query = reader.query(cursor)
        req.ctx.txn.snapshot = True  # (see Reader.read)
        try:
            response = await view(req)
        finally:
            req.query = original
        try:
            events, timestamp, more = reader.events_of(response, cursor)
        except FeedEnded:
            raise _Refused(response) from None
        if cursor is None:
            return reader, [], timestamp, False
        reached = events[-1][0] if more else max(timestamp, events[-1][0] if events else timestamp)
        return reader, events, reached, more


class _Refused(Exception):
    def __init__(self, response: ApiResponse):
        super().__init__()
        self.response = response


# -- Server-Sent Events ---------------------------------------------------------------


def sse_events(events: list[tuple[int, bytes]]) -> bytes:
    return b"".join(b"id: %d\ndata: %s\n\n" % (lm, text) for lm, text in events)


def sse_control(name: str, body: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), jsonutil.dumps(body))


async def sse_view(hub: Hub, req: ApiRequest, view: Callable) -> ApiResponse:
    if req.in_batch:
        raise NotAcceptable()
    last_id = parse_cursor(req.header("Last-Event-ID"), "header", "Last-Event-ID")
    since = None
    for name, value in req.query:
        if name == "_since":
            since = parse_cursor(value, "querystring", "_since")
    cursor = last_id if last_id is not None else since
    if last_id is not None:
        # Resuming: the event id is the cursor (and the sync horizon applies to it).
        req.query = [(k, v) for k, v in req.query if k != "_since"] + [("_since", str(last_id))]
    try:
        reader, first, cursor, more = await hub.open(req, view, cursor)
    except _Refused as refused:
        return refused.response
    loc_parent = "/buckets/{bucket_id}/collections/{collection_id}".format(**req.params)
    # The request lives as long as its stream: keep none of the first read there.
    req.page_ahead = None
    req.acl_cache = {}
    pending_first = [first]
    key = (("record", loc_parent), req.header("Authorization"), tuple(reader.base_query))

    async def run(stream: Stream) -> None:
        ended: Deferred = Deferred()

        def send(events):
            stream.write(sse_events(events))

        def end(body):
            if body is not None and not stream.closed:
                stream.write(sse_control("end", body))
            if not ended.called:
                ended.callback(None)

        sub = Subscriber(hub, key, ("record", loc_parent), reader, cursor, send, end, lambda: stream.unsent)
        stream.on_close(lambda: sub.end(None))
        stream.write(b"retry: 2000\n\n")
        page = pending_first.pop()
        if page:
            stream.write(sse_events(page))
        del page
        position, pending = cursor, more
        try:
            while pending and not stream.closed:
                await stream.drained()
                events, position, pending = await _page(reader, position)
                if events:
                    stream.write(sse_events(events))
            sub.cursor = position
        except FeedEnded as refused:
            end(refused.body)
            return
        if stream.closed:
            return
        stream.write(sse_control("ready", {"cursor": position}))
        hub.join(sub, lambda: stream.write(b":\n\n"))
        await ended

    headers = [
        ("Content-Type", EVENT_STREAM + "; charset=utf-8"),
        ("Cache-Control", "no-cache"),
        # nginx buffers responses unless told not to.
        ("X-Accel-Buffering", "no"),
    ]
    return StreamingResponse(run, 200, headers)


async def _page(reader: Reader, since: int) -> tuple[list[tuple[int, bytes]], int, bool]:
    """One page of a backlog: C{(events, cursor after it, more)}."""
    events, timestamp, more = await reader.read(since)
    reached = events[-1][0] if more else max(timestamp, events[-1][0] if events else timestamp, since)
    return events, reached, more


@implementer(IJsonSyncPlugin)
class LivePlugin:
    name = "live"
    settings: dict[str, Any] = {
        "live.heartbeat_seconds": 15.0,
        "live.poll_seconds": 30.0,
        "live.buffer_bytes": 1_000_000,
        "live.page_size": 500,
        "live.websocket": True,
    }

    def install(self, registry, settings):
        hub = Hub(registry, settings)
        registry.add_listener(_Publisher(hub.notifier))
        route = registry.route("record-plural")
        if route is None:
            raise ValueError("the live plugin needs the records list route (record-plural)")
        records_view = route.view
        # The same route answers text/event-stream: a feed is a GET of the list.
        route.accepts = (*route.accepts, EVENT_STREAM)
        route.view = _wrap(hub, route.view)
        extra: dict[str, Any] = {
            "sse": True,
            "heartbeat_seconds": hub.heartbeat_seconds,
            "tombstones_retention_days": settings.get("tombstones_retention_days"),
            # A _since below a list's sync horizon (purged tombstones) is refused: 410, errno 107.
            "sync_horizon": True,
        }
        if settings["live.websocket"]:
            from jsonsync.plugins import live_ws

            live_ws.install(registry, hub, records_view)
            extra["websocket"] = "/v1/live"
        registry.add_capability(
            "live",
            "Live changes of record lists: Server-Sent Events on every records URL and a WebSocket"
            " for many collections, resumable from the _since cursor.",
            "https://github.com/jsonsync/jsonsync/blob/main/docs/live-changes.md",
            **extra,
        )
        _hubs[registry] = hub


_hubs: WeakKeyDictionary[Any, Hub] = WeakKeyDictionary()


def hub_of(registry) -> Hub | None:
    """The live feed of a server (tests and tools tune or inspect it)."""
    return _hubs.get(registry)


def _wrap(hub: Hub, view: Callable) -> Callable:
    async def records(req: ApiRequest) -> ApiResponse:
        if req.method == "GET" and wants_stream(req):
            return await sse_view(hub, req, view)
        return await view(req)

    return records
