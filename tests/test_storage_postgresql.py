"""
The storage contract, bound to the PostgreSQL backend on a real server.

The server, and when the tests are skipped: L{tests.pg}.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from jsonsync.testing import StorageContract
from tests.pg import SKIP, open_backend


class PostgresStorageTests(StorageContract, TestCase):
    skip = SKIP

    async def make_backend(self):
        return await open_backend(self)
