"""
The PostgreSQL outbox (L{jsonsync.interfaces.IOutbox}): schema 6's event
log and cursors (read by position since schema 7), and schema 4's retries table.

A change's events are written in the change's own statement (the fan-out
trigger; L{append} for other callers, deferred to the transaction's next
statement or its C{COMMIT}), so they commit or roll back with it, and cost
the write one row each, never touched again on the way out.

Delivery reads them by cursor: a claim leases webhooks' cursors with
C{FOR UPDATE SKIP LOCKED} (two workers polling at once take different
webhooks), opens a window on each (the snapshot of the moment: the events
committed since the cursor's C{done} snapshot) and reads it in order; when
the claimed events have all ended, one statement moves the cursor, logs
the attempts and moves those that failed to the retries table, where each
is claimed alone, with back-off. A worker that dies leaves its lease to
end: another worker takes the window again from where it was (its events
are delivered again: at least once). Only the holder of a claim's token
can end it.

Times are the database's clock (C{clock_timestamp()}), so that processes
on several hosts agree on what is due.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from zope.interface import implementer

from jsonsync.interfaces import IOutbox
from jsonsync.storage.outbox import CloseHooks, new_token

if TYPE_CHECKING:  # pragma: no cover
    from jsonsync.storage.postgresql.storage import PostgresStorage

# pg_advisory_xact_lock(int, int) key of the trigger's creation.
FANOUT_LOCK = (0x6A73, 0x7768)

# Retries (version 4's table): rows due, leased by moving due_at past the lease.
_CLAIM_RETRIES = """
UPDATE jsonsync_outbox o
   SET due_at = clock_timestamp() + make_interval(secs => %(lease)s),
       token = %(token)s,
       attempts = o.attempts + 1
  FROM (SELECT id FROM jsonsync_outbox
         WHERE status = 'pending' AND due_at <= clock_timestamp()
         ORDER BY due_at
         LIMIT %(limit)s
         FOR UPDATE SKIP LOCKED) AS c
 WHERE o.id = c.id
