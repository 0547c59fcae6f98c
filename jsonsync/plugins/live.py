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

import random
from bisect import bisect_right
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode
from weakref import WeakKeyDictionary

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from jsonsync import jsonutil
from jsonsync.auth import authenticate
from jsonsync.errors import (
    BackendUnavailable,
    InvalidParameters,
    JsonSyncError,
    NotAcceptable,
    UnexpectedError,
)
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


class _Refused(Exception):
    """A read answered an error response (not an exception): C{response} is it."""

    def __init__(self, response: ApiResponse):
        super().__init__()
        self.response = response

    @property
    def body(self) -> dict:
        response = self.response
        return response.body if isinstance(response.body, dict) else jsonutil.loads(response.encoded_body())


class Reader:
    """
    Reads one feed: the records route's view, as a GET with the feed's
    filters and C{_fields}, from a cursor, in a transaction of its own.
    Subscribers with the same key (list, credentials, filters) share one.
    """

    __slots__ = ("registry", "view", "path", "params", "scheme", "host", "headers", "base_query", "page")

    def __init__(self, registry, view: Callable, template: ApiRequest, base_query: list[tuple[str, str]], page: int):
        self.registry = registry
        self.view = view
        self.path = template.path
        self.params = dict(template.params)
        self.scheme = template.scheme
        self.host = template.host
        # Only what decides the answer: the credentials.
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

    async def read_raw(self, since: int | None) -> tuple[list[tuple[int, bytes]], int, bool]:
        """
        C{(events, timestamp, more)}: the objects after C{since} as
        C{(last_modified, JSON)} in timestamp order, the list timestamp the
        read saw, whether more follow; with C{since=None}, no objects, only
        the timestamp (the feed starts there).
        @raise JsonSyncError: the view refused the read (as it raised it).
        @raise _Refused: the view answered an error response.
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
        except BaseException:
            await ctx.txn.rollback()
            raise
        return self.events_of(response, since)

    async def read(self, since: int | None) -> tuple[list[tuple[int, bytes]], int, bool]:
        """L{read_raw}, a refusal as L{FeedEnded} (Kinto's error body)."""
        try:
            return await self.read_raw(since)
        except JsonSyncError as exc:
            raise FeedEnded(error_body(exc)[1]) from None
        except _Refused as refused:
            raise FeedEnded(refused.body) from None
        except CancelledError:
            raise
        except Exception:
            _log.failure("live feed read failed on {path}", path=self.path)
            raise FeedEnded(error_body(UnexpectedError())[1]) from None

    @staticmethod
    def events_of(response: ApiResponse, since: int | None) -> tuple[list[tuple[int, bytes]], int, bool]:
        if response.status != 200:
            raise _Refused(response)
        etag = response.get_header("ETag") or '"0"'
        timestamp = int(etag.strip('"'))
        if since is None:
            return [], timestamp, False
        objects = jsonutil.loads(response.encoded_body())["data"]
        events = [(obj["last_modified"], jsonutil.dumps(obj)) for obj in objects]
        more = response.get_header("Next-Page") is not None
        return events, timestamp, more


def reached_by(events: list[tuple[int, bytes]], timestamp: int, more: bool, since: int | None) -> int:
    """The cursor after a read: its last object when more follow, else the list's timestamp."""
    if more:
        return events[-1][0]
    return max(timestamp, events[-1][0] if events else timestamp, since if since is not None else timestamp)


class Subscriber:
    """
    One open feed (an SSE response, or one subscription of a WebSocket):
    subclasses say how events reach the client (L{send}, L{finish},
    L{beat}). Kept small: a process holds thousands.

    @ivar key: C{(list key, credentials, filters)}: who reads alike.
    @ivar reader: the shared reader of its backlog (C{None} once it joined
        its group, whose reader serves it).
    @ivar cursor: the last timestamp it has been given (its resume point).
    @ivar seen: the hub's notice count when the read that gave its cursor
        began (L{Hub.join} reads again only if a notice came since).
    """

    __slots__ = ("hub", "key", "reader", "cursor", "group", "ended", "seen")

    def __init__(self, hub: Hub, key: tuple, reader: Reader | None, cursor: int, seen: int):
        self.hub = hub
        self.key = key
        self.reader = reader
        self.cursor = cursor
        self.seen = seen
        self.group: Group | None = None
        self.ended = False

    # -- for subclasses
    def send(self, events: list[tuple[int, bytes]], start: int, cache: dict) -> None:
        """Send C{events[start:]}; C{cache} is shared by the group's members for this read."""
        raise NotImplementedError

    def unsent(self) -> int:
        raise NotImplementedError

    def finish(self, body: dict | None) -> None:
        """The feed ended (C{body}: why, as Kinto's error body; C{None}: the client left)."""
        raise NotImplementedError

    def beat(self) -> None:
        """A heartbeat (every C{live.heartbeat_seconds})."""

    # -- for the group
    def deliver(self, events: list[tuple[int, bytes]], start: int, cache: dict) -> None:
        if self.ended:
            return
        # What the client has not taken yet, before this delivery: memory
        # stays under the bound plus one read's worth.
        if self.unsent() > self.hub.buffer_bytes:
            self.end(overflow_body())
            return
        self.send(events, start, cache)

    def end(self, body: dict | None) -> None:
        """Stop the feed (C{body}: why, as Kinto's error body; C{None}: the client left)."""
        if self.ended:
            return
        self.ended = True
        self.hub.leave(self)
        self.finish(body)

    def left(self) -> None:
        """The client went away."""
        self.end(None)


class Group:
    """
    The subscribers of one list that read alike (credentials, filters,
    C{_fields}): one read per notice serves them all.
    """

    __slots__ = ("hub", "key", "reader", "members", "joining", "dirty", "running", "again")

    def __init__(self, hub: Hub, key: tuple, reader: Reader):
        self.hub = hub
        self.key = key
        self.reader = reader
        self.members: set[Subscriber] = set()
        self.joining: list[Subscriber] = []
        self.dirty = False
        self.running: Deferred | None = None
        self.again: Any = None  # the delayed read after the database was unavailable

    def add(self, sub: Subscriber, fresh: bool) -> None:
        """
        C{sub} comes in at its cursor; C{fresh}: no notice of what its
        list shows came since the read that gave that cursor, so the group
        needs no read for it (unless a read of the group is under way,
        which started from older cursors: it then reads again after).
        """
        sub.group = self
        if fresh and self.running is None and not self.joining:
            self.members.add(sub)
            return
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
        hub = self.hub
        since = min(s.cursor for s in self.members)
        while True:
            # Live reads run at most live.read_concurrency at once: the
            # rest of the pool stays for the API, and a group waiting its
            # turn gathers every notice of the meantime into one read.
            await hub.reads.acquire()
            try:
                events, timestamp, more = await self.reader.read(since)
            except FeedEnded as ended:
                if ended.body.get("code") == 503:
                    # The database is overloaded or away, which is no reason
                    # to end the feeds: they keep their cursors and the
                    # group reads again in a moment.
                    if self.again is None or not self.again.active():
                        self.again = hub.reactor.callLater(_READ_AGAIN_SECONDS * (1 + random.random()), self.poke)
                    return
                for sub in list(self.members):
                    sub.end(ended.body)
                return
            finally:
                hub.reads.release()
            if events:
                # Members at one cursor share one encoding of what they get.
                cache: dict = {}
                stamps = [lm for lm, _ in events]
                first = stamps[0]
                for sub in list(self.members):
                    start = 0 if sub.cursor < first else bisect_right(stamps, sub.cursor)
                    if start < len(events):
                        sub.deliver(events, start, cache)
            reached = reached_by(events, timestamp, more, None)
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


class _Opening:
    """
    One opening read, shared by every subscriber that asked for the same
    list, credentials, filters and cursor before it started.
    """

    __slots__ = ("reader", "waiters", "acquiring", "started")

    def __init__(self, reader: Reader):
        self.reader = reader
        self.waiters: list[Deferred] = []
        self.acquiring: Deferred | None = None
        self.started = False


# A group whose read found the database unavailable reads again after about this long.
_READ_AGAIN_SECONDS = 1.0

# Each feed gets a heartbeat about every live.heartbeat_seconds, in this
# many slices of the feeds.
_BEAT_SLICES = 20

_BUSY = ("Too many live feeds are opening at once on this server; retry after the delay in Retry-After"
         " (with the same Last-Event-ID: nothing is lost).")


class Hub:
    """Every open feed of this process, grouped, and the notices that wake them."""

    def __init__(self, registry, settings):
        self.registry = registry
        self.reactor = registry.reactor
        self.heartbeat_seconds = float(settings["live.heartbeat_seconds"])
        self.poll_seconds = float(settings["live.poll_seconds"])
        self.buffer_bytes = int(settings["live.buffer_bytes"])
        self.page = int(settings["live.page_size"])
        # Opening reads (and backlog pages) run at most this many at once,
        # so that a storm of subscriptions leaves the database connections
        # to the API; at most open_queue distinct ones wait, past that a
        # new one is answered 503 at once.
        self.open_limit = max(1, int(settings["live.open_concurrency"]))
        self.open_queue = max(1, int(settings["live.open_queue"]))
        self._slots = DeferredSemaphore(self.open_limit)
        self.reads = DeferredSemaphore(max(1, int(settings["live.read_concurrency"])))
        self.queued: dict[tuple, _Opening] = {}
        self.groups: dict[tuple, Group] = {}
        # list -> the groups that read again when it moves: the group's own
        # list, and the lists that hold its ancestors (a bucket's ACL, its
        # collections, its groups: what decides the permissions).
        self.watchers: dict[tuple[str, str], set[Group]] = {}
        self.subscribers: set[Subscriber] = set()
        # Notices counted: the last one per list, and the last "anything
        # may have moved" (see Subscriber.seen).
        self.seq = 0
        self.moved: dict[tuple[str, str], int] = {}
        self.moved_all = 0
        # Counters (for the benchmark and the tests).
        self.stats = {"opening_reads": 0, "opens": 0, "refused": 0, "join_reads": 0}
        self._timers: list[LoopingCall] = []
        self._beat_due: list[Subscriber] = []
        self._beat_chunk = 1
        self._poll_due: list[Group] = []
        self._poll_chunk = 1
        self.notifier = registry.storage.change_notifier()
        self._unsubscribe = self.notifier.subscribe(self.notice)

    # -- notices ---------------------------------------------------------------
    def notice(self, resource_name, parent_id, timestamp) -> None:
        self.seq += 1
        if resource_name is None:
            self.moved_all = self.seq
            self.moved.clear()
            for group in list(self.groups.values()):
                group.poke()
            return
        key = (resource_name, parent_id)
        self.moved[key] = self.seq
        for group in list(self.watchers.get(key, ())):
            own = group.key[0] == key
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

    def fresh(self, sub: Subscriber) -> bool:
        """Whether no notice that may change what C{sub} shows came since its last read began."""
        if self.moved_all > sub.seen:
            return False
        moved = self.moved
        return all(moved.get(key, 0) <= sub.seen for key in self.watched(sub.key[0]))

    # -- subscribers -------------------------------------------------------------
    def join(self, sub: Subscriber) -> None:
        """C{sub} has read its backlog: from now on its group reads for it."""
        group = self.groups.get(sub.key)
        if group is None:
            assert sub.reader is not None
            group = self.groups[sub.key] = Group(self, sub.key, sub.reader)
            for key in self.watched(sub.key[0]):
                self.watchers.setdefault(key, set()).add(group)
        sub.reader = None
        self.subscribers.add(sub)
        if not self._timers:
            self._start_timers()
        fresh = self.fresh(sub)
        if not fresh:
            self.stats["join_reads"] += 1
        group.add(sub, fresh)

    def leave(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        group = sub.group
        if group is not None:
            group.remove(sub)
            if group.empty and self.groups.get(group.key) is group:
                del self.groups[group.key]
                if group.again is not None and group.again.active():
                    group.again.cancel()
                for key in self.watched(sub.key[0]):
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
        beat.start(self.heartbeat_seconds / _BEAT_SLICES, now=False)
        poll = LoopingCall(self._poll)
        poll.clock = self.reactor
        poll.start(self.poll_seconds / _BEAT_SLICES, now=False)
        self._timers = [beat, poll]

    def _stop_timers(self) -> None:
        for timer in self._timers:
            if timer.running:
                timer.stop()
        self._timers = []
        self._beat_due = []
        self._poll_due = []

    def _beat(self) -> None:
        # One timer for every feed of the process, beating a slice of them
        # at a time: ten thousand writes at once would hold the reactor
        # (and every delivery behind them) for a good part of a second.
        due = self._beat_due
        if not due:
            due = self._beat_due = list(self.subscribers)
            self._beat_chunk = -(-len(due) // _BEAT_SLICES)
        chunk = due[-self._beat_chunk:]
        del due[-self._beat_chunk:]
        for sub in chunk:
            if not sub.ended:
                sub.beat()

    def _poll(self) -> None:
        # Every group reads again about every live.poll_seconds, a slice at
        # a time (not a hundred reads queued on the pool at once).
        due = self._poll_due
        if not due:
            # (The per-list notice marks are forgotten once a cycle: a join
            # then reads as if anything had moved.)
            self.moved_all = self.seq
            self.moved.clear()
            due = self._poll_due = list(self.groups.values())
            self._poll_chunk = max(1, -(-len(due) // _BEAT_SLICES))
        chunk = due[-self._poll_chunk:]
        del due[-self._poll_chunk:]
        for group in chunk:
            if self.groups.get(group.key) is group:
                group.poke()

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

    async def first_read(self, key: tuple, cursor: int | None, make_reader: Callable[[], Reader]
                         ) -> tuple[Reader, list[tuple[int, bytes]], int, bool, int]:
        """
        The first read of a feed: C{(reader, events, cursor after them,
        more, seen)}. Feeds with the same C{key} and C{cursor} that ask
        before it starts share one read — each is an authenticated,
        permission-checked read as that key's credentials, so they would
        all get the same answer — and at most C{live.open_concurrency} run
        at once.

        @raise BackendUnavailable: C{live.open_queue} reads wait already.
        @raise JsonSyncError: the read was refused (as the list refuses it).
        @raise _Refused: the read answered an error response.
        """
        self.stats["opens"] += 1
        okey = (key, cursor)
        opening = self.queued.get(okey)
        if opening is None:
            if len(self.queued) >= self.open_queue:
                self.stats["refused"] += 1
                raise BackendUnavailable(_BUSY)
            group = self.groups.get(key)
            opening = self.queued[okey] = _Opening(group.reader if group is not None else make_reader())
            starting = True
        else:
            starting = False
        waiter: Deferred = Deferred(lambda d: self._forget(okey, opening, d))
        opening.waiters.append(waiter)
        if starting:
            running = Deferred.fromCoroutine(self._open(okey, opening, cursor))
            running.addErrback(lambda f: _log.failure("live opening read", f))
        events, timestamp, more, seen = await waiter
        return opening.reader, events, reached_by(events, timestamp, more, cursor), more, seen

    def _forget(self, okey: tuple, opening: _Opening, waiter: Deferred) -> None:
        """A feed waiting for an opening read went away."""
        if waiter in opening.waiters:
            opening.waiters.remove(waiter)
        if not opening.waiters and not opening.started:
            if self.queued.get(okey) is opening:
                del self.queued[okey]
            if opening.acquiring is not None and not opening.acquiring.called:
                opening.acquiring.cancel()

    async def _open(self, okey: tuple, opening: _Opening, cursor: int | None) -> None:
        try:
            acquiring = opening.acquiring = self._slots.acquire()
            await acquiring
        except CancelledError:
            return
        opening.started = True
        opening.acquiring = None
        if self.queued.get(okey) is opening:
            del self.queued[okey]
        failure: BaseException | None = None
        result: tuple = ()
        try:
            if not opening.waiters:
                return
            self.stats["opening_reads"] += 1
            seen = self.seq
            try:
                events, timestamp, more = await opening.reader.read_raw(cursor)
                result = (events, timestamp, more, seen)
            except (JsonSyncError, _Refused) as exc:
                failure = exc
            except Exception:
                _log.failure("live opening read failed on {path}", path=opening.reader.path)
                failure = UnexpectedError()
        finally:
            self._slots.release()
        waiters, opening.waiters = opening.waiters, []
        for waiter in waiters:
            if failure is None:
                waiter.callback(result)
            else:
                waiter.errback(Failure(failure))

    async def backlog_page(self, reader: Reader, since: int) -> tuple[list[tuple[int, bytes]], int, bool, int]:
        """One page of a backlog: C{(events, cursor after it, more, seen)}, in turn with the opening reads."""
        await self._slots.acquire()
        try:
            seen = self.seq
            events, timestamp, more = await reader.read(since)
        finally:
            self._slots.release()
        return events, reached_by(events, timestamp, more, since), more, seen


# -- Server-Sent Events ---------------------------------------------------------------

_RETRY = b"retry: 2000\n\n"
_HEARTBEAT = b":\n\n"


def sse_events(events: list[tuple[int, bytes]]) -> bytes:
    return b"".join(b"id: %d\ndata: %s\n\n" % (lm, text) for lm, text in events)


def sse_control(name: str, body: Any) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), jsonutil.dumps(body))


class SSESubscriber(Subscriber):
    """A feed as a Server-Sent Events response."""

    __slots__ = ("stream", "done", "more", "first")

    def __init__(self, hub: Hub, key: tuple, reader: Reader, cursor: int, seen: int,
                 first: list[tuple[int, bytes]], more: bool):
        super().__init__(hub, key, reader, cursor, seen)
        self.stream: Stream | None = None
        self.done: Deferred | None = None
        self.first: list[tuple[int, bytes]] | None = first
        self.more = more

    def send(self, events, start, cache):
        data = cache.get(start)
        if data is None:
            data = cache[start] = sse_events(events[start:] if start else events)
        assert self.stream is not None
        self.stream.write(data)

    def unsent(self) -> int:
        return self.stream.unsent if self.stream is not None else 0

    def finish(self, body):
        stream = self.stream
        if body is not None and stream is not None and not stream.closed:
            stream.write(sse_control("end", body))
        if self.done is not None and not self.done.called:
            self.done.callback(None)

    def beat(self) -> None:
        if self.stream is not None:
            self.stream.write(_HEARTBEAT)

    async def run(self, stream: Stream) -> None:
        hub = self.hub
        self.stream = stream
        self.done = Deferred()
        stream.on_close(self.left)
        stream.write(_RETRY)
        slim_request(stream)
        first, self.first = self.first, None
        if first:
            stream.write(sse_events(first))
        del first
        reader = self.reader
        assert reader is not None
        position, more = self.cursor, self.more
        try:
            while more and not stream.closed:
                await stream.drained()
                events, position, more, seen = await hub.backlog_page(reader, position)
                if events:
                    stream.write(sse_events(events))
                self.cursor, self.seen = position, seen
        except FeedEnded as refused:
            self.ended = True
            self.finish(refused.body)
            return
        if stream.closed or self.ended:
            return
        stream.write(sse_control("ready", {"cursor": position}))
        hub.join(self)
        await self.done


class _Summary:
    """What the request summary (L{jsonsync.logs}) reads of a request, kept while its stream lasts."""

    __slots__ = ("errno", "user_id", "route_name")

    def __init__(self, req: ApiRequest | None):
        self.errno = getattr(req, "errno", None)
        self.user_id = getattr(req, "user_id", None)
        self.route_name = getattr(req, "route_name", None)


_NO_HEADERS = Headers()


def slim_request(stream: Stream) -> None:
    """
    Drop what the twisted.web request of a started stream keeps and no
    longer needs (the head was sent): its headers, query arguments, body
    and our request object, a few kB per idle feed.
    """
    request = getattr(stream, "_request", None)
    if request is None or not getattr(request, "startedWriting", False):
        return
    request.jsonsync = _Summary(getattr(request, "jsonsync", None))
    request.requestHeaders = _NO_HEADERS
    request.responseHeaders = _NO_HEADERS
    request.args = {}
    request.received_cookies = {}
    request.cookies = []
    content = getattr(request, "content", None)
    if content is not None:
        content.close()
        request.content = None


async def sse_view(hub: Hub, req: ApiRequest, view: Callable) -> ApiResponse:
    if req.in_batch:
        raise NotAcceptable()
    last_id = parse_cursor(req.header("Last-Event-ID"), "header", "Last-Event-ID")
    since = None
    for name, value in req.query:
        if name == "_since":
            since = parse_cursor(value, "querystring", "_since")
    # Resuming: the event id is the cursor (and the sync horizon applies to it).
    cursor = last_id if last_id is not None else since
    base = hub.feed_query(req.query)
    parent = "/buckets/{bucket_id}/collections/{collection_id}".format(**req.params)
    key = (("record", parent), req.header("Authorization"), tuple(base))
    try:
        reader, first, position, more, seen = await hub.first_read(
            key, cursor, lambda: Reader(hub.registry, view, req, base, hub.page))
    except _Refused as refused:
        response = refused.response  # (shared: each answer gets its own headers)
        return ApiResponse(response.body, response.status, list(response.headers))
    sub = SSESubscriber(hub, key, reader, position, seen, first, more)
    headers = [
        ("Content-Type", EVENT_STREAM + "; charset=utf-8"),
        ("Cache-Control", "no-cache"),
        # nginx buffers responses unless told not to.
        ("X-Accel-Buffering", "no"),
    ]
    return StreamingResponse(sub.run, 200, headers)


@implementer(IJsonSyncPlugin)
class LivePlugin:
    name = "live"
    settings: dict[str, Any] = {
        "live.heartbeat_seconds": 15.0,
        "live.poll_seconds": 30.0,
        "live.buffer_bytes": 1_000_000,
        "live.page_size": 500,
        "live.open_concurrency": 2,
        "live.open_queue": 1000,
        "live.read_concurrency": 4,
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
