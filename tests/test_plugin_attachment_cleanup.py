"""
The attachment files no record points to (issue 14): the sweep
(L{jsonsync.plugins.attachment_cleanup}) against a served app's storage,
and the operator's C{jsonsync attachments-cleanup} command against the same
PostgreSQL database.
"""

from __future__ import annotations

import os
import time
import uuid

from jsonsync import testclient
from jsonsync.plugins import attachment_cleanup
from jsonsync.plugins.attachment import LocalFileStore
from jsonsync.testclient import with_postgresql_variants
from tests.test_operators_cli import JSONSYNC, run
from tests.test_plugin_attachment import REC, _Served

OLD = time.time() - 7200


class CleanupTests(_Served):
    def plant(self, relative: str, content=b"orphan", mtime=OLD) -> str:
        path = os.path.join(self.base_path, *relative.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
        os.utime(path, (mtime, mtime))
        return relative

    async def scenario(self):
        """Referenced files, orphans old and young, foreign files: what the sweep must tell apart."""
        _, kept, _ = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"kept")])
        # A referenced file as old as any orphan is still kept.
        path = os.path.join(self.base_path, kept["location"])
        os.utime(path, (OLD, OLD))
        orphans = [self.plant(f"b/c/{uuid.uuid4().hex}.txt"), self.plant(f"b/c/{uuid.uuid4().hex}")]
        # The files of a collection that no longer exists.
        orphans.append(self.plant(f"b/gone/{uuid.uuid4().hex}.bin"))
        young = self.plant(f"b/c/{uuid.uuid4().hex}.txt", mtime=time.time())
        stale_part = self.plant(f"b/c/{uuid.uuid4().hex}.txt.{uuid.uuid4().hex}.part")
        fresh_part = self.plant(f"b/c/{uuid.uuid4().hex}.txt.{uuid.uuid4().hex}.part", mtime=time.time())
        foreign = [self.plant("b/c/README"), self.plant("b/c/../notes.txt"), self.plant("lost+found/x/y.txt"),
                   self.plant("b/c/mine.part")]
        return kept, sorted(orphans), young, stale_part, fresh_part, foreign

    async def test_sweep_removes_old_unreferenced_files_only(self):
        kept, orphans, young, stale_part, fresh_part, foreign = await self.scenario()
        before = self.stored()
        report = await attachment_cleanup.cleanup(self.app.registry.storage, LocalFileStore(self.base_path), 600, dry_run=True)
        self.assertEqual(sorted(report.removed), orphans)
        self.assertEqual(report.partial, [stale_part])
        self.assertEqual((report.kept, report.young), (1, 1))
        self.assertEqual(self.stored(), before)  # a dry run removes nothing

        report = await attachment_cleanup.cleanup(self.app.registry.storage, LocalFileStore(self.base_path), 600)
        self.assertEqual(sorted(report.removed), orphans)
        self.assertIn("removed 3 unreferenced file(s) and 1 unfinished save(s)", report.summary(False))
        left = self.stored()
        self.assertEqual(
            sorted(left), sorted([kept["location"], young, fresh_part, *foreign[:1], "b/notes.txt", *foreign[2:]])
        )
        self.assertFalse(os.path.exists(os.path.join(self.base_path, "b", "gone")))
        # The record's file is still served, and the server still works.
        code, att, _ = await self.upload("r2", [("attachment", "b.txt", "text/plain", b"new")])
        self.assertEqual(code, 201, att)
        _, record, _ = await self.call("GET", f"{REC}/r1")
        self.assertEqual(record["data"]["attachment"], kept)

    async def test_a_zero_grace_still_spares_what_records_point_to(self):
        atts = []
        for i in range(5):
            _, att, _ = await self.upload(f"r{i}", [("attachment", "a.txt", "text/plain", b"x%d" % i)])
            atts.append(att["location"])
        orphan = self.plant(f"b/c/{uuid.uuid4().hex}.txt")
        # Pages of two records: every page of the collection is read.
        self.patch(attachment_cleanup, "PAGE", 2)
        report = await attachment_cleanup.cleanup(self.app.registry.storage, LocalFileStore(self.base_path), 0)
        self.assertEqual(report.removed, [orphan])
        self.assertEqual(report.kept, 5)
        self.assertEqual(sorted(self.stored()), sorted(atts))

    async def test_a_deleted_record_or_a_null_attachment_points_to_nothing(self):
        _, att, _ = await self.upload("r1", [("attachment", "a.txt", "text/plain", b"x")])
        # Leave the file behind, as a crash after the commit would, by
        # removing the record without the plugin's listener.
        self.app.registry.listeners[:] = [
            listener for listener in self.app.registry.listeners if type(listener).__name__ != "FileJanitor"
        ]
        await self.call("DELETE", f"{REC}/r1")
        path = os.path.join(self.base_path, att["location"])
        os.utime(path, (OLD, OLD))
        self.assertEqual(self.stored(), [att["location"]])
        report = await attachment_cleanup.cleanup(self.app.registry.storage, LocalFileStore(self.base_path), 60)
        self.assertEqual(report.removed, [att["location"]])
        self.assertEqual(self.stored(), [])

    async def test_the_command(self):
        kept, orphans, young, stale_part, fresh_part, foreign = await self.scenario()
        common = [
            JSONSYNC, "-s", "includes=attachment", "-s", f"attachment.base_path={self.base_path}",
            "-s", "attachment.base_url=https://files.example.org/",
        ]
        if self.app.settings["storage_backend"] == "memory":
            status, out = await run(common + ["attachments-cleanup"])
            self.assertEqual(status, 1, out)
            self.assertIn("memory backend", out)
            self.assertIn(orphans[0], self.stored())
            return
        backend = ["-s", "storage_backend=postgresql", "-s", "permission_backend=postgresql",
                   "-s", f"storage_url={testclient.TEST_POSTGRESQL_URL}"]
        status, out = await run(common + backend + ["attachments-cleanup", "--dry-run", "--grace", "600"])
        self.assertEqual(status, 0, out)
        for name in orphans:
            self.assertIn(f"would remove {name}", out)
        self.assertIn(orphans[0], self.stored())
        status, out = await run(common + backend + ["attachments-cleanup", "--grace", "600"])
        self.assertEqual(status, 0, out)
        self.assertIn("removed 3 unreferenced file(s) and 1 unfinished save(s); kept 1 referenced and 1 within", out)
        left = self.stored()
        self.assertIn(kept["location"], left)
        self.assertIn(young, left)
        for name in orphans + [stale_part]:
            self.assertNotIn(name, left)
        status, out = await run(common + backend + ["attachments-cleanup", "--grace", "-1"])
        self.assertEqual(status, 1, out)
        status, out = await run([JSONSYNC, "attachments-cleanup"])
        self.assertEqual(status, 1, out)
        self.assertIn("not in includes", out)


with_postgresql_variants(globals())
