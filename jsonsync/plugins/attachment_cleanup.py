"""
Removal of the attachment files that no record points to: what a crash
between storing a file and committing its record leaves, or a request that
failed after its file was stored. Run by the operator as
C{jsonsync attachments-cleanup} (see docs/attachments.md).

A file is removed only when it is older than a grace period, so that an
upload whose record is not committed yet keeps its file: the cut-off time is
taken before the records are read, so a file stored after the records were
read is always younger than it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from twisted.internet.threads import deferToThread

from jsonsync.plugins.attachment import PARTIAL, _location
from jsonsync.query import Filter, Op, Query, Sort

# Records read per query, to keep memory flat on a large collection.
PAGE = 1000
DEFAULT_GRACE = 3600


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    kept: int = 0
    young: int = 0
    # Leftovers of saves that never finished (.part), removed past the grace.
    partial: list[str] = field(default_factory=list)

    def summary(self, dry_run: bool) -> str:
        verb = "would remove" if dry_run else "removed"
        return (
            f"{verb} {len(self.removed)} unreferenced file(s) and {len(self.partial)} unfinished save(s); "
            f"kept {self.kept} referenced and {self.young} within the grace period"
        )


async def referenced(storage, bid: str, cid: str) -> set[str]:
    """The file names the live records of one collection point to."""
    parent = f"/buckets/{bid}/collections/{cid}"
    found: set[str] = set()
    last = None
    txn = storage.transaction()
    try:
        while True:
            filters: list[Filter] = [Filter("id", last, Op.GT)] if last is not None else []
            page = await storage.list(txn, "record", parent, Query(filters=filters, sorting=(Sort("id", 1),), limit=PAGE))
            for obj in page:
                location = _location(obj.get("attachment"))
                if location is not None:
                    found.add(location)
            if len(page) < PAGE:
                break
            last = page[-1]["id"]
    finally:
        await txn.rollback()
    return found


async def cleanup(storage, store, grace: float = DEFAULT_GRACE, dry_run: bool = False,
                  now: float | None = None) -> CleanupReport:
    """
    Remove (or, with C{dry_run}, list) the files of C{store} (its
    C{stored()} listing) that no live record of C{storage} points to and
    that are older than C{grace} seconds, and the leftovers of saves that
    never finished (C{discard}, on stores that leave such files). Only
    names the plugin makes are ever touched. The store's calls block (disk,
    network): they run in threads.
    """
    cutoff = (time.time() if now is None else now) - grace
    report = CleanupReport()
    by_collection: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for name, stored_at in await deferToThread(lambda: list(store.stored())):
        bid, cid, _ = name.split("/", 2)
        by_collection.setdefault((bid, cid), []).append((name, stored_at))
    for (bid, cid), entries in sorted(by_collection.items()):
        # The cut-off is before this read: a file stored since is younger.
        complete = [e for e in entries if _unfinished(e[0]) is None]
        pointed = await referenced(storage, bid, cid) if complete else set()
        for name, stored_at in sorted(entries):
            if _unfinished(name) is not None:
                if stored_at < cutoff:
                    report.partial.append(name)
                    if not dry_run:
                        await deferToThread(store.discard, name)
            elif name in pointed:
                report.kept += 1
            elif stored_at >= cutoff:
                report.young += 1
            else:
                report.removed.append(name)
                if not dry_run:
                    await deferToThread(store.delete, name)
    tidy = getattr(store, "tidy", None)
    if tidy is not None and not dry_run:
        await deferToThread(tidy)
    return report


def _unfinished(name: str) -> str | None:
    """The name a C{.part} file was to be renamed to, or C{None} for another file."""
    found = PARTIAL.match(name.rpartition("/")[2])
    return found.group(1) if found else None
