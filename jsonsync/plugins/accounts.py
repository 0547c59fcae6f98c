"""
The C{accounts} plugin and the C{account} authentication policy: user
accounts stored as objects of the top-level resource C{/accounts}, their
passwords hashed with bcrypt, and Basic credentials checked against them.

bcrypt is slow on purpose, so every hash and every check runs in the
reactor's thread pool (L{deferToThread}), never on the reactor thread.
Password hashes are stored but never sent to clients, nor usable in filters
or sorting (a pagination token would carry them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re

import bcrypt
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from jsonsync.auth import EVERYONE, basic_credentials, challenges, ensure_principals
from jsonsync.config import ConfigurationError
from jsonsync.errors import Forbidden, InvalidParameters, Unauthenticated
from jsonsync.interfaces import IAuthenticationPolicy
from jsonsync.resources.core import resource_routes
from jsonsync.resources.model import ResourceType

POLICY_NAME = "account"
ACCOUNT_ID = re.compile(r"^[a-zA-Z0-9][+.@a-zA-Z0-9_-]*$")
DOCS_URL = "https://kinto.readthedocs.io/en/latest/api/1.x/accounts.html"

# bcrypt only reads the first 72 bytes of a password. Older bcrypt releases
# (those Kinto used) dropped the rest silently, recent ones refuse longer
# input: cut explicitly so that hashes made by either keep matching.
_BCRYPT_MAX_BYTES = 72
_CACHE_MAX_ENTRIES = 10_000
_FILTER_OPERATOR = re.compile(
    r"^(lt|min|max|not|eq|gt|in|exclude|like|has|contains_any|contains)_([\w.]+)$"
)


def _secret_bytes(password: str) -> bytes:
    return password.encode("utf-8")[:_BCRYPT_MAX_BYTES]


def hash_password(password: str, rounds: int) -> str:
    """A bcrypt hash of C{password} (slow: call it in a thread)."""
    return bcrypt.hashpw(_secret_bytes(password), bcrypt.gensalt(rounds)).decode("ascii")


def check_password(password: str, hashed: str) -> bool:
    """Whether C{password} matches the bcrypt C{hashed} (slow: call it in a thread)."""
    try:
        return bcrypt.checkpw(_secret_bytes(password), hashed.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return False


def _is_admin(settings, principals) -> bool:
    admins = set(settings.get("account_write_principals") or ())
    return not admins.isdisjoint(principals)


def _account_policies(registry) -> list[AccountPolicy]:
    return [p for p in registry.policies if isinstance(p, AccountPolicy)]


# -- the authentication policy ------------------------------------------------------


@implementer(IAuthenticationPolicy)
class AccountPolicy:
    """
    Basic credentials checked against an account's bcrypt hash; the user
    id is the account id (prefixed C{account:} by the policy chain).

    A successful check is remembered for C{ttl} seconds, keyed by an HMAC
    (with a key that never leaves this process) of the account id, the
    password and the stored hash: a changed or deleted account can never be
    served from the cache, even by another process that missed the change.
    An unknown account costs one bcrypt check too, against a dummy hash of
    the same cost, so that response times do not tell which accounts exist.

    @ivar clock: provides C{seconds()}; the reactor unless replaced.
    """

    name = POLICY_NAME
    challenge = 'Basic realm="Realm"'

    def __init__(self, registry, ttl: int, rounds: int):
        self._registry = registry
        self.clock = registry.reactor
        self._ttl = ttl
        self._rounds = rounds
        self._key = os.urandom(32)
        self._cache: dict[str, tuple[str, float]] = {}
        self._dummy: str | None = None

    async def dummy_hash(self) -> str:
        """A hash of a random password, made once with the accounts' cost."""
        if self._dummy is None:
            dummy = await deferToThread(hash_password, os.urandom(16).hex(), self._rounds)
            if self._dummy is None:
                self._dummy = dummy
        return self._dummy

    async def authenticate(self, request, txn):
        credentials = basic_credentials(request)
        if credentials is None:
            return None
        account_id, password = credentials
        if not ACCOUNT_ID.match(account_id):
            return None
        account = await self._registry.storage.get(txn, POLICY_NAME, "", account_id)
        hashed = account.get("password") if account is not None else None
        if not isinstance(hashed, str):
            await deferToThread(check_password, password, await self.dummy_hash())
            return None
        digest = self._digest(account_id, password, hashed)
        if self._cached(account_id, digest):
            return account_id
        if not await deferToThread(check_password, password, hashed):
            return None
        self._remember(account_id, digest)
        return account_id

    def invalidate(self, account_id: str) -> None:
        """Forget the remembered check of one account."""
        self._cache.pop(account_id, None)

    def _digest(self, account_id: str, password: str, hashed: str) -> str:
        message = "\x00".join((account_id, password, hashed)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def _cached(self, account_id: str, digest: str) -> bool:
        entry = self._cache.get(account_id)
        if entry is None:
            return False
        remembered, expires = entry
        if expires <= self.clock.seconds():
            self._cache.pop(account_id, None)
            return False
        return hmac.compare_digest(remembered, digest)

    def _remember(self, account_id: str, digest: str) -> None:
        if self._ttl <= 0:
            return
        now = self.clock.seconds()
        if len(self._cache) >= _CACHE_MAX_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) >= _CACHE_MAX_ENTRIES:
                self._cache.clear()
        self._cache[account_id] = (digest, now + self._ttl)


