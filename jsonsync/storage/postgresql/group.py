"""
Group commit: the write statement of the common path (L{GROUP_WRITE}: lock
already taken, timestamps chosen, objects stored and the list timestamp
moved, in one statement), and L{ListWriter}, which sends the writes of one
list that carry their requests' commits together, many in one statement.

The timestamp rule is in two places, on purpose. L{next_timestamp}
(L{jsonsync.storage}) is the rule; L{GROUP_WRITE} applies its common case
(no client-supplied value: C{max(now, list timestamp + 1)}, then one more
for each further object of the group) in SQL, because there the list
timestamp is read by the same statement that writes, after the list's
lock: doing it in Python would cost one more round trip while the lock is
held, for every write. C{now} is still Python's clock (a parameter). The
rest of the rule (a client-supplied timestamp, replication) runs in Python
(L{PostgresStorage._store}, and the memory backend throughout); the
storage contract tests check both backends against the same expectations.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from jsonsync.errors import BackendUnavailable, JsonSyncError, UnexpectedError
from jsonsync.storage import now_ms
from jsonsync.storage.postgresql import driver
from jsonsync.storage.postgresql.unit import Unit, lock_sql, subtree_key

_log = Logger()


# The list's lock is taken by a statement sent ahead of this one (see
# Unit.lock_statement): this statement's snapshot then follows the lock, so
# it sees what the previous holder committed.
_HEAD = (
    "WITH input AS ("
    "  SELECT i.id, i.head, i.deleted, i.only_tomb, i.expect, i.n"
    "  FROM unnest(%(ids)s::text[], %(heads)s::text[], %(deleted)s::boolean[], %(tombs)s::boolean[],"
    "   %(expect)s::bigint[])"
    "  WITH ORDINALITY AS i(id, head, deleted, only_tomb, expect, n)),"
    # ok: every object the list lives under (within) is live; their
    # deletion waits for this statement's transaction, or it sees them gone.
    " base AS ("
    "  SELECT GREATEST(%(now)s::bigint, COALESCE(("
    "   SELECT last_modified FROM timestamps"
    "   WHERE resource_name = %(res)s::text AND parent_id = %(parent)s::text), 0) + 1) AS v,"
    "  (SELECT count(*) FROM unnest(%(a_res)s::text[], %(a_parent)s::text[], %(a_id)s::text[]) AS a(r, p, i)"
    "   JOIN objects o ON o.resource_name = a.r AND o.parent_id = a.p AND o.id = a.i AND NOT o.deleted)"
    "   = cardinality(%(a_id)s::text[]) AS ok),"
    " created AS ("
    "  INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data, body)"
    "  SELECT %(res)s::text, %(parent)s::text, i.id, b.v + i.n - 1, i.deleted,"
    "   (i.head || (b.v + i.n - 1) || '}')::jsonb, i.head || (b.v + i.n - 1) || '}'"
    "  FROM input i, base b WHERE i.only_tomb AND b.ok"
    "  ON CONFLICT (resource_name, parent_id, id) DO UPDATE SET"
    "   last_modified = EXCLUDED.last_modified, deleted = EXCLUDED.deleted, data = EXCLUDED.data,"
    "   body = EXCLUDED.body"
    "   WHERE objects.deleted"
    "  RETURNING id, last_modified, deleted, body),"
    # Compare-and-swap: a write that names the version it decided on
    # (expect) happens only while that live version is the stored one.
    " updated AS ("
    "  INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data, body)"
    "  SELECT %(res)s::text, %(parent)s::text, i.id, b.v + i.n - 1, i.deleted,"
    "   (i.head || (b.v + i.n - 1) || '}')::jsonb, i.head || (b.v + i.n - 1) || '}'"
    "  FROM input i, base b WHERE NOT i.only_tomb AND b.ok AND (i.expect IS NULL OR EXISTS ("
    "   SELECT 1 FROM objects x WHERE x.resource_name = %(res)s::text AND x.parent_id = %(parent)s::text"
    "   AND x.id = i.id AND NOT x.deleted AND x.last_modified = i.expect))"
    "  ON CONFLICT (resource_name, parent_id, id) DO UPDATE SET"
    "   last_modified = EXCLUDED.last_modified, deleted = EXCLUDED.deleted, data = EXCLUDED.data,"
    "   body = EXCLUDED.body"
    "  RETURNING id, last_modified, deleted, body),"
    # With strict, a refused create (a live object holds the id) fails the
    # whole statement, or what was sent with it (the new object's ACL) would
    # commit alone: inserting the id again is a certain unique violation
    # (ObjectExists). Without, the refused create just returns no row.
    " clash AS ("
    "  INSERT INTO objects (resource_name, parent_id, id, last_modified, deleted, data)"
    "  SELECT %(res)s::text, %(parent)s::text, i.id, 0, false, '{}'::jsonb FROM input i, base b"
    "  WHERE %(strict)s::boolean AND b.ok AND i.only_tomb AND i.id NOT IN (SELECT id FROM created)),"
    " moved AS ("
    "  INSERT INTO timestamps (resource_name, parent_id, last_modified)"
    "  SELECT %(res)s::text, %(parent)s::text, max(w.last_modified)"
    "  FROM (SELECT last_modified FROM created UNION ALL SELECT last_modified FROM updated) w"
    "  HAVING count(*) > 0"
    "  ON CONFLICT (resource_name, parent_id) DO UPDATE SET last_modified = EXCLUDED.last_modified"
    "  RETURNING 1)"
)

# The webhooks' events of these writes, for records: what the row trigger
# would write (the same functions, schema 8), with one look-up of the list's
# webhooks for the whole group instead of one per row. prev: the objects
# before the statement (its snapshot), for the action and a deletion's "old".
_EVENTS = (
    ", prev AS ("
    "  SELECT o.id, o.deleted, COALESCE(o.body, o.data::text) AS old FROM input i"
    "  JOIN objects o ON o.resource_name = %(res)s::text AND o.parent_id = %(parent)s::text AND o.id = i.id),"
    " hooks AS ("
    "  SELECT * FROM jsonsync_webhook_targets(split_part(%(parent)s::text, '/', 3), split_part(%(parent)s::text, '/', 5))),"
    " changes AS ("
    "  SELECT w.id, w.last_modified, w.body, p.old, CASE"
    "   WHEN p.id IS NULL THEN CASE WHEN w.deleted THEN NULL ELSE 'create' END"
    "   WHEN w.deleted THEN CASE WHEN p.deleted THEN NULL ELSE 'delete' END"
    "   WHEN p.deleted THEN 'create' ELSE 'update' END AS act"
    "  FROM (SELECT * FROM created UNION ALL SELECT * FROM updated) w LEFT JOIN prev p ON p.id = w.id),"
    " events AS ("
    "  INSERT INTO jsonsync_webhook_events (target, body)"
    "  SELECT h.target, jsonsync_webhook_event(c.act, 'record', %(parent)s::text || '/records/' || c.id,"
    "   split_part(%(parent)s::text, '/', 3), split_part(%(parent)s::text, '/', 5), c.last_modified, c.body,"
    "   c.old, h.target)"
    "  FROM changes c JOIN hooks h ON h.actions IS NULL OR h.actions ? c.act"
    "  WHERE c.act IS NOT NULL ORDER BY c.last_modified, h.target)"
)

_TAIL = (
    " SELECT id, last_modified FROM created UNION ALL SELECT id, last_modified FROM updated"
    # Likewise a refused compare-and-swap, or a write beneath a deleted
    # object, with strict, fails the statement (SQLSTATE JS409, a
    # WriteConflict); without, it returns no row.
    " UNION ALL SELECT i.id, jsonsync_write_conflict(i.id) FROM input i, base b"
    "  WHERE %(strict)s::boolean AND (NOT b.ok OR (NOT i.only_tomb AND i.id NOT IN (SELECT id FROM updated)))"
)

GROUP_WRITE = _HEAD + _TAIL
# The same, writing the webhooks' events of its records (see L{EVENTS_HERE}).
GROUP_WRITE_EVENTS = _HEAD + _EVENTS + _TAIL

# Sent just before a group's L{GROUP_WRITE_EVENTS} (it writes its events):
# the row trigger (see L{PostgresOutbox.fan_out}) then writes none for the
# rows of that statement. Local to the transaction, which that statement
# ends (a group is its requests' whole transactions).
EVENTS_HERE = "SELECT set_config('jsonsync.events', 'written', true);"

# At most this many writes share one statement (and one commit).
GROUP_MAX = 64


def group_params(resource_name: str, parent_id: str, items, strict: bool, within=()) -> dict:
    """The parameters of L{GROUP_WRITE} for C{(id, head, deleted, only_tomb, expect)} items."""
    return {
        "a_res": [a[0] for a in within],
        "a_parent": [a[1] for a in within],
        "a_id": [a[2] for a in within],
        "ids": [item[0] for item in items],
        "heads": [item[1] for item in items],
        "deleted": [item[2] for item in items],
        "tombs": [item[3] for item in items],
        "expect": [item[4] for item in items],
        "strict": strict,
        "now": now_ms(),
        "res": resource_name,
        "parent": parent_id,
    }


class GroupItem:
    """One request's write, waiting in its list's queue, with what its unit had pending."""

    __slots__ = ("unit", "prefix", "id", "write", "done")

    def __init__(self, unit: Unit, write: tuple[str, str, bool, bool, int | None]):
        self.unit = unit
        self.prefix = unit.take_pending()
        self.id = write[0]
        self.write = write
        self.done: Deferred = Deferred()


class ListWriter:
    """
    Group commit for the writes of one list that carry their requests'
    commits. Such a write is its request's whole transaction (the writes
    deferred before it, then the object), so several can share one
    statement, one list lock and one commit: while a group is on its way to
    the server, the writes that arrive queue, and leave together as the
    next group. Each request still gets only its own outcome: when a group
    fails, nothing of it was committed, and its writes run again one by
    one, so that the one at fault fails alone.
    """

    def __init__(self, key: tuple[str, str, tuple], events=lambda: False):
        # (resource name, parent id, the objects the list lives under)
        self.key = key
        # Whether the webhooks' events are this process's to write (a
        # record list's groups then write them in their statement).
        self.events = events
        self.queue: deque[GroupItem] = deque()
        self.running = False

    def submit(self, item: GroupItem) -> Deferred:
        """Queue C{item}; the result fires with its timestamp once its group is sent."""
        self.queue.append(item)
        if not self.running:
            self.running = True
            Deferred.fromCoroutine(self._run())
        return item.done

    def _next_group(self) -> list[GroupItem]:
        group: list[GroupItem] = []
        ids: set[str] = set()
        later: list[GroupItem] = []
        while self.queue and len(group) < GROUP_MAX:
            item = self.queue.popleft()
            if item.id in ids:  # the same id twice: the second waits for the next group
                later.append(item)
            else:
                ids.add(item.id)
                group.append(item)
        self.queue.extendleft(reversed(later))
        return group

    async def _run(self) -> None:
        try:
            while self.queue:
                group = self._next_group()
                try:
                    outcomes = await self._send(group)
                except BackendUnavailable as exc:
                    # Whether it committed is unknown: never send it again.
                    outcomes = [Failure(exc)] * len(group)
                except JsonSyncError as exc:
                    if len(group) == 1:
                        outcomes = [Failure(exc)]
                    else:
                        outcomes = []
                        for item in group:
                            try:
                                outcomes.extend(await self._send([item]))
                            except JsonSyncError as one:
                                outcomes.append(Failure(one))
                            except Exception:
                                _log.failure("write failed")
                                outcomes.append(Failure(UnexpectedError()))
                except Exception:
                    _log.failure("group write failed")
                    outcomes = [Failure(UnexpectedError())] * len(group)
                for item, outcome in zip(group, outcomes, strict=True):
                    item.unit.ended_elsewhere()
                    item.done.callback(outcome) if not isinstance(outcome, Failure) else item.done.errback(outcome)
        finally:
            self.running = False

    async def _send(self, group: list[GroupItem]) -> list:
        sender = group[0].unit
        await sender.live_connection()
        # The locks first (the list's, and those of what it lives under, in
        # shared mode), then each request's deferred writes (its objects'
        # ACLs), then the objects: everything of the list under its lock.
        resource_name, parent_id, within = self.key
        lock = lock_sql([((resource_name, parent_id), False)] + [(subtree_key(*a), True) for a in within])
        events = resource_name == "record" and self.events()
        rows, _ = await driver.execute(
            sender.conn,
            GROUP_WRITE_EVENTS if events else GROUP_WRITE,
            group_params(resource_name, parent_id, [item.write for item in group], strict=True, within=within),
            sender.generation,
            True,
            lock + "".join(item.prefix for item in group) + (EVENTS_HERE if events else ""),
        )
        stamps = dict(rows)
        return [stamps[item.id] for item in group]

