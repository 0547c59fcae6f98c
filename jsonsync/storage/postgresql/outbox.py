"""
The PostgreSQL outbox (L{jsonsync.interfaces.IOutbox}), tables of schema 4
(C{jsonsync_outbox}, C{jsonsync_outbox_attempts}).

Messages are inserted as a deferred write of the request's unit of work:
they travel with its next statement or with its C{COMMIT}, so they cost no
round trip of their own and commit or roll back with the change. Workers
claim due rows with C{FOR UPDATE SKIP LOCKED} (two workers polling at once
take different rows) and lease them by moving C{due_at} past the lease in
the same statement (autocommit): until then no one else claims them; a
worker that dies leaves them due again when its lease ends. Each claim
carries a token, and only the holder of a row's current token can end or
postpone it.

Times are the database's clock (C{clock_timestamp()}), so that processes
on several hosts agree on what is due.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import implementer

from jsonsync.interfaces import IOutbox
from jsonsync.storage.outbox import CloseHooks, new_token

if TYPE_CHECKING:  # pragma: no cover
    from jsonsync.storage.postgresql.storage import PostgresStorage

# pg_advisory_xact_lock(int, int) key of the trigger's creation.
FANOUT_LOCK = (0x6A73, 0x7768)

_CLAIM = """
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

_DELIVERIES = """
SELECT o.id, o.status, o.attempts,
       (extract(epoch FROM o.created_at) * 1000)::bigint,
       CASE WHEN o.status = 'pending' THEN (extract(epoch FROM o.due_at) * 1000)::bigint END,
       o.body,
       coalesce((SELECT json_agg(json_build_object(
                    'attempt', a.attempt, 'at', (extract(epoch FROM a.at) * 1000)::bigint,
                    'status_code', a.status_code, 'latency_ms', a.latency_ms,
                    'error', a.error, 'worker', a.worker) ORDER BY a.attempt)
                   FROM jsonsync_outbox_attempts a WHERE a.message_id = o.id), '[]'::json)
  FROM jsonsync_outbox o
 WHERE o.target = %(target)s
   AND (%(before)s::text IS NULL
        OR o.seq < (SELECT seq FROM jsonsync_outbox WHERE id = %(before)s AND target = %(target)s))
 ORDER BY o.seq DESC
 LIMIT %(limit)s
"""


def _attempt_params(attempt: dict) -> dict:
    return {
        "status_code": attempt.get("status_code"),
        "latency_ms": attempt.get("latency_ms"),
        "error": attempt.get("error"),
        "worker": attempt.get("worker"),
    }


@implementer(IOutbox)
class PostgresOutbox(CloseHooks):
    def __init__(self, storage: PostgresStorage):
        super().__init__()
        self.storage = storage
        self.pool = storage.pool

    async def fan_out(self):
        """
        Creates the trigger that writes the messages of changes itself (the
        function is schema 4), once per database, under an advisory lock so
        that processes starting together create it once.
        """
        await self.pool.run(
            "SELECT pg_advisory_xact_lock(%s, %s);"
            " DO $$ BEGIN"
            " IF NOT EXISTS (SELECT 1 FROM pg_trigger"
            "  WHERE tgname = 'jsonsync_webhook_fanout' AND tgrelid = 'objects'::regclass) THEN"
            "  CREATE TRIGGER jsonsync_webhook_fanout AFTER INSERT OR UPDATE ON objects FOR EACH ROW"
            "  WHEN (NEW.resource_name IN ('record', 'collection', 'group'))"
            "  EXECUTE FUNCTION jsonsync_webhook_fanout();"
            " END IF; END $$",
            FANOUT_LOCK,
        )
        return True

    async def append(self, txn, messages):
        if not messages:
            return
        rows = ", ".join(["(%s, %s, %s)"] * len(messages))
        params: list = []
        for message in messages:
            params += [message["id"], message["target"], message["body"]]
        # Deferred: it goes with the transaction's next statement or its COMMIT.
        await self.storage._defer(txn, f"INSERT INTO jsonsync_outbox (id, target, body) VALUES {rows}", params)

    async def claim(self, limit, lease, worker):
        token = new_token()
        rows, _ = await self.pool.run(_CLAIM, {"lease": float(lease), "token": token, "limit": int(limit)})
        return [
            {"id": r[0], "target": r[1], "body": r[2], "attempts": r[3], "age": r[4], "token": token}
            for r in rows or ()
        ]

    async def _end(self, sql: str, params: dict) -> bool:
        rows, _ = await self.pool.run(sql, params)
        return bool(rows and rows[0][0])

    async def complete(self, message_id, token, attempt):
        return await self._end(_COMPLETE, {"id": message_id, "token": token, **_attempt_params(attempt)})

    async def complete_many(self, completions):
        if not completions:
            return 0
        rows, _ = await self.pool.run(
            _COMPLETE_MANY,
            {
                "ids": [c[0] for c in completions],
                "tokens": [c[1] for c in completions],
                "codes": [c[2].get("status_code") for c in completions],
                "latencies": [c[2].get("latency_ms") for c in completions],
                "workers": [c[2].get("worker") for c in completions],
            },
        )
        return int(rows[0][0]) if rows else 0

    async def reschedule(self, message_id, token, delay, attempt):
        return await self._end(
            _RESCHEDULE, {"id": message_id, "token": token, "delay": float(delay), **_attempt_params(attempt)}
        )

    async def fail(self, message_id, token, attempt):
        return await self._end(_FAIL, {"id": message_id, "token": token, **_attempt_params(attempt)})

    async def discard(self, message_id, token):
        _, count = await self.pool.run(
            "DELETE FROM jsonsync_outbox WHERE id = %s AND token = %s AND status = 'pending'", (message_id, token)
        )
        return bool(count)

    async def deliveries(self, target, limit, before=None):
        rows, _ = await self.pool.run(_DELIVERIES, {"target": target, "before": before, "limit": int(limit)})
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
        return bool(count)

    async def prune(self, older_than):
        _, count = await self.pool.run(
            "DELETE FROM jsonsync_outbox WHERE ended_at < clock_timestamp() - make_interval(secs => %s)",
            (float(older_than),),
        )
        return count or 0
