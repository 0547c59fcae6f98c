"""
The C{accounts} plugin and the C{account} authentication policy: user
accounts stored as objects of the top-level resource C{/accounts}, their
passwords hashed with bcrypt, and Basic credentials checked against them.

bcrypt is slow on purpose, so every hash and every check runs in the
reactor's thread pool (L{deferToThread}), never on the reactor thread, and
no more of them at once than L{AccountPolicy} allows. Password hashes are
stored but never sent to clients, nor usable in filters or sorting (a
pagination token would carry them). An account is reached by its owner and
the configured admins only, whatever its ACL says.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict

import bcrypt
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from jsonsync.auth import EVERYONE, basic_credentials, challenges, ensure_principals
from jsonsync.config import ConfigurationError
from jsonsync.errors import (
    BackendUnavailable,
    Forbidden,
    InvalidParameters,
    ParentNotFound,
    Unauthenticated,
)
from jsonsync.http import ApiRequest
from jsonsync.interfaces import IAuthenticationPolicy, IAuthenticationPolicyFactory, IJsonSyncPlugin
from jsonsync.resources.engine import Engine
from jsonsync.resources.model import Location, ResourceType

POLICY_NAME = "account"
ACCOUNT_ID = re.compile(r"^[a-zA-Z0-9][+.@a-zA-Z0-9_-]*$")
DOCS_URL = "https://kinto.readthedocs.io/en/latest/api/1.x/accounts.html"

_log = Logger()

# bcrypt only reads the first 72 bytes of a password: a 100-byte password
# would also open the account with its first 72 bytes alone. Refusing long
# passwords would turn away passphrases (72 bytes are only 24 characters of
# some scripts), so new hashes are made of an HMAC-SHA256 of the whole
# password instead (keyed with the hash's own salt, so that an unsalted
# SHA-256 leaked elsewhere cannot stand in for the password), base64-encoded
# (44 bytes, no NUL for bcrypt to stop at), and marked with this prefix.
# Hashes without it (made before, or by Kinto) are checked as bcrypt always
# checked them: on the first 72 bytes.
_PREHASHED = "hmac-sha256:"
_BCRYPT_MAX_BYTES = 72
_SALT_LENGTH = 29  # "$2b$12$" and the 22 characters of the salt
_CACHE_MAX_ENTRIES = 10_000
# A password check is refused (503, Retry-After) rather than queued when the
# checks already waiting would keep it waiting longer than this.
_MAX_WAIT_SECONDS = 5.0
_FILTER_OPERATOR = re.compile(
    r"^(lt|min|max|not|eq|gt|in|exclude|like|has|contains_any|contains)_([\w.]+)$"
)


def _prehash(password: str, salt: bytes) -> bytes:
    digest = hmac.new(salt, password.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest)


def hash_password(password: str, rounds: int) -> str:
    """A hash of C{password} where every byte counts (slow: call it in a thread)."""
    salt = bcrypt.gensalt(rounds)
    return _PREHASHED + bcrypt.hashpw(_prehash(password, salt), salt).decode("ascii")


def check_password(password: str, hashed: str) -> bool:
    """Whether C{password} matches C{hashed}, of either scheme (slow: call it in a thread)."""
    try:
        if hashed.startswith(_PREHASHED):
            inner = hashed[len(_PREHASHED) :].encode("ascii")
            return bcrypt.checkpw(_prehash(password, inner[:_SALT_LENGTH]), inner)
        # Recent bcrypt releases refuse what older ones silently cut.
        secret = password.encode("utf-8")[:_BCRYPT_MAX_BYTES]
        return bcrypt.checkpw(secret, hashed.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return False


def _is_admin(settings, principals) -> bool:
    admins = set(settings.get("account_write_principals") or ())
    return not admins.isdisjoint(principals)


def _is_reader(settings, principals) -> bool:
    readers = set(settings.get("account_read_principals") or ())
    return not readers.isdisjoint(principals)


def _account_policies(registry) -> list[AccountPolicy]:
    return [p for p in registry.policies if isinstance(p, AccountPolicy)]


def _bcrypt_slots(reactor) -> int:
    """
    How many bcrypt computations may run at once: one core is left to the
    reactor (every other request needs it), and half of the thread pool to
    the rest of its users.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    slots = max(1, cores - 1)
    get_pool = getattr(reactor, "getThreadPool", None)
    if get_pool is not None:
        slots = min(slots, max(1, get_pool().max // 2))
    return slots


# -- the authentication policy ------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Outcome:
    """A remembered check: C{ok} for the password against C{hashed} (C{None}: no account)."""

    hashed: str | None
    ok: bool
    fresh_until: float
    stale_until: float


@implementer(IAuthenticationPolicy)
class AccountPolicy:
    """
    Basic credentials checked against an account's bcrypt hash; the user
    id is the account id (prefixed C{account:} by the policy chain).

    bcrypt costs a few hundred milliseconds of CPU by design, so what any
    client can make the server spend is bounded:

      - Every outcome, success or failure, of known and unknown accounts
        alike, is remembered for C{ttl} seconds, keyed by an HMAC (with a
        key that never leaves this process) of the account id and the
        password: the same credentials never cost bcrypt twice in that
        time. An outcome holds the hash it was checked against and counts
        only while the account still has it: a changed password or a
        deleted account misses at once, in every process.
      - An unknown account costs what a known one does (one check against a
        dummy hash of the same cost, remembered the same way), so neither
        response times nor the limits below tell which accounts exist.
      - Concurrent checks of the same credentials share one bcrypt.
      - For C{ttl} more seconds, an outcome is still served while one
        background check renews it: no burst of checks when it expires,
        and no wait in the queue for credentials in use.
      - At most L{limiter}C{.limit} bcrypt computations run at once, which
        leaves a core to the reactor; a flood of distinct credentials
        queues behind it, and is refused with a 503 once the queue would
        keep a newcomer waiting more than L{max_wait} seconds. Remembered
        credentials never wait.

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
        self._cache: OrderedDict[bytes, _Outcome] = OrderedDict()
        self._running: dict[tuple[bytes, str | None], list[Deferred]] = {}
        self._dummy: str | None = None
        self.limiter = DeferredSemaphore(_bcrypt_slots(registry.reactor))
        self.max_wait = _MAX_WAIT_SECONDS
        # How long one bcrypt holds a slot (a moving average).
        self._slot_seconds = 0.0

    async def dummy_hash(self) -> str:
        """A hash of a random password, made once with the accounts' cost."""
        if self._dummy is None:
            started = time.monotonic()
            dummy = await deferToThread(hash_password, os.urandom(16).hex(), self._rounds)
            self._slot_seconds = self._slot_seconds or time.monotonic() - started
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
        key = self._digest(account_id, password)
        if self._remembered(key) is None and txn.only(_NOTHING_ENLISTED):
            # A check is coming, maybe after a wait in the queue: read the
            # account in a transaction of its own, ended at once, so that
            # the wait holds no database connection. (A transaction that
            # has begun, a batch's after a write, is read where it stands.)
            hashed = await self._stored_hash(None, account_id)
        else:
            hashed = await self._stored_hash(txn, account_id)
        # (Looked up again: a check may have ended during the read.)
        entry = self._remembered(key)
        if entry is not None and entry.hashed == hashed:
            self._cache.move_to_end(key)
            if entry.ok and entry.fresh_until <= self.clock.seconds() and not self.limiter.waiting:
                # Only users who logged in are renewed in the background,
                # and not while checks queue: remembered failures (anyone
                # can make those) must not take the bcrypt slots from new
                # logins. A failure is served as remembered until it goes
                # stale (it holds the stored hash it was checked against,
                # so an account created or changed since misses it).
                self._renew(key, password, hashed)
            return account_id if entry.ok else None
        ok = await self._check(key, password, hashed)
        return account_id if ok else None

    def _remembered(self, key: bytes) -> _Outcome | None:
        entry = self._cache.get(key)
        if entry is not None and entry.stale_until <= self.clock.seconds():
            del self._cache[key]
            return None
        return entry

    async def _stored_hash(self, txn, account_id: str) -> str | None:
        storage = self._registry.storage
        own = txn is None
        if own:
            txn = storage.transaction()
        try:
            account = await storage.get(txn, POLICY_NAME, "", account_id)
        finally:
            if own:
                await txn.rollback()
        hashed = account.get("password") if account is not None else None
        return hashed if isinstance(hashed, str) else None

    def _digest(self, account_id: str, password: str) -> bytes:
        # Account ids hold no NUL: the first one ends the id.
        message = f"{account_id}\x00{password}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    async def _check(self, key: bytes, password: str, hashed: str | None) -> bool:
        waiter: Deferred = Deferred()
        job = (key, hashed)
        if job not in self._running:
            self.admit()
        self._join(job, password, waiter)
        return await waiter

    def _renew(self, key: bytes, password: str, hashed: str | None) -> None:
        """
        Check expired credentials again in the background. Never refused,
        even by a full queue: the request is answered meanwhile, and each
        remembered outcome asks for one renewal per C{ttl} at most (as
        much as its first check cost), so a flood of new credentials
        cannot make users who logged in before fall out of the cache.
        """
        job = (key, hashed)
        if job not in self._running:
            self._join(job, password, None)

    def _join(self, job, password: str, waiter: Deferred | None) -> None:
        waiters = self._running.get(job)
        started = waiters is None
        if waiters is None:
            waiters = self._running[job] = []
        if waiter is not None:
            waiters.append(waiter)
        if started:
            Deferred.fromCoroutine(self._run(job, password))

    async def _run(self, job, password: str) -> None:
        key, hashed = job
        failure = None
        try:
            if hashed is None:
                hashed_or_dummy = await self.dummy_hash()
            else:
                hashed_or_dummy = hashed
            ok = await self.run_limited(check_password, password, hashed_or_dummy)
        except Exception:
            failure = Failure()
        waiters = self._running.pop(job, [])
        if failure is None:
            self._remember(key, hashed, ok)
        elif not waiters:
            _log.failure("background password check failed", failure)
        for waiter in waiters:
            # A waiter whose request went away was cancelled already.
            if not waiter.called:
                if failure is None:
                    waiter.callback(ok)
                else:
                    waiter.errback(failure)

    def admit(self) -> None:
        """Refuse new bcrypt work (503) while the queue is too long."""
        if self._overloaded():
            raise BackendUnavailable(
                "Too many password checks are waiting, please retry later."
            )

    def _overloaded(self) -> bool:
        waiting = len(self.limiter.waiting)
        if not waiting:
            return False
        expected = (waiting / self.limiter.limit + 1) * self._slot_seconds
        return expected > self.max_wait

    async def run_limited(self, func, *args):
        """C{func(*args)} (bcrypt work) in a thread, within the limiter."""
        await self.limiter.acquire()
        try:
            started = time.monotonic()
            result = await deferToThread(func, *args)
            took = time.monotonic() - started
            self._slot_seconds = 0.8 * self._slot_seconds + 0.2 * took
            return result
        finally:
            self.limiter.release()

    def _remember(self, key: bytes, hashed: str | None, ok: bool) -> None:
        if self._ttl <= 0:
            return
        now = self.clock.seconds()
        self._cache[key] = _Outcome(hashed, ok, now + self._ttl, now + 2 * self._ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_MAX_ENTRIES:
            self._cache.popitem(last=False)


# L{Transaction.only} with a key nothing enlists under: true until the
# transaction has begun.
_NOTHING_ENLISTED = object()


@implementer(IAuthenticationPolicyFactory)
class AccountPolicyFactory:
    name = POLICY_NAME
    # What the policy reads: accepted whenever the policy is listed.
    settings: dict = {"account_cache_ttl_seconds": 30, "account_bcrypt_rounds": 12}

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


def _mismatch() -> InvalidParameters:
    return InvalidParameters("body", "data.id", "Username and account ID do not match.")


async def validate_account(req: ApiRequest, loc, data, existing):
    """
    Non-admins may only write their own account (anonymous users create
    theirs); a new password is hashed, the stored hash is kept otherwise.
    """
    settings = req.registry.settings
    if req.authenticated and not _is_admin(settings, await ensure_principals(req.registry, req)):
        if req.user_id != f"{POLICY_NAME}:{loc.object_id}":
            raise _mismatch()
    password = data.get("password")
    if existing is not None and password is not None and password == existing.get("password"):
        return data  # unchanged: the stored hash, kept as it is
    if password is None or password == "":
        raise InvalidParameters("body", "data.password", "data.password in body: Required")
    if not isinstance(password, str):
        raise InvalidParameters(
            "body", "data.password", "data.password in body: Should be a string"
        )
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameters(
            "body", "data.password", "data.password in body: Invalid Unicode"
        ) from None
    rounds = settings["account_bcrypt_rounds"]
    policies = _account_policies(req.registry)
    if policies:
        # Account creation is open to anyone where everyone may sign up:
        # its bcrypt shares the limiter of the password checks.
        policies[0].admit()
        data["password"] = await policies[0].run_limited(hash_password, password, rounds)
    else:
        data["password"] = await deferToThread(hash_password, password, rounds)
    return data


def _forget(req: ApiRequest) -> None:
    # Remembered password checks hold the hash they were made against, so
    # a changed or deleted account misses them by itself; but batch
    # sub-requests share authentication results: recompute them.
    req.ctx.auth_cache.clear()


async def on_account_write(req: ApiRequest, loc, old, new):
    """The account's own principal always holds C{write} on it."""
    store = req.registry.permissions
    acl = await store.get_object_permissions(req.txn, loc.uri)
    writers = set(acl.get("write", ()))
    principal = f"{POLICY_NAME}:{loc.object_id}"
    if principal not in writers:
        await store.replace_object_permissions(req.txn, loc.uri, {"write": writers | {principal}})
    if old is not None:
        _forget(req)


async def on_account_delete(req: ApiRequest, loc, old):
    _forget(req)


def _grants_that_count(settings, principals, account_id: str, perms: set[str]) -> set[str]:
    """
    What an ACL grant on an account gives for C{/permissions}: the owner's
    (and the admins') grants count, anyone else's not (see L{_guard_object});
    admins and readers also get theirs from the settings.
    """
    if f"{POLICY_NAME}:{account_id}" in principals or _is_admin(settings, principals):
        return perms
    return set()


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
    grants_that_count=_grants_that_count,
    data_schema={"password": {"type": "string", "minLength": 1}},
    required_fields=("password",),
    hidden_fields=("password",),
)


def _refuse_password_queries(req: ApiRequest) -> None:
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


def _posted_id(req: ApiRequest, max_depth):
    try:
        body = req.json(max_depth)
    except InvalidParameters:
        return None  # the engine reports it
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        oid = body["data"].get("id")
        if isinstance(oid, str) and ACCOUNT_ID.match(oid):
            return oid
    return None


@implementer(IJsonSyncPlugin)
class AccountsPlugin:
    name = "accounts"
    # With the policy's own (read by the policy, which may run without the
    # plugin: both declare them).
    settings: dict = {
        "account_create_principals": [],
        "account_write_principals": [],
        "account_read_principals": [],
        **AccountPolicyFactory.settings,
    }

    async def install(self, registry, settings):
        self.check_settings(settings)
        rt = dataclasses.replace(ACCOUNT, validators=list(ACCOUNT.validators))
        engine = _AccountEngine(registry)
        for route in registry.add_resource_type(rt, engine=engine):
            if route.name.endswith("-plural"):
                route.view = self._plural_view(registry, engine, route.view)
            else:
                route.view = self._object_view(registry, engine, route.view)
        registry.add_root_permission("account:create")
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
        async def accounts_plural(req: ApiRequest):
            if not req.authenticated and req.method != "POST":
                raise Unauthenticated(challenges(registry), "Cannot read accounts.")
            _refuse_password_queries(req)
            if req.method == "POST":
                oid = _posted_id(req, registry.settings["json_max_depth"])
                if oid is None:
                    pass  # the engine reports a missing or invalid id
                elif req.authenticated:
                    # Decided before anything is read: whether another
                    # account exists must not change the answer.
                    if not await _owner_or_admin(registry, req, oid):
                        raise _mismatch()
                elif await registry.storage.get(req.txn, POLICY_NAME, "", oid) is not None:
                    raise Forbidden(f"Account ID {oid!r} already exists")
            response = await view(req)
            if req.method == "POST":
                await _show_stored_acl(registry, engine, req, response)
            return response

        return accounts_plural

    @staticmethod
    def _object_view(registry, engine, view):
        async def accounts_object(req: ApiRequest):
            await _guard_object(registry, req, req.params["id"])
            response = await view(req)
            if req.method in ("PUT", "PATCH"):
                await _show_stored_acl(registry, engine, req, response)
            return response

        return accounts_object


# Kinto keeps an account to its owner and the configured admins whatever
# its ACL says (its accounts live under their owner's id): an ACE that an
# account holder gives to someone else, even to system.Everyone, must never
# let that someone read, list, change or delete the account.


async def _owner_or_admin(registry, req, account_id: str) -> bool:
    """Whether the authenticated request may write account C{account_id}."""
    if req.user_id == f"{POLICY_NAME}:{account_id}":
        return True  # (no group look-up on the common path)
    return _is_admin(registry.settings, await ensure_principals(registry, req))


async def _guard_object(registry, req, account_id: str) -> None:
    """
    Who may go on to the engine with a request on one account. Another's
    account gets the same answer whether it exists or not: 403, or for a
    PUT the 400 of Kinto's own id check.
    """
    method = req.method
    if not registry.resource_types[POLICY_NAME].id_pattern.match(account_id):
        # An id no account can have: said as for any resource, before the
        # question of whose it is.
        raise InvalidParameters("path", None, "Invalid object id")
    if req.authenticated:
        if await _owner_or_admin(registry, req, account_id):
            return
        principals = await ensure_principals(registry, req)
        if method in ("GET", "HEAD") and _is_reader(registry.settings, principals):
            return
        if method == "PUT":
            raise _mismatch()
        raise Forbidden()
    if method == "PUT":
        # Anonymous requests only ever create an account (a conditional
        # create is left to the engine, which answers 412 if it exists).
        if req.header("If-None-Match", "").strip() == "*":
            return
        if await registry.storage.get(req.txn, POLICY_NAME, "", account_id) is None:
            return
    raise Unauthenticated(challenges(registry))


class _AccountEngine(Engine):
    """The engine, with the account lists cut down to what each user may see."""

    async def readable_ids(
        self, req: ApiRequest, loc: Location, permission: str, page=None
    ) -> tuple[frozenset[str] | None, ParentNotFound | None]:
        principals = await ensure_principals(self.registry, req)
        settings = self.registry.settings
        if _is_admin(settings, principals) or (
            permission == "read" and _is_reader(settings, principals)
        ):
            return await super().readable_ids(req, loc, permission, page)
        user_id = req.user_id
        if not req.authenticated or user_id is None:
            raise self.deny(req)
        # Everyone else lists (and deletes) their own account at most (and
        # accounts have no parent that could be missing).
        prefix = f"{POLICY_NAME}:"
        own = user_id[len(prefix) :] if user_id.startswith(prefix) else None
        return frozenset([own] if own else ()), None


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
