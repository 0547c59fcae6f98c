"""
Discovery of providers (Twisted plugins), activation by name from the
configuration, and the registry through which activated plugins extend the
server (routes, listeners, capabilities, permission rules).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from twisted.plugin import getPlugins
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from jsonsync import config
from jsonsync.authorization import PermissionTree, SettingsACL
from jsonsync.interfaces import (
    IAuthenticationPolicy,
    IAuthenticationPolicyFactory,
    IJsonSyncPlugin,
    IPermissionStore,
    IRegistry,
    IResourceListener,
    IStorage,
    IStorageBackend,
)
from jsonsync.resources.model import Location, ResourceType
from jsonsync.routes import Route, resource_routes

if TYPE_CHECKING:
    from jsonsync.http import ApiRequest, ApiResponse
    from jsonsync.resources.engine import Engine

__all__ = ["Discovered", "Registry", "Route", "configure", "discover"]

KINDS = {
    "backend": IStorageBackend,
    "policy": IAuthenticationPolicyFactory,
    "plugin": IJsonSyncPlugin,
}


@dataclass
class Discovered:
    backends: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)
    plugins: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def discover(package=None) -> Discovered:
    """Every provider installed as a Twisted plugin, by kind and name."""
    if package is None:
        import twisted.plugins as package  # noqa: PLW0127
    found = Discovered()
    buckets = {"backend": found.backends, "policy": found.policies, "plugin": found.plugins}
    for kind, interface in KINDS.items():
        bucket = buckets[kind]
        for provider in getPlugins(interface, package):
            name = getattr(provider, "name", None)
            if not isinstance(name, str):
                found.problems.append(f"a {kind} provider {provider!r} has no name")
                continue
            if name in bucket and bucket[name] is not provider:
                found.problems.append(
                    f"two installed {kind}s are named {name!r}: {bucket[name]!r} and {provider!r}"
                )
                continue
            bucket[name] = provider
    found.problems = sorted(set(found.problems))
    return found


def _provider(provider):
    """The object behind a lazy dropin provider (loading its module), or the provider itself."""
    load = getattr(provider, "_load", None)
    return load() if load is not None else provider


def _installed(names) -> str:
    return ", ".join(sorted(names)) or "none"


def configure(
    ini_path: str | None,
    environ: Mapping[str, str],
    cli: Mapping[str, str],
    discovered: Discovered | None = None,
) -> tuple[config.Settings, Discovered]:
    """
    Load the settings from every source, checking plugin and backend names
    against what is installed; raise L{config.ConfigurationError} listing
    every problem.
    """
    discovered = discovered or discover()
    problems = list(discovered.problems)
    ini: dict[str, str] = {}
    if ini_path:
        ini = config.read_ini(ini_path)

    # First pass: which backends and plugins are asked for, so that their
    # own settings are known before the strict pass.
    base = config.SettingsSchema()
    wanted: dict[str, Any] = {}
    for name in ("storage_backend", "permission_backend", "includes", "multiauth.policies"):
        raw = cli.get(name, environ.get(config.env_name(name), ini.get(name)))
        wanted[name] = config._parse(base.known[name], raw) if raw is not None else base.known[name].default
        if name != "multiauth.policies":
            wanted[name] = config.kinto_alias(wanted[name])

    schema = config.SettingsSchema()
    for key in ("storage_backend", "permission_backend"):
        name = wanted[key]
        backend = discovered.backends.get(name)
        if backend is None:
            problems.append(
                f"unknown {key.replace('_', ' ')} {name!r} (installed: {_installed(discovered.backends)})"
            )
        else:
            schema.add(backend.settings, f"backend {name}")
    seen = set()
    for name in wanted["includes"]:
        if name in seen:
            problems.append(f"plugin {name!r} is listed twice in includes")
            continue
        seen.add(name)
        plugin = discovered.plugins.get(name)
        if plugin is None:
            problems.append(f"unknown plugin {name!r} in includes (installed: {_installed(discovered.plugins)})")
            continue
        try:
            verifyObject(IJsonSyncPlugin, plugin)
        except Invalid as e:
            problems.append(f"plugin {name!r} does not provide IJsonSyncPlugin: {e}")
            continue
        schema.add(plugin.settings, f"plugin {name}")
    for name in wanted["multiauth.policies"]:
        policy = discovered.policies.get(name)
        if policy is None:
            problems.append(
                f"unknown authentication policy {name!r} in multiauth.policies "
                f"(installed: {_installed(discovered.policies)})"
            )
            continue
        # A policy's own settings are accepted when it is listed.
        schema.add(getattr(policy, "settings", None) or {}, f"policy {name}")
    try:
        settings = config.load(schema, ini, environ, cli, source=ini_path)
    except config.ConfigurationError as e:
        # Reported with what was found before loading (one report for all).
        raise config.ConfigurationError([*problems, *e.problems]) from None
    if problems:
        raise config.ConfigurationError(problems)
    # Plugins that check their settings together (the accounts plugin and
    # its policy) are asked now, so that such a mistake stops the command
    # line instead of a server that has already begun to start.
    for name in settings["includes"]:
        check = getattr(_provider(discovered.plugins[name]), "check_settings", None)
        if check is not None:
            try:
                check(settings)
            except config.ConfigurationError as e:
                problems.extend(e.problems)
    if problems:
        raise config.ConfigurationError(problems)
    # Kinto's switch for record validation turns the schema plugin on.
    if settings["experimental_collection_schema_validation"] and "schema" not in settings["includes"]:
        if "schema" in discovered.plugins:
            settings = settings.replace(includes=[*settings["includes"], "schema"])
    return settings, discovered


@implementer(IRegistry)
class Registry:
    """
    Everything activated for one server. Plugins receive it in C{install}
    and extend the server only through it (L{IRegistry} is the contract;
    docs/writing-plugins.md shows it in use).
    """

    def __init__(self, settings: config.Settings, reactor, discovered: Discovered | None = None):
        self.settings = settings
        self.reactor = reactor
        self.discovered = discovered or Discovered()
        self.tree = PermissionTree()
        self.acl: SettingsACL = SettingsACL(self.tree, settings)
        # Set by open_backends, before any plugin is installed.
        self.storage: IStorage = cast(IStorage, None)
        self.permissions: IPermissionStore = cast(IPermissionStore, None)
        # Set by the server before the core types are declared.
        self.engine: Engine = cast("Engine", None)
        self.policies: list[IAuthenticationPolicy] = []
        self.listeners: list[IResourceListener] = []
        self.capabilities: dict[str, dict] = {}
        self.routes: list[Route] = []
        self.resource_types: dict[str, ResourceType] = {}
        self.public_settings: dict[str, Any] = {}
        self.hello_extensions: list[Callable] = []
        self.heartbeats: dict[str, Callable] = {}
        self.body_limits: list[tuple[re.Pattern[bytes], int]] = []
        self.request_observers: list[Callable] = []
        self.response_observers: list[Callable] = []
        self.plugins: list[IJsonSyncPlugin] = []
        self._match: Callable[[str, str], tuple[Route, Mapping[str, str]]] | None = None

    # -- extension points (IRegistry) ---------------------------------------------
    def add_route(self, route: Route) -> None:
        self.routes.append(route)

    def add_capability(self, name: str, description: str, url: str = "", **extra) -> None:
        self.capabilities[name] = {"description": description, "url": url, **extra}

    def add_listener(self, listener: IResourceListener) -> None:
        verifyObject(IResourceListener, listener)
        self.listeners.append(listener)

    def add_resource_type(
        self, resource_type: ResourceType, engine: Engine | None = None, plural: bool = True, single: bool = True
    ) -> list[Route]:
        if resource_type.name in self.resource_types:
            raise ValueError(f"resource type {resource_type.name!r} is already declared")
        if resource_type.parent is not None and resource_type.parent not in self.resource_types:
            raise ValueError(f"resource type {resource_type.name!r}: unknown parent {resource_type.parent!r}")
        self.resource_types[resource_type.name] = resource_type
        parent = self.resource_types[resource_type.parent] if resource_type.parent is not None else None
        self.tree.register(
            resource_type.name, resource_type.plural, resource_type.permissions, parent.plural if parent else ""
        )
        mounted = resource_routes(self, engine or self.engine, resource_type, plural=plural, single=single)
        for route in mounted:
            self.add_route(route)
        return mounted

    def add_policy(self, policy: IAuthenticationPolicy) -> None:
        verifyObject(IAuthenticationPolicy, policy)
        self.policies.append(policy)

    def add_heartbeat(self, name: str, check: Callable) -> None:
        self.heartbeats[name] = check

    def add_hello_extension(self, extend: Callable) -> None:
        self.hello_extensions.append(extend)

    def add_public_setting(self, name: str, value: Any) -> None:
        self.public_settings[name] = value

    def add_root_permission(self, permission: str) -> None:
        self.tree.add_root_permission(permission)

    def add_body_limit(self, pattern: re.Pattern[bytes], limit: int) -> None:
        self.body_limits.append((pattern, limit))

    def add_request_observer(self, observer: Callable) -> None:
        self.request_observers.append(observer)

    def add_response_observer(self, observer: Callable) -> None:
        self.response_observers.append(observer)

    def set_router(self, match: Callable[[str, str], tuple[Route, Mapping[str, str]]]) -> None:
        """The server's route matcher (set once every route is mounted), for L{dispatch}."""
        self._match = match

    async def dispatch(self, request: ApiRequest, path: str) -> ApiResponse:
        if self._match is None:
            raise RuntimeError("dispatch is available once the server is built")
        route, params = self._match(path, request.method)
        request.path = path
        request.params = params
        return await route.view(request)

    def route(self, name: str) -> Route | None:
        for route in self.routes:
            if route.name == name:
                return route
        return None

    def location(self, uri: str) -> Location | None:
        # (parent type, plural) -> type: two types may share a plural under different parents.
        by_plural = {(rt.parent, rt.plural): rt for rt in self.resource_types.values()}
        parts = uri.strip("/").split("/")
        if len(parts) % 2 or not parts[0]:
            return None
        ancestors: list[tuple[ResourceType, str]] = []
        parent = ""
        above: str | None = None
        for i in range(0, len(parts) - 2, 2):
            ancestor = by_plural.get((above, parts[i]))
            if ancestor is None:
                return None
            ancestors.append((ancestor, parts[i + 1]))
            parent = f"{parent}/{parts[i]}/{parts[i + 1]}"
            above = ancestor.name
        rt = by_plural.get((above, parts[-2]))
        return None if rt is None else Location(rt, parent, ancestors, parts[-1])

    # -- activation --------------------------------------------------------------
    async def open_backends(self):
        d = self.discovered
        storage_backend = d.backends[self.settings["storage_backend"]]
        permission_backend = d.backends[self.settings["permission_backend"]]
        for backend in (storage_backend, permission_backend):
            # The provider behind a lazy dropin too: its own class must declare it.
            verifyObject(IStorageBackend, _provider(backend))
        self.storage = await storage_backend.open_storage(self.settings, self.reactor)
        verifyObject(IStorage, self.storage)
        self.permissions = await permission_backend.open_permissions(
            self.settings, self.reactor, self.storage
        )
        verifyObject(IPermissionStore, self.permissions)

    async def activate(self):
        """Build the authentication policies, then install the plugins in order."""
        for name in self.settings["multiauth.policies"]:
            factory = self.discovered.policies[name]
            verifyObject(IAuthenticationPolicyFactory, _provider(factory))
            self.add_policy(factory.build(self.settings, self))
        for name in self.settings["includes"]:
            plugin = self.discovered.plugins[name]
            verifyObject(IJsonSyncPlugin, _provider(plugin))
            result = plugin.install(self, self.settings)
            if inspect.isawaitable(result):
                await result
            self.plugins.append(plugin)
        self.acl = SettingsACL(self.tree, self.settings)

    async def close(self):
        for backend in (self.storage, self.permissions):
            close = getattr(backend, "close", None)
            if close is not None:
                result = close()
                if inspect.isawaitable(result):
                    await result
