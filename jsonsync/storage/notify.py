"""
Change notices within one process (L{jsonsync.interfaces.IChangeNotifier}):
what the memory backend offers, and what the PostgreSQL notifier hands its
notices to once they arrive.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from jsonsync.interfaces import IChangeNotifier

_log = Logger()


@implementer(IChangeNotifier)
class LocalNotifier:
    """Notices for the subscribers of this process only."""

    def __init__(self):
        self._callbacks: list[Callable] = []

    @property
    def active(self) -> bool:
        return bool(self._callbacks)

    def publish(self, resource_name, parent_id, timestamp):
        self.dispatch(resource_name, parent_id, timestamp)

    def dispatch(self, resource_name, parent_id, timestamp):
        for callback in list(self._callbacks):
            try:
                callback(resource_name, parent_id, timestamp)
            except Exception:
                _log.failure("change notice subscriber failed")

    def subscribe(self, callback):
        self._callbacks.append(callback)

        def unsubscribe():
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def close(self):
        self._callbacks = []
