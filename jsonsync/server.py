"""
Assembling a server: settings -> registry (backends, policies, plugins) ->
routes -> the Klein application.
"""

from __future__ import annotations

from jsonsync.app import JsonSyncApp
from jsonsync.registry import Discovered, Registry
from jsonsync.resources import core, views
from jsonsync.resources.engine import Engine


async def build(settings, reactor, discovered: Discovered) -> JsonSyncApp:
    """Open the backends, install the core and the plugins, return the app."""
    registry = Registry(settings, reactor, discovered)
    await registry.open_backends()
    registry.engine = Engine(registry)
    core.install(registry)
    holder: list[JsonSyncApp] = []
    views.install(registry, views.ServiceViews(registry, lambda: holder[0]))
    await registry.activate()
    app = JsonSyncApp(registry)
    registry.set_router(app.match)
    holder.append(app)
    return app
