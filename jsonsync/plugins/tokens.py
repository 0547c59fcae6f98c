"""
The C{tokens} plugin and the C{tokens} authentication policy: scoped,
expiring access tokens that act for the user who made them, with
delegation (a C{manage} token makes narrower tokens) and revocation of a
token with every token made from it. See docs/tokens.md.

A token is an object of the top-level resource C{token} (the objects
table: both backends, no schema change). Its secret is
C{jst_<id>_<43 random characters>} (C{secrets.token_urlsafe(32)}: 256
bits), shown once at creation; the store keeps an HMAC-SHA256 of it keyed
with C{tokens.hmac_secret}, compared with C{hmac.compare_digest}.

What a request with a token may do is what its scopes allow I{and} what its
user may do at that moment: the policy returns an L{Identity} with the
user's id and a L{TokenScopes} restriction, which the access checks of the
core intersect with the user's permissions (L{jsonsync.interfaces.IRestriction}).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from jsonsync.auth import Identity, challenges
from jsonsync.config import ConfigurationError
from jsonsync.errors import (
    Forbidden,
    InvalidParameters,
    ObjectNotFound,
    Unauthenticated,
    WriteConflict,
)
from jsonsync.http import ApiRequest, ApiResponse
from jsonsync.interfaces import (
    IAuthenticationPolicy,
    IAuthenticationPolicyFactory,
    IJsonSyncPlugin,
    IRestriction,
)
from jsonsync.query import Filter, Query
from jsonsync.registry import Route
from jsonsync.resources.model import NAME_PATTERN

_log = Logger()

POLICY_NAME = "tokens"
RESOURCE = "token"
PREFIX = "jst_"
_TOKEN = re.compile(r"^jst_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_ID = re.compile(r"^[0-9a-f]{16}$")
DOCS_URL = "https://github.com/jsonsync/jsonsync/blob/main/docs/tokens.md"

LEVELS = ("read", "create-only", "contribute", "manage")
_READ = frozenset({"read", "read:attributes"})
# The data a contribute or create-only token may create and change: buckets,
# collections and records. Groups (their members), webhooks (deliveries to
# an outside URL) and any other kind a plugin adds share data: manage only.
_DATA_CREATES = frozenset({"collection:create", "record:create"})
_DATA_PLURALS = frozenset({"buckets", "collections", "records"})


def _level_permits(level: str, uri: str, permission: str) -> bool:
    """What each level permits on an object its scope covers."""
    if level == "manage":
        return True
    if level == "read":
        return permission in _READ
    if level == "create-only":
        return permission in _DATA_CREATES
    # contribute: read, create and change data; not share.
    if permission in _READ or permission in _DATA_CREATES:
        return True
    if permission == "write":
        parts = uri.rsplit("/", 2)
        return len(parts) == 3 and parts[1] in _DATA_PLURALS
    return False


# A level covers another when it permits everything the other does.
_COVERS = {
    "manage": frozenset(LEVELS),
    "contribute": frozenset({"read", "create-only", "contribute"}),
    "create-only": frozenset({"create-only"}),
    "read": frozenset({"read"}),
}

_SCOPE_PATH = re.compile(
    r"^/buckets/([^/]+)(?:/collections/([^/]+)(?:/records/([^/]+))?|/groups/([^/]+))?$"
)

MAX_SCOPES = 50
MAX_NAME = 256


def _covers(path: str, uri: str) -> bool:
    return uri == path or uri.startswith(path + "/")


@implementer(IRestriction)
class TokenScopes:
    """What a token permits: its scopes, checked against every permission."""

    __slots__ = ("token_id", "scopes", "label", "record")

    def __init__(self, record: dict):
        self.record = record
        self.token_id = record["id"]
        self.label = record["id"]
        self.scopes = tuple((s["path"], s["level"]) for s in record["scopes"])

    def permits(self, uri: str, permission: str) -> bool:
        for path, level in self.scopes:
            if _covers(path, uri) and _level_permits(level, uri, permission):
                return True
        return False

    def named_children(self, list_prefix: str):
        for path, _level in self.scopes:
            if path.startswith(list_prefix):
                rest = path[len(list_prefix) :]
                if rest and "/" not in rest:
                    yield rest

    def may_delegate(self, path: str, level: str) -> bool:
        """Whether a scope C{(path, level)} is within one of this token's C{manage} scopes."""
        return any(lv == "manage" and _covers(p, path) and level in _COVERS[lv] for p, lv in self.scopes)


