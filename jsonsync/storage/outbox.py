"""
The outbox every backend can share the bookkeeping of, and the memory
backend's outbox (L{MemoryOutbox}): messages written inside a storage
transaction (journalled, so a rollback drops them), claimed with a lease by
the delivery worker of this process.

The PostgreSQL outbox is L{jsonsync.storage.postgresql.outbox}; both follow
L{jsonsync.interfaces.IOutbox} and the contract tests in
C{tests/test_plugin_webhooks.py}.
"""

from __future__ import annotations

import inspect
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from jsonsync.interfaces import IOutbox

_log = Logger()


class CloseHooks:
    """The C{add_close_hook} part of L{IOutbox}, for any backend."""

    def __init__(self) -> None:
        self._close_hooks: list[Callable[[], Any]] = []

    def add_close_hook(self, hook: Callable[[], Any]) -> None:
        self._close_hooks.append(hook)

    async def run_close_hooks(self) -> None:
        hooks, self._close_hooks = self._close_hooks, []
        for hook in hooks:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log.failure("outbox close hook failed")


def new_token() -> str:
    return uuid.uuid4().hex


@implementer(IOutbox)
class MemoryOutbox(CloseHooks):
    """
    The outbox of the memory backend. Its rows live beside the objects and
    are written under the same writers' lock and journal: a transaction
    that rolls back takes its messages with it.
    """

    def __init__(self, storage, clock: Callable[[], float] = time.time):
        super().__init__()
        self._storage = storage
        self._clock = clock
        self._rows: dict[str, dict] = {}
        self._order = itertools.count()

    async def fan_out(self):
        return False  # the plugin's listener appends the messages

    async def append(self, txn, messages):
        if not messages:
            return
        # Taking the writers' lock orders the messages with the change; they
        # become claimable only once the transaction committed (memory reads
        # see uncommitted writes), and a rollback never publishes them.
        await self._storage._journal(txn)
        staged = list(messages)

        def publish():
            now = self._clock()
            for message in staged:
                self._rows[message["id"]] = {
                    "id": message["id"],
                    "target": message["target"],
                    "body": message["body"],
                    "status": "pending",
                    "attempts": 0,
                    "created": now,
                    "since": now,
                    "due": now,
                    "token": None,
                    "ended": None,
                    "log": [],
                    "seq": next(self._order),
                }

        txn.after_commit(publish)

    async def claim(self, limit, lease, worker):
        now = self._clock()
        due = sorted(
            (r for r in self._rows.values() if r["status"] == "pending" and r["due"] <= now),
            key=lambda r: (r["due"], r["seq"]),
        )[:limit]
        out = []
        for row in due:
            row["token"] = new_token()
            row["due"] = now + lease
            row["attempts"] += 1
            out.append(
                {
                    "id": row["id"],
                    "target": row["target"],
                    "body": row["body"],
                    "attempts": row["attempts"],
                    "age": now - row["since"],
                    "token": row["token"],
                }
            )
        return out

    def _held(self, message_id, token):
        row = self._rows.get(message_id)
        if row is None or row["token"] != token or row["status"] != "pending":
            return None
        return row

    def _log_attempt(self, row, attempt):
        row["log"].append(
            {
                "attempt": row["attempts"],
                "at": int(self._clock() * 1000),
                "status_code": attempt.get("status_code"),
                "latency_ms": attempt.get("latency_ms"),
                "error": attempt.get("error"),
                "worker": attempt.get("worker"),
            }
        )

    async def complete(self, message_id, token, attempt):
        row = self._held(message_id, token)
        if row is None:
            return False
        self._log_attempt(row, attempt)
        row.update(status="delivered", token=None, ended=self._clock())
        return True

    async def complete_many(self, completions):
        done = 0
        for message_id, token, attempt in completions:
            done += await self.complete(message_id, token, attempt)
        return done

    async def reschedule(self, message_id, token, delay, attempt):
        row = self._held(message_id, token)
        if row is None:
            return False
        self._log_attempt(row, attempt)
        row.update(token=None, due=self._clock() + delay)
        return True

    async def fail(self, message_id, token, attempt):
        row = self._held(message_id, token)
        if row is None:
            return False
        self._log_attempt(row, attempt)
        row.update(status="failed", token=None, ended=self._clock())
        return True

    async def discard(self, message_id, token):
        if self._held(message_id, token) is None:
            return False
        del self._rows[message_id]
        return True

    async def deliveries(self, target, limit, before=None):
        rows = sorted((r for r in self._rows.values() if r["target"] == target), key=lambda r: -r["seq"])
        if before is not None:
            anchor = self._rows.get(before)
            if anchor is None or anchor["target"] != target:
                return None
            rows = [r for r in rows if r["seq"] < anchor["seq"]]
        return [
            {
                "id": r["id"],
                "status": r["status"],
                "attempts": r["attempts"],
                "created": int(r["created"] * 1000),
                "next_attempt": int(r["due"] * 1000) if r["status"] == "pending" else None,
                "body": r["body"],
                "log": [dict(a) for a in r["log"]],
            }
            for r in rows[:limit]
        ]

    async def redeliver(self, target, message_id):
        row = self._rows.get(message_id)
        if row is None or row["target"] != target:
            return False
        now = self._clock()
        row.update(status="pending", due=now, since=now, token=None, ended=None)
        return True

    async def prune(self, older_than):
        limit = self._clock() - older_than
        gone = [k for k, r in self._rows.items() if r["ended"] is not None and r["ended"] < limit]
        for key in gone:
            del self._rows[key]
        return len(gone)

    def flush(self) -> None:
        self._rows.clear()
