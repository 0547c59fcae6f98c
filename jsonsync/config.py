"""
Settings: their declarations, loading and validation.

Sources, the later winning: built-in defaults, the C{[jsonsync]} section of
an INI file (Kinto's setting names without the C{kinto.} prefix), the
environment (C{JSONSYNC_<NAME>}, upper case, C{.} and C{-} as C{_}) and the
command line. Every problem is collected and reported at once.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class ConfigurationError(Exception):
    """Raised with every problem found, one per line."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # str, int, opt_int, bool, list, opt_str
    default: Any
    help: str = ""


def _s(name, kind, default, help=""):
    return Setting(name, kind, default, help)


CORE_SETTINGS: list[Setting] = [
    _s("storage_backend", "str", "memory", "storage backend name (memory, postgresql, ...)"),
    _s("permission_backend", "str", "memory", "permission backend name"),
    _s("includes", "list", [], "plugins to activate, in order"),
    _s("multiauth.policies", "list", ["basicauth"], "authentication policies, in order"),
    _s("userid_hmac_secret", "str", "", "key of the basicauth user id derivation"),
    _s("paginate_by", "opt_int", None, "maximum page size"),
    _s("storage_max_fetch_size", "int", 10000, "hard cap on one page"),
    _s("readonly", "bool", False, "refuse every write (405)"),
    _s("batch_max_requests", "int", 25, "maximum sub-requests in one /batch"),
    _s("experimental_permissions_endpoint", "bool", False, "serve GET /permissions"),
    _s("experimental_collection_schema_validation", "bool", False, "validate records"),
    _s("explicit_permissions", "bool", True, "give writers an explicit write ACE"),
    _s("project_name", "str", "jsonsync"),
    _s("project_version", "str", ""),
    _s("project_docs", "str", "https://github.com/jsonsync/jsonsync"),
    _s("http_api_version", "str", "1.23"),
    _s("http_scheme", "opt_str", None, "scheme of generated URLs"),
    _s("http_host", "opt_str", None, "host of generated URLs"),
    _s("version_json_path", "str", "version.json"),
    _s("error_info_link", "str", "https://github.com/jsonsync/jsonsync/issues/"),
    _s("trailing_slash_redirect_enabled", "bool", True),
    _s("trailing_slash_redirect_ttl_seconds", "int", 3600),
    _s("version_prefix_redirect_enabled", "bool", True),
    _s("version_prefix_redirect_ttl_seconds", "int", -1),
    _s("cors_origins", "list", ["*"]),
    _s("cors_max_age_seconds", "int", 3600),
    _s("backoff", "opt_int", None, "Backoff header value (seconds)"),
    _s("backoff_percentage", "opt_int", None, "share of responses carrying Backoff"),
    _s("retry_after_seconds", "int", 3),
    _s("eos", "opt_str", None, "end-of-service date (YYYY-MM-DD)"),
    _s("eos_message", "opt_str", None),
    _s("eos_url", "opt_str", None),
    _s("root_cache_expires_seconds", "int", 86400),
    _s("heartbeat_timeout_seconds", "int", 10),
    _s("pagination_token_validity_seconds", "int", 600),
    _s("max_request_body_bytes", "int", 1048576, "larger bodies get 413"),
    _s("max_request_line_bytes", "int", 524288, "longer request lines get 414"),
    _s("max_header_bytes", "int", 65536, "larger header sections (CRLF excluded) get 431"),
    _s("max_header_count", "int", 100, "requests with more header lines get 431"),
    _s("json_max_depth", "int", 64, "deeper JSON bodies (and filter values) get 400"),
    _s("querystring_max_sort_fields", "int", 10, "more _sort fields get 400"),
    _s("querystring_max_filters", "int", 20, "more filters in one query string get 400"),
    _s("querystring_max_fields", "int", 100, "more _fields get 400"),
    _s("querystring_max_values", "int", 10000, "more values in one in_/exclude_/contains_ filter get 400"),
    _s("access_log", "bool", True, "write an access log line per request"),
    _s("tombstones_retention_days", "opt_int", None,
       "age past which `jsonsync purge-deleted` removes tombstones by default"),
    _s("bucket_create_principals", "list", ["system.Authenticated"]),
    _s("permissions_read_principals", "list", ["system.Everyone"]),
    # Operators (issue 15): log format, reverse proxies.
    _s("log_format", "str", "auto", "text, json (one JSON object per line) or auto: text on a terminal, else json"),
    _s("trusted_proxies", "list", [], "addresses/networks of reverse proxies whose Forwarded/X-Forwarded-* are believed"),
    _s("trusted_proxy_headers", "str", "x-forwarded",
       "which headers the trusted proxies set: x-forwarded (X-Forwarded-For/-Proto/-Host) or forwarded (RFC 7239)"),
]