def _now_ms(clock) -> int:
    return int(clock.seconds() * 1000)


def _hash(key: bytes, secret: str) -> str:
    return hmac.new(key, secret.encode("ascii"), hashlib.sha256).hexdigest()


def _present(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "hash"}


class _Entry:
    __slots__ = ("chain", "until")

    def __init__(self, chain, until):
        self.chain = chain
        self.until = until


@implementer(IAuthenticationPolicy)
class TokenPolicy:
    """
    C{Authorization: Bearer jst_...}: the token's user, restricted to its
    scopes. A Bearer value that is not one of ours is left to the next
    policy; one of ours that is unknown, revoked, expired or wrong is a 401.

    Token records (with their ancestors) are remembered per process for
    C{tokens.cache_ms} (1 s by default): a revocation or expiry is seen by
    every process within that time. Use is counted in memory and written
    every C{tokens.last_used_interval_seconds}.
    """

    name = POLICY_NAME
    challenge = 'Bearer realm="Realm"'

    def __init__(self, registry, settings):
        self._registry = registry
        self.clock = registry.reactor
        secret = settings.get("tokens.hmac_secret") or settings.get("userid_hmac_secret") or ""
        self.key = secret.encode("utf-8")
        self.cache_ms = settings.get("tokens.cache_ms", 1000)
        self._cache: dict[str, _Entry] = {}
        self.used: dict[str, int] = {}
        self.interval_ms = settings.get("tokens.last_used_interval_seconds", 60) * 1000
        self._flushed = _now_ms(self.clock)
        self._flushing = False

    async def authenticate(self, request, txn):
        header = request.header("Authorization")
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        value = value.strip()
        if not value.startswith(PREFIX):
            return None  # another policy's Bearer tokens
        match = _TOKEN.match(value)
        if match is None:
            raise self._refuse("Malformed token.")
        token_id, _ = match.groups()
        now = _now_ms(self.clock)
        chain = await self._chain(txn, token_id, now)
        if chain is None:
            raise self._refuse("Unknown token.")
        record = chain[0]
        stored = record.get("hash")
        if not isinstance(stored, str) or not hmac.compare_digest(stored, _hash(self.key, value)):
            raise self._refuse("Unknown token.")
        for link in chain:
            if link.get("revoked"):
                raise self._refuse("This token was revoked.")
            expires = link.get("expires_at")
            if expires is not None and expires <= now:
                raise self._refuse("This token has expired.")
        self.used[token_id] = now
        if now - self._flushed >= self.interval_ms and not self._flushing:
            # No timer: the writes ride on the traffic that makes them.
            self._flushed = now
            Deferred.fromCoroutine(self.flush_last_used())
        return Identity(record["user_id"], TokenScopes(record))

    def _refuse(self, message: str) -> Unauthenticated:
        return Unauthenticated(challenges(self._registry), message)

    async def _chain(self, txn, token_id: str, now: int):
        """The token and its ancestors (C{None} when any is missing), remembered a moment."""
        entry = self._cache.get(token_id)
        if entry is not None and entry.until > now:
            return entry.chain
        storage = self._registry.storage
        record = await storage.get(txn, RESOURCE, "", token_id)
        chain = None
        if record is not None:
            ancestors = list(record.get("ancestors") or ())
            found = await storage.get_many(txn, [(RESOURCE, "", a) for a in ancestors]) if ancestors else []
            if all(f is not None for f in found):
                chain = [record, *found]
        if len(self._cache) >= 10_000:
            self._cache.clear()
        self._cache[token_id] = _Entry(chain, now + self.cache_ms)
        return chain

    def forget(self, token_ids) -> None:
        for token_id in token_ids:
            self._cache.pop(token_id, None)

    async def flush_last_used(self):
        """Write the C{last_used} of the tokens used since the last flush (one transaction)."""
        if not self.used or self._flushing:
            return
        self._flushing = True
        used, self.used = self.used, {}
        try:
            await self._write_last_used(used)
        finally:
            self._flushing = False

    async def _write_last_used(self, used: dict[str, int]):
        storage = self._registry.storage
        txn = storage.transaction()
        try:
            for token_id, when in sorted(used.items()):
                record = await storage.get(txn, RESOURCE, "", token_id)
                if record is None or (record.get("last_used") or 0) >= when:
                    continue
                new = {k: v for k, v in record.items() if k != "last_modified"}
                new["last_used"] = when
                await storage.update(txn, RESOURCE, "", token_id, new, expected=record["last_modified"])
            await txn.commit()
        except WriteConflict:
            await txn.rollback()
            for token_id, when in used.items():  # next time
                self.used[token_id] = max(when, self.used.get(token_id, 0))
        except Exception:
            await txn.rollback()
            _log.failure("tokens: writing last_used failed")


