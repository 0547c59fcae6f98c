"""
The unit of work: one pooled connection and one SQL transaction, enlisted
in a request's L{ITransaction}, sending as few round trips as it can; and
the advisory locks of lists (their keys, their canonical order).

The sync cursor: every write to a list takes C{pg_advisory_xact_lock} on a
hash of the list key before it reads the list timestamp, and holds it until
its transaction ends. Writers of one list are thus serialised in commit
order, so a reader following C{last_modified > x} can never see a later
timestamp committed before an earlier one.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from jsonsync.errors import BackendUnavailable, JsonSyncError, WriteConflict
from jsonsync.storage.postgresql import driver

if TYPE_CHECKING:  # pragma: no cover
    from jsonsync.storage.postgresql.driver import PooledConnection
    from jsonsync.storage.postgresql.pool import Pool


def list_lock_key(resource_name: str, parent_id: str) -> int:
    """
    The advisory lock key of one list: a stable 64-bit hash (the same in
    every process, unlike Python's C{hash}). A collision only makes two
    lists share a lock.
    """
    digest = hashlib.blake2b(
        f"{resource_name}\x00{parent_id}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def subtree_key(resource_name: str, parent_id: str, object_id: str) -> tuple[str, str]:
    """
    The lock of everything below one object, as a pseudo list key (no
    resource is named with a NUL): its deletion takes it exclusively, every
    write beneath it takes it shared (L{IStorage.create}'s C{within}).
    """
    return ("\x00", f"{resource_name}\x00{parent_id}\x00{object_id}")


def lock_sql(wanted) -> str:
    """Statements taking C{(key, shared)} locks, in the canonical order, for a transaction holding none."""
    out = []
    for key, shared in sorted(wanted, key=lambda w: list_lock_key(*w[0])):
        out.append(f"SELECT pg_advisory_xact_lock{'_shared' if shared else ''}({list_lock_key(*key)}::bigint); ")
    return "".join(out)



class Unit:
    """
    One connection and one SQL transaction, enlisted in a request's
    L{ITransaction}. Round trips are what a request waits for, and what a
    list's writers wait for while one of them holds its lock, so:
      - C{BEGIN} travels with the first statement;
      - writes whose outcome nobody waits for (L{defer}) travel with the
        next statement, or with the commit;
      - the transaction's last write may carry the commit (L{finish}): sent
        before anything began, the statements form one implicit transaction
        (PostgreSQL runs a multi-statement query that way), so a list lock
        taken there is held for that one round trip only.
    """

    def __init__(self, pool: Pool, conn: PooledConnection, snapshot: bool = False):
        self.pool = pool
        self.conn = conn
        # Every statement sees the state of the first (ITransaction.snapshot).
        self._begin = "BEGIN ISOLATION LEVEL REPEATABLE READ; " if snapshot else "BEGIN; "
        self.generation = conn.detector.generation
        self._begun = False
        self._done = False
        self._pending: list[str] = []
        # The lists whose lock this transaction holds (until it ends), those
        # it holds in shared mode (L{PostgresStorage.guard}), and the
        # statements taking those asked for up front, not yet sent.
        self.lists: set[tuple[str, str]] = set()
        self.shared: set[tuple[str, str]] = set()
        self._ahead = ""

    @property
    def begun(self) -> bool:
        return self._begun

    async def lock_statement(self, key: tuple[str, str], shared: bool = False) -> str:
        """
        The statement that takes list C{key}'s lock (C{shared}: in shared
        mode), to send ahead of the statement that needs it (C{""} when this
        transaction holds it already, or has just taken it).

        One canonical order makes deadlocks between list locks impossible:
        a transaction only ever I{waits} for a lock whose key is greater
        than every key it holds. A lock out of that order (a batch writing
        list B after list A, where B's key is smaller), or the upgrade of a
        shared lock it holds, is only tried: when another transaction holds
        it, waiting could close a cycle, so this raises L{WriteConflict}
        naming every list involved, and the request runs again with all of
        them locked up front, in order.
        """
        if key in self.lists or (shared and key in self.shared):
            return ""
        mode = "_shared" if shared else ""
        lock = list_lock_key(*key)
        held = [list_lock_key(*k) for k in self.lists | self.shared]
        out_of_order = bool(held) and (lock < max(held) or key in self.shared)
        if out_of_order:
            rows, _ = await self.execute(f"SELECT pg_try_advisory_xact_lock{mode}(%s)", (lock,))
            if not rows[0][0]:
                raise WriteConflict(
                    self.lists | (set() if shared else {key}), shared=self.shared | ({key} if shared else set())
                )
        (self.shared if shared else self.lists).add(key)
        return "" if out_of_order else f"SELECT pg_advisory_xact_lock{mode}({lock}::bigint); "

    def defer(self, sql: str, params=None) -> None:
        """Queue a write to run, in this transaction, before the next statement."""
        if self._done:
            raise RuntimeError("transaction already finished")
        cursor = self.conn.cursor()
        rendered = cursor.mogrify(sql, params) if params is not None else sql.encode("utf-8")
        self._pending.append(rendered.decode("utf-8") + "; ")

    async def locks(self, wanted) -> str:
        """L{lock_statement} for several C{(key, shared)} locks, taken in the canonical order."""
        out = ""
        for key, shared in sorted(wanted, key=lambda w: list_lock_key(*w[0])):
            out += await self.lock_statement(key, shared)
        return out

    def lock_ahead(self, keys, shared=()) -> None:
        """Take the locks of lists C{keys} (and C{shared}, in shared mode) first thing, in the canonical order."""
        wanted = [(k, False) for k in keys] + [(k, True) for k in shared if k not in keys]
        wanted = [(k, m) for k, m in wanted if k not in self.lists and not (m and k in self.shared)]
        for key, mode in wanted:
            (self.shared if mode else self.lists).add(key)
        self._ahead += lock_sql(wanted)

    async def require(self, keys, shared=()) -> None:
        """Lock lists C{keys} (C{shared} in shared mode) too, ahead of the next statement (in order)."""
        self._ahead += await self.locks([(k, False) for k in keys] + [(k, True) for k in shared])

    def take_pending(self, lock: str = "") -> str:
        """
        What goes ahead of the next statement (locks, then deferred writes),
        handed over to the caller, who sends it.
        """
        prefix = self._ahead + lock + "".join(self._pending)
        self._pending = []
        self._ahead = ""
        return prefix

    async def execute(self, sql: str, params=None, prepare=False, lock: str = ""):
        """
        Run C{sql} in the transaction (opening it on the first call).
        C{lock}: a rendered lock statement (L{lock_statement}) to run first,
        ahead of the deferred writes, so that those (an object's ACL) are
        written under its list's lock too.
        """
        if self._done:
            raise RuntimeError("transaction already finished")
        prefix = self.take_pending(lock)
        if self._begun:
            return await driver.execute(self.conn, sql, params, self.generation, prepare, prefix)
        self._begun = True
        prefix = self._begin + prefix
        # When this first statement finds its connection dead (the server
        # restarted while it sat idle in the pool), nothing can have been
        # committed inside the BEGIN it carried: start over on another
        # connection. Each retry follows a death, so they are bounded by
        # the pool size.
        for _ in range(len(self.pool.connections)):
            try:
                return await driver.execute(self.conn, sql, params, self.generation, prepare, prefix)
            except BackendUnavailable:
                if self.conn.detector.generation == self.generation:
                    raise
            await self._swap()
        return await driver.execute(self.conn, sql, params, self.generation, prepare, prefix)

    async def live_connection(self) -> None:
        """
        Before anything was sent: trade a connection already known dead for
        a live one (a statement that commits is never sent twice, so it must
        not go out on a connection that cannot run it).
        """
        for _ in range(len(self.pool.connections)):
            if self.conn.usable() and self.conn.detector.generation == self.generation:
                break
            await self._swap()

    async def _swap(self) -> None:
        self.pool.release(self.conn)
        self.conn = await self.pool.checkout()
        self.generation = self.conn.detector.generation

    async def finish(self, sql: str, params=None, rows: bool = True, prepare: bool = False, lock: str = ""):
        """
        Run C{sql} as the transaction's last statement and commit with it;
        return its C{(rows, rowcount)}. One round trip when nothing began
        (or when C{rows} is false: C{COMMIT} then follows C{sql} in the
        same query), two otherwise.
        """
        if self._done:
            raise RuntimeError("transaction already finished")
        if self._begun and rows:
            result = await self.execute(sql, params, prepare, lock)
            await self.commit()
            return result
        if not self._begun:
            # Unlike a BEGIN, this can commit: never send it twice.
            await self.live_connection()
        explicit = self._begun
        prefix = self.take_pending(lock)
        self._begun = True
        if explicit:
            sql += "; COMMIT"  # (not a statement one can prepare)
            prepare = False
        try:
            result = await driver.execute(self.conn, sql, params, self.generation, prepare, prefix)
        except BaseException:
            # The server rolled an implicit transaction back; an explicit
            # one is left for rollback() to end.
            if not explicit:
                self._finish()
            raise
        self._finish()
        return result

    async def commit(self):
        if self._done:
            return
        try:
            prefix = self.take_pending()
            if self._begun:
                await driver.execute(self.conn, "COMMIT", None, self.generation, False, prefix)
            elif prefix:
                # Only deferred writes: one implicit transaction.
                await driver.execute(self.conn, "SELECT 1", None, self.generation, False, prefix)
        finally:
            self._finish()

    async def rollback(self):
        if self._done:
            return
        self._pending = []
        self._ahead = ""
        try:
            if self._begun and self.conn.detector.generation == self.generation:
                await driver.execute(self.conn, "ROLLBACK", None, self.generation)
        except JsonSyncError:
            # The connection is gone, and the server rolled back with it.
            pass
        finally:
            self._finish()

    def ended_elsewhere(self) -> None:
        """
        This transaction's statements were sent, with its commit, by someone
        else on this unit's connection (the group writer of its list): it
        is over, committed or rolled back by the server. Releases the
        connection.
        """
        self._begun = True
        self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self.pool.release(self.conn)

