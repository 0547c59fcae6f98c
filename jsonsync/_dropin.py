"""
Light providers for the Twisted dropin: each names the module that does
the work and imports it only when the provider is activated, so listing
plugins (C{twist --help}, discovery) stays cheap.
"""

from __future__ import annotations

import importlib

from twisted.plugin import IPlugin
from zope.interface import implementer

from jsonsync.interfaces import IAuthenticationPolicyFactory, IJsonSyncPlugin, IStorageBackend


class _Lazy:
    def __init__(self, name: str, target: str):
        self.name = name
        self._target = target
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            module, _, attr = self._target.partition(":")
            self._loaded = getattr(importlib.import_module(module), attr)()
        return self._loaded

    @property
    def settings(self):
        return getattr(self._load(), "settings", {})

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} -> {self._target}>"


@implementer(IPlugin, IStorageBackend)
class LazyBackend(_Lazy):
    def open_storage(self, settings, reactor):
        return self._load().open_storage(settings, reactor)

    def open_permissions(self, settings, reactor, storage):
        return self._load().open_permissions(settings, reactor, storage)


@implementer(IPlugin, IAuthenticationPolicyFactory)
class LazyPolicy(_Lazy):
    def build(self, settings, registry):
        return self._load().build(settings, registry)


@implementer(IPlugin, IJsonSyncPlugin)
class LazyPlugin(_Lazy):
    def install(self, registry, settings):
        return self._load().install(registry, settings)
