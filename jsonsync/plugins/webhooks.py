"""
The C{webhooks} plugin: webhook definitions under buckets
(C{/buckets/<bid>/webhooks/<id>}, type C{webhook}) and collections
(C{/buckets/<bid>/collections/<cid>/webhooks/<id>}, type
C{collection_webhook}: two types sharing a plural under different parents),
a transactional outbox, and a delivery worker in each process. docs/webhooks.md is the user's guide; the choices:

  - I{Outbox.} One message per (webhook, changed object) is written to
    the backend's outbox (L{jsonsync.interfaces.IOutbox}, the C{outbox}
    attribute of the storage) in the change's transaction, so it commits or
    rolls back with it. On PostgreSQL a trigger writes them in the very
    statement of the write (L{IOutbox.fan_out}): no listener, so writes
    keep carrying their commit and their group commit. Elsewhere
    L{OutboxListener} appends them in C{before_commit}, having read the
    bucket's webhooks before the write (a validator). Record filters are
    applied by the worker, at delivery.
  - I{Delivery.} A worker per process claims due messages with a lease
    (at most C{webhooks.batch_size} held, C{webhooks.concurrency} requests
    in flight), POSTs them on persistent connections (L{webhook_http}), signed (HMAC-SHA256 over C{<timestamp>.<body>}), under a timeout,
    and completes, reschedules (exponential back-off with jitter) or fails
    them. Nothing of it runs in a request: a slow or dead receiver only
    keeps the worker's slots busy.
  - I{Safety.} A target's host is resolved at every delivery and the
    connection goes to the very address that was checked (no DNS
    rebinding); loopback, private, link-local, multicast, reserved and
    unspecified addresses (IPv4, IPv6, IPv4-mapped) are refused unless
    C{webhooks.allow_private_targets} is set.
  - I{Secrets} are write-only: kept in the webhook's data, never shown
    (C{present}), not filterable nor sortable (C{strict_fields}), not
    reachable by JSON Patch; a secret the server generates is shown once,
    in the response that created it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
import time
import uuid
import weakref
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsonsync import jsonutil
from jsonsync.config import ConfigurationError
from jsonsync.errors import (
    BackendUnavailable,
    InvalidParameters,
    ObjectNotFound,
    ParentNotFound,
    WriteConflict,
)
from jsonsync.http import ApiRequest, ApiResponse
from jsonsync.interfaces import IJsonSyncPlugin, IOutbox, IResourceListener
from jsonsync.plugins.webhook_http import ConnectionPool, NotSent, decrement
from jsonsync.query import Query, matches_all
from jsonsync.registry import Route
from jsonsync.resources.model import NAME_PATTERN, ResourceType
from jsonsync.resources.querystring import parse_filter

_log = Logger()

PLUGIN = "webhooks"
ACTIONS = ("create", "update", "delete")
# What a webhook hears of: the objects below its bucket (its own kind excepted).
DELIVERED_TYPES = frozenset({"collection", "group", "record"})
# Webhooks of a bucket hear of its collections, groups and records (or of
# one collection's, with "collection"); webhooks of a collection, managed by
# its writers, of the collection and its records.
BUCKET_WEBHOOK = "webhook"
COLLECTION_WEBHOOK = "collection_webhook"
MAX_URL_LENGTH = 2048
MAX_FILTERS = 20
MIN_SECRET, MAX_SECRET = 16, 256
FIELDS = frozenset({"id", "last_modified", "url", "actions", "collection", "filters", "description", "secret"})
SHOWN_FIELDS = FIELDS - {"secret"}

SIGNATURE_HEADER = "Jsonsync-Signature"
TIMESTAMP_HEADER = "Jsonsync-Timestamp"
EVENT_HEADER = "Jsonsync-Event-Id"
ATTEMPT_HEADER = "Jsonsync-Attempt"


def _hide_secret(obj: dict) -> dict:
    if "secret" in obj:
        obj = {k: v for k, v in obj.items() if k != "secret"}
    return obj


def _bad(name: str, message: str) -> InvalidParameters:
    return InvalidParameters("body", f"data.{name}", f"data.{name} in body: {message}")


# -- target addresses ------------------------------------------------------------


def refused_address(address: str) -> bool:
    """
    Whether a webhook may not reach C{address} (an IP literal): anything but
    a global unicast address (IPv4-mapped IPv6 addresses judged as IPv4).
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip.teredo is not None:
            return True
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or not ip.is_global
    )


@functools.lru_cache(maxsize=1024)
def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int


def parse_target(url: Any) -> Target:
    """The scheme, host and port of a webhook URL, or a 400 naming what is wrong."""
    if not isinstance(url, str) or not url:
        raise _bad("url", "should be an http or https URL")
    if len(url) > MAX_URL_LENGTH:
        raise _bad("url", f"longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise _bad("url", "contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise _bad("url", f"invalid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise _bad("url", "the scheme should be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _bad("url", "credentials are not allowed in the URL (sign with the secret)")
    if not host:
        raise _bad("url", "the URL has no host")
    if parts.fragment:
        raise _bad("url", "a fragment has no meaning in a webhook URL")
    try:
        host.encode("idna")
    except UnicodeError:
        raise _bad("url", "invalid host name") from None
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))