# <resource>_<perm>_principals and <resource>_cache_expires_seconds
_PRINCIPALS = re.compile(r"^[a-z][a-z0-9-]*_(read|write|create|delete)_principals$")
_CACHE = re.compile(r"^([A-Za-z0-9_-]+\.){0,2}[a-z]+_cache_expires_seconds$")
# <plural|object>_<resource>_<method>_enabled
_ENDPOINT_SWITCH = re.compile(r"^(plural|object)_[a-z0-9-]+_(get|post|put|patch|delete)_enabled$")


def _parse(setting: Setting, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind = setting.kind
    text = raw.strip()
    if kind == "str":
        return text
    if kind == "opt_str":
        return text or None
    if kind == "bool":
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind in ("int", "opt_int"):
        if kind == "opt_int" and text.lower() in ("", "none"):
            return None
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if kind == "list":
        return [part for part in re.split(r"[\s,]+", text) if part]
    raise AssertionError(kind)


# Kinto's dotted names for what jsonsync names shortly, so Kinto INI files load.
_KINTO_NAMES = re.compile(r"^kinto\.(plugins|core\.storage|core\.permission)\.")
_NAMED = ("storage_backend", "permission_backend", "includes")


def kinto_alias(value):
    """C{kinto.plugins.history} -> C{history}, C{kinto.core.storage.postgresql} -> C{postgresql}."""
    if isinstance(value, list):
        return [kinto_alias(v) for v in value]
    if isinstance(value, str):
        return _KINTO_NAMES.sub("", value)
    return value


def env_name(name: str) -> str:
    return "JSONSYNC_" + re.sub(r"[.\-]", "_", name).upper()


class Settings(Mapping):
    """The frozen settings of one server: a read-only mapping of name to value."""

    def __init__(self, values: dict[str, Any], source: str | None = None, warnings=()):
        self._values = dict(values)
        self.source = source
        # What did not stop the start but deserves a line in the log.
        self.warnings: tuple[str, ...] = tuple(warnings)

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def principals(self, key: str) -> list[str]:
        value = self._values.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return value.split()
        return list(value)

    def replace(self, **changes) -> Settings:
        values = dict(self._values)
        values.update(changes)
        return Settings(values, self.source, self.warnings)


class SettingsSchema:
    """The settings accepted by the core plus the active plugins and backends."""

    def __init__(self, settings: Iterable[Setting] = CORE_SETTINGS):
        self.known: dict[str, Setting] = {s.name: s for s in settings}
        # Kinto's "multiauth.policy.<name>.use = dotted.path": accepted, not needed.
        self.prefixes: list[str] = ["multiauth.policy."]

    def add(self, declared: Mapping[str, Any], owner: str):
        """Accept a plugin's or backend's C{{name: default}} declarations."""
        for name, default in declared.items():
            if name.endswith(".*"):
                self.prefixes.append(name[:-1])
                continue
            if isinstance(default, Setting):
                self.known[name] = default
                continue
            if isinstance(default, bool):
                kind = "bool"
            elif isinstance(default, int):
                kind = "int"
            elif isinstance(default, list):
                kind = "list"
            elif default is None:
                kind = "opt_str"
            else:
                kind = "str"
            self.known.setdefault(name, Setting(name, kind, default, f"({owner})"))

    def lookup(self, name: str) -> Setting | None:
        found = self.known.get(name)
        if found is not None:
            return found
        if _PRINCIPALS.match(name):
            return Setting(name, "list", [])
        if _CACHE.match(name):
            return Setting(name, "opt_int", None)
        if _ENDPOINT_SWITCH.match(name):
            return Setting(name, "bool", True)
        for prefix in self.prefixes:
            if name.startswith(prefix):
                return Setting(name, "str", "")
        return None

    def from_env(self, key: str) -> str | None:
        """The setting name an environment variable stands for, or C{None}."""
        for name in self.known:
            if env_name(name) == key:
                return name
        rest = key[len("JSONSYNC_") :].lower()
        for prefix in self.prefixes:
            env_prefix = re.sub(r"[.\-]", "_", prefix)
            if rest.startswith(env_prefix):
                return prefix + rest[len(env_prefix) :]
        if self.lookup(rest) is not None:
            return rest
        return None


def read_ini(path: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment]
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as e:
        raise ConfigurationError([f"cannot read configuration file {path}: {e}"]) from e
    if not parser.has_section("jsonsync"):
        raise ConfigurationError([f"{path}: no [jsonsync] section"])
    values = {}
    for key, value in parser.items("jsonsync"):
        if key.startswith("kinto."):
            key = key[len("kinto.") :]
        values[key] = value
    return values


def load(
    schema: SettingsSchema,
    ini: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, str] | None = None,
    source: str | None = None,
) -> Settings:
    """
    Merge the sources and validate every value; raise L{ConfigurationError}
    listing every problem.
    """
    problems: list[str] = []
    warnings: list[str] = []
    raw: dict[str, tuple[Any, str]] = {}
    for name, value in (ini or {}).items():
        raw[name] = (value, f"{source or 'configuration file'}")
    for key, value in sorted((environ or {}).items()):
        if not key.startswith("JSONSYNC_") or key.startswith("JSONSYNC_TEST_"):
            continue
        env_name = schema.from_env(key)
        if env_name is None:
            # The environment is shared with other tools (and may hold a
            # variable that merely shares the prefix): a name that is no
            # setting is reported, not fatal. Unknown names in the file or
            # on the command line still stop the start.
            warnings.append(f"ignoring environment variable {key}: no setting has this name")
            continue
        raw[env_name] = (value, f"environment variable {key}")
    for name, value in (cli or {}).items():
        raw[name] = (value, "command line")

    values = {s.name: s.default for s in schema.known.values()}
    for name, (value, origin) in raw.items():
        setting = schema.lookup(name)
        if setting is None:
            problems.append(f"unknown setting {name!r} (from {origin})")
            continue
        try:
            values[name] = _parse(setting, value)
            if name in _NAMED:
                values[name] = kinto_alias(values[name])
        except ValueError as e:
            problems.append(f"bad value for {name} (from {origin}): {e}")
    _check_values(values, problems)
    if problems:
        raise ConfigurationError(problems)
    return Settings(values, source, warnings)


