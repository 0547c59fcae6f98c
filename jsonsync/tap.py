"""
C{twist jsonsync}: the command-line options and the service they make.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, cast

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

from jsonsync import config
from jsonsync.registry import configure, discover

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from jsonsync.registry import Discovered

_log = Logger()


def _describe(kind: str, declared) -> list[str]:
    lines = []
    for name, default in declared.items():
        if isinstance(default, config.Setting):
            setting = default
        else:
            setting = config.Setting(name, "", default)
        value = setting.default
        value = " ".join(value) if isinstance(value, list) else value
        help = f" - {setting.help}" if setting.help else ""
        lines.append(f"  {name} ({'' if value is None else value}){help}")
    return lines


def _settings_help(discovered=None) -> str:
    lines = [
        "Settings come from the [jsonsync] section of --config, from JSONSYNC_<NAME>",
        "environment variables, and from --setting NAME=VALUE (later wins).",
        "Core settings (default):",
    ]
    lines += _describe("core", {s.name: s for s in config.CORE_SETTINGS})
    lines.append("  <resource>_<read|write|create>_principals - settings ACLs")
    lines.append("  <resource>_cache_expires_seconds - Cache-Control max-age of a resource")
    lines.append("  <plural|object>_<resource>_<method>_enabled - switch an endpoint off")
    discovered = discovered or discover()
    for kind, providers in (
        ("backend", discovered.backends),
        ("authentication policy", discovered.policies),
        ("plugin", discovered.plugins),
    ):
        for name in sorted(providers):
            try:
                declared = dict(providers[name].settings)
            except Exception as e:  # an installed third-party plugin that cannot load
                lines.append(f"{kind.capitalize()} {name}: cannot load its settings ({e})")
                continue
            if not declared:
                continue
            active = " (active when selected)" if kind != "plugin" else " (active when in includes)"
            lines.append(f"{kind.capitalize()} {name}{active}:")
            lines += _describe(kind, declared)
    return "\n".join(lines)


class Options(usage.Options):
    synopsis = "[--listen ENDPOINT] [--config FILE] [--setting NAME=VALUE ...]"
    longdesc = (
        "Serve the Kinto HTTP API v1 with jsonsync. Settings come from the [jsonsync] "
        "section of --config, from JSONSYNC_<NAME> environment variables and from "
        "--setting NAME=VALUE (later wins); --help-settings lists them."
    )

    optParameters = [
        ["listen", "l", "tcp:8888:interface=127.0.0.1", "Where to listen (a Twisted endpoint description)."],
        ["config", "c", None, "An INI file with a [jsonsync] section."],
        ["workers", "w", "1", "Processes serving the port (TCP only; use with PostgreSQL: "
         "the memory backend keeps one copy of the data per process)."],
    ]
    optFlags = [
        ["reuse-port", None, "Listen with SO_REUSEPORT so that several jsonsync processes share the port."],
    ]

    def __init__(self):
        super().__init__()
        self["settings"] = {}
        self.discovered: Discovered | None = None
        self.settings: config.Settings | None = None

    def opt_setting(self, value: str):
        """Set one setting, NAME=VALUE (repeatable; wins over the file and the environment)."""
        name, sep, raw = value.partition("=")
        if not sep or not name.strip():
            raise usage.UsageError(f"--setting needs NAME=VALUE, got {value!r}")
        self["settings"][name.strip()] = raw

    opt_s = opt_setting

    def opt_help_settings(self):
        """List every setting (core, backends, policies, plugins) with its default, then exit."""
        print(_settings_help())
        sys.exit(0)

    def postOptions(self):
        try:
            self["workers"] = int(self["workers"])
            if self["workers"] < 1:
                raise ValueError
        except ValueError:
            raise usage.UsageError(f"--workers must be a positive integer, got {self['workers']!r}") from None
        if self["workers"] > 1 or self["reuse-port"]:
            from jsonsync.service import parse_tcp

            try:
                parse_tcp(self["listen"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        try:
            self.settings, self.discovered = configure(
                self["config"], os.environ, self["settings"], discover()
            )
        except config.ConfigurationError as e:
            raise usage.UsageError(
                "jsonsync cannot start:\n  " + "\n  ".join(e.problems)
            ) from None
        if self["workers"] > 1 and "memory" in (
            self.settings["storage_backend"], self.settings["permission_backend"]
        ):
            raise usage.UsageError(
                "jsonsync cannot start:\n  --workers needs a shared backend (postgresql): "
                "with the memory backend each process would hold its own data"
            )


def makeService(options: Options) -> service.IService:
    from jsonsync.logs import use_log_format
    from jsonsync.service import JsonSyncService

    settings = options.settings
    assert settings is not None, "makeService takes parsed options"
    use_log_format(options, settings)
    for warning in settings.warnings:
        _log.warn("{warning}", warning=warning)
    if not settings["userid_hmac_secret"]:
        _log.warn(
            "userid_hmac_secret is empty: basicauth user ids are then guessable from "
            "the credentials and identical on every server; set a long random value "
            "(`jsonsync init` writes one)"
        )
    service = JsonSyncService(
        settings, options.discovered, options["listen"], reuse_port=options["reuse-port"]
    )
    on_failure = StartFailure()
    service.on_start_failure = on_failure
    if options["workers"] > 1:
        from jsonsync.service import Workers

        workers = Workers(service, options["workers"], _child_arguments(options))
        workers.on_start_failure = on_failure
        return workers
    return service


def describe_failure(reason: Failure | BaseException | str) -> str:
    """Why a start failed, in words an operator can act on (no traceback)."""
    from twisted.internet.error import CannotListenError
    from twisted.python.failure import Failure

    # (twisted types Failure.value as optional: it is not, once built)
    exc = cast(BaseException, reason.value) if isinstance(reason, Failure) else reason
    if isinstance(exc, str):
        return exc
    if isinstance(exc, config.ConfigurationError):
        return "; ".join(exc.problems)
    if isinstance(exc, (CannotListenError, ValueError)):
        return str(exc)
    cause = exc.__cause__ or exc.__context__
    text = str(exc) or (str(cause) if cause is not None else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StartFailure:
    """
    What C{twist jsonsync} does when the server cannot start once the
    reactor runs: one critical line, the reactor stopped (services close
    what they opened), then the process ends with L{START_FAILED} so that a
    supervisor sees the failure. C{twist} itself always exits 0 after its
    reactor stops, hence the exit from an after-shutdown trigger.
    """

    def __init__(self, reactor=None):
        self._reactor = reactor
        self.reported = False

    def __call__(self, reason):
        from jsonsync.service import START_FAILED

        if self.reported:
            return
        self.reported = True
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        _log.critical("jsonsync could not start: {reason}", reason=describe_failure(reason))
        if hasattr(reason, "getTraceback"):
            _log.debug("{traceback}", traceback=reason.getTraceback())
        reactor.addSystemEventTrigger("after", "shutdown", _exit, START_FAILED)
        if reactor.running:
            reactor.stop()
        else:
            # Failed before the reactor ran (nothing was asynchronous).
            reactor.callWhenRunning(reactor.stop)


def _exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _child_arguments(options: Options) -> list[str]:
    """The command line of a worker: the same server, sharing the port."""
    args = ["-m", "twisted", "jsonsync", "--listen", options["listen"], "--reuse-port"]
    if options["config"]:
        args += ["--config", os.path.abspath(options["config"])]
    for name, value in options["settings"].items():
        args += ["--setting", f"{name}={value}"]
    return args


def main(argv=None) -> int:
    """C{python -m jsonsync.tap --check [...]}: the same as C{jsonsync check [...]}."""
    from jsonsync import cli

    args = list(sys.argv[1:] if argv is None else argv)
    if "--check" in args:
        args.remove("--check")
    return cli.main([*args, "check"])


if __name__ == "__main__":
    sys.exit(main())