RETURNING o.id, o.target, o.body, o.attempts, extract(epoch FROM clock_timestamp() - o.since)::float8
"""

# Events not yet handled by a cursor: committed (visible to the statement),
# and not shown as committed by its `done` snapshot — written by a
# transaction that began after it (xid at or above its xmax) or was running
# then (its xip list). Both are index look-ups on (target, xid): a
# transaction that stays open for long (a dump, a stuck client) keeps the
# snapshot's xmin old, but costs one look-up of its own, not a scan of
# everything written since it began. The range stops at its first row (in
# index order: a bitmap scan would collect a whole backlog first); the xid
# list is the index condition of the other part (ordered, it would become a
# filter over every event of the webhook).
def _has_unhandled(c: str) -> str:
    return (
        f"(SELECT e.xid FROM jsonsync_webhook_events e"
        f" WHERE e.target = {c}.target AND e.xid >= pg_snapshot_xmax({c}.done)"
        f" ORDER BY e.target, e.xid LIMIT 1) IS NOT NULL"
        f" OR EXISTS (SELECT 1 FROM pg_snapshot_xip({c}.done) AS r(xid)"
        f" JOIN jsonsync_webhook_events e ON e.target = {c}.target AND e.xid = r.xid)"
    )


# A window's events in primary key order, (xid, seq), from the cursor's
# position (last_xid, last_seq): those of the transactions running when
# `done` was taken (its xip list: a look-up each), then those of the
# transactions that began after it, up to `upto`'s xmax: the rest of the
# position's own transaction, then the transactions after it (an index range
# each). Each part of a window read in parts costs what it returns, whatever
# is left of the window or written since, however large its transactions.
# (The index is entered at the position only with equality on target and
# xid: a row comparison "(target, xid, seq) > (...)" beside "target = ..."
# is a filter, not where the scan starts, which re-read the window from its
# start at every part. In the first part each xid of the list is a look-up
# of its own, a LATERAL subquery that its LIMIT keeps from being flattened:
# joined or as an array, "xid = ANY(...)", the planner may walk every event
# of the webhook in xid order instead.)
def _window_events(c: str, columns: str) -> str:
    visible = f" AND pg_visible_in_snapshot(e.xid, {c}.upto)"
    after = f"e.xid >= pg_snapshot_xmax({c}.done) AND e.xid < pg_snapshot_xmax({c}.upto)"
    return (
        f"(SELECT e.* FROM pg_snapshot_xip({c}.done) AS r(xid), LATERAL (SELECT {columns}"
        f" FROM jsonsync_webhook_events e WHERE e.target = {c}.target AND e.xid = r.xid"
        f" AND e.seq > (CASE WHEN r.xid = {c}.last_xid THEN {c}.last_seq ELSE 0 END){visible}"
        f" ORDER BY e.seq LIMIT %(limit)s) AS e"
        f" WHERE r.xid >= {c}.last_xid"
        f" ORDER BY e.xid, e.seq LIMIT %(limit)s)"
        f" UNION ALL (SELECT {columns} FROM jsonsync_webhook_events e"
        f" WHERE e.target = {c}.target AND e.xid = {c}.last_xid AND e.seq > {c}.last_seq"
        f" AND {after}{visible}"
        f" ORDER BY e.seq LIMIT %(limit)s)"
        f" UNION ALL (SELECT {columns} FROM jsonsync_webhook_events e"
        f" WHERE e.target = {c}.target AND e.xid > {c}.last_xid AND {after}{visible}"
        f" ORDER BY e.xid, e.seq LIMIT %(limit)s)"
    )


# New events: lease the cursors of up to %(streams)s webhooks with unhandled
# events, open their window (the snapshot of now) unless one is open (a
# worker died in it), and read each window's next events. A cursor whose
# window has nothing left comes back with no event (NULL seq): the worker
# closes it.
_CLAIM_STREAMS = f"""
WITH leased AS (
  UPDATE jsonsync_webhook_cursors k
     SET token = %(token)s, lease_until = clock_timestamp() + make_interval(secs => %(lease)s),
         upto = coalesce(k.upto, pg_current_snapshot())
    FROM (SELECT x.target FROM jsonsync_webhook_cursors x
           WHERE (x.lease_until IS NULL OR x.lease_until < clock_timestamp())
             AND ({_has_unhandled("x")})
           LIMIT %(streams)s
           FOR UPDATE SKIP LOCKED) AS s
   WHERE k.target = s.target
  RETURNING k.target, k.done, k.upto, k.last_xid, k.last_seq)
SELECT l.target, e.xid::text, e.seq, e.id, e.body, extract(epoch FROM clock_timestamp() - e.created_at)::float8,
       l.last_xid::text, l.last_seq
  FROM leased l
  LEFT JOIN LATERAL (
    SELECT * FROM ({_window_events("l", "e.xid, e.seq, e.id, e.body, e.created_at")}) AS w
     ORDER BY w.xid, w.seq
     LIMIT %(limit)s) e ON true
 ORDER BY l.target, e.xid, e.seq
"""

# The end of a batch of a window, in one statement: the cursor moves (to
# the window's end, or to the last event handled), the attempts are logged,
# the events that failed go to the retries table. Only the holder of the
# lease moves it.
_MOVE_CURSOR = """
WITH moved AS (
  UPDATE jsonsync_webhook_cursors
     SET done = CASE WHEN %(whole)s THEN upto ELSE done END,
         upto = CASE WHEN %(whole)s THEN NULL ELSE upto END,
         last_xid = CASE WHEN %(whole)s THEN '0'::xid8 ELSE %(last_xid)s::xid8 END,
         last_seq = CASE WHEN %(whole)s THEN 0 ELSE %(last_seq)s END,
         token = NULL, lease_until = NULL
   WHERE target = %(target)s AND token = %(token)s
  RETURNING target),
"""
_SETTLE = _MOVE_CURSOR + """input AS (
  SELECT * FROM unnest(%(ids)s::text[], %(bodies)s::text[], %(ages)s::float8[], %(codes)s::int[],
                       %(latencies)s::float8[], %(errors)s::text[], %(outcomes)s::text[], %(delays)s::float8[])
           AS i(id, body, age, status_code, latency_ms, error, outcome, delay)
   WHERE EXISTS (SELECT 1 FROM moved)),
