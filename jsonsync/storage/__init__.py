"""
What every storage backend shares: the request's unit of work and the rule
that assigns C{last_modified} timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from jsonsync.errors import WriteConflict
from jsonsync.interfaces import ITransaction

_log = Logger()


def now_ms() -> int:
    return int(time.time() * 1000)


def next_timestamp(list_ts: int, wanted: Any = None, now: int | None = None) -> tuple[int, int]:
    """
    Kinto's timestamp rule for one write in a list whose timestamp is
    C{list_ts}: returns C{(object timestamp, new list timestamp)}.

    Without a C{wanted} value the object gets C{max(now, list_ts + 1)}.
    A client-supplied integer (replication) is kept: bumped by one when it
    equals the list timestamp, becoming the list timestamp when greater,
    and left in the past (without moving the list) when smaller.

    The PostgreSQL backend applies the common case (no C{wanted}) in SQL,
    within its one-statement write, where the list timestamp is read under
    the list's lock; see L{jsonsync.storage.postgresql.group} for why.
    """
    if isinstance(wanted, int) and not isinstance(wanted, bool):
        if wanted == list_ts:
            return list_ts + 1, list_ts + 1
        if wanted > list_ts:
            return wanted, wanted
        return wanted, list_ts
    current = now_ms() if now is None else now
    if current <= list_ts:
        current = list_ts + 1
    return current, current


def check_expected(expected: int | None, live: bool, stored: int | None, key: tuple[str, str]) -> None:
    """
    The compare-and-swap of C{IStorage.update} and C{delete}: refuse the
    write (L{WriteConflict} naming list C{key}) unless no version was
    expected or the stored live version is the expected one.
    """
    if expected is not None and not (live and stored == expected):
        raise WriteConflict([key])


@implementer(ITransaction)
class Transaction:
    """
    A unit of work shared by every backend a request touches. Resources
    enlist under a key (the PostgreSQL backends of storage and permissions
    share one key, hence one connection and one SQL transaction).
    """

    def __init__(self):
        self._resources: dict[Any, Any] = {}
        self._order: list[Any] = []
        self._after: list[Callable[[], Any]] = []
        self.done = False
        self.last_write = False
        self.lock_lists: tuple = ()
        self.lock_shared: tuple = ()
        # Reads that must agree with each other (ITransaction.snapshot).
        self.snapshot = False

    def only(self, key) -> bool:
        return all(k == key for k in self._resources)

    async def enlist(self, key, open_resource: Callable[[], Awaitable[Any]]):
        resource = self._resources.get(key)
        if resource is None:
            if self.done:
                raise RuntimeError("transaction already finished")
            resource = await open_resource()
            self._resources[key] = resource
            self._order.append(resource)
        return resource

    def enlisted(self, key):
        return self._resources.get(key)

    def after_commit(self, callback):
        self._after.append(callback)

    async def commit(self):
        if self.done:
            return
        self.done = True
        try:
            for resource in self._order:
                await resource.commit()
        except BaseException:
            await self._rollback_all()
            raise
        callbacks, self._after = self._after, []
        for callback in callbacks:
            try:
                result = callback()
                if hasattr(result, "__await__"):
                    await result
            except Exception:
                _log.failure("after-commit callback failed")

    async def rollback(self):
        if self.done:
            return
        self.done = True
        await self._rollback_all()

    async def _rollback_all(self):
        self._after = []
        for resource in reversed(self._order):
            try:
                await resource.rollback()
            except Exception:
                _log.failure("rollback failed")
        self._order = []
        self._resources = {}
