"""
Authentication: the C{basicauth} policy and the policy chain that turns a
request into a user id and its principals.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from zope.interface import implementer

from jsonsync.interfaces import IAuthenticationPolicy, IAuthenticationPolicyFactory

EVERYONE = "system.Everyone"
AUTHENTICATED = "system.Authenticated"


def basic_credentials(request) -> tuple[str, str] | None:
    """C{(user, password)} from an C{Authorization: Basic} header, or C{None}."""
    header = request.header("Authorization")
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


class Identity:
    """
    What a policy may return instead of a bare user id: a complete user id,
    used as it is (not prefixed with the policy's name: a token acts for the
    user who made it, with that user's principals), and an optional
    C{restriction} (an L{jsonsync.interfaces.IRestriction}) that narrows
    every permission check of the request.
    """

    __slots__ = ("user_id", "restriction")

    def __init__(self, user_id: str, restriction=None):
        self.user_id = user_id
        self.restriction = restriction


def hmac_hex(secret: str, message: str) -> str:
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


@implementer(IAuthenticationPolicy)
class BasicAuthPolicy:
    """
    Kinto's C{basicauth}: any non-empty user name is accepted, and the user
    id is the HMAC-SHA256 of C{"user:password"} keyed by
    C{userid_hmac_secret}, so the same pair always maps to the same id.
    """

    name = "basicauth"
    challenge = 'Basic realm="Realm"'

    _CACHE_SIZE = 1024

    def __init__(self, secret: str):
        self._secret = secret
        # header -> user id: the derivation is pure, and clients resend the
        # same header on every request.
        self._known: dict[str, str | None] = {}

    async def authenticate(self, request, txn):
        header = request.header("Authorization")
        if header is None:
            return None
        if header in self._known:
            return self._known[header]
        credentials = basic_credentials(request)
        user_id = None
        if credentials is not None and credentials[0]:
            user_id = hmac_hex(self._secret, f"{credentials[0]}:{credentials[1]}")
        if len(self._known) >= self._CACHE_SIZE:
            self._known.clear()
        self._known[header] = user_id
        return user_id


@implementer(IAuthenticationPolicyFactory)
class BasicAuthFactory:
    name = "basicauth"
    settings: dict = {}  # it reads userid_hmac_secret, a core setting

    def build(self, settings, registry):
        return BasicAuthPolicy(settings["userid_hmac_secret"])


async def authenticate(registry, request) -> None:
    """
    Run the policy chain on C{request} and set its C{user_id},
    C{authenticated} and base C{principals} (the user id,
    C{system.Authenticated}, C{system.Everyone}). The first policy that
    returns a user id wins; a policy that returns an L{Identity} gives a
    complete user id and the request's C{restriction}. Group principals are loaded later, with the
    first permission check (L{ensure_principals} loads them on their own).
    Results are shared by the sub-requests of a batch that carry the same
    credentials.
    """
    cache = request.ctx.auth_cache
    key = request.header("Authorization")
    cached = cache.get(key)
    if cached is None:
        user_id = None
        restriction = None
        for policy in registry.policies:
            found = await policy.authenticate(request, request.txn)
            if found:
                if isinstance(found, Identity):
                    user_id, restriction = found.user_id, found.restriction
                else:
                    user_id = f"{policy.name}:{found}"
                break
        cached = cache[key] = {"user_id": user_id, "groups": None if user_id else (), "restriction": restriction}
    request.restriction = cached["restriction"]
    request.user_id = cached["user_id"]
    request.authenticated = request.user_id is not None
    request.auth_entry = cached
    set_groups(request, cached["groups"])


def base_principals(request) -> list[str]:
    if request.user_id is None:
        return [EVERYONE]
    return [request.user_id, AUTHENTICATED, EVERYONE]


def set_groups(request, groups) -> None:
    """Record the request's group principals (C{None}: not loaded yet)."""
    base = base_principals(request)
    if groups is None:
        request.principals = base
        request.groups_loaded = False
        return
    request.principals = [base[0], *sorted(groups), *base[1:]] if request.user_id else base
    request.groups_loaded = True
    entry = request.auth_entry
    if entry is not None:
        entry["groups"] = tuple(groups)


def membership_keys(request) -> list[str]:
    """The member strings whose groups a request's user holds."""
    return [request.user_id, AUTHENTICATED]


async def ensure_principals(registry, request) -> list[str]:
    """The request's principals, group principals included (loading them if needed)."""
    if not request.groups_loaded:
        groups = await registry.permissions.user_principals(request.txn, membership_keys(request))
        set_groups(request, groups)
    return request.principals


def challenges(registry) -> list[str]:
    return [p.challenge for p in registry.policies if getattr(p, "challenge", None)]