async def resolve(reactor, host: str, port: int, timeout: float) -> list[str]:
    """The addresses of C{host} (itself when it is an IP literal), resolved off the reactor thread."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    pool = reactor.getThreadPool()
    d = deferToThreadPool(reactor, pool, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    d.addTimeout(timeout, reactor)
    infos = await d
    seen: list[str] = []
    for family, _, _, _, sockaddr in infos:
        address = str(sockaddr[0])
        if family in (socket.AF_INET, socket.AF_INET6) and address not in seen:
            seen.append(address)
    return seen


class TargetRefused(Exception):
    """The host resolves only to addresses webhooks may not reach."""


# -- signatures -----------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: C{v1=} and the hex HMAC-SHA256 of C{<timestamp>.<body>}."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance: float = 300, now: float | None = None) -> bool:
    """
    What a receiver does (docs/webhooks.md has it standalone): the signature
    matches and the timestamp is within C{tolerance} seconds of now.
    """
    timestamp = headers.get(TIMESTAMP_HEADER.lower(), "")
    signature = headers.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


# -- the resource type ------------------------------------------------------------


_FILTERS: dict[str, list] = {}


def filters_of(hook: dict) -> list:
    """A webhook's filters, parsed (and remembered)."""
    filters = hook.get("filters")
    if not filters:
        return []
    key = jsonutil.dumps(filters).decode("utf-8")
    parsed = _FILTERS.get(key)
    if parsed is None:
        if len(_FILTERS) > 10000:
            _FILTERS.clear()
        try:
            parsed = _parsed_filters(filters)
        except InvalidParameters:
            parsed = []
        _FILTERS[key] = parsed
    return parsed


def outgoing(message_id: str, stored: str) -> tuple[dict, dict]:
    """C{(event, subject)}: the event to send (the stored body with its id) and the object its filters judge."""
    event = jsonutil.loads(stored)
    old = event.pop("old", None)
    subject = old if event.get("action") == "delete" and isinstance(old, dict) else event.get("data")
    return {"id": message_id, **event}, subject if isinstance(subject, dict) else {}


def _parsed_filters(filters: dict) -> list:
    out = []
    for name, value in filters.items():
        raw = value if isinstance(value, str) else jsonutil.dumps(value).decode("utf-8")
        out.append(parse_filter(name, raw, None))
    return out


class WebhookTypes:
    """The webhook resource type and its validation (which needs the plugin's settings)."""

    def __init__(self, plugin: Installation):
        self.plugin = plugin

    async def validate(self, req: ApiRequest, loc, data: dict, existing: dict | None) -> dict:
        listener = getattr(self.plugin, "listener", None)
        if listener is not None:
            listener.forget(req.txn)
        unknown = sorted(set(data) - FIELDS)
        if unknown:
            raise _bad(unknown[0], "unknown field (a webhook has url, actions, collection, filters, description, secret)")
        target = parse_target(data.get("url"))
        await self.plugin.check_target(target)
        actions = data.get("actions", list(ACTIONS))
        if (
            not isinstance(actions, list)
            or not actions
            or any(a not in ACTIONS for a in actions)
            or len(set(actions)) != len(actions)
        ):
            raise _bad("actions", "should be a non-empty list of create, update, delete")
        data["actions"] = actions
        collection = data.get("collection")
        if loc.resource.name == COLLECTION_WEBHOOK:
            own = loc.ancestors[-1][1]
            if collection is not None and collection != own:
                raise _bad("collection", f"a webhook of collection {own!r} hears only of it")
            data["collection"] = own
        elif collection is not None and (not isinstance(collection, str) or not NAME_PATTERN.match(collection)):
            raise _bad("collection", "should be a collection id")
        filters = data.get("filters")
        if filters is not None:
            if not isinstance(filters, dict) or len(filters) > MAX_FILTERS:
                raise _bad("filters", f"should be an object of at most {MAX_FILTERS} querystring filters")
            for name in filters:
                if not name or name.startswith("_"):
                    raise _bad("filters", f"{name!r} is not a filter")
            try:
                _parsed_filters(filters)
            except InvalidParameters as exc:
                raise _bad("filters", exc.description if hasattr(exc, "description") else str(exc)) from None
        description = data.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > 1024):
            raise _bad("description", "should be a string of at most 1024 characters")
        secret = data.get("secret")
        state = req.extras.setdefault(PLUGIN, {})
        state.pop("generated", None)
        if secret is None:
            if existing is not None and isinstance(existing.get("secret"), str):
                data["secret"] = existing["secret"]  # kept: the client cannot know it
            else:
                data["secret"] = state["generated"] = secrets.token_urlsafe(32)
        elif not isinstance(secret, str) or not MIN_SECRET <= len(secret) <= MAX_SECRET or not secret.isprintable():
            raise _bad("secret", f"should be a printable string of {MIN_SECRET} to {MAX_SECRET} characters")
        return data

    def resource_type(self, name: str = BUCKET_WEBHOOK) -> ResourceType:
        return ResourceType(
            name,
            "webhooks",
            "bucket" if name == BUCKET_WEBHOOK else "collection",
            ("read", "write"),
            validate=self.validate,
            present=_hide_secret,
            strict_fields=SHOWN_FIELDS,
            # For /__api__ (validate() is the check): the URL is required,
            # the secret is never shown.
            data_schema={
                "url": {"type": "string", "format": "uri"},
                "collection": {"type": "string", "nullable": True},
                "actions": {"type": "array", "items": {"type": "string", "enum": sorted(ACTIONS)}},
                "filters": {"type": "object"},
                "description": {"type": "string"},
                "secret": {"type": "string", "writeOnly": True},
            },
            required_fields=("url",),
            hidden_fields=("secret",),
        )


# -- the listener: the outbox write ------------------------------------------------