class AccountPolicyFactory:
    name = POLICY_NAME

    def build(self, settings, registry):
        return AccountPolicy(
            registry,
            settings.get("account_cache_ttl_seconds", 30),
            settings.get("account_bcrypt_rounds", 12),
        )


# -- the account resource ----------------------------------------------------------


def _require_id() -> str:
    raise InvalidParameters("body", "data.id", "data.id in body: Required")


def _hide_password(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "password"}


async def validate_account(req, loc, data, existing):
    """
    Non-admins may only write their own account (anonymous users create
    theirs); a new password is hashed, the stored hash is kept otherwise.
    """
    settings = req.registry.settings
    if req.authenticated and not _is_admin(settings, await ensure_principals(req.registry, req)):
        if req.user_id != f"{POLICY_NAME}:{loc.object_id}":
            raise InvalidParameters("body", "data.id", "Username and account ID do not match.")
    password = data.get("password")
    if existing is not None and password is not None and password == existing.get("password"):
        return data  # unchanged: the stored hash, kept as it is
    if password is None or password == "":
        raise InvalidParameters("body", "data.password", "data.password in body: Required")
    if not isinstance(password, str):
        raise InvalidParameters(
            "body", "data.password", "data.password in body: Should be a string"
        )
    data["password"] = await deferToThread(
        hash_password, password, settings["account_bcrypt_rounds"]
    )
    return data


def _forget(req, account_id: str) -> None:
    policies = _account_policies(req.registry)
    for policy in policies:
        policy.invalidate(account_id)

    def after():
        for policy in policies:
            policy.invalidate(account_id)

    req.txn.after_commit(after)
    # Batch sub-requests share authentication results: recompute them.
    req.ctx.auth_cache.clear()


async def on_account_write(req, loc, old, new):
    """The account's own principal always holds C{write} on it."""
    store = req.registry.permissions
    acl = await store.get_object_permissions(req.txn, loc.uri)
    writers = set(acl.get("write", ()))
    principal = f"{POLICY_NAME}:{loc.object_id}"
    if principal not in writers:
        await store.replace_object_permissions(req.txn, loc.uri, {"write": writers | {principal}})
    if old is not None:
        _forget(req, loc.object_id)


async def on_account_delete(req, loc, old):
    _forget(req, loc.object_id)


ACCOUNT = ResourceType(
    POLICY_NAME,
    "accounts",
    None,
    ("read", "write"),
    id_pattern=ACCOUNT_ID,
    id_generator=_require_id,
    validate=validate_account,
    on_write=on_account_write,
    on_delete=on_account_delete,
    present=_hide_password,
)


def _refuse_password_queries(req) -> None:
    """Hashes must not be probed with filters nor leak into pagination tokens."""
    for name, value in req.query:
        if name == "_sort":
            if any(
                part.strip().lstrip("+-").split(".")[0] == "password" for part in value.split(",")
            ):
                raise InvalidParameters(
                    "querystring", "_sort", "_sort in querystring: Unknown sort field 'password'"
                )
        elif not name.startswith("_"):
            match = _FILTER_OPERATOR.match(name)
            field = match.group(2) if match else name
            if field.split(".")[0] == "password":
                raise InvalidParameters("querystring", name, f"Unknown filter field '{field}'")


