"""
The C{audit} plugin: an append-only record of the requests that read or
changed a bucket's data (who, what, when, from where), served to the
bucket's owners at C{/buckets/<bid>/audit} with Kinto's filters, sorting
and pages. No route writes it. See docs/audit.md.

Entries are objects of the resource C{audit} (the objects table: both
backends, no schema change) kept under the storage parent
C{/__audit__/buckets/<bid>}, outside the bucket's own tree, so that
deleting a bucket does not erase the record of who deleted it.

Cost: a response observer builds one small dict per audited request and
queues it; the queue is written in one transaction every
C{audit.flush_ms} (or at C{audit.flush_max_entries}), off the request's
path. Expired entries are deleted in the background and hidden from the
listing as soon as they expire.
"""

from __future__ import annotations

import dataclasses
import datetime
import weakref

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from jsonsync.config import Setting
from jsonsync.errors import MethodNotAllowed, ParentNotFound, WriteConflict
from jsonsync.http import API_PREFIX, ApiRequest
from jsonsync.interfaces import IJsonSyncPlugin
from jsonsync.query import Filter, Op, Query, Sort
from jsonsync.registry import Route
from jsonsync.resources.engine import Engine
from jsonsync.resources.model import Location, ResourceType, uuid_id

_log = Logger()

RESOURCE = "audit"
ENTRY_FIELDS = frozenset(
    {
        "id", "last_modified", "date", "user_id", "token", "method", "path", "uri", "ids",
        "status", "errno", "client", "request_id", "action", "batch",
    }
)
AUDIT = ResourceType(
    RESOURCE, "audit", "bucket", ("read", "write"), id_generator=uuid_id,
    strict_fields=ENTRY_FIELDS, leaf_data=True,
)
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READS = frozenset({"GET", "HEAD"})
_MAX_IDS = 100
_DAY_MS = 86_400_000


def storage_parent(bucket_id: str) -> str:
    return f"/__audit__/buckets/{bucket_id}"


def _bucket_of(path: str, method: str, response) -> str | None:
    """The bucket a request is about, from its path (or its answer, for POST /buckets)."""
    rel = path[len(API_PREFIX):] if path.startswith(API_PREFIX) else path
    parts = rel.strip("/").split("/")
    if len(parts) >= 2 and parts[0] == "buckets":
        return parts[1]
    if parts == ["buckets"] and method == "POST" and isinstance(response.body, dict):
        data = response.body.get("data")
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            return data["id"]
    return None


def _ids_of(body) -> list[str]:
    if not isinstance(body, dict):
        return []  # an encoded list page: ids are not parsed for the audit
    data = body.get("data")
    if isinstance(data, dict):
        oid = data.get("id")
        return [oid] if isinstance(oid, str) else []
    if isinstance(data, list):
        return [o["id"] for o in data[:_MAX_IDS] if isinstance(o, dict) and isinstance(o.get("id"), str)]
    return []