logged AS (
  INSERT INTO jsonsync_outbox_attempts (message_id, attempt, status_code, latency_ms, error, worker)
  SELECT id, 1, status_code, latency_ms, error, %(worker)s FROM input
   WHERE outcome IN ('delivered', 'retry', 'failed')
  ON CONFLICT (message_id, attempt) DO NOTHING),
retried AS (
  INSERT INTO jsonsync_outbox (id, target, body, status, attempts, created_at, since, due_at, ended_at)
  SELECT id, %(target)s, body,
         CASE WHEN outcome = 'failed' THEN 'failed' ELSE 'pending' END,
         1,
         clock_timestamp() - make_interval(secs => age), clock_timestamp() - make_interval(secs => age),
         clock_timestamp() + make_interval(secs => delay),
         CASE WHEN outcome = 'failed' THEN clock_timestamp() END
    FROM input WHERE outcome IN ('retry', 'failed')
  ON CONFLICT (id) DO NOTHING)
SELECT count(*) FROM moved
"""
# The end of a batch whose events were all delivered at their first attempt
# (the common case): the cursor moves and the attempts are logged, from three
# arrays instead of eight.
_SETTLE_DELIVERED = _MOVE_CURSOR + """logged AS (
  INSERT INTO jsonsync_outbox_attempts (message_id, attempt, status_code, latency_ms, error, worker)
  SELECT i.id, 1, i.status_code, i.latency_ms, NULL, %(worker)s
    FROM unnest(%(ids)s::text[], %(codes)s::int[], %(latencies)s::float8[]) AS i(id, status_code, latency_ms)
   WHERE EXISTS (SELECT 1 FROM moved)
  ON CONFLICT (message_id, attempt) DO NOTHING)
SELECT count(*) FROM moved
"""
_LOG = """
INSERT INTO jsonsync_outbox_attempts (message_id, attempt, status_code, latency_ms, error, worker)
SELECT id, attempts, %(status_code)s, %(latency_ms)s, %(error)s, %(worker)s FROM ended
ON CONFLICT (message_id, attempt) DO NOTHING
"""


def _ending(assignments: str) -> str:
    return (
        f"WITH ended AS (UPDATE jsonsync_outbox SET {assignments}, token = NULL"
        " WHERE id = %(id)s AND token = %(token)s AND status = 'pending' RETURNING id, attempts),"
        f" logged AS ({_LOG})"
        " SELECT count(*) FROM ended"
    )


_COMPLETE = _ending("status = 'delivered', ended_at = clock_timestamp()")
_FAIL = _ending("status = 'failed', ended_at = clock_timestamp()")
_RESCHEDULE = _ending("due_at = clock_timestamp() + make_interval(secs => %(delay)s)")

_COMPLETE_MANY = """
WITH input AS (
  SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::text[], %(codes)s::int[], %(latencies)s::float8[],
                       %(workers)s::text[]) AS i(id, token, status_code, latency_ms, worker)),
ended AS (
  UPDATE jsonsync_outbox o SET status = 'delivered', token = NULL, ended_at = clock_timestamp()
    FROM input i
   WHERE o.id = i.id AND o.token = i.token AND o.status = 'pending'
  RETURNING o.id, o.attempts, i.status_code, i.latency_ms, i.worker),
logged AS (
  INSERT INTO jsonsync_outbox_attempts (message_id, attempt, status_code, latency_ms, error, worker)
  SELECT id, attempts, status_code, latency_ms, NULL, worker FROM ended
  ON CONFLICT (message_id, attempt) DO NOTHING)
SELECT count(*) FROM ended
"""

# The newest events of a webhook, with their state: a row of the retries
# table decides it when there is one; otherwise an event the cursor passed is
# delivered (it has a logged attempt) or was dropped by the filters (it has
# none: not listed), and one it did not pass yet is pending.
_DELIVERIES = """
WITH k AS (SELECT * FROM jsonsync_webhook_cursors WHERE target = %(target)s),
e AS (
  SELECT coalesce(e.id, e.xid::text || '-' || e.seq) AS id, e.xid, e.seq, e.body, e.created_at,
         (pg_visible_in_snapshot(e.xid, k.done)
          OR (k.upto IS NOT NULL AND pg_visible_in_snapshot(e.xid, k.upto)
              AND (e.xid, e.seq) <= (k.last_xid, k.last_seq))) AS passed
    FROM k JOIN jsonsync_webhook_events e ON e.target = k.target
   WHERE %(before_xid)s::xid8 IS NULL OR (e.xid, e.seq) < (%(before_xid)s::xid8, %(before_seq)s::bigint))
