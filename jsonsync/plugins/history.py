"""
The C{history} plugin: one entry per change of a bucket, collection, group
or record, kept in the bucket's C{history} list and served at
C{/buckets/<bid>/history} (read, filter, page, delete), with the state of a
collection's records at a past timestamp at
C{/buckets/<bid>/snapshot/collections/<cid>@<timestamp>}.

Entries carry no ACL of their own: their storage parent is the bucket, so
the permission tree grants reading them to whoever may read the bucket, and
deleting them to whoever may write it.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import re

from zope.interface import implementer

from jsonsync.config import Setting
from jsonsync.errors import InvalidParameters, MethodNotAllowed, ParentNotFound
from jsonsync.http import ApiRequest, ApiResponse
from jsonsync.interfaces import IJsonSyncPlugin, IResourceListener
from jsonsync.query import Filter, Op, Query, Sort
from jsonsync.registry import Route
from jsonsync.resources.engine import Engine
from jsonsync.resources.model import NAME_PATTERN, Location, ResourceType, uuid_id

ENTRY_FIELDS = frozenset(
    {
        "id",
        "last_modified",
        "action",
        "resource_name",
        "uri",
        "user_id",
        "date",
        "bucket_id",
        "collection_id",
        "group_id",
        "record_id",
        "target",
    }
)

HISTORY = ResourceType(
    "history",
    "history",
    "bucket",
    ("read", "write"),
    id_generator=uuid_id,
    strict_fields=ENTRY_FIELDS,
)

TRACKED = frozenset({"bucket", "collection", "group", "record"})

# Ids are strings: C{?record_id=123} must not become a number.
_STRING_FIELDS = frozenset({"bucket_id", "collection_id", "group_id", "record_id", "user_id"})

_TIMESTAMP = re.compile(r"^\d+$")


def _ids_of(parent_id: str) -> dict[str, str]:
    """C{{"bucket": "b", "collection": "c"}} from C{/buckets/b/collections/c}."""
    parts = parent_id.strip("/").split("/") if parent_id else []
    names = {
        "buckets": "bucket",
        "collections": "collection",
        "groups": "group",
        "records": "record",
    }
    return {names.get(parts[i], parts[i]): parts[i + 1] for i in range(0, len(parts) - 1, 2)}


def _as_string(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        return [_as_string(v) for v in value]
    return value


class HistoryEngine(Engine):
    """The generic engine, with Kinto's string typing of id filters."""

    def list_request(self, req, loc: Location):
        listing = super().list_request(req, loc)
        listing.query.filters = [
            Filter(f.field, _as_string(f.value), f.op) if f.field in _STRING_FIELDS else f
            for f in listing.query.filters
        ]
        return listing


@implementer(IResourceListener)
class HistoryListener:
    """Writes the entries, inside the request's transaction, before its commit."""

    actions = frozenset({"create", "update", "delete"})
    resource_names = TRACKED

    def __init__(self, registry, settings):
        self.registry = registry
        self.excluded = frozenset(settings.get("history.exclude_resources") or ())
        self.excluded_users = frozenset(settings.get("history.exclude_user_ids") or ())
        self.trim_max = settings.get("history.auto_trim_max_count")
        self.trim_users = list(settings.get("history.auto_trim_user_ids") or ())
        threshold = settings.get("history.auto_trim_threshold")
        self.trim_threshold = 100 if threshold is None else threshold

    def _is_excluded(self, uri: str) -> bool:
        # An excluded bucket or collection excludes everything below it.
        return any(uri == e or uri.startswith(e + "/") for e in self.excluded)

    async def before_commit(self, event, txn):
        if event.user_id is not None and event.user_id in self.excluded_users:
            return
        rt = self.registry.resource_types[event.resource_name]
        storage = self.registry.storage
        permissions = self.registry.permissions
        parent_ids = _ids_of(event.parent_id)
        live_buckets: dict[str, bool] = {}
        written: set[tuple[str, str]] = set()
        for impacted in event.impacted_objects:
            target = impacted["new"]
            oid = target["id"]
            uri = f"{event.parent_id}/{rt.plural}/{oid}"
            bucket_id = oid if event.resource_name == "bucket" else parent_ids.get("bucket")
            if bucket_id is None:
                continue
            if event.resource_name == "bucket" and event.action == "delete":
                continue  # the core purged the bucket's history with it
            if self._is_excluded(uri):
                continue
            if bucket_id not in live_buckets:
                # A bucket deleted later in the same batch lost its history:
                # writing into it again would resurrect orphans.
                found = await storage.get(txn, "bucket", "", bucket_id)
                live_buckets[bucket_id] = found is not None
            if not live_buckets[bucket_id]:
                continue
            acl = await permissions.get_object_permissions(txn, uri)
            entry = {
                "id": HISTORY.id_generator(),
                "action": event.action,
                "resource_name": event.resource_name,
                "uri": uri,
                "user_id": event.user_id,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            }
            if event.resource_name == "record":
                entry["collection_id"] = parent_ids.get("collection")
            entry.setdefault(f"{event.resource_name}_id", oid)
            entry["target"] = {
                "data": copy.deepcopy(target),
                "permissions": {name: sorted(p) for name, p in acl.items() if p},
            }
            await storage.create(
                txn, HISTORY.name, f"/buckets/{bucket_id}", entry, within=(("bucket", "", bucket_id),)
            )
            written.add((bucket_id, event.resource_name))
        if self.trim_max is not None:
            for bucket_id, resource_name in sorted(written):
                await self.trim(txn, bucket_id, resource_name)

    async def trim(self, txn, bucket_id: str, resource_name: str):
        """Keep the newest C{auto_trim_max_count} entries of one resource type in one bucket."""
        storage = self.registry.storage
        parent = f"/buckets/{bucket_id}"
        filters = [Filter("resource_name", resource_name)]
        if self.trim_users:
            filters.append(Filter("user_id", self.trim_users, Op.IN))
        total = await storage.count(txn, HISTORY.name, parent, Query(filters=filters))
        if total <= self.trim_max + self.trim_threshold:
            return
        entries = await storage.list(
            txn, HISTORY.name, parent, Query(filters=filters, sorting=(Sort("last_modified", -1),))
        )
        for entry in entries[self.trim_max :]:
            await storage.delete(txn, HISTORY.name, parent, entry["id"])

    async def after_commit(self, event):
        return None