def _posted_id(req, max_depth):
    try:
        body = req.json(max_depth)
    except InvalidParameters:
        return None  # the engine reports it
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        oid = body["data"].get("id")
        if isinstance(oid, str) and ACCOUNT_ID.match(oid):
            return oid
    return None


class AccountsPlugin:
    name = "accounts"
    settings: dict = {
        "account_create_principals": [],
        "account_write_principals": [],
        "account_read_principals": [],
        "account_cache_ttl_seconds": 30,
        "account_bcrypt_rounds": 12,
    }

    async def install(self, registry, settings):
        self.check_settings(settings)
        rt = dataclasses.replace(ACCOUNT, validators=list(ACCOUNT.validators))
        registry.add_resource_type(rt)
        registry.tree.add_root_permission("account:create")
        engine = registry.engine
        for route in resource_routes(registry, engine, rt):
            if route.name.endswith("-plural"):
                route.view = self._plural_view(registry, engine, route.view)
            else:
                route.view = self._object_view(registry, engine, route.view)
            registry.add_route(route)
        registry.add_capability(
            "accounts", "Manage user accounts.", DOCS_URL, validation_enabled=False
        )
        for policy in _account_policies(registry):
            await policy.dummy_hash()

    @staticmethod
    def check_settings(settings):
        problems = []
        policies = list(settings["multiauth.policies"])
        if POLICY_NAME not in policies:
            problems.append(
                f"plugin accounts is included but the {POLICY_NAME!r} policy is not in multiauth.policies"
            )
        elif "basicauth" in policies and policies.index("basicauth") < policies.index(POLICY_NAME):
            problems.append(
                f"'basicauth' should not be listed before {POLICY_NAME!r} in multiauth.policies"
            )
        creators = set(settings.get("account_create_principals") or ())
        admins = set(settings.get("account_write_principals") or ())
        outsiders = sorted(creators - admins - {EVERYONE})
        if outsiders:
            problems.append(
                "account_create_principals has principals that are not in account_write_principals "
                f"(they could only create their own account): {', '.join(outsiders)}"
            )
        rounds = settings.get("account_bcrypt_rounds", 12)
        if not 4 <= rounds <= 31:
            problems.append("bad value for account_bcrypt_rounds: must be between 4 and 31")
        if problems:
            raise ConfigurationError(problems)

    @staticmethod
    def _plural_view(registry, engine, view):
        async def accounts_plural(req):
            if not req.authenticated and req.method != "POST":
                raise Unauthenticated(challenges(registry), "Cannot read accounts.")
            _refuse_password_queries(req)
            if req.method == "POST" and not req.authenticated:
                oid = _posted_id(req, registry.settings["json_max_depth"])
                if (
                    oid is not None
                    and await registry.storage.get(req.txn, POLICY_NAME, "", oid) is not None
                ):
                    raise Forbidden(f"Account ID {oid!r} already exists")
            response = await view(req)
            if req.method == "POST":
                await _show_stored_acl(registry, engine, req, response)
            return response

        return accounts_plural

    @staticmethod
    def _object_view(registry, engine, view):
        async def accounts_object(req):
            response = await view(req)
            if req.method in ("PUT", "PATCH"):
                await _show_stored_acl(registry, engine, req, response)
            return response

        return accounts_object


async def _show_stored_acl(registry, engine, req, response):
    """
    L{on_account_write} gives the account its own write ACE after the
    engine built the response: show the ACL as stored.
    """
    body = response.body
    if (
        not isinstance(body, dict)
        or "permissions" not in body
        or not isinstance(body.get("data"), dict)
    ):
        return
    uri = f"/accounts/{body['data']['id']}"
    acl = await registry.permissions.get_object_permissions(req.txn, uri)
    body["permissions"] = engine.shown_permissions(req, acl)


__all__ = [
    "AccountPolicy",
    "AccountPolicyFactory",
    "AccountsPlugin",
    "check_password",
    "hash_password",
]
