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

import os
import re
import time
from dataclasses import dataclass, field

from jsonsync.plugins.attachment import STORED_NAME, _location
from jsonsync.query import Filter, Op, Query, Sort

# What LocalFileStore.save writes before renaming it: <name>.<uuid hex>.part
_PARTIAL = re.compile(r"^(.+)\.[0-9a-f]{32}\.part$")
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


def _collections(base_path: str):
    """The C{(bucket, collection, directory)} under base_path that hold files."""
    try:
        buckets = sorted(os.listdir(base_path))
    except FileNotFoundError:
        return
    for bid in buckets:
        bdir = os.path.join(base_path, bid)
        if not os.path.isdir(bdir) or os.path.islink(bdir):
            continue
        for cid in sorted(os.listdir(bdir)):
            cdir = os.path.join(bdir, cid)
            if os.path.isdir(cdir) and not os.path.islink(cdir):
                yield bid, cid, cdir


async def referenced(storage, bid: str, cid: str) -> set[str]:
    """The file names the live records of one collection point to."""
    parent = f"/buckets/{bid}/collections/{cid}"
    found: set[str] = set()
    last = None
    txn = storage.transaction()
    try:
        while True:
            filters = [Filter("id", last, Op.GT)] if last is not None else []
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


async def cleanup(storage, base_path: str, grace: float = DEFAULT_GRACE, dry_run: bool = False,
                  now: float | None = None, remove=os.unlink) -> CleanupReport:
    """
    Remove (or, with C{dry_run}, list) the files under C{base_path} that no
    live record of C{storage} points to and that are older than C{grace}
    seconds. Only names the plugin makes are ever touched. The directory
    walk blocks: an operator command runs this, not the server.
    """
    cutoff = (time.time() if now is None else now) - grace
    report = CleanupReport()
    base_path = os.path.abspath(base_path)
    for bid, cid, cdir in list(_collections(base_path)):
        names = [n for n in sorted(os.listdir(cdir)) if STORED_NAME.match(f"{bid}/{cid}/{_unfinished(n) or n}")]
        if not names:
            continue
        # The cut-off is before this read: a file stored since is younger.
        pointed = await referenced(storage, bid, cid) if any(not _unfinished(n) for n in names) else set()
        for name in names:
            path = os.path.join(cdir, name)
            relative = f"{bid}/{cid}/{name}"
            partial = _unfinished(name) is not None
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            if partial:
                if st.st_mtime < cutoff:
                    report.partial.append(relative)
                    if not dry_run:
                        _remove(remove, path)
                continue
            if relative in pointed:
                report.kept += 1
            elif st.st_mtime >= cutoff:
                report.young += 1
            else:
                report.removed.append(relative)
                if not dry_run:
                    _remove(remove, path)
        if not dry_run:
            for directory in (cdir, os.path.dirname(cdir)):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass  # not empty
    return report


def _unfinished(name: str) -> str | None:
    """The name a C{.part} file was to be renamed to, or C{None} for another file."""
    found = _PARTIAL.match(name)
    return found.group(1) if found else None


def _remove(remove, path):
    try:
        remove(path)
    except FileNotFoundError:
        pass
