"""
The base of the PostgreSQL providers: how the storage and the permission
store reach the database within a request's transaction (reads straight
from the pool until the request writes, writes in its unit of work).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from jsonsync.storage import Transaction
from jsonsync.storage.postgresql.unit import Unit

if TYPE_CHECKING:  # pragma: no cover
    from jsonsync.storage.postgresql.pool import Pool


def acl_from_entries(entries) -> dict[str, set[str]]:
    """An ACL from C{"permission principal"} strings (C{array_agg} of both)."""
    acl: dict[str, set[str]] = {}
    for entry in entries or ():
        permission, _, principal = entry.partition(" ")
        acl.setdefault(permission, set()).add(principal)
    return acl


class PostgresProvider:
    """
    What the storage and the permission store share: a pool (C{pool}), the
    request's unit of work on it (L{unit}), and the ways to send a
    statement, for the two subclasses: L{_read}, L{_write}, L{_defer} (a
    write nobody waits for) and L{_last} (a write that may carry the
    commit).
    """

    # Whether this provider takes the list locks a transaction asks for up
    # front (lock_lists): the storage does; a permission store on another
    # database must not lock the same keys there too (two databases' locks
    # could wait on each other unseen).
    takes_list_locks = False

    def __init__(self, pool: Pool, owns_pool: bool):
        self.pool = pool
        self._owns_pool = owns_pool

    def transaction(self):
        return Transaction()

    async def unit(self, txn) -> Unit:
        """The unit of work of C{txn} on this provider's pool (enlisted on first use)."""
        pool = self.pool

        async def open_unit():
            unit = Unit(pool, await pool.checkout(), snapshot=getattr(txn, "snapshot", False))
            # A request run again after a write conflict locks the lists it
            # writes before its first read, in the canonical order (see
            # Unit.lock_statement): what it reads then stays true to its
            # commit, so this attempt cannot conflict on them again.
            if self.takes_list_locks:
                unit.lock_ahead(getattr(txn, "lock_lists", ()), getattr(txn, "lock_shared", ()))
            return unit

        return await txn.enlist(pool.key, open_unit)

    def _enlisted(self, txn) -> Unit | None:
        enlisted = getattr(txn, "enlisted", None)
        return enlisted(self.pool.key) if enlisted is not None else None

    async def _write(self, txn, sql: str, params=None):
        unit = await self.unit(txn)
        return await unit.execute(sql, params)

    async def _defer(self, txn, sql: str, params=None) -> None:
        """A write whose outcome nothing waits for: it travels with the next statement."""
        unit = await self.unit(txn)
        unit.defer(sql, params)

    def _closing(self, txn) -> bool:
        """
        Whether the coming write may carry the commit: the request said it
        is its transaction's last (C{txn.last_write}) and nothing else is
        enlisted. Answers yes once.
        """
        if getattr(txn, "last_write", False) and txn.only(self.pool.key):
            txn.last_write = False
            return True
        return False

    async def _last(self, txn, sql: str, params=None, rows: bool = True, prepare: bool = False,
                    closing: bool | None = None, lock: str = ""):
        """A write that commits with it when L{_closing} (L{Unit.finish}), runs as usual otherwise."""
        unit = await self.unit(txn)
        if closing is None:
            closing = self._closing(txn)
        if closing:
            return await unit.finish(sql, params, rows, prepare, lock)
        return await unit.execute(sql, params, prepare, lock)

    async def _read(self, txn, sql: str, params=None):
        """
        Reads go through the request's connection once it has written (to
        see its own writes), straight to the pool otherwise (autocommit, no
        BEGIN/COMMIT round trips).
        """
        enlisted = getattr(txn, "enlisted", None)
        unit = enlisted(self.pool.key) if enlisted is not None else None
        locks = getattr(txn, "lock_lists", ()) if self.takes_list_locks else ()
        shared = getattr(txn, "lock_shared", ()) if self.takes_list_locks else ()
        if unit is None and (enlisted is None or locks or shared or getattr(txn, "snapshot", False)):
            # (A snapshot: its reads share one REPEATABLE READ transaction.)
            unit = await self.unit(txn)
        elif (locks or shared) and unit is not None and not (
            unit.lists.issuperset(locks) and (unit.lists | unit.shared).issuperset(shared)
        ):
            await unit.require(locks, shared)  # asked for after the transaction began
        prepare = ";" not in sql
        if unit is not None:
            return await unit.execute(sql, params, prepare)
        return await self.pool.run(sql, params, prepare)

    async def close(self) -> None:
        """Close the connections (when this provider opened them)."""
        if self._owns_pool:
            self.pool.close()

    async def heartbeat(self, timeout: float = 2.0) -> bool:
        result: Deferred = Deferred()

        async def ping():
            try:
                rows, _ = await self.pool.run("SELECT 1")
                return rows == [(1,)]
            except Exception:
                return False

        def settle(value):
            if not result.called:
                result.callback(value)

        # Rather than cancelling the query (psycopg2's cancel() blocks, and
        # an unreachable host would block the reactor), stop waiting for it.
        timer = self.pool.reactor.callLater(timeout, settle, False)
        ping_d = Deferred.fromCoroutine(ping())
        ping_d.addCallback(settle)
        answer = await result
        if timer.active():
            timer.cancel()
        return answer


