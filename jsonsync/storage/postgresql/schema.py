"""
The schema: the versioned SQL files of C{schema/} (package data, read
through importlib.resources), applied in order under an advisory lock; and
the checking and redaction of database URLs.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import TYPE_CHECKING

import psycopg2.extensions
from twisted.logger import Logger

from jsonsync.storage.postgresql import driver

if TYPE_CHECKING:  # pragma: no cover
    from jsonsync.storage.postgresql.driver import PooledConnection

_log = Logger()

# pg_advisory_xact_lock(int, int) key of schema migrations; the two-integer
# key space never overlaps the bigint one used by the per-list locks.
SCHEMA_LOCK = (0x6A73, 0x7363)
SCHEMA_TABLE = "jsonsync_migrations"


def schema_scripts() -> list[tuple[int, str, str]]:
    """C{(version, name, sql)} of every file in C{schema/}, oldest first."""
    scripts = []
    folder = resources.files("jsonsync.storage.postgresql").joinpath("schema")
    for entry in folder.iterdir():
        match = re.match(r"^(\d+)_.*\.sql$", entry.name)
        if match:
            scripts.append((int(match.group(1)), entry.name, entry.read_text("utf-8")))
    scripts.sort()
    return scripts


async def apply_schema(conn: PooledConnection, scripts=None, target: int | None = None) -> int:
    """
    Bring the schema to the latest version (or C{target}) in one SQL
    transaction on C{conn}, under an advisory lock so that processes
    starting together apply each script once. Returns the version reached.
    """
    scripts = schema_scripts() if scripts is None else scripts
    try:
        rows, _ = await driver.execute(
            conn,
            "BEGIN;"
            " SELECT pg_advisory_xact_lock(%s, %s);"
            f" CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} ("
            "  version INTEGER PRIMARY KEY,"
            "  name TEXT NOT NULL,"
            "  applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
            f" SELECT version FROM {SCHEMA_TABLE}",
            SCHEMA_LOCK,
        )
        # Every script not yet recorded, in order: not only those above the
        # highest recorded one, so that a database that got a later script
        # first (two lines of work merged, each with its own script) still
        # gets the earlier one.
        applied = {row[0] for row in rows}
        for version, name, sql in scripts:
            if version in applied or (target is not None and version > target):
                continue
            _log.info("applying schema {name}", name=name)
            await driver.execute(conn, sql)
            await driver.execute(
                conn,
                f"INSERT INTO {SCHEMA_TABLE} (version, name) VALUES (%s, %s)",
                (version, name),
            )
            applied.add(version)
        await driver.execute(conn, "COMMIT")
        return max(applied, default=0)
    except BaseException:
        try:
            await driver.execute(conn, "ROLLBACK")
        except Exception:
            pass
        raise


def check_url(url: str) -> None:
    """
    @raise ValueError: C{url} is not a PostgreSQL URL libpq can parse (the
        message names it without its password).
    """
    if not isinstance(url, str) or not re.match(r"^postgres(ql)?://", url):
        raise ValueError(f"not a PostgreSQL URL (postgresql://user@host:port/db): {url!r}")
    try:
        psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as exc:
        raise ValueError(f"invalid PostgreSQL URL {redact(url)!r}: {exc}") from exc


def redact(url: str) -> str:
    """The URL without its password, for the logs."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
