"""
The C{flush} plugin: C{POST /__flush__} empties storage and permissions.
For test servers only: anyone may call it, so never include it in production.
"""

from __future__ import annotations

from zope.interface import implementer

from jsonsync.http import ApiResponse
from jsonsync.interfaces import IJsonSyncPlugin
from jsonsync.registry import Route


@implementer(IJsonSyncPlugin)
class FlushPlugin:
    name = "flush"
    settings: dict = {}

    def install(self, registry, settings):
        async def flush(req):
            await registry.storage.flush()
            await registry.permissions.flush()
            return ApiResponse({}, 202)

        registry.add_route(Route("/__flush__", ("POST",), flush, "flush", summary="Empty the server (tests only)"))
        registry.add_capability(
            "flush_endpoint",
            "The __flush__ endpoint can be used to remove all data from all backends.",
            "https://kinto.readthedocs.io/en/latest/api/1.x/flush.html",
        )
