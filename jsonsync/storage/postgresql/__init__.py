"""
The PostgreSQL storage and permission backends (txpostgres on psycopg2).

Modules, from the wire up:
  - L{statements}: statement text, placeholders, the prepared form;
  - L{driver}: the self-healing connection, L{driver.execute} (every
    statement goes through it), driver errors as domain errors;
  - L{schema}: the versioned SQL files of C{schema/}, applied under a lock;
    URL checks;
  - L{pool}: the connection pool;
  - L{statistics}: planner statistics kept fresh as the tables grow;
  - L{unit}: the unit of work (one connection, one SQL transaction per
    request) and the list locks;
  - L{select}: L{jsonsync.query.Query} as SQL;
  - L{group}: the one-statement write and group commit;
  - L{base}, L{storage}, L{permissions}: the providers;
  - L{backend}: L{PostgresBackend}, L{migrate} and the command line.
"""

from jsonsync.storage.postgresql.backend import PostgresBackend, main, migrate
from jsonsync.storage.postgresql.permissions import PostgresPermissions
from jsonsync.storage.postgresql.schema import check_url, redact
from jsonsync.storage.postgresql.storage import PostgresStorage

__all__ = [
    "PostgresBackend",
    "PostgresPermissions",
    "PostgresStorage",
    "check_url",
    "main",
    "migrate",
    "redact",
]
