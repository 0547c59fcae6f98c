"""
C{twist jsonsync}: the command-line options and the service they make.
"""

from __future__ import annotations

import os
import sys

from twisted.application import service
from twisted.python import usage

from jsonsync import config
from jsonsync.registry import configure, discover


def _settings_help() -> str:
    lines = [
        "Settings come from the [jsonsync] section of --config, from JSONSYNC_<NAME>",
        "environment variables, and from --setting NAME=VALUE (later wins).",
        "Settings (default):",
    ]
    for s in config.CORE_SETTINGS:
        default = " ".join(s.default) if isinstance(s.default, list) else s.default
        lines.append(f"  {s.name} ({default}){' - ' + s.help if s.help else ''}")
    lines.append("  <resource>_<read|write|create>_principals - settings ACLs")
    lines.append("Plugins and backends add their own settings.")
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
        self.discovered = None
        self.settings = None

    def opt_setting(self, value: str):
        """Set one setting, NAME=VALUE (repeatable; wins over the file and the environment)."""
        name, sep, raw = value.partition("=")
        if not sep or not name.strip():
            raise usage.UsageError(f"--setting needs NAME=VALUE, got {value!r}")
        self["settings"][name.strip()] = raw

    opt_s = opt_setting

    def opt_help_settings(self):
        """List every core setting with its default, then exit."""
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

    use_log_format(options, options.settings)
    service = JsonSyncService(
        options.settings, options.discovered, options["listen"], reuse_port=options["reuse-port"]
    )
    if options["workers"] > 1:
        from jsonsync.service import Workers

        return Workers(service, options["workers"], _child_arguments(options))
    return service


def _child_arguments(options: Options) -> list[str]:
    """The command line of a worker: the same server, sharing the port."""
    args = ["-m", "twisted", "jsonsync", "--listen", options["listen"], "--reuse-port"]
    if options["config"]:
        args += ["--config", os.path.abspath(options["config"])]
    for name, value in options["settings"].items():
        args += ["--setting", f"{name}={value}"]
    return args


def main(argv=None):
    """C{python -m jsonsync.tap --check}: validate a configuration and exit."""
    options = Options()
    try:
        options.parseOptions(argv if argv is not None else sys.argv[1:])
    except usage.UsageError as e:
        print(e, file=sys.stderr)
        return 2
    print("configuration OK")
    return 0
