"""
Discovery of providers (Twisted plugins), activation by name from the
configuration, and the registry through which activated plugins extend the
server (routes, listeners, capabilities, permission rules).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.plugin import getPlugins
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from jsonsync import config
from jsonsync.authorization import PermissionTree, SettingsACL
from jsonsync.interfaces import (
    IAuthenticationPolicy,
    IAuthenticationPolicyFactory,
    IJsonSyncPlugin,
    IPermissionStore,
    IResourceListener,
    IStorage,
    IStorageBackend,
)

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
        if name not in discovered.policies:
            problems.append(
                f"unknown authentication policy {name!r} in multiauth.policies "
                f"(installed: {_installed(discovered.policies)})"
            )
    try:
        settings = config.load(schema, ini, environ, cli, source=ini_path)
    except config.ConfigurationError as e:
        problems.extend(e.problems)
        settings = None
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


@dataclass
class Route:
    """One endpoint: a Werkzeug rule (under C{/v1}), its methods and its view."""

    rule: str
    methods: tuple[str, ...]
    view: Callable
    name: str
    kind: str = "service"  # "resource" endpoints negotiate Accept/Content-Type
    summary: str = ""
    anonymous: bool = True
    resource: Any = None
    authenticate: bool = True  # False for probes that must answer while backends are down


class Registry:
    """
    Everything activated for one server. Plugins receive it in C{install}
    and extend the server only through it.
    """

    def __init__(self, settings: config.Settings, reactor, discovered: Discovered | None = None):
        self.settings = settings
        self.reactor = reactor
        self.discovered = discovered or Discovered()
        self.tree = PermissionTree()
        self.acl: SettingsACL = SettingsACL(self.tree, settings)
        self.storage: Any = None
        self.permissions: Any = None
        self.policies: list[Any] = []
        self.listeners: list[Any] = []
        self.capabilities: dict[str, dict] = {}
        self.routes: list[Route] = []
        self.resource_types: dict[str, Any] = {}
        self.public_settings: dict[str, Any] = {}
        self.hello_extensions: list[Callable] = []
        self.heartbeats: dict[str, Callable] = {}
        self.request_rewriters: list[Callable] = []
        self.plugins: list[Any] = []
        self.engine: Any = None  # the generic object engine, set by the server
        self.app: Any = None  # the HTTP application, set once every route is known

    # -- extension points ------------------------------------------------------
    def add_route(self, route: Route):
        self.routes.append(route)

    def add_capability(self, name: str, description: str, url: str = "", **extra):
        self.capabilities[name] = {"description": description, "url": url, **extra}

    def add_listener(self, listener):
        verifyObject(IResourceListener, listener)
        self.listeners.append(listener)

    def add_resource_type(self, resource_type):
        self.resource_types[resource_type.name] = resource_type
        self.tree.register(resource_type.name, resource_type.plural, resource_type.permissions)

    def add_policy(self, policy):
        verifyObject(IAuthenticationPolicy, policy)
        self.policies.append(policy)

    def add_heartbeat(self, name: str, check: Callable):
        self.heartbeats[name] = check

    # -- activation --------------------------------------------------------------
    async def open_backends(self):
        d = self.discovered
        storage_backend = d.backends[self.settings["storage_backend"]]
        permission_backend = d.backends[self.settings["permission_backend"]]
        verifyObject(IStorageBackend, storage_backend)
        verifyObject(IStorageBackend, permission_backend)
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
            verifyObject(IAuthenticationPolicyFactory, factory)
            self.add_policy(factory.build(self.settings, self))
        for name in self.settings["includes"]:
            plugin = self.discovered.plugins[name]
            verifyObject(IJsonSyncPlugin, plugin)
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