@implementer(IResourceListener)
class OutboxListener:
    """Appends the messages of a change to the outbox, inside its transaction."""

    actions = frozenset(ACTIONS)
    resource_names = DELIVERED_TYPES

    def __init__(self, plugin: Installation):
        self.plugin = plugin
        self.registry = plugin.registry
        # The bucket's webhooks, read once per transaction.
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def prefetch(self, req, loc, data, existing):
        """
        A validator of the delivered types: reads the bucket's webhooks
        before the write, while the request holds no list lock yet (on
        PostgreSQL the write takes its list's lock until the commit: a read
        there would keep the list's other writers waiting one more round
        trip).
        """
        ids = {rt.name: oid for rt, oid in loc.ancestors}
        bucket_id = ids.get("bucket")
        if bucket_id is not None:
            collection_id = loc.object_id if loc.resource.name == "collection" else ids.get("collection")
            await self._webhooks(req.txn, bucket_id, collection_id)
        return data

    def forget(self, txn) -> None:
        """Webhooks change in C{txn}: read them again."""
        memo = self._seen.get(txn)
        if memo is not None:
            memo.clear()

    async def _webhooks(self, txn, bucket_id: str, collection_id: str | None) -> list[tuple[str, dict]]:
        """The (target URI, webhook) pairs that may hear of a change there."""
        memo = self._seen.setdefault(txn, {})
        found = memo.get((bucket_id, collection_id))
        if found is None:
            storage = self.registry.storage
            places = [(BUCKET_WEBHOOK, f"/buckets/{bucket_id}")]
            if collection_id is not None:
                places.append((COLLECTION_WEBHOOK, f"/buckets/{bucket_id}/collections/{collection_id}"))
            found = memo[(bucket_id, collection_id)] = [
                (f"{parent}/webhooks/{hook['id']}", hook)
                for name, parent in places
                for hook in await storage.list(txn, name, parent, Query())
            ]
        return found

    async def before_commit(self, event, txn):
        bucket_id = event.payload.get("bucket_id")
        if not bucket_id:
            return
        rt = self.registry.resource_types[event.resource_name]
        messages = []
        for impacted in event.impacted_objects:
            obj = impacted["new"]
            if event.resource_name == "collection":
                collection_id = obj["id"]
            else:
                collection_id = event.payload.get("collection_id")
            hooks = await self._webhooks(txn, bucket_id, collection_id)
            if not hooks:
                continue
            shown = rt.present(obj) if rt.present else obj
            uri = f"{event.parent_id}/{rt.plural}/{obj['id']}"
            for target, hook in hooks:
                if event.action not in hook.get("actions", ACTIONS):
                    continue
                if hook.get("collection") is not None and hook["collection"] != collection_id:
                    continue
                # The body the PostgreSQL trigger writes too (schema 0004):
                # no id (the worker adds it), "old" for the filters of a deletion.
                body = {
                    "action": event.action,
                    "resource_name": event.resource_name,
                    "uri": uri,
                    "bucket_id": bucket_id,
                    "collection_id": collection_id,
                    "timestamp": obj.get("last_modified", event.timestamp),
                    "data": shown,
                }
                if event.action == "delete" and impacted.get("old") is not None:
                    body["old"] = impacted["old"]
                body["webhook"] = target
                messages.append(
                    {"id": str(uuid.uuid4()), "target": target, "body": jsonutil.dumps(body).decode("utf-8")}
                )
        if messages:
            await self.plugin.outbox.append(txn, messages)
            self.plugin.appended(txn)

    async def after_commit(self, event):
        return None


# -- the worker ----------------------------------------------------------------------


def webhook_key(target: str) -> tuple[str, str, str] | None:
    """The storage key (type, parent, id) of a webhook's URI, or C{None}."""
    parent, _, webhook_id = target.rpartition("/webhooks/")
    parts = parent.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "buckets":
        return (BUCKET_WEBHOOK, parent, webhook_id)
    if len(parts) == 4 and parts[0] == "buckets" and parts[2] == "collections":
        return (COLLECTION_WEBHOOK, parent, webhook_id)
    return None


def _endpoint(reactor, address: str, target: Target, timeout: float):
    """An endpoint to one checked address, whatever the URL's host resolves to by then (TLS names the host)."""
    cls = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
    endpoint = cls(reactor, address, target.port, timeout=timeout)
    if target.scheme == "https":
        return wrapClientTLS(optionsForClientTLS(target.host), endpoint)
    return endpoint


@functools.lru_cache(maxsize=1024)
def _request_head(url: str) -> tuple[Target, bytes]:
    """A webhook URL's target and the start of its request (request line, Host, fixed headers)."""
    target = parse_target(url)
    parts = urlsplit(url_bytes(url).decode("ascii"))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default = 443 if target.scheme == "https" else 80
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if target.port != default:
        host = f"{host}:{target.port}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "User-Agent: jsonsync-webhooks\r\n"
    ).encode("ascii")
    return target, head


# Seconds between two claims of a worker that has caught up with the log
# (never more than the poll interval: an operator who wants events sooner
# lowers that one setting). A claim costs the server about 1.5 ms of CPU
# (its statement, the webhooks' look-up, the dispatch, the settle),
# whatever it returns: at 1,000 events a second, bench/webhook_backlog.sh
# with RATE=1000 measured 86 us of server CPU per delivered event with a
# gap of 50 ms, 67 us with 100 ms, 58 us with 200 ms (and 61 us with 250),
# for an event waiting up to the gap before it is claimed. On PostgreSQL,
# an event written after a quiet spell waits for the next poll anyway.
CLAIM_GAP = 0.2

class Pipelining:
    """
    How many requests may be on their way at once on one connection to a
    receiver: up to C{max_depth} (pipelined, written together) to a
    receiver whose answers come quickly, one to a slow one, whose requests
    would wait on each other (they go side by side, on connections of their
    own). A receiver is judged by the moving average of its answer times:
    pipelined below C{ON} seconds, back to one at a time above C{OFF}
    (pipelined answer times include the wait behind the requests before
    them). A receiver not yet heard from gets one at a time.

    A request that times out ends it too (a receiver may leave pipelined
    requests unanswered, or be stalled): the answers must be quick for a
    while before it comes back, and after C{STRIKES} spells of pipelining
    that ended so it never does (in this process).
    """

    ON = 0.01
    OFF = 0.1
    STRIKES = 3

    def __init__(self, max_depth: int):
        self.max_depth = max(1, max_depth)
        self._latency: dict[tuple, float] = {}
        self._piped: set[tuple] = set()
        self._strikes: dict[tuple, int] = {}

    def answered(self, key: tuple, seconds: float) -> None:
        before = self._latency.get(key)
        latency = seconds if before is None else before + (seconds - before) / 8
        self._latency[key] = latency
        if latency < self.ON:
            self._piped.add(key)
        elif latency > self.OFF:
            self._piped.discard(key)

    def timed_out(self, key: tuple) -> None:
        if key in self._piped:  # (one strike for all the requests of a pipelining spell)
            self._piped.discard(key)
            self._strikes[key] = self._strikes.get(key, 0) + 1
        self._latency[key] = max(self._latency.get(key, 0.0), 4 * self.OFF)

    def depth(self, key: tuple) -> int:
        if key in self._piped and self._strikes.get(key, 0) < self.STRIKES:
            return self.max_depth
        return 1


