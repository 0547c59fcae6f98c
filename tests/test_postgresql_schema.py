"""
Schema management of the PostgreSQL backend: idempotent, safe when several
processes migrate at once, upgrades an older schema in place, and runs from
the command line. Each test works in a PostgreSQL schema of its own (through
C{search_path}), so the tables of other tests are left alone.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from jsonsync.errors import BackendUnavailable
from jsonsync.query import Query
from jsonsync.storage.postgresql import migrate
from jsonsync.storage.postgresql.schema import schema_scripts
from tests.pg import SKIP, URL, open_backend, scratch_schema, with_port


class SchemaTests(TestCase):
    skip = SKIP

    async def setUp(self):
        scratch = await scratch_schema(self)
        self.schema, self.url, self.admin = scratch.schema, scratch.url, scratch.admin

    async def tables(self) -> set[str]:
        rows = await self.admin.runQuery(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (self.schema,),
        )
        return {r[0] for r in rows}

    async def versions(self) -> list[int]:
        rows = await self.admin.runQuery(
            f"SELECT version FROM {self.schema}.jsonsync_migrations ORDER BY version"
        )
        return [r[0] for r in rows]

    async def test_migrate_is_idempotent(self):
        latest = schema_scripts()[-1][0]
        self.assertEqual(await migrate(self.url, reactor), latest)
        self.assertEqual(await migrate(self.url, reactor), latest)
        self.assertEqual(
            await self.tables(),
            {
                "jsonsync_migrations",
                "objects",
                "timestamps",
                "access_control_entries",
                "user_principals",
                "jsonsync_outbox",
                "jsonsync_outbox_attempts",
                "sync_horizons",
                "jsonsync_webhook_events",
                "jsonsync_webhook_cursors",
            },
        )
        self.assertEqual(await self.versions(), [v for v, _, _ in schema_scripts()])

    async def test_concurrent_migrations_apply_each_script_once(self):
        results = await gatherResults(
            [Deferred.fromCoroutine(migrate(self.url, reactor)) for _ in range(4)]
        )
        latest = schema_scripts()[-1][0]
        self.assertEqual(results, [latest] * 4)
        self.assertEqual(await self.versions(), [v for v, _, _ in schema_scripts()])

    async def test_backends_opening_together(self):
        """Several servers starting at once on an empty database."""
        opened = await gatherResults(
            [Deferred.fromCoroutine(open_backend(self, self.url)) for _ in range(3)]
        )
        for storage, _ in opened:
            self.assertTrue(storage.pool.schema_ready)
            txn = storage.transaction()
            self.assertEqual(await storage.count(txn, "record", "/x", Query()), 0)
            await txn.rollback()

    async def test_older_schema_is_upgraded_in_place(self):
        scripts = schema_scripts() + [
            (
                9001,
                "9001_test_upgrade.sql",
                "ALTER TABLE objects ADD COLUMN upgraded BOOLEAN NOT NULL DEFAULT TRUE;",
            )
        ]
        first = scripts[-2][0]
        self.assertEqual(await migrate(self.url, reactor, scripts=scripts, target=first), first)
        await self.admin.runOperation(
            f"INSERT INTO {self.schema}.objects"
            " (resource_name, parent_id, id, last_modified, data)"
            " VALUES ('record', '/p', 'kept', 1, '{\"id\": \"kept\"}')"
        )
        self.assertEqual(await migrate(self.url, reactor, scripts=scripts), 9001)
        rows = await self.admin.runQuery(f"SELECT id, upgraded FROM {self.schema}.objects")
        self.assertEqual(rows, [("kept", True)])
        self.assertEqual(await self.versions(), [v for v, _, _ in scripts])

    async def fanout_trigger(self) -> str | None:
        rows = await self.admin.runQuery(
            "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = 'objects' AND t.tgname = 'jsonsync_webhook_fanout'",
            (self.schema,),
        )
        return rows[0][0] if rows else None

    async def test_version_8_replaces_the_fanout_trigger_in_place(self):
        # A database of version 7 whose webhooks plugin made the fan-out
        # trigger (without version 8's condition, as the plugin then did):
        # the migration replaces it in place, so that writes made meanwhile by
        # processes without the plugin still have their events.
        scripts = schema_scripts()
        self.assertEqual(await migrate(self.url, reactor, scripts=scripts, target=7), 7)
        self.assertIsNone(await self.fanout_trigger())
        await self.admin.runOperation(
            f"CREATE TRIGGER jsonsync_webhook_fanout AFTER INSERT OR UPDATE ON {self.schema}.objects FOR EACH ROW"
            " WHEN (NEW.resource_name IN ('record', 'collection', 'group'))"
            f" EXECUTE FUNCTION {self.schema}.jsonsync_webhook_fanout()"
        )
        self.assertNotIn("jsonsync.events", await self.fanout_trigger())
        await migrate(self.url, reactor, scripts=scripts)
        self.assertIn("current_setting('jsonsync.events'", await self.fanout_trigger())
        # Without the trigger (webhooks never used), the migration makes none.
        other = await scratch_schema(self)
        await migrate(other.url, reactor)
        rows = await other.admin.runQuery(
            "SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal",
            (other.schema,),
        )
        self.assertEqual(rows, [(0,)])

    async def test_the_plugin_start_brings_an_old_fanout_trigger_up_to_date(self):
        # An older process started first on a new database and made the
        # trigger without the condition: the next fan_out() replaces it.
        storage, _ = await open_backend(self, self.url)
        await self.admin.runOperation(
            f"CREATE TRIGGER jsonsync_webhook_fanout AFTER INSERT OR UPDATE ON {self.schema}.objects FOR EACH ROW"
            " WHEN (NEW.resource_name IN ('record', 'collection', 'group'))"
            f" EXECUTE FUNCTION {self.schema}.jsonsync_webhook_fanout()"
        )
        await storage.outbox.fan_out()
        self.assertIn("current_setting('jsonsync.events'", await self.fanout_trigger())
        await storage.outbox.fan_out()  # and again: nothing to do
        self.assertIn("current_setting('jsonsync.events'", await self.fanout_trigger())

    async def test_a_skipped_earlier_script_is_applied(self):
        # A database that got a later script first (two lines of work, each
        # with its own script, merged): the earlier one is applied next time.
        # (0005 is skipped: the scripts after it do not build on it.)
        scripts = schema_scripts()
        skipped = next(s for s in scripts if s[1].startswith("0005_"))
        others = [s for s in scripts if s is not skipped]
        self.assertEqual(await migrate(self.url, reactor, scripts=others), scripts[-1][0])
        self.assertNotIn(skipped[0], await self.versions())
        self.assertNotIn("sync_horizons", await self.tables())
        self.assertEqual(await migrate(self.url, reactor, scripts=scripts), scripts[-1][0])
        self.assertEqual(await self.versions(), [v for v, _, _ in scripts])
        self.assertIn("sync_horizons", await self.tables())  # 0005's table

    async def test_migrate_unreachable_database(self):
        with self.assertRaises(BackendUnavailable):
            await migrate(with_port(URL, 1), reactor)

    async def test_command_line(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "jsonsync.storage.postgresql", "migrate", "--url", self.url],
            env=env,
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"schema at version", out)
        self.assertIn("objects", await self.tables())
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "jsonsync.storage.postgresql", "migrate", "--url", with_port(URL, 1)],
            env=env,
        )
        self.assertEqual(code, 1)
        self.assertIn(b"unreachable", err)