class AuditLog:
    """The queue of entries and its writer."""

    def __init__(self, registry, settings):
        self.registry = registry
        self.clock = registry.reactor
        self.record_reads = settings.get("audit.record_reads", False)
        self.retention_ms = settings.get("audit.retention_days", 90) * _DAY_MS
        self.flush_ms = settings.get("audit.flush_ms", 1000)
        self.flush_max = settings.get("audit.flush_max_entries", 500)
        self.trim_every_ms = settings.get("audit.trim_interval_seconds", 3600) * 1000
        self.queue: list[tuple[str, dict]] = []
        self._batches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._timer = None
        self._running: Deferred | None = None
        self._trimmed: dict[str, float] = {}
        self._seen: set[str] = set()

    # -- recording (on the request's path: quick, never raises) -----------------
    def observe(self, req: ApiRequest, response) -> None:
        try:
            self._observe(req, response)
        except Exception:
            _log.failure("audit: an entry could not be made")

    def _observe(self, req: ApiRequest, response) -> None:
        method = req.method
        # (A request refused before it began, by routing, has no context.)
        ctx = getattr(req, "ctx", None)
        if req.in_batch:
            if method not in WRITES and not (self.record_reads and method in READS):
                return
            made = self._entry(req, response)
            if made is not None and ctx is not None:
                # Queued when the batch ends: with its request id, and
                # marked if the batch rolled back.
                self._batches.setdefault(ctx, []).append(made)
            return
        pending = self._batches.pop(ctx, None) if ctx is not None else None
        if pending:
            failed = response.status >= 500
            for bucket_id, entry in pending:
                entry["request_id"] = req.request_id
                entry["batch"] = True
                if failed:
                    entry["rolled_back"] = True
                self._queue(bucket_id, entry)
        if method not in WRITES and not (self.record_reads and method in READS):
            return
        made = self._entry(req, response)
        if made is not None:
            self._queue(*made)

    def _entry(self, req: ApiRequest, response):
        path = req.path
        bucket_id = _bucket_of(path, req.method, response)
        if bucket_id is None or path.endswith("/audit"):
            return None
        status = response.status
        errno = response.body.get("errno") if status >= 400 and isinstance(response.body, dict) else None
        restriction = req.restriction
        entry = {
            "date": datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc).isoformat(),
            "user_id": req.user_id,
            "token": getattr(restriction, "label", None) if restriction is not None else None,
            "method": req.method,
            "path": path,
            "uri": path[len(API_PREFIX):] if path.startswith(API_PREFIX) else path,
            "ids": _ids_of(response.body) if status < 400 else [],
            "status": status,
            "errno": errno,
            "client": req.client,
            "request_id": req.request_id,
            "action": "write" if req.method in WRITES else "read",
        }
        return bucket_id, entry

    def _queue(self, bucket_id: str, entry: dict) -> None:
        self._seen.add(bucket_id)
        self.queue.append((bucket_id, entry))
        if len(self.queue) >= self.flush_max:
            self.kick()
        elif self._timer is None and self._running is None:
            self._timer = self.clock.callLater(self.flush_ms / 1000, self.kick)

    # -- writing (off the request's path) ------------------------------------------
    def kick(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._running is None and self.queue:
            running = Deferred.fromCoroutine(self._write_all())
            if not running.called:  # (done already when the storage answered at once)
                self._running = running

    async def flush(self) -> None:
        """Write everything queued now (tests, shutdown)."""
        while self._running is not None or self.queue:
            if self._running is None:
                self.kick()
            running = self._running
            if running is not None:
                await running

    async def _write_all(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[: self.flush_max], self.queue[self.flush_max :]
                try:
                    await self._write(batch)
                except Exception:
                    _log.failure("audit: {n} entries could not be written", n=len(batch))
            await self._trim_due()
        finally:
            self._running = None

    async def _write(self, batch) -> None:
        storage = self.registry.storage
        for _attempt in range(3):
            txn = storage.transaction()
            try:
                for bucket_id, entry in batch:
                    await storage.create(txn, RESOURCE, storage_parent(bucket_id), {**entry, "id": uuid_id()})
                await txn.commit()
                return
            except WriteConflict:
                await txn.rollback()
            except BaseException:
                await txn.rollback()
                raise

    def cutoff(self) -> int | None:
        if self.retention_ms <= 0:
            return None
        return int(self.clock.seconds() * 1000) - self.retention_ms

    async def _trim_due(self) -> None:
        cutoff = self.cutoff()
        if cutoff is None:
            return
        now = self.clock.seconds() * 1000
        for bucket_id in sorted(self._seen):
            if now - self._trimmed.get(bucket_id, 0) >= self.trim_every_ms:
                self._trimmed[bucket_id] = now
                try:
                    await self.trim(bucket_id, cutoff)
                except Exception:
                    _log.failure("audit: trimming {bucket} failed", bucket=bucket_id)

    async def trim(self, bucket_id: str, cutoff: int) -> int:
        """Delete the entries of a bucket older than C{cutoff} (ms); returns how many."""
        storage = self.registry.storage
        parent = storage_parent(bucket_id)
        removed = 0
        while True:
            txn = storage.transaction()
            try:
                old = await storage.list(
                    txn, RESOURCE, parent,
                    Query(filters=[Filter("last_modified", cutoff, Op.LT)],
                          sorting=(Sort("last_modified", 1),), limit=500),
                )
                for entry in old:
                    await storage.delete(txn, RESOURCE, parent, entry["id"], expected=entry["last_modified"])
                await txn.commit()
            except BaseException:
                await txn.rollback()
                raise
            removed += len(old)
            if len(old) < 500:
                return removed


class AuditEngine(Engine):
    """Lists a bucket's entries to its owners (write on the bucket); hides expired ones."""

    def __init__(self, registry, log: AuditLog):
        super().__init__(registry)
        self.log = log

    async def readable_ids(self, req, loc, permission, page=None):
        bucket_uri = f"/buckets/{loc.ancestors[0][1]}"
        bucket_loc = Location(self.registry.resource_types["bucket"], "", [], loc.ancestors[0][1])
        missing, _, (allowed,) = await self.fetch(req, bucket_loc, [(bucket_uri, "write")])
        if not allowed:
            raise self.deny(req)
        if missing is not None:
            raise missing
        return None, None

    def list_request(self, req, loc: Location):
        listing = super().list_request(req, loc)
        cutoff = self.log.cutoff()
        if cutoff is not None:
            listing.query.filters = [*listing.query.filters, Filter("last_modified", cutoff, Op.GT)]
        return listing


@implementer(IJsonSyncPlugin)
class AuditPlugin:
    name = "audit"
    settings = {
        "audit.record_reads": False,
        "audit.retention_days": Setting(
            "audit.retention_days", "int", 90, "(plugin audit) days entries are kept; 0: forever"
        ),
        "audit.flush_ms": 1000,
        "audit.flush_max_entries": 500,
        "audit.trim_interval_seconds": 3600,
    }

    def install(self, registry, settings):
        rt = dataclasses.replace(AUDIT, validators=[])
        registry.add_resource_type(rt, plural=False, single=False)
        log = AuditLog(registry, settings)
        engine = AuditEngine(registry, log)
        registry.add_response_observer(log.observe)
        bucket_rt = registry.resource_types["bucket"]

        async def audit_view(req: ApiRequest):
            bucket_id = req.params["bucket_id"]
            if not bucket_rt.id_pattern.match(bucket_id):
                raise ParentNotFound("bucket", bucket_id)
            if req.method not in ("GET", "HEAD"):
                raise MethodNotAllowed(("GET", "HEAD"))
            loc = Location(rt, storage_parent(bucket_id), [(bucket_rt, bucket_id)])
            return await engine.get_plural(req, loc)

        registry.add_route(
            Route(
                "/buckets/<bucket_id>/audit", ("GET",), audit_view, "audit-plural", "resource",
                "Read the audit log of a bucket (its owners)", resource=rt,
            )
        )
        registry.add_capability(
            "audit",
            "An append-only record of who read and changed a bucket's data.",
            "https://github.com/jsonsync/jsonsync/blob/main/docs/audit.md",
            record_reads=bool(settings.get("audit.record_reads")),
            retention_days=settings.get("audit.retention_days"),
        )
        registry.reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromCoroutine(log.flush()))
        return log