class _Route:
    """Where a webhook's deliveries of one claim go: the checked address, the request's start, the secret."""

    __slots__ = ("key", "connect", "head", "_mac")

    def __init__(self, key: tuple, connect, head: bytes, secret: str):
        self.key = key
        self.connect = connect
        self.head = head
        self._mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)  # keyed once, copied per request

    def sign(self, timestamp: str, body: bytes) -> str:
        """L{sign} with this webhook's secret."""
        mac = self._mac.copy()
        mac.update(timestamp.encode("ascii") + b"." + body)
        return "v1=" + mac.hexdigest()


class _Flight:
    """A request on its way."""

    __slots__ = ("message", "started", "d", "timed_out")

    def __init__(self, message: dict, started: float):
        self.message = message
        self.started = started
        self.d: Deferred | None = None
        self.timed_out = False


class Worker:
    """
    Claims due messages, up to C{claim_size} at a time, and delivers them,
    at most C{concurrency} requests at once. Polls every C{poll_interval}
    seconds, at once when this process appended messages or a retry falls
    due, and again when half of what it holds is delivered.

    A delivery is driven by callbacks, not a coroutine each: it happens once
    per change, and the Deferreds of a coroutine per delivery (with a
    semaphore, a timer each and an awaited completion) cost more CPU than the
    request itself. A claim's webhooks are looked up and their hosts resolved
    once per claim; requests wait in a queue for one of the C{concurrency}
    slots; one timer sweeps the requests that ran out of time; the
    successes of one reactor turn are recorded together.
    """

    def __init__(self, plugin: Installation):
        self.plugin = plugin
        self.reactor = plugin.registry.reactor
        self.outbox: IOutbox = plugin.outbox
        self.config = plugin.config
        self.name = f"{socket.gethostname()}:{id(self):x}:{uuid.uuid4().hex[:6]}"
        # Claimed messages, from their claim until their end is recorded.
        self.inflight: dict[str, dict] = {}
        self._kick_timer = None
        self.pipelining = Pipelining(self.config.pipeline_depth)
        self.http_pool = ConnectionPool(
            max_idle=self.config.concurrency,
            per_receiver=self.config.connections_per_receiver,
            on_answer=self.pipelining.answered,  # (timed from the write: not the wait for a connection)
        )
        # (message, route, body) waiting for a slot, per receiver; the
        # receivers with some that may go now, in turn.
        self._queues: dict[tuple, collections.deque] = {}
        self._ready: collections.deque = collections.deque()
        self._on_way: dict[tuple, int] = {}  # requests on their way, per receiver
        self._flights: dict[str, _Flight] = {}  # requests on their way, by message id
        self._ending: set[Deferred] = set()  # ends being recorded (retries, failures, flushes)
        self._ending_ids: set[str] = set()  # the messages they end, and those waiting for a flush
        self._loop: LoopingCall | None = None
        self._sweeper: LoopingCall | None = None
        self._polling: Deferred | None = None
        self._again = False
        self._timers: set = set()
        self._stopped = False
        self._last_prune = 0.0
        self._completions: list = []
        self._flush_timer = None
        self._caught_up_at = 0.0
        self._gap_timer = None

    def start(self) -> None:
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = self.reactor
        self._sweeper.start(min(1.0, self.config.timeout / 4), now=False)
        self._loop = LoopingCall(self.poke)
        self._loop.clock = self.reactor
        self._loop.start(self.config.poll_interval, now=True)  # (the first poll may stop the worker)

    def poke(self) -> None:
        """Look for due messages now (or as soon as the running look-up ends)."""
        if self._stopped:
            return
        if self._polling is not None:
            self._again = True
            return
        d = Deferred.fromCoroutine(self._poll())
        # (It may have finished already, the outbox answering synchronously.)
        self._polling = None if d.called else d

    def poke_later(self, delay: float) -> None:
        if self._stopped:
            return
        timer = self.reactor.callLater(max(delay, 0), self._timer_fired)
        self._timers.add(timer)

    def _timer_fired(self) -> None:
        self._timers = {t for t in self._timers if t.active()}
        self.poke()

    async def _poll(self) -> None:
        try:
            while not self._stopped:
                self._again = False
                free = self.config.claim_size - len(self.inflight)
                if free <= 0:
                    break
                claimed = await self.outbox.claim(free, self.config.lease, self.name)
                if self._stopped:
                    # Together: the ends of a window are settled once all of
                    # them are in (one at a time, the first would wait forever).
                    await defer.gatherResults([Deferred.fromCoroutine(self._release(m)) for m in claimed])
                    break
                if claimed:
                    for message in claimed:
                        self.inflight[message["id"]] = message
                    try:
                        hooks = await self._webhooks([m["target"] for m in claimed])
                        routes = await self._routes(hooks)
                    except BaseException:
                        # Not sent: let them go (their leases end, and they
                        # are claimed again, here or by another process).
                        for message in claimed:
                            self.inflight.pop(message["id"], None)
                        raise
                    for message in claimed:
                        target = message["target"]
                        self._dispatch(message, hooks.get(target), routes.get(target))
                if len(claimed) < free and not self._again:
                    self._caught_up_at = time.monotonic()
                    break
            now = time.time()
            if not self._stopped and now - self._last_prune > 60:
                self._last_prune = now
                await self.outbox.prune(self.config.retention)
        except (BackendUnavailable, WriteConflict) as exc:
            # The database restarting, or a deadlock it broke (with a flush's
            # TRUNCATE, say): nothing was claimed; the next poll tries again.
            _log.warn("webhooks: polling the outbox: {error}", error=exc.message, worker=self.name)
        except Exception:
            _log.failure("webhooks: polling the outbox failed", worker=self.name)
        finally:
            self._polling = None

    async def _release(self, message) -> None:
        try:
            await self.outbox.reschedule(message["id"], message["token"], 0, {"error": "worker stopping", "worker": self.name})
        except Exception:
            pass  # the lease ends by itself

    async def _webhooks(self, targets) -> dict[str, dict | None]:
        """The webhooks of C{targets} (their URIs), in one look-up."""
        keys, uris = [], []
        for target in set(targets):
            key = webhook_key(target)
            if key is not None:
                keys.append(key)
                uris.append(target)
        found: dict[str, dict | None] = dict.fromkeys(targets)
        if keys:
            storage = self.plugin.registry.storage
            txn = storage.transaction()
            try:
                found.update(zip(uris, await storage.get_many(txn, keys), strict=True))
            finally:
                await txn.rollback()
        return found

    async def _routes(self, hooks: dict[str, dict | None]) -> dict[str, _Route | str]:
        """
        Each webhook's route for this claim, or why it has none (an error
        for the delivery log). The host is resolved now, and the connection
        goes to the very address that was checked (no DNS rebinding).
        """
        routes: dict[str, _Route | str] = {}
        for uri, hook in hooks.items():
            if hook is None:
                continue
            try:
                target, head = _request_head(hook.get("url"))
                addresses = await resolve(self.reactor, target.host, target.port, self.config.timeout)
                if not self.config.allow_private:
                    addresses = [a for a in addresses if not refused_address(a)]
                    if not addresses:
                        raise TargetRefused(f"{target.host} resolves to no address webhooks may reach")
                if not addresses:
                    raise TargetRefused(f"{target.host} does not resolve")
            except TargetRefused as exc:
                routes[uri] = str(exc)
                continue
            except Exception as exc:
                routes[uri] = f"{type(exc).__name__}: {exc}"[:500]
                continue
            routes[uri] = _Route(
                (target.scheme, addresses[0], target.port, target.host),
                functools.partial(self._connect, addresses[0], target),
                head,
                hook.get("secret") or "",
            )
        return routes

    def _connect(self, address: str, target: Target, factory) -> Deferred:
        return _endpoint(self.reactor, address, target, self.config.timeout).connect(factory)

    # -- one delivery --------------------------------------------------------------------
    def _dispatch(self, message: dict, hook: dict | None, route: _Route | str | None) -> None:
        """Queues a claimed message's request, or ends it at once (no webhook, filtered out, no route)."""
        if hook is None:
            self._end(message, self.outbox.discard(message["id"], message["token"]))
            return
        filters = filters_of(hook)
        stored = message["body"]
        if not filters and '"old":' not in stored and stored.startswith("{"):
            # Nothing to judge nor strip: the stored text, with the id first.
            body = ('{"id":' + jsonutil.dumps(message["id"]).decode("ascii") + "," + stored[1:]).encode("utf-8")
        else:
            try:
                event, subject = outgoing(message["id"], stored)
            except Exception as exc:
                # Not JSON (written by hand?): it cannot be sent; failed, so that its window moves on.
                error = f"unreadable event: {type(exc).__name__}"
                self._end(message, self.outbox.fail(message["id"], message["token"], {"error": error, "worker": self.name}))
                return
            if filters and not matches_all(subject, filters):
                self._end(message, self.outbox.discard(message["id"], message["token"]))
                return
            body = jsonutil.dumps(event)
        if not isinstance(route, _Route):
            self._attempted(message, None, route or "no route", time.monotonic())
            return
        queue = self._queues.get(route.key)
        if queue is None:
            queue = self._queues[route.key] = collections.deque()
            self._ready.append(route.key)
        queue.append((message, route, body))
        self._kick()

    def _kick(self) -> None:
        """Sends what waits, once this reactor turn's answers are in (written together, where they can be)."""
        if self._kick_timer is None and self._ready and not self._stopped:
            self._kick_timer = self.reactor.callLater(0, self._start_next)

    def _start_next(self) -> None:
        self._kick_timer = None
        room = self.config.concurrency - len(self._flights)
        turns = len(self._ready)
        while room > 0 and turns and not self._stopped:
            turns -= 1
            key = self._ready.popleft()
            queue = self._queues[key]
            # What the receiver's connections take at once: more would wait
            # in the pool for a connection, their time out running.
            depth = self.pipelining.depth(key)
            on_way = self._on_way.get(key, 0)
            take = min(room, len(queue), self.config.connections_per_receiver * depth - on_way)
            if take > 0:
                room -= take
                self._on_way[key] = on_way + take
                self._send(key, depth, [queue.popleft() for _ in range(take)])
            if not queue:
                del self._queues[key]
            elif take > 0 or not on_way:
                self._ready.append(key)
            # (else it is full: it is ready again when one of its requests ends)

    def _send(self, key: tuple, depth: int, items: list) -> None:
        flights = []
        requests = []
        for message, route, body in items:
            timestamp = str(int(time.time()))
            data = b"".join((
                route.head,
                f"{EVENT_HEADER}: {message['id']}\r\n{TIMESTAMP_HEADER}: {timestamp}\r\n"
                f"{SIGNATURE_HEADER}: {route.sign(timestamp, body)}\r\n"
                f"{ATTEMPT_HEADER}: {message['attempts']}\r\nContent-Length: {len(body)}\r\n\r\n".encode(),
                body,
            ))
            flight = _Flight(message, time.monotonic())
            self._flights[message["id"]] = flight
            flights.append(flight)
            requests.append(data)
        ds = self.http_pool.request_many(key, items[0][1].connect, requests, depth)  # (one address for all)
        for flight, d in zip(flights, ds, strict=True):
            flight.d = d
            d.addCallbacks(self._answered, self._unanswered, callbackArgs=(flight, key), errbackArgs=(flight, key))

    def _landed(self, key: tuple) -> None:
        """One of C{key}'s requests ended: the receiver may take another of its queue."""
        decrement(self._on_way, key)
        if key in self._queues and key not in self._ready:
            self._ready.append(key)

    def _answered(self, status: int, flight: _Flight, key: tuple) -> None:
        self._flights.pop(flight.message["id"], None)
        self._landed(key)
        self._attempted(flight.message, status, None, flight.started)
        self._kick()

    def _unanswered(self, failure, flight: _Flight, key: tuple) -> None:
        self._flights.pop(flight.message["id"], None)
        self._landed(key)
        if flight.timed_out:
            error = f"timed out after {self.config.timeout:g} s"
            if failure.check(NotSent):
                error += ", waiting for a connection to the receiver"  # (its others were all busy)
            else:
                self.pipelining.timed_out(key)
        elif failure.check(CancelledError):
            return None  # the worker is stopping: stop() gives the message back
        else:
            error = f"{failure.type.__name__}: {failure.value}"[:500]
        self._attempted(flight.message, None, error, flight.started)
        self._kick()
        return None

    def _sweep(self) -> None:
        """Cancels the requests that ran out of time (their connections are aborted)."""
        if not self._flights:
            return
        late = time.monotonic() - self.config.timeout
        # (Held: a place freed by one cancel goes to no request cancelled next.)
        with self.http_pool.holding():
            for flight in [f for f in self._flights.values() if f.started <= late]:
                flight.timed_out = True
                if flight.d is not None:
                    flight.d.cancel()

    def _attempted(self, message: dict, status: int | None, error: str | None, started: float) -> None:
        """An attempt ended: recorded as delivered (with the turn's others), to be retried, or failed."""
        attempt = {
            "status_code": status,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
            "error": error,
            "worker": self.name,
        }
        if status is not None and 200 <= status < 300:
            self._completions.append((message["id"], message["token"], attempt))
            self._ending_ids.add(message["id"])
            if self._flush_timer is None:
                self._flush_timer = self.reactor.callLater(0, self._flush_completions)
            return
        if error is None:
            attempt["error"] = f"HTTP {status}"
        delay = self.config.backoff(message["attempts"])
        if message["age"] + delay > self.config.retry_period:
            self._end(message, self.outbox.fail(message["id"], message["token"], attempt))
            return

        async def retry():
            if await self.outbox.reschedule(message["id"], message["token"], delay, attempt):
                self.poke_later(delay)

        self._end(message, retry())

    def _end(self, message: dict, ending) -> None:
        """Runs C{ending} (an outbox call ending C{message}); the message is let go when it is done."""
        self._ending_ids.add(message["id"])
        d = Deferred.fromCoroutine(ending) if not isinstance(ending, Deferred) else ending
        self._ending.add(d)

        def done(result):
            self._ending.discard(d)
            if isinstance(result, Failure) and result.check(BackendUnavailable, WriteConflict):
                # Its lease ends and it is tried again (at least once).
                _log.warn("webhooks: ending {id}: {error}", id=message["id"],
                          error=getattr(result.value, "message", result.value), worker=self.name)
            elif isinstance(result, Failure) and not result.check(CancelledError):
                _log.failure("webhooks: ending {id} failed", result, id=message["id"], worker=self.name)
            self._settled(message["id"])

        d.addBoth(done)

    def _flush_completions(self) -> Deferred:
        self._flush_timer = None
        batch, self._completions = self._completions, []

        async def flush():
            try:
                await self.outbox.complete_many(batch)
            except (BackendUnavailable, WriteConflict) as exc:
                # The leases end and the events are delivered again (at least once).
                _log.warn("webhooks: recording {n} deliveries: {error}", n=len(batch), error=exc.message, worker=self.name)
            except Exception:
                _log.failure("webhooks: recording {n} deliveries failed", n=len(batch), worker=self.name)
            for message_id, _, _ in batch:
                self._settled(message_id)

        d = Deferred.fromCoroutine(flush())
        if not d.called:
            self._ending.add(d)

            def gone(result):
                self._ending.discard(d)
                return result

            d.addBoth(gone)
        return d

    def _settled(self, message_id: str) -> None:
        """A message's end is recorded: its place may go to another."""
        self.inflight.pop(message_id, None)
        self._ending_ids.discard(message_id)
        if not self._stopped and len(self.inflight) <= self.config.claim_size // 2:
            # Half of what was claimed is done: claim more, but not more often
            # than every CLAIM_GAP seconds once a claim found all there was
            # (each delivery would otherwise claim the two or three events
            # written meanwhile: a claim and a settle each).
            wait = self._caught_up_at + min(CLAIM_GAP, self.config.poll_interval) - time.monotonic()
            if wait <= 0:
                self.poke()
            elif self._gap_timer is None or not self._gap_timer.active():
                self._gap_timer = self.reactor.callLater(wait, self._timer_fired)
                self._timers.add(self._gap_timer)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for loop in (self._loop, self._sweeper):
            if loop is not None and loop.running:
                loop.stop()
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = set()
        if self._polling is not None:
            try:
                await self._polling
            except Exception:
                pass
        # Requests on their way are abandoned (their connections aborted).
        if self._kick_timer is not None and self._kick_timer.active():
            self._kick_timer.cancel()
        self._queues.clear()
        self._ready.clear()
        self._on_way.clear()
        with self.http_pool.holding():
            for flight in list(self._flights.values()):
                if flight.d is not None:
                    flight.d.cancel()
        self._flights.clear()
        if self._flush_timer is not None and self._flush_timer.active():
            self._flush_timer.cancel()
            self._flush_completions()  # what was delivered is recorded before leaving
        # What was claimed and is not being ended is given back, at the same
        # time as the ends under way are recorded: an end waits for the
        # others of its window (PostgreSQL), given back or recorded.
        left = [m for i, m in self.inflight.items() if i not in self._ending_ids]
        waits = list(self._ending) + [Deferred.fromCoroutine(self._release(m)) for m in left]
        if waits:
            await defer.DeferredList(waits, consumeErrors=True)
        self.inflight.clear()
        self.http_pool.close()