@implementer(IJsonSyncPlugin)
class HistoryPlugin:
    name = "history"
    settings = {
        "history.exclude_resources": [],
        "history.exclude_user_ids": [],
        "history.auto_trim_max_count": Setting(
            "history.auto_trim_max_count",
            "opt_int",
            None,
            "(plugin history) entries kept per type and bucket",
        ),
        "history.auto_trim_user_ids": [],
        "history.auto_trim_threshold": 100,
    }

    def install(self, registry, settings):
        rt = dataclasses.replace(HISTORY, validators=[])
        # Its routes are its own: a list to read and trim, no object endpoint.
        registry.add_resource_type(rt, plural=False, single=False)
        engine = HistoryEngine(registry)
        registry.add_listener(HistoryListener(registry, settings))

        def location(req: ApiRequest) -> Location:
            bucket_id = req.params["bucket_id"]
            bucket = registry.resource_types["bucket"]
            if not bucket.id_pattern.match(bucket_id):
                raise ParentNotFound("bucket", bucket_id)
            return Location(rt, f"/buckets/{bucket_id}", [(bucket, bucket_id)])

        async def history_view(req: ApiRequest):
            loc = location(req)
            if req.method in ("GET", "HEAD"):
                return await engine.get_plural(req, loc)
            if req.method == "DELETE":
                return await engine.delete_plural(req, loc)
            raise MethodNotAllowed(("GET", "HEAD", "DELETE"))

        async def snapshot_view(req: ApiRequest):
            loc = location(req)
            collection_id, at, raw_ts = req.params["target"].rpartition("@")
            if not at or not _TIMESTAMP.match(raw_ts):
                raise InvalidParameters("path", "timestamp", f"Invalid timestamp {raw_ts!r}")
            if not NAME_PATTERN.match(collection_id):
                raise ParentNotFound("collection", collection_id)
            await engine.require(req, f"{loc.parent_uri}/collections/{collection_id}", "read")
            await engine.check_parents(req, loc)
            records = await snapshot(req.txn, loc.parent_uri, collection_id, int(raw_ts))
            return ApiResponse({"data": records}, 200)

        async def snapshot(txn, bucket_uri: str, collection_id: str, ts: int) -> list[dict]:
            storage = registry.storage
            newest_first = (Sort("last_modified", -1),)
            wiped = await storage.list(
                txn,
                rt.name,
                bucket_uri,
                Query(
                    filters=[
                        Filter("resource_name", "collection"),
                        Filter("action", "delete"),
                        Filter("collection_id", collection_id),
                        Filter("target.data.last_modified", ts, Op.MAX),
                    ],
                    sorting=newest_first,
                    limit=1,
                ),
            )
            filters = [
                Filter("resource_name", "record"),
                Filter("collection_id", collection_id),
                Filter("target.data.last_modified", ts, Op.MAX),
            ]
            if wiped:
                # Records of an earlier collection of that name are gone.
                filters.append(Filter("last_modified", wiped[0]["last_modified"], Op.GT))
            entries = await storage.list(
                txn, rt.name, bucket_uri, Query(filters=filters, sorting=newest_first)
            )
            seen: set[str] = set()
            records = []
            for entry in entries:
                data = entry["target"]["data"]
                if data["id"] in seen:
                    continue
                seen.add(data["id"])
                if not data.get("deleted"):
                    records.append(data)
            records.sort(key=lambda r: r["last_modified"], reverse=True)
            return records

        registry.add_route(
            Route(
                "/buckets/<bucket_id>/history",
                ("GET", "DELETE"),
                history_view,
                "history-plural",
                "resource",
                "Read or delete the history of a bucket",
                resource=rt,
            )
        )
        registry.add_route(
            Route(
                "/buckets/<bucket_id>/snapshot/collections/<target>",
                ("GET",),
                snapshot_view,
                "history-snapshot",
                "resource",
                "The records of a collection at a timestamp",
            )
        )

        extra: dict = {}
        if settings.get("history.auto_trim_max_count") is not None:
            extra["auto_trim_max_count"] = settings["history.auto_trim_max_count"]
            if settings.get("history.auto_trim_user_ids"):
                extra["auto_trim_user_ids"] = list(settings["history.auto_trim_user_ids"])
        if settings.get("history.exclude_resources"):
            extra["excluded_resources"] = [
                _ids_of(uri) for uri in settings["history.exclude_resources"]
            ]
        registry.add_capability(
            "history",
            "Track changes on data.",
            "http://kinto.readthedocs.io/en/latest/api/1.x/history.html",
            **extra,
        )