def _check_values(values: dict[str, Any], problems: list[str]):
    for name in (
        "batch_max_requests", "storage_max_fetch_size", "max_request_body_bytes",
        "max_request_line_bytes", "max_header_bytes", "max_header_count",
        "querystring_max_sort_fields", "querystring_max_filters", "querystring_max_fields",
        "querystring_max_values",
    ):
        if isinstance(values.get(name), int) and values[name] < 1:
            problems.append(f"bad value for {name}: must be at least 1")
    if values.get("tombstones_retention_days") is not None and values["tombstones_retention_days"] < 1:
        problems.append("bad value for tombstones_retention_days: must be at least 1")
    if values.get("paginate_by") is not None and values["paginate_by"] < 1:
        problems.append("bad value for paginate_by: must be at least 1")
    if isinstance(values.get("json_max_depth"), int) and values["json_max_depth"] < 2:
        problems.append("bad value for json_max_depth: must be at least 2")
    if values.get("eos"):
        import datetime

        try:
            datetime.date.fromisoformat(values["eos"])
        except ValueError:
            problems.append(f"bad value for eos: {values['eos']!r} is not a YYYY-MM-DD date")
    if values.get("log_format", "auto") not in ("auto", "text", "json"):
        problems.append(f"bad value for log_format: {values['log_format']!r} (text, json or auto)")
    if values.get("trusted_proxy_headers", "x-forwarded") not in ("x-forwarded", "forwarded"):
        problems.append(
            f"bad value for trusted_proxy_headers: {values['trusted_proxy_headers']!r} (x-forwarded or forwarded)"
        )
    if values.get("trusted_proxies"):
        from jsonsync.proxies import check_setting

        problems.extend(check_setting(values["trusted_proxies"]))