def _parent_uri(params) -> str:
    """The URI of the bucket or collection a webhook route is under."""
    uri = f"/buckets/{params.get('bucket_id', '')}"
    if "collection_id" in params:
        uri += f"/collections/{params['collection_id']}"
    return uri


def url_bytes(url: str) -> bytes:
    """The URL as a request line carries it (an IDNA host, a percent-encoded path and query)."""
    if url.isascii():
        return url.encode("ascii")
    parts = urlsplit(url)
    host = parts.hostname.encode("idna").decode("ascii") if parts.hostname else ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    safe = "/%:@!$&'()*+,;=-._~"
    path = quote(parts.path, safe=safe)
    query = quote(parts.query, safe=safe + "?")
    return f"{parts.scheme}://{netloc}{path}{'?' + query if query else ''}".encode("ascii")


# -- settings -----------------------------------------------------------------------


@dataclasses.dataclass
class Config:
    allow_private: bool
    timeout: float
    retry_period: float
    retry_base: float
    retry_max_delay: float
    concurrency: int
    batch_size: int
    poll_interval: float
    pipeline_depth: int
    connections_per_receiver: int
    lease: float
    retention: float
    worker: bool

    @functools.cached_property
    def claim_size(self) -> int:
        """
        How many messages one worker holds at most: C{batch_size}, but no
        more than it can try within a lease should every attempt time out
        (a lease that ends mid-batch sends its events again).
        """
        rounds = max(1, int(self.lease // self.timeout) - 1)
        return max(1, min(self.batch_size, self.concurrency * rounds))

    def backoff(self, attempts: int) -> float:
        """The delay before attempt C{attempts + 1}: exponential, capped, with jitter (half to all of it)."""
        delay = min(self.retry_max_delay, self.retry_base * (2 ** min(max(attempts - 1, 0), 40)))
        return delay / 2 + random.uniform(0, delay / 2)

    @classmethod
    def of(cls, settings) -> Config:
        problems = []

        def number(name, low, default):
            raw = settings.get(f"webhooks.{name}", default)
            try:
                value = float(raw)
            except (TypeError, ValueError):
                problems.append(f"webhooks.{name}: not a number: {raw!r}")
                return float(default)
            if not value >= low:
                problems.append(f"webhooks.{name}: must be at least {low}")
            return value

        config = cls(
            allow_private=bool(settings.get("webhooks.allow_private_targets", False)),
            timeout=number("timeout_seconds", 0.01, "10"),
            retry_period=number("retry_period_seconds", 0, "86400"),
            retry_base=number("retry_base_seconds", 0.01, "2"),
            retry_max_delay=number("retry_max_delay_seconds", 0.01, "3600"),
            concurrency=int(number("concurrency", 1, "64")),
            batch_size=int(number("batch_size", 1, "256")),
            poll_interval=number("poll_interval_seconds", 0.01, "0.5"),
            pipeline_depth=int(number("pipeline_depth", 1, "4")),
            connections_per_receiver=int(number("connections_per_receiver", 1, "8")),
            lease=number("lease_seconds", 1, "60"),
            retention=number("log_retention_seconds", 0, "604800"),
            worker=bool(settings.get("webhooks.worker", True)),
        )
        if config.lease <= config.timeout:
            problems.append("webhooks.lease_seconds must exceed webhooks.timeout_seconds")
        if problems:
            raise ConfigurationError(problems)
        return config


# -- the plugin -------------------------------------------------------------------------

_workers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def worker_of(registry) -> Worker | None:
    """The delivery worker a registry's webhooks plugin started (tests stop it)."""
    return _workers.get(registry)


@implementer(IJsonSyncPlugin)
class WebhooksPlugin:
    name = PLUGIN
    settings = {
        "webhooks.allow_private_targets": False,
        "webhooks.timeout_seconds": "10",
        "webhooks.retry_period_seconds": "86400",
        "webhooks.retry_base_seconds": "2",
        "webhooks.retry_max_delay_seconds": "3600",
        # Requests in flight per process. 16 did not keep pace with one
        # webhook of a bucket written 1,500 times a second on a loaded 2-core
        # machine (57 % delivered during the load, the rest after); 32 and 64 did.
        "webhooks.concurrency": 64,
        "webhooks.batch_size": 256,
        "webhooks.poll_interval_seconds": "0.5",
        "webhooks.pipeline_depth": 4,
        # Connections open (or being made) at once to one receiver, per
        # process: more requests wait for one of them. A burst of events no
        # longer opens one connection each (a receiver's listen queue, 5 for
        # Python's http.server, overflowed: its clients' SYNs go again 1 s later).
        "webhooks.connections_per_receiver": 8,
        "webhooks.lease_seconds": "60",
        "webhooks.log_retention_seconds": "604800",
        "webhooks.worker": True,
    }

    def check_settings(self, settings):
        # A bad value stops the command line, before the server starts.
        Config.of(settings)

    async def install(self, registry, settings):
        # One plugin object serves every app of a process (tests build many):
        # the per-server state lives in an installation.
        await Installation(registry, settings).install()


class Installation:
    def __init__(self, registry, settings):
        self.registry = registry
        self.config = Config.of(settings)
        outbox = getattr(registry.storage, "outbox", None)
        if outbox is None or not IOutbox.providedBy(outbox):
            raise ConfigurationError(
                [f"plugin webhooks needs a storage backend with an outbox; {settings['storage_backend']!r} has none"]
            )
        self.outbox: IOutbox = outbox
        self.worker: Worker | None = None
        self.listener: OutboxListener | None = None
        self.types = WebhookTypes(self)

    # -- what the rest calls --------------------------------------------------------
    async def check_target(self, target: Target) -> None:
        """Refuse, at creation, a target that can only be an address webhooks may not reach."""
        if self.config.allow_private:
            return
        host = target.host.lower().rstrip(".")
        literal = _ip_literal(host)
        if literal is not None:
            if refused_address(literal):
                raise _bad("url", f"{target.host} is not a public address")
            return
        if host == "localhost" or host.endswith(".localhost"):
            raise _bad("url", f"{target.host} is not a public address")
        try:
            addresses = await resolve(self.registry.reactor, host, target.port, 2.0)
        except Exception:
            return  # checked again at every delivery
        refused = [a for a in addresses if refused_address(a)]
        if refused:
            raise _bad("url", f"{target.host} resolves to {refused[0]}, which is not a public address")

    def appended(self, txn) -> None:
        if self.worker is not None:
            txn.after_commit(self.worker.poke)

    async def install(self) -> None:
        registry = self.registry
        for name in (BUCKET_WEBHOOK, COLLECTION_WEBHOOK):
            for route in registry.add_resource_type(self.types.resource_type(name)):
                route.view = self._guarded(route.view, plural=route.name.endswith("-plural"))
        # A backend that fans changes out itself (PostgreSQL: a trigger, in
        # the statement of the write) needs no listener: writes keep carrying
        # their commit. Otherwise the listener appends, in the transaction.
        if not await self.outbox.fan_out():
            self.listener = OutboxListener(self)
            registry.add_listener(self.listener)
            for name in DELIVERED_TYPES:
                registry.resource_types[name].validators.append(self.listener.prefetch)
        for prefix, name in (
            ("/buckets/<bucket_id>", BUCKET_WEBHOOK),
            ("/buckets/<bucket_id>/collections/<collection_id>", COLLECTION_WEBHOOK),
        ):
            registry.add_route(
                Route(
                    f"{prefix}/webhooks/<webhook_id>/deliveries",
                    ("GET",),
                    self.deliveries_view,
                    f"{name}-deliveries",
                    "resource",
                    "The delivery log of a webhook",
                )
            )
            registry.add_route(
                Route(
                    f"{prefix}/webhooks/<webhook_id>/deliveries/<delivery_id>/redeliver",
                    ("POST",),
                    self.redeliver_view,
                    f"{name}-redeliver",
                    "resource",
                    "Deliver an event again",
                )
            )
        registry.add_capability(
            PLUGIN,
            "Signed webhooks with a transactional outbox, retries and a delivery log.",
            "https://github.com/jsonsync/jsonsync/blob/main/docs/webhooks.md",
        )
        if self.config.worker:
            self.worker = Worker(self)
            _workers[registry] = self.worker
            self.outbox.add_close_hook(self.worker.stop)
            reactor = registry.reactor
            worker = self.worker
            reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(worker.stop()))
            self.worker.start()

    # -- views ------------------------------------------------------------------------
    def _guarded(self, view, plural: bool):
        registry = self.registry

        async def webhooks_view(req: ApiRequest):
            (req.extras.get(PLUGIN) or {}).pop("generated", None)  # from an earlier attempt
            if req.method in ("GET", "HEAD"):
                # Readers do not see webhooks: their URLs are the writers' business.
                parent = _parent_uri(req.params)
                uri = parent if plural else f"{parent}/webhooks/{req.params.get('id', '')}"
                await registry.engine.require(req, uri, "write")
            if req.method == "PATCH" and "json-patch" in (req.header("Content-Type") or ""):
                try:
                    ops = req.json(registry.settings["json_max_depth"])
                except InvalidParameters:
                    ops = None  # the engine reports it
                if isinstance(ops, list):
                    for op in ops:
                        if not isinstance(op, dict):
                            continue
                        for key in ("path", "from"):
                            where = op.get(key)
                            if isinstance(where, str) and (where == "/data/secret" or where.startswith("/data/secret/")):
                                raise InvalidParameters(
                                    "body", "data.secret", "data.secret is write-only: replace it with a merge PATCH"
                                )
            response = await view(req)
            generated = (req.extras.get(PLUGIN) or {}).get("generated")
            if generated and req.method in ("POST", "PUT") and response.status in (200, 201):
                body = response.body
                if isinstance(body, dict) and isinstance(body.get("data"), dict):
                    body["data"] = {**body["data"], "secret": generated}
            return response

        return webhooks_view

    async def _located(self, req: ApiRequest) -> str:
        params = req.params
        parents = [("bucket", "", params["bucket_id"])]
        if "collection_id" in params:
            parents.append(("collection", f"/buckets/{params['bucket_id']}", params["collection_id"]))
        for name, _, oid in parents:
            if not NAME_PATTERN.match(oid):
                raise ParentNotFound(name, oid)
        uri = f"{_parent_uri(params)}/webhooks/{params['webhook_id']}"
        await self.registry.engine.require(req, uri, "write")
        key = webhook_key(uri)
        assert key is not None
        found = await self.registry.storage.get_many(req.txn, [*parents, key])
        for (name, _, oid), obj in zip(parents, found, strict=False):
            if obj is None:
                raise ParentNotFound(name, oid)
        if found[-1] is None:
            raise ObjectNotFound("webhook", params["webhook_id"])
        return uri

    async def deliveries_view(self, req: ApiRequest):
        uri = await self._located(req)
        limit = 50
        before = None
        for name, value in req.query:
            if name == "_limit":
                if not value.isdigit() or not 1 <= int(value) <= 500:
                    raise InvalidParameters("querystring", "_limit", "_limit should be an integer from 1 to 500")
                limit = int(value)
            elif name == "_before":
                before = value
            else:
                raise InvalidParameters("querystring", name, f"Unknown parameter {name!r} (use _limit, _before)")
        rows = await self.outbox.deliveries(uri, limit, before)
        if rows is None:
            raise InvalidParameters("querystring", "_before", "_before should be the id of an event of this webhook")
        data = []
        for row in rows:
            try:
                event, _ = outgoing(row["id"], row["body"])
            except jsonutil.JSONError:
                event = None
            data.append(
                {
                    "id": row["id"],
                    "status": row["status"],
                    "attempts": row["attempts"],
                    "created": row["created"],
                    "next_attempt": row["next_attempt"],
                    "log": row["log"],
                    "event": event,
                }
            )
        return ApiResponse({"data": data}, 200)

    async def redeliver_view(self, req: ApiRequest):
        uri = await self._located(req)
        delivery_id = req.params["delivery_id"]
        if not await self.outbox.redeliver(uri, delivery_id):
            raise ObjectNotFound("delivery", delivery_id)
        if self.worker is not None:
            self.worker.poke()
        return ApiResponse({"data": {"id": delivery_id, "status": "pending"}}, 202)
