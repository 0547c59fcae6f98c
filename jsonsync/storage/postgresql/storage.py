"""
L{PostgresStorage}: objects in one C{objects} table (the whole object as
JSONB, plus the columns that key and order it) and list timestamps in
C{timestamps}; every write under its list's lock, the common one in a
single round trip (L{group}), and the request prefetch in one statement.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import DeferredLock
from zope.interface import implementer

from jsonsync.errors import ObjectExists, ObjectNotFound, WriteConflict
from jsonsync.interfaces import IStorage, ISyncHorizon
from jsonsync.jsonutil import Encoded, EncodedPage
from jsonsync.storage import check_expected, next_timestamp, now_ms
from jsonsync.storage.postgresql.base import PostgresProvider, acl_from_entries
from jsonsync.storage.postgresql.group import GROUP_WRITE, GroupItem, ListWriter, group_params
from jsonsync.storage.postgresql.notify import PostgresNotifier
from jsonsync.storage.postgresql.outbox import PostgresOutbox
from jsonsync.storage.postgresql.pool import Pool
from jsonsync.storage.postgresql.select import build_select, escape_like
from jsonsync.storage.postgresql.statements import dumps
from jsonsync.storage.postgresql.unit import list_lock_key, subtree_key


def _head(obj: dict) -> str:
    """
    The JSON text of C{obj} up to its C{last_modified} value, which the
    database appends (with the closing brace) once it has chosen it.
    """
    text = dumps(obj)
    return ('{"last_modified":' if text == "{}" else text[:-1] + ',"last_modified":')


@implementer(IStorage, ISyncHorizon)
class PostgresStorage(PostgresProvider):
    """
    Objects in one C{objects} table (the whole object as JSONB, plus the
    columns that key and order it) and list timestamps in C{timestamps}.
    """

    takes_list_locks = True

    def __init__(self, pool: Pool, owns_pool: bool, horizon_refresh: float = 5.0):
        super().__init__(pool, owns_pool)
        self._writers: dict[tuple[str, str, tuple], ListWriter] = {}
        self._outbox: PostgresOutbox | None = None
        self._notifier: PostgresNotifier | None = None
        # The newest horizon of any list, re-read at most every
        # C{horizon_refresh} seconds: a _since above it needs no look-up.
        self.horizon_refresh = horizon_refresh
        self._max_horizon: int | None = None
        self._horizon_read: float | None = None
        self._horizon_lock = DeferredLock()

    @property
    def outbox(self) -> PostgresOutbox:
        """The transactional outbox (L{jsonsync.interfaces.IOutbox}), made on first use."""
        if self._outbox is None:
            self._outbox = PostgresOutbox(self)
        return self._outbox

    def _events_here(self) -> bool:
        # The outbox's fan-out is on in this process: the group writes of
        # records write their webhooks' events themselves.
        return self._outbox is not None and self._outbox.fanning_out

    def change_notifier(self) -> PostgresNotifier:
        """Notices of committed list writes across the processes on this database (IChangeNotifier)."""
        if self._notifier is None:
            self._notifier = PostgresNotifier(self.pool.reactor, self.pool.url)
        return self._notifier

    async def sync_horizon(self, resource_name, parent_id, since=None):
        """
        L{ISyncHorizon}: the list's horizon (C{jsonsync purge-deleted}
        records it, then waits for C{sync_horizon_refresh_seconds} before it
        removes a tombstone, so that every server refuses an old C{_since}
        before its answer could miss a deletion). With C{since}: C{None} at
        once when C{since} is at or above every list's horizon.
        """
        now = self.pool.reactor.seconds()
        if self._horizon_read is None or now - self._horizon_read >= self.horizon_refresh:
            # One look-up at a time: those who waited for it use its answer.
            await self._horizon_lock.acquire()
            try:
                if self._horizon_read is None or now - self._horizon_read >= self.horizon_refresh:
                    rows, _ = await self.pool.run("SELECT max(horizon) FROM sync_horizons")
                    self._max_horizon = rows[0][0] if rows else None
                    self._horizon_read = now
            finally:
                self._horizon_lock.release()
        if self._max_horizon is None or (since is not None and since >= self._max_horizon):
            return None
        rows, _ = await self.pool.run(
            "SELECT horizon FROM sync_horizons WHERE resource_name = %s AND parent_id = %s",
            (resource_name, parent_id),
        )
        return rows[0][0] if rows else None

    async def close(self) -> None:
        if self._outbox is not None:
            await self._outbox.run_close_hooks()
        if self._notifier is not None:
            self._notifier.close()
            self._notifier = None
        await super().close()

    def _writer(self, key: tuple[str, str, tuple]) -> ListWriter:
        writer = self._writers.get(key)
        if writer is None:
            if len(self._writers) > 1000:  # forget idle lists
                for k in [k for k, w in self._writers.items() if not w.running]:
                    del self._writers[k]
            writer = self._writers[key] = ListWriter(key, self._events_here)
        return writer

    async def flush(self):
        # TRUNCATE locks its tables in turn, and a webhooks worker's claim
        # (cursors, then events) or a write (objects, then events) may hold
        # one it wants while waiting for another: PostgreSQL breaks such a
        # deadlock by failing one side, and a flush simply runs again.
        for attempt in range(5):
            try:
                await self.pool.run(
                    "TRUNCATE objects, timestamps, jsonsync_outbox, jsonsync_outbox_attempts, sync_horizons,"
                    " jsonsync_webhook_events, jsonsync_webhook_cursors"
                )
                break
            except WriteConflict:
                if attempt == 4:
                    raise
        self._max_horizon = self._horizon_read = None

    async def prefetch(self, txn, keys, principals, checks, members=None, acl_uri=None, page=None):
        """L{IRequestPrefetch}: objects, grant checks, groups, one ACL (and a page) in one statement."""
        keys = list(keys)
        page_sql, page_params = self._page_columns(page) if page is not None else ("", {})
        uris, perms, index = [], [], []
        for i, grants in enumerate(checks):
            for uri, perm in grants:
                uris.append(uri)
                perms.append(perm)
                index.append(i)
        rows, _ = await self._read(
            txn,
            "SELECT"
            " (SELECT array_agg(k.n ORDER BY k.n) FROM unnest(%(kr)s::text[], %(kp)s::text[], %(ki)s::text[])"
            "   WITH ORDINALITY AS k(r, p, i, n)"
            "   JOIN objects o ON o.resource_name = k.r AND o.parent_id = k.p AND o.id = k.i AND NOT o.deleted),"
            " (SELECT array_agg(o.data ORDER BY k.n) FROM unnest(%(kr)s::text[], %(kp)s::text[], %(ki)s::text[])"
            "   WITH ORDINALITY AS k(r, p, i, n)"
            "   JOIN objects o ON o.resource_name = k.r AND o.parent_id = k.p AND o.id = k.i AND NOT o.deleted),"
            " (SELECT array_agg(DISTINCT g.c) FROM unnest(%(uris)s::text[], %(perms)s::text[], %(idx)s::int[])"
            "   AS g(uri, perm, c)"
            "   JOIN access_control_entries a ON a.object_id = g.uri AND a.permission = g.perm"
            "   WHERE a.principal = ANY(%(principals)s::text[])"
            "   OR (%(has_members)s AND a.principal IN ("
            "    SELECT principal FROM user_principals WHERE member = ANY(%(members)s::text[])))),"
            " (SELECT array_agg(DISTINCT principal) FROM user_principals"
            "   WHERE %(has_members)s AND member = ANY(%(members)s::text[])),"
            " (SELECT array_agg(permission || ' ' || principal) FROM access_control_entries"
            "   WHERE %(has_acl)s AND object_id = %(acl_uri)s)" + page_sql,
            {
                "kr": [k[0] for k in keys],
                "kp": [k[1] for k in keys],
                "ki": [k[2] for k in keys],
                "uris": uris,
                "perms": perms,
                "idx": index,
                "principals": sorted(set(principals)),
                "has_members": members is not None,
                "members": list(members or ()),
                "has_acl": acl_uri is not None,
                "acl_uri": acl_uri or "",
                **page_params,
            },
        )
        numbers, datas, satisfied, group_list, entries = rows[0][:5]
        found: list = [None] * len(keys)
        for n, data in zip(numbers or (), datas or (), strict=True):
            found[n - 1] = data
        satisfied = set(satisfied or ())
        allowed = [i in satisfied for i in range(len(checks))]
        groups = set(group_list or ()) if members is not None else None
        result = found, allowed, groups, acl_from_entries(entries) if acl_uri is not None else None
        if page is None:
            return result
        timestamp, joined = rows[0][5:]
        if timestamp is None:
            # No timestamp yet in this snapshot: list_snapshot settles one.
            return (*result, None)
        size = page[2].limit - 1  # the query asks one more, to know whether a page follows
        if size < 1:
            return (*result, None)
        # The query asked one object more than the page: when it came, it
        # is the last text, and the page's own last object precedes it.
        count = joined.count("\x1e") + 1 if joined else 0
        head, last = joined or "", None
        if count > size:
            head = head.rpartition("\x1e")[0]
            last = head.rpartition("\x1e")[2]
        return (*result, (timestamp, EncodedPage(head.replace("\x1e", ","), count, last)))

    @staticmethod
    def _page_columns(page) -> tuple[str, dict]:
        """
        A page and the list timestamp it is consistent with, as two more
        columns of L{prefetch}: the timestamp, and the JSON texts of the
        page's objects in one string, in order (an aggregate keeps the order
        of a sorted sub-select), separated by the ASCII record separator,
        which JSON text never holds unescaped. One text value: no array for
        PostgreSQL to escape and for Python to parse.
        """
        resource_name, parent_id, query = page
        inner, params = build_select(
            "COALESCE(o.body, o.data::text) AS data", resource_name, parent_id, query, listing=True,
            extra_where="o.last_modified <= (SELECT last_modified FROM timestamps"
            " WHERE resource_name = %(page_res)s AND parent_id = %(page_parent)s)",
        )
        counter = iter(range(len(params)))
        inner = re.sub(r"(?<!%)%s", lambda _: f"%(page_{next(counter)})s", inner)
        named: dict[str, Any] = {f"page_{i}": v for i, v in enumerate(params)}
        named.update(page_res=resource_name, page_parent=parent_id)
        columns = (
            ", (SELECT last_modified FROM timestamps"
            "   WHERE resource_name = %(page_res)s AND parent_id = %(page_parent)s),"
            f" (SELECT string_agg(p.data, chr(30)) FROM ({inner}) p)"
        )
        return columns, named

    async def get_many(self, txn, keys):
        keys = list(keys)
        if not keys:
            return []
        rows, _ = await self._read(
            txn,
            "SELECT k.n, o.data FROM unnest(%s::text[], %s::text[], %s::text[])"
            " WITH ORDINALITY AS k(resource_name, parent_id, id, n)"
            " JOIN objects o ON o.resource_name = k.resource_name AND o.parent_id = k.parent_id"
            " AND o.id = k.id AND NOT o.deleted",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
        )
        found: list = [None] * len(keys)
        for n, data in rows:
            found[n - 1] = data
        return found

    async def get(self, txn, resource_name, parent_id, object_id):
        rows, _ = await self._read(
            txn,
            "SELECT data FROM objects WHERE resource_name = %s AND parent_id = %s"
            " AND id = %s AND NOT deleted",
            (resource_name, parent_id, object_id),
        )
        return rows[0][0] if rows else None

    async def list_timestamp(self, txn, resource_name, parent_id):
        key = (resource_name, parent_id)
        rows, _ = await self._read(
            txn,
            "SELECT last_modified FROM timestamps WHERE resource_name = %s AND parent_id = %s",
            key,
        )
        if rows:
            return rows[0][0]
        # A list never written gets "now", which must then stay. Take the
        # list's lock so that the value cannot land between a writer's read
        # of the timestamp and its commit; the statements sent together run
        # in one transaction and the last SELECT sees whichever row won.
        settle = (
            "INSERT INTO timestamps (resource_name, parent_id, last_modified)"
            " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING;"
            " SELECT last_modified FROM timestamps WHERE resource_name = %s AND parent_id = %s"
        )
        params = (*key, now_ms(), *key)
        unit = self._enlisted(txn)
        if unit is not None:
            # Inside a transaction, the lock is held to its end: in order.
            rows, _ = await unit.execute(settle, params, lock=await unit.lock_statement(key))
        else:
            rows, _ = await self.pool.run(
                f"SELECT pg_advisory_xact_lock({list_lock_key(*key)}::bigint); " + settle, params
            )
        return rows[0][0]

    async def _store(self, txn, resource_name, parent_id, obj, decide, within=()):
        """
        Write C{obj} under the list's lock: C{decide(existing)} gets the
        stored C{(deleted, last_modified)} of that id (or C{None}) and returns
        the client-wanted timestamp (or C{None}), raising to refuse the write.
        A tombstone also takes the lock of what lies below the object
        exclusively (writes beneath it wait, or see it deleted).
        """
        unit = await self.unit(txn)
        object_id = obj["id"]
        key = (resource_name, parent_id)
        wanted = [(key, False)] + [(subtree_key(*a), True) for a in within]
        if obj.get("deleted"):
            wanted.append((subtree_key(resource_name, parent_id, object_id), False))
        try:
            lock = await unit.locks(wanted)
        except WriteConflict as conflict:
            raise WriteConflict(conflict.lists | {key}, shared=conflict.shared) from None
        rows, _ = await unit.execute(
            # After the lock: this statement's snapshot then sees the
            # timestamp the previous holder committed.
            "SELECT t.last_modified, x.deleted, x.last_modified, ("
            "  SELECT count(*) FROM unnest(%s::text[], %s::text[], %s::text[]) AS a(r, p, i)"
            "  JOIN objects o ON o.resource_name = a.r AND o.parent_id = a.p AND o.id = a.i AND NOT o.deleted)"
            " FROM (SELECT 1) AS one"
            " LEFT JOIN timestamps t ON t.resource_name = %s AND t.parent_id = %s"
            " LEFT JOIN objects x ON x.resource_name = %s AND x.parent_id = %s AND x.id = %s",
            (
                [a[0] for a in within], [a[1] for a in within], [a[2] for a in within],
                resource_name, parent_id, resource_name, parent_id, object_id,
            ),
            lock=lock,
        )
        list_ts, old_deleted, old_ts, live_above = rows[0]
        if live_above != len(within):
            raise WriteConflict([key], shared={subtree_key(*a) for a in within})
        existing = None if old_ts is None else (old_deleted, old_ts)
        wanted = decide(existing)
        current = list_ts if list_ts is not None else 0
        stamp, new_list_ts = next_timestamp(current, wanted)
        stored = dict(obj)
        stored["last_modified"] = stamp
        body = dumps(stored)
        await self._last(
            txn,
            "INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data, body)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s)"
            " ON CONFLICT (resource_name, parent_id, id) DO UPDATE SET"
            " last_modified = EXCLUDED.last_modified, deleted = EXCLUDED.deleted,"
            " data = EXCLUDED.data, body = EXCLUDED.body;"
            " INSERT INTO timestamps (resource_name, parent_id, last_modified)"
            " VALUES (%s, %s, %s) ON CONFLICT (resource_name, parent_id)"
            " DO UPDATE SET last_modified = EXCLUDED.last_modified",
            (
                resource_name,
                parent_id,
                object_id,
                stamp,
                bool(stored.get("deleted")),
                body,
                body,
                resource_name,
                parent_id,
                new_list_ts,
            ),
            rows=False,
        )
        return stored

    async def _store_now(self, txn, resource_name, parent_id, obj, only_over_tombstone: bool,
                         expected: int | None = None, within=()):
        """
        The common write (no client-supplied timestamp) in one round trip:
        take the list's lock, then, in a statement whose snapshot follows
        the lock, stamp the object with C{max(now, list timestamp + 1)},
        store it and move the list timestamp. Returns the stored object, or
        C{None} when the write was refused: C{only_over_tombstone} and a
        live object holds the id, or C{expected} is not the stored live
        version (when the write carries the commit, a refusal raises
        instead, failing everything sent with it).
        """
        closing = self._closing(txn)
        unit = await self.unit(txn)
        key = (resource_name, parent_id)
        write = (obj["id"], _head(obj), bool(obj.get("deleted")), only_over_tombstone, expected)
        try:
            if closing and not unit.begun and not unit.lists and not unit.shared:
                # The request's whole transaction: it joins its list's group.
                stamp = await self._writer((resource_name, parent_id, within)).submit(GroupItem(unit, write))
            else:
                # Ancestors whose subtree lock this transaction holds already
                # were found live under it: nobody else can delete them
                # meanwhile (and its own deletion of one is seen by the next
                # request's look-up), so a batch checks them once per list.
                held = unit.lists | unit.shared
                check = () if all(subtree_key(*a) in held for a in within) else within
                rows, _ = await self._last(
                    txn,
                    GROUP_WRITE,
                    group_params(resource_name, parent_id, [write], strict=closing, within=check),
                    prepare=True,
                    closing=closing,
                    lock=await unit.locks([(key, False)] + [(subtree_key(*a), True) for a in within]),
                )
                stamp = rows[0][1] if rows else None
        except WriteConflict as conflict:
            # Name the locks, so that the request's next attempt takes them first.
            raise WriteConflict(
                conflict.lists | {key}, deadlock=conflict.deadlock,
                shared=conflict.shared | {subtree_key(*a) for a in within},
            ) from None
        if stamp is None:
            if within and not await self._all_live(txn, within):
                raise WriteConflict([key], shared={subtree_key(*a) for a in within})
            return None
        stored = dict(obj)
        stored["last_modified"] = stamp
        return stored

    async def _all_live(self, txn, keys) -> bool:
        return all(found is not None for found in await self.get_many(txn, keys))

    async def guard(self, txn, resource_name, parent_id, object_id, expected):
        """
        L{IStorage.guard}: the object's list lock in shared mode, held to the
        end of the transaction (its writers take it exclusively, so they
        wait), then the version checked in a statement that follows the lock.
        Costs one round trip; only transactions that need it pay.
        """
        unit = await self.unit(txn)
        key = (resource_name, parent_id)
        rows, _ = await unit.execute(
            "SELECT EXISTS (SELECT 1 FROM objects WHERE resource_name = %s AND parent_id = %s"
            " AND id = %s AND NOT deleted AND last_modified = %s)",
            (resource_name, parent_id, object_id, expected),
            lock=await unit.lock_statement(key, shared=True),
        )
        if not rows[0][0]:
            raise WriteConflict(shared=[key])

    async def create(self, txn, resource_name, parent_id, obj, within=()):
        obj = dict(obj)
        wanted = obj.pop("last_modified", None)
        within = tuple(within)
        if wanted is None:
            stored = await self._store_now(
                txn, resource_name, parent_id, obj, only_over_tombstone=True, within=within
            )
            if stored is None:
                raise ObjectExists()
            return stored

        def decide(existing):
            if existing is not None and not existing[0]:
                raise ObjectExists()
            return wanted

        return await self._store(txn, resource_name, parent_id, obj, decide, within)

    async def update(self, txn, resource_name, parent_id, object_id, obj, expected=None, within=()):
        obj = dict(obj)
        obj["id"] = object_id
        obj.pop("deleted", None)
        wanted = obj.pop("last_modified", None)
        within = tuple(within)
        if wanted is None:
            stored = await self._store_now(
                txn, resource_name, parent_id, obj, only_over_tombstone=False, expected=expected,
                within=within,
            )
            if stored is None:
                raise WriteConflict([(resource_name, parent_id)])
            return stored

        def decide(existing):
            live = existing is not None and not existing[0]
            check_expected(expected, live, existing and existing[1], (resource_name, parent_id))
            # An older client timestamp cannot move a live object back.
            if live and isinstance(wanted, int) and wanted <= existing[1]:
                return None
            return wanted

        return await self._store(txn, resource_name, parent_id, obj, decide, within)

    async def delete(self, txn, resource_name, parent_id, object_id, last_modified=None, expected=None,
                     within=()):
        def decide(existing):
            live = existing is not None and not existing[0]
            check_expected(expected, live, existing and existing[1], (resource_name, parent_id))
            if not live:
                raise ObjectNotFound(resource_name, object_id)
            if not isinstance(last_modified, int) or last_modified <= existing[1]:
                return None
            return last_modified

        tombstone = {"id": object_id, "deleted": True}
        return await self._store(txn, resource_name, parent_id, tombstone, decide, tuple(within))

    async def purge(self, txn, parent_prefix):
        below = escape_like(parent_prefix) + "/%"
        await self._write(
            txn,
            # Every list that ever held an object has a timestamps row: find
            # the lists there, then delete through the objects primary key.
            "DELETE FROM objects o USING timestamps t"
            " WHERE (t.parent_id = %s OR t.parent_id LIKE %s)"
            " AND o.resource_name = t.resource_name AND o.parent_id = t.parent_id;"
            " DELETE FROM timestamps WHERE parent_id = %s OR parent_id LIKE %s",
            (parent_prefix, below, parent_prefix, below),
        )

    async def list(self, txn, resource_name, parent_id, query):
        if query.ids is not None and not query.ids:
            return []
        if query.limit is not None and query.limit <= 0:
            return []
        sql, params = build_select("o.data", resource_name, parent_id, query, listing=True)
        rows, _ = await self._read(txn, sql, params)
        return [row[0] for row in rows]

    async def list_snapshot(self, txn, resource_name, parent_id, query, encoded=False, _again=True):
        # The list timestamp and the page as of it, in one statement (one
        # snapshot): nothing committed after the timestamp shows up.
        if (query.ids is not None and not query.ids) or (query.limit is not None and query.limit <= 0):
            return await self.list_timestamp(txn, resource_name, parent_id), []
        inner, params = build_select(
            # Encoded: the JSONB as text, which goes out without being parsed
            # and serialised again in Python.
            "COALESCE(o.body, o.data::text) AS data" if encoded else "o.data", resource_name, parent_id, query,
            listing=True, extra_where="o.last_modified <= ts.t",
        )
        rows, _ = await self._read(
            txn,
            "WITH ts AS (SELECT last_modified AS t FROM timestamps"
            " WHERE resource_name = %s AND parent_id = %s)"
            f" SELECT ts.t, page.data FROM ts LEFT JOIN LATERAL ({inner}) page ON true",
            [resource_name, parent_id, *params],
        )
        if not rows:
            # No timestamp in this snapshot: the list was never written, or
            # its first writer committed since. Settle the timestamp (a list
            # never written gets "now"), then read again: answering here with
            # the newer timestamp and the empty page would hide that first
            # write from a client syncing with _since.
            timestamp = await self.list_timestamp(txn, resource_name, parent_id)
            if _again:
                return await self.list_snapshot(txn, resource_name, parent_id, query, encoded, _again=False)
            return timestamp, []
        if encoded:
            return rows[0][0], [Encoded(row[1]) for row in rows if row[1] is not None]
        return rows[0][0], [row[1] for row in rows if row[1] is not None]

    async def count(self, txn, resource_name, parent_id, query):
        if query.ids is not None and not query.ids:
            return 0
        sql, params = build_select("count(*)", resource_name, parent_id, query, listing=False)
        rows, _ = await self._read(txn, sql, params)
        return rows[0][0]