SELECT e.id,
       coalesce(o.status, CASE WHEN e.passed THEN 'delivered' ELSE 'pending' END),
       coalesce(o.attempts, CASE WHEN e.passed THEN 1 ELSE 0 END),
       (extract(epoch FROM e.created_at) * 1000)::bigint,
       CASE WHEN o.id IS NOT NULL THEN
              CASE WHEN o.status = 'pending' THEN (extract(epoch FROM o.due_at) * 1000)::bigint END
            WHEN NOT e.passed THEN (extract(epoch FROM e.created_at) * 1000)::bigint END,
       e.body,
       coalesce((SELECT json_agg(json_build_object(
                    'attempt', a.attempt, 'at', (extract(epoch FROM a.at) * 1000)::bigint,
                    'status_code', a.status_code, 'latency_ms', a.latency_ms,
                    'error', a.error, 'worker', a.worker) ORDER BY a.attempt)
                   FROM jsonsync_outbox_attempts a WHERE a.message_id = e.id), '[]'::json)
  FROM e LEFT JOIN jsonsync_outbox o ON o.id = e.id
 WHERE o.id IS NOT NULL OR NOT e.passed
    OR EXISTS (SELECT 1 FROM jsonsync_outbox_attempts a WHERE a.message_id = e.id)
 ORDER BY e.xid DESC, e.seq DESC
 LIMIT %(limit)s
"""

# An event of the log that is not in the retries table, put there to be sent
# again — once the cursor passed it: one it did not pass yet is on its way
# (sending it from both places would send it twice).
_REDELIVER_EVENT = """
INSERT INTO jsonsync_outbox (id, target, body, attempts, created_at)
SELECT coalesce(e.id, e.xid::text || '-' || e.seq), e.target, e.body,
       coalesce((SELECT max(a.attempt) FROM jsonsync_outbox_attempts a
                  WHERE a.message_id = coalesce(e.id, e.xid::text || '-' || e.seq)), 0),
       e.created_at
  FROM jsonsync_webhook_events e
  JOIN jsonsync_webhook_cursors k ON k.target = e.target
 WHERE e.target = %(target)s AND {where}
   AND (pg_visible_in_snapshot(e.xid, k.done)
        OR (k.upto IS NOT NULL AND pg_visible_in_snapshot(e.xid, k.upto)
            AND (e.xid, e.seq) <= (k.last_xid, k.last_seq)))
 LIMIT 1
ON CONFLICT (id) DO NOTHING
"""


def event_key(event_id: str) -> tuple[str, int] | None:
    """The (xid, seq) an event id of the log stands for ("<xid>-<seq>"), or None."""
    xid, dash, seq = event_id.partition("-")
    if dash and xid.isdigit() and seq.isdigit() and len(xid) <= 20 and len(seq) <= 19:
        return xid, int(seq)
    return None


def _attempt_params(attempt: dict) -> dict:
    return {
        "status_code": attempt.get("status_code"),
        "latency_ms": attempt.get("latency_ms"),
        "error": attempt.get("error"),
        "worker": attempt.get("worker"),
    }


class _Window:
    """The events of one webhook's window claimed together, settled together."""

    __slots__ = ("target", "token", "whole", "last_xid", "last_seq", "messages", "ended", "waiters")

    def __init__(self, target: str, token: str, whole: bool, last_xid: str, last_seq: int):
        self.target = target
        self.token = token
        self.whole = whole
        self.last_xid = last_xid
        self.last_seq = last_seq
        self.messages: dict[str, dict] = {}
        self.ended: dict[str, tuple[str, dict, float]] = {}
        self.waiters: list[Deferred] = []