@implementer(IAuthenticationPolicyFactory)
class TokenPolicyFactory:
    name = POLICY_NAME
    settings: dict = {
        "tokens.hmac_secret": "",
        "tokens.cache_ms": 1000,
        "tokens.last_used_interval_seconds": 60,
    }

    def build(self, settings, registry):
        return TokenPolicy(registry, settings)


# -- the API ---------------------------------------------------------------------


def _bad(field: str, message: str) -> InvalidParameters:
    return InvalidParameters("body", f"data.{field}", f"data.{field} in body: {message}")


def _scopes_of(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise _bad("scopes", "should be a non-empty list of {path, level}")
    if len(raw) > MAX_SCOPES:
        raise _bad("scopes", f"at most {MAX_SCOPES} scopes")
    scopes = []
    for i, scope in enumerate(raw):
        if not isinstance(scope, dict) or set(scope) - {"path", "level"}:
            raise _bad(f"scopes.{i}", "should be an object with path and level only")
        path, level = scope.get("path"), scope.get("level")
        if level not in LEVELS:
            raise _bad(f"scopes.{i}.level", f"should be one of {', '.join(LEVELS)}")
        if not isinstance(path, str):
            raise _bad(f"scopes.{i}.path", "should be an object path such as /buckets/b")
        if path.startswith("/v1/"):
            path = path[3:]
        path = path.rstrip("/") if path != "/" else path
        match = _SCOPE_PATH.match(path)
        if match is None or not all(NAME_PATTERN.match(part) for part in match.groups() if part is not None):
            raise _bad(
                f"scopes.{i}.path",
                "should be /buckets/<id>, /buckets/<id>/collections/<id>, "
                "/buckets/<id>/collections/<id>/records/<id> or /buckets/<id>/groups/<id>",
            )
        if level == "create-only" and (match.group(3) or match.group(4)):
            raise _bad(f"scopes.{i}.level", "create-only applies to a bucket or a collection")
        scopes.append({"path": path, "level": level})
    return scopes


def _expiry(data: dict, now: int, settings) -> int | None:
    """The expiry a new token asks for (ms), checked against the settings."""
    max_ttl = settings.get("tokens.max_ttl_seconds", 0)
    default_ttl = settings.get("tokens.default_ttl_seconds", 0)
    expires_at = data.get("expires_at")
    expires_in = data.get("expires_in")
    if expires_at is not None and expires_in is not None:
        raise _bad("expires_at", "give expires_at or expires_in, not both")
    explicit = expires_at is not None or expires_in is not None
    if expires_in is not None:
        if not isinstance(expires_in, int) or isinstance(expires_in, bool) or not 0 < expires_in < 10**12:
            raise _bad("expires_in", "should be a positive number of seconds")
        expires_at = now + expires_in * 1000
    elif expires_at is not None:
        if not isinstance(expires_at, int) or isinstance(expires_at, bool) or expires_at >= 10**15:
            raise _bad("expires_at", "should be a timestamp in milliseconds")
        if expires_at <= now:
            raise _bad("expires_at", "is in the past")
    elif default_ttl > 0:
        expires_at = now + default_ttl * 1000
    if max_ttl > 0:
        limit = now + max_ttl * 1000
        if explicit and expires_at > limit:
            raise _bad("expires_at", f"tokens live at most {max_ttl} seconds")
        if expires_at is None or expires_at > limit:
            expires_at = limit
    return expires_at


class TokensApi:
    def __init__(self, registry, policy: TokenPolicy | None):
        self.registry = registry
        self.policy = policy

    @property
    def clock(self):
        return self.registry.reactor

    def _user(self, req: ApiRequest) -> str:
        if not req.authenticated or req.user_id is None:
            raise Unauthenticated(challenges(self.registry))
        return req.user_id

    def _scopes(self, req: ApiRequest) -> TokenScopes | None:
        restriction = req.restriction
        if restriction is None:
            return None
        if isinstance(restriction, TokenScopes):
            return restriction
        raise Forbidden("These credentials may not manage tokens.")

    async def _mine(self, req: ApiRequest, token_id: str) -> dict:
        user = self._user(req)
        caller = self._scopes(req)
        record = None
        if _ID.match(token_id):
            record = await self.registry.storage.get(req.txn, RESOURCE, "", token_id)
        if record is None or record.get("user_id") != user or (
            caller is not None and caller.token_id not in (record.get("ancestors") or ())
        ):
            raise ObjectNotFound(RESOURCE, token_id)
        return record

    async def plural(self, req: ApiRequest) -> ApiResponse:
        if req.method == "POST":
            return await self.create(req)
        user = self._user(req)
        caller = self._scopes(req)
        found = await self.registry.storage.list(
            req.txn, RESOURCE, "", Query(filters=[Filter("user_id", user)])
        )
        if caller is not None:
            found = [r for r in found if caller.token_id in (r.get("ancestors") or ())]
        found.sort(key=lambda r: r["last_modified"], reverse=True)
        return ApiResponse({"data": [_present(r) for r in found]})

    async def create(self, req: ApiRequest) -> ApiResponse:
        user = self._user(req)
        caller = self._scopes(req)
        body = req.json(self.registry.settings["json_max_depth"])
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise InvalidParameters("body", "data", "data in body: Required (an object)")
        extra = set(body) - {"data"}
        if extra:
            raise InvalidParameters("body", sorted(extra)[0], f"{sorted(extra)[0]} in body: Unrecognized key")
        data = body["data"]
        unknown = set(data) - {"name", "scopes", "expires_at", "expires_in"}
        if unknown:
            raise _bad(sorted(unknown)[0], "Unrecognized key")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise _bad("name", f"Required, a string of 1 to {MAX_NAME} characters")
        scopes = _scopes_of(data.get("scopes"))
        now = _now_ms(self.clock)
        expires_at = _expiry(data, now, self.registry.settings)
        ancestors: list[str] = []
        if caller is not None:
            for i, scope in enumerate(scopes):
                if not caller.may_delegate(scope["path"], scope["level"]):
                    raise Forbidden(
                        f"scopes.{i}: a token may only create tokens narrower than its own manage scopes"
                    )
            parent = caller.record
            parent_expiry = parent.get("expires_at")
            if parent_expiry is not None:
                if data.get("expires_at") is not None or data.get("expires_in") is not None:
                    if expires_at is None or expires_at > parent_expiry:
                        raise _bad("expires_at", "a delegated token cannot outlive its parent")
                expires_at = parent_expiry if expires_at is None else min(expires_at, parent_expiry)
            ancestors = [caller.token_id, *(parent.get("ancestors") or ())]
        token_id = secrets.token_hex(8)
        secret = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        record = {
            "id": token_id,
            "name": name,
            "user_id": user,
            "scopes": scopes,
            "expires_at": expires_at,
            "created": now,
            "revoked": None,
            "last_used": None,
            "parent": ancestors[0] if ancestors else None,
            "ancestors": ancestors,
            "hash": _hash(self.policy.key if self.policy else b"", secret),
        }
        stored = await self.registry.storage.create(req.txn, RESOURCE, "", record)
        shown = _present(stored)
        shown["secret"] = secret
        return ApiResponse({"data": shown}, 201)

    async def single(self, req: ApiRequest) -> ApiResponse:
        record = await self._mine(req, req.params["id"])
        if req.method == "GET":
            return ApiResponse({"data": _present(record)})
        return await self.revoke(req, record)

    async def revoke(self, req: ApiRequest, record: dict) -> ApiResponse:
        storage = self.registry.storage
        now = _now_ms(self.clock)
        everyone = await storage.list(req.txn, RESOURCE, "", Query(filters=[Filter("user_id", record["user_id"])]))
        targets = [record] + [r for r in everyone if record["id"] in (r.get("ancestors") or ())]
        result = record
        for target in targets:
            if target.get("revoked"):
                continue
            new = {k: v for k, v in target.items() if k != "last_modified"}
            new["revoked"] = now
            updated = await storage.update(req.txn, RESOURCE, "", target["id"], new, expected=target["last_modified"])
            if target["id"] == record["id"]:
                result = updated
        if self.policy is not None:
            self.policy.forget(t["id"] for t in targets)
        return ApiResponse({"data": _present(result)})


def _token_policies(registry) -> list[TokenPolicy]:
    return [p for p in registry.policies if isinstance(p, TokenPolicy)]


@implementer(IJsonSyncPlugin)
class TokensPlugin:
    name = "tokens"
    settings: dict = {
        "tokens.default_ttl_seconds": 30 * 24 * 3600,
        "tokens.max_ttl_seconds": 0,
        **TokenPolicyFactory.settings,
    }

    @staticmethod
    def check_settings(settings):
        problems = []
        if POLICY_NAME not in list(settings["multiauth.policies"]):
            problems.append(
                f"plugin tokens is included but the {POLICY_NAME!r} policy is not in multiauth.policies"
            )
        for name in ("tokens.cache_ms", "tokens.default_ttl_seconds", "tokens.max_ttl_seconds",
                     "tokens.last_used_interval_seconds"):
            if settings.get(name, 0) < 0:
                problems.append(f"bad value for {name}: must not be negative")
        if problems:
            raise ConfigurationError(problems)

    def install(self, registry, settings):
        self.check_settings(settings)
        policies = _token_policies(registry)
        api = TokensApi(registry, policies[0] if policies else None)
        registry.add_route(Route("/tokens", ("GET", "POST"), api.plural, "tokens-plural", "resource",
                                 "List your access tokens, or create one"))
        registry.add_route(Route("/tokens/<id>", ("GET", "DELETE"), api.single, "tokens-object", "resource",
                                 "Read or revoke one of your access tokens"))
        registry.add_capability(
            "tokens",
            "Scoped, expiring access tokens with delegation (Authorization: Bearer).",
            DOCS_URL,
            levels=list(LEVELS),
        )

        def hello(req, document):
            restriction = req.restriction
            if isinstance(restriction, TokenScopes) and isinstance(document.get("user"), dict):
                document["user"]["token"] = {
                    "id": restriction.token_id,
                    "name": restriction.record.get("name"),
                    "scopes": [dict(path=p, level=lv) for p, lv in restriction.scopes],
                }

        registry.add_hello_extension(hello)


__all__ = ["LEVELS", "TokenPolicy", "TokenPolicyFactory", "TokenScopes", "TokensPlugin"]
