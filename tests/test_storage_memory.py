"""The storage contract, bound to the memory backend."""

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from jsonsync.storage.memory import MemoryBackend
from jsonsync.testing import StorageContract


class MemoryStorageTests(StorageContract, TestCase):
    async def make_backend(self):
        backend = MemoryBackend()
        storage = await backend.open_storage({}, reactor)
        return storage, await backend.open_permissions({}, reactor, storage)