@implementer(IOutbox)
class PostgresOutbox(CloseHooks):
    """
    New events are read from the log by cursor (L{_Window}s of
    C{jsonsync_webhook_events}); those that failed once are retried from
    C{jsonsync_outbox}, one row each. Claims return both kinds alike.
    """

    # How often (seconds) a claim also looks at the retries table when this
    # process knows of no retry falling due (other processes' retries).
    RETRY_CHECK = 0.25

    def __init__(self, storage: PostgresStorage):
        super().__init__()
        self.storage = storage
        self.pool = storage.pool
        self._windows: dict[tuple[str, str], _Window] = {}
        self._next_retry_check = 0.0
        # fan_out() ran: the group write of records writes their events in
        # its own statement (GROUP_WRITE_EVENTS), and the row trigger
        # skips the rows of that statement (jsonsync.events, EVENTS_HERE).
        self.fanning_out = False

    async def fan_out(self):
        """
        Creates the triggers that write the events of changes (and keep
        the webhooks' cursors), or brings them up to date, under an advisory
        lock so that processes starting together do it once: schema 8's
        C{jsonsync_webhook_triggers()}.
        """
        await self.pool.run(
            "SELECT pg_advisory_xact_lock(%s, %s); SELECT jsonsync_webhook_triggers()",
            FANOUT_LOCK,
        )
        self.fanning_out = True
        return True

    async def append(self, txn, messages):
        if not messages:
            return
        rows = ", ".join(["(%s, %s, %s)"] * len(messages))
        targets = sorted({m["target"] for m in messages})
        params: list = []
        for message in messages:
            params += [message["target"], message["id"], message["body"]]
        params += targets
        # Deferred: it goes with the transaction's next statement or its COMMIT.
        await self.storage._defer(
            txn,
            f"WITH appended AS (INSERT INTO jsonsync_webhook_events (target, id, body) VALUES {rows})"
            f" INSERT INTO jsonsync_webhook_cursors (target) VALUES {', '.join(['(%s)'] * len(targets))}"
            " ON CONFLICT DO NOTHING",
            params,
        )

    # -- claims -------------------------------------------------------------------------

    async def claim(self, limit, lease, worker):
        token = new_token()
        limit = int(limit)
        claimed: list[dict] = []
        if time.monotonic() >= self._next_retry_check:
            self._next_retry_check = time.monotonic() + self.RETRY_CHECK
            rows, _ = await self.pool.run(_CLAIM_RETRIES, {"lease": float(lease), "token": token, "limit": limit})
            claimed += [
                {"id": r[0], "target": r[1], "body": r[2], "attempts": r[3], "age": r[4], "token": token}
                for r in rows or ()
            ]
        room = limit - len(claimed)
        if room > 0:
            claimed += await self._claim_streams(room, lease, token)
        return claimed

    async def _claim_streams(self, limit: int, lease: float, token: str) -> list[dict]:
        # Prepared (as the settle statement): planning them cost more than running them.
        rows, _ = await self.pool.run(
            _CLAIM_STREAMS,
            {"lease": float(lease), "token": token, "limit": limit, "streams": min(limit, 8)},
            prepare=True,
        )
        per_target: dict[str, list] = {}
        positions: dict[str, tuple[str, int]] = {}
        for target, xid, seq, event_id, body, age, last_xid, last_seq in rows or ():
            events = per_target.setdefault(target, [])
            positions[target] = (last_xid, last_seq)
            if seq is not None:
                events.append((event_id or f"{xid}-{seq}", (xid, seq), body, age))
        claimed: list[dict] = []
        empty: list[_Window] = []
        for target, events in per_target.items():
            room = limit - len(claimed)
            taken = events[:room]
            # The window ends with this batch when its read came back short
            # and nothing of it is left for later.
            whole = len(events) < limit and len(taken) == len(events)
            window = _Window(target, token, whole, *(taken[-1][1] if taken else positions[target]))
            for event_id, _position, body, age in taken:
                message = {"id": event_id, "target": target, "body": body, "attempts": 1, "age": age, "token": token}
                window.messages[event_id] = message
                claimed.append(message)
            if window.messages:
                self._windows[(target, token)] = window
            else:
                empty.append(window)
        for window in empty:
            await self._settle(window)  # nothing left in it: close it (or just give the lease back)
        return claimed

    # -- the ends of claimed messages ------------------------------------------------------

    def _window_of(self, message_id: str, token: str | None) -> _Window | None:
        for key in self._windows:
            if key[1] == token:
                window = self._windows[key]
                if message_id in window.messages:
                    return window
        return None

    @staticmethod
    def _record_end(window: _Window, message_id: str, outcome: str, attempt: dict, delay: float = 0.0) -> bool:
        """Notes the end of a message of C{window}; False when it had ended already."""
        if message_id in window.ended:
            return False
        window.ended[message_id] = (outcome, attempt, delay)
        return True

    def _settled(self, window: _Window) -> Deferred:
        """
        Fires with whether the lease still held when C{window} was settled;
        settles it now if all its messages have ended.
        """
        done: Deferred = Deferred()
        window.waiters.append(done)
        if len(window.ended) == len(window.messages) and self._windows.pop((window.target, window.token), None) is not None:
            Deferred.fromCoroutine(self._settle_and_tell(window))
        return done

    async def _end_in_window(self, window: _Window, message_id: str, outcome: str, attempt: dict,
                             delay: float = 0.0) -> bool:
        if not self._record_end(window, message_id, outcome, attempt, delay):
            return False
        return await self._settled(window)

    async def _settle_and_tell(self, window: _Window) -> None:
        try:
            held = await self._settle(window)
        except Exception as exc:
            waiters, window.waiters = window.waiters, []
            for d in waiters:
                d.errback(exc)
            return
        waiters, window.waiters = window.waiters, []
        for d in waiters:
            d.callback(held)

    async def _settle(self, window: _Window) -> bool:
        position = {
            "whole": window.whole, "last_xid": window.last_xid, "last_seq": window.last_seq,
            "target": window.target, "token": window.token,
        }
        ended = window.ended
        if all(outcome == "delivered" for outcome, _, _ in ended.values()):
            attempts = [attempt for _, attempt, _ in ended.values()]
            rows, _ = await self.pool.run(
                _SETTLE_DELIVERED,
                {
                    **position,
                    "ids": list(ended),
                    "codes": [a.get("status_code") for a in attempts],
                    "latencies": [a.get("latency_ms") for a in attempts],
                    "worker": attempts[0].get("worker") if attempts else None,
                },
                prepare=True,
            )
            return bool(rows and rows[0][0])
        ids, bodies, ages, codes, latencies, errors, outcomes, delays = [], [], [], [], [], [], [], []
        worker = None
        for message_id, (outcome, attempt, delay) in ended.items():
            message = window.messages[message_id]
            ids.append(message_id)
            # Only the events going to the retries table need their body sent back.
            bodies.append(message["body"] if outcome in ("retry", "failed") else None)
            ages.append(float(message["age"] or 0))
            codes.append(attempt.get("status_code"))
            latencies.append(attempt.get("latency_ms"))
            errors.append(attempt.get("error"))
            outcomes.append(outcome)
            delays.append(float(delay))
            worker = worker or attempt.get("worker")
        rows, _ = await self.pool.run(
            _SETTLE,
            {
                **position,
                "ids": ids, "bodies": bodies, "ages": ages, "codes": codes, "latencies": latencies,
                "errors": errors, "outcomes": outcomes, "delays": delays, "worker": worker,
            },
            prepare=True,
        )
        if "retry" in outcomes:
            soonest = min(d for d, o in zip(delays, outcomes, strict=True) if o == "retry")
            self._next_retry_check = min(self._next_retry_check, time.monotonic() + soonest)
        return bool(rows and rows[0][0])

    async def _end(self, sql: str, params: dict) -> bool:
        rows, _ = await self.pool.run(sql, params)
        return bool(rows and rows[0][0])

    async def complete(self, message_id, token, attempt):
        window = self._window_of(message_id, token)
        if window is not None:
            return await self._end_in_window(window, message_id, "delivered", attempt)
        return await self._end(_COMPLETE, {"id": message_id, "token": token, **_attempt_params(attempt)})

    async def complete_many(self, completions):
        if not completions:
            return 0
        retried = []
        # Many completions come at once (a reactor turn's): one wait per window, not one per message.
        counts: dict[_Window, int] = {}
        for message_id, token, attempt in completions:
            window = self._window_of(message_id, token)
            if window is None:
                retried.append((message_id, token, attempt))
            elif self._record_end(window, message_id, "delivered", attempt):
                counts[window] = counts.get(window, 0) + 1
        ends = [(self._settled(window), n) for window, n in counts.items()]
        held = 0
        if retried:
            rows, _ = await self.pool.run(
                _COMPLETE_MANY,
                {
                    "ids": [c[0] for c in retried],
                    "tokens": [c[1] for c in retried],
                    "codes": [c[2].get("status_code") for c in retried],
                    "latencies": [c[2].get("latency_ms") for c in retried],
                    "workers": [c[2].get("worker") for c in retried],
                },
            )
            held += int(rows[0][0]) if rows else 0
        for d, n in ends:
            if await d:
                held += n
        return held

    async def reschedule(self, message_id, token, delay, attempt):
        window = self._window_of(message_id, token)
        if window is not None:
            return await self._end_in_window(window, message_id, "retry", attempt, delay)
        held = await self._end(
            _RESCHEDULE, {"id": message_id, "token": token, "delay": float(delay), **_attempt_params(attempt)}
        )
        if held:
            self._next_retry_check = min(self._next_retry_check, time.monotonic() + float(delay))
        return held

    async def fail(self, message_id, token, attempt):
        window = self._window_of(message_id, token)
        if window is not None:
            return await self._end_in_window(window, message_id, "failed", attempt)
        return await self._end(_FAIL, {"id": message_id, "token": token, **_attempt_params(attempt)})

    async def discard(self, message_id, token):
        window = self._window_of(message_id, token)
        if window is not None:
            return await self._end_in_window(window, message_id, "discarded", {})
        _, count = await self.pool.run(
            "DELETE FROM jsonsync_outbox WHERE id = %s AND token = %s AND status = 'pending'", (message_id, token)
        )
        return bool(count)

    # -- the log ---------------------------------------------------------------------------------

    async def _key_of(self, target: str, event_id: str) -> tuple[str, int] | None:
        key = event_key(event_id)
        if key is not None:
            return key
        rows, _ = await self.pool.run(
            "SELECT xid::text, seq FROM jsonsync_webhook_events WHERE target = %s AND id = %s LIMIT 1",
            (target, event_id),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    async def deliveries(self, target, limit, before=None):
        before_xid = before_seq = None
        if before is not None:
            key = await self._key_of(target, before)
            if key is None:
                return None
            before_xid, before_seq = key
        rows, _ = await self.pool.run(
            _DELIVERIES, {"target": target, "before_xid": before_xid, "before_seq": before_seq, "limit": int(limit)}
        )
        return [
            {
                "id": r[0],
                "status": r[1],
                "attempts": r[2],
                "created": r[3],
                "next_attempt": r[4],
                "body": r[5],
                "log": list(r[6] or ()),
            }
            for r in rows or ()
        ]

    async def redeliver(self, target, message_id):
        _, count = await self.pool.run(
            "UPDATE jsonsync_outbox SET status = 'pending', due_at = clock_timestamp(),"
            " since = clock_timestamp(), token = NULL, ended_at = NULL WHERE id = %s AND target = %s",
            (message_id, target),
        )
        if not count:
            # Delivered from the log (not in the retries table): put it there.
            key = await self._key_of(target, message_id)
            if key is None:
                return False
            _, count = await self.pool.run(
                _REDELIVER_EVENT.format(where="e.xid = %(xid)s::xid8 AND e.seq = %(seq)s"),
                {"target": target, "xid": key[0], "seq": key[1]},
            )
            if not count:
                # The event exists (its key was found) and is not pending a retry: already in the
                # retries table for another reason, or not yet passed by the cursor: it is on its way.
                rows, _ = await self.pool.run(
                    "SELECT 1 FROM jsonsync_webhook_events WHERE target = %s AND xid = %s::xid8 AND seq = %s",
                    (target, key[0], key[1]),
                )
                return bool(rows)
        self._next_retry_check = 0.0
        return True

    async def prune(self, older_than):
        params = (float(older_than),)
        _, count = await self.pool.run(
            "DELETE FROM jsonsync_outbox WHERE ended_at < clock_timestamp() - make_interval(secs => %s)", params
        )
        _, events = await self.pool.run(
            "DELETE FROM jsonsync_webhook_events WHERE created_at < clock_timestamp() - make_interval(secs => %s)",
            params,
        )
        await self.pool.run(
            "DELETE FROM jsonsync_outbox_attempts WHERE at < clock_timestamp() - make_interval(secs => %s)", params
        )
        return (count or 0) + (events or 0)
