"""
Resource declarations: what a resource type is (its place in the tree, ids,
permissions, validation) and where an object of it lives (its URI and its
storage parent).
"""

from __future__ import annotations

import random
import re
import string
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeAlias

    from jsonsync.config import Settings
    from jsonsync.http import ApiRequest

    # The hooks of a resource type (see ResourceType).
    Validator: TypeAlias = Callable[[ApiRequest, "Location", dict, "dict | None"], Awaitable[dict]]
    WriteHook: TypeAlias = Callable[[ApiRequest, "Location", "dict | None", dict], Awaitable[Any]]
    DeleteHook: TypeAlias = Callable[[ApiRequest, "Location", dict], Awaitable[Any]]
    CacheExpiry: TypeAlias = Callable[[ApiRequest, "Location"], Awaitable[list]]
    GrantsThatCount: TypeAlias = Callable[[Settings, list[str], str, set[str]], set[str]]

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$")
# The longest id of any resource type. PostgreSQL refuses an index entry
# beyond 2,704 bytes: a record's key holds its id beside its parent path (its
# bucket's and collection's ids), and its ACL key its URI beside a principal
# such as "account:<id>", four ids in all. At 512 characters (ASCII, as every
# id pattern is) the longest such key is about 2,100 bytes, while ids of a few
# hundred characters (extension storage keys made ids) keep working.
MAX_ID_LENGTH = 512
# The longest principal (in UTF-8 bytes) a body may put in a permission list
# or a group's members: a principal is part of the same index keys as the
# ids. It is the longest group principal, "/buckets/<bid>/groups/<gid>" with
# ids of MAX_ID_LENGTH (an "account:<id>" is shorter); beside the longest
# URI (a record's, three ids) the ACL key stays near 2,650 bytes, under
# PostgreSQL's 2,704. Counted in bytes: principals, unlike ids, may hold
# any character. docs/limits.md states it.
MAX_PRINCIPAL_LENGTH = len("/buckets//groups/") + 2 * MAX_ID_LENGTH  # 1,041


def principal_too_long(principal: str) -> bool:
    return len(principal) > MAX_PRINCIPAL_LENGTH or (
        len(principal.encode("utf-8", "surrogatepass")) > MAX_PRINCIPAL_LENGTH
    )
_ALNUM = string.ascii_letters + string.digits
_NAME_CHARS = _ALNUM + "_-"
_rng = random.SystemRandom()


def name_id() -> str:
    """Kinto's short generated id: one letter or digit, then seven more characters."""
    return _rng.choice(_ALNUM) + "".join(_rng.choice(_NAME_CHARS) for _ in range(7))


def uuid_id() -> str:
    return str(uuid.uuid4())


class IdPattern:
    """
    A resource type's id pattern, bounded: C{match} refuses ids longer than
    L{MAX_ID_LENGTH} and wants the whole id to match (a C{$} anchor alone
    lets a trailing newline through).
    """

    __slots__ = ("regex", "max_length")

    def __init__(self, regex: re.Pattern, max_length: int = MAX_ID_LENGTH):
        self.regex = regex
        self.max_length = max_length

    @property
    def pattern(self) -> str:
        return self.regex.pattern

    def match(self, text: str) -> re.Match | None:
        if len(text) > self.max_length:
            return None
        return self.regex.fullmatch(text)

    fullmatch = match

    def __repr__(self):
        return f"IdPattern({self.regex.pattern!r}, max_length={self.max_length})"


@dataclass
class ResourceType:
    """
    @ivar parent: the parent type's name, or C{None} for top-level types.
    @ivar permissions: the permission names an object's ACL may hold.
    @ivar validate: C{async (request, location, data, existing) -> data}:
        checks and normalises an object's data before it is stored
        (C{existing}: the stored object, or C{None} for a create).
    @ivar strict_fields: for schema-bound resources, the fields filters and
        sorting may use (unknown ones get 400); C{None} accepts any.
    @ivar on_write: C{async (request, location, old, new)} after a create
        (C{old} is C{None}) or update, in the same transaction (group
        membership, say).
    @ivar on_delete: C{async (request, location, old)} after a delete.
    @ivar validators: more C{validate}-like checks, run after C{validate}
        in order (plugins such as C{schema} append theirs).
    @ivar present: C{(obj) -> obj} applied to objects before they are sent
        to a client (the accounts plugin hides password hashes with it).
    @ivar leaf_data: objects of this type are many, have nothing below them,
        and writing one changes no permission and no ancestor (records,
        history entries): the sub-requests of a batch that create them keep
        what earlier ones were granted instead of looking it up again, and
        C{/permissions} does not expand settings' ACLs over every one of them.
    @ivar cache_expiry: C{async (request, location) -> [seconds, ...]}: more
        candidate cache lifetimes for anonymous reads, beside the
        C{<type>_cache_expires_seconds} setting (records: per bucket and
        collection settings, the collection's C{cache_expires}).
    @ivar grants_that_count: C{(settings, principals, object_id, permissions)
        -> permissions}: which stored ACEs really give something, for
        C{/permissions} (an account's reach only its owner and the admins).
    @ivar data_schema: JSON Schema properties of the data fields the type
        knows (C{/__api__} describes them; validation is C{validate}'s).
    @ivar required_fields: data fields a create or replace must carry (the
        account's password): C{/__api__} then requires a body.
    @ivar hidden_fields: data fields never shown, so not filterable either.
    """

    name: str
    plural: str
    parent: str | None
    permissions: tuple[str, ...] = ("read", "write")
    id_pattern: re.Pattern | IdPattern = NAME_PATTERN
    id_generator: Callable[[], str] = name_id
    validate: Validator | None = None
    strict_fields: frozenset[str] | None = None
    on_write: WriteHook | None = None
    on_delete: DeleteHook | None = None
    validators: list[Validator] = field(default_factory=list)
    present: Callable[[dict], dict] | None = None
    leaf_data: bool = False
    cache_expiry: CacheExpiry | None = None
    grants_that_count: GrantsThatCount | None = None
    data_schema: dict[str, Any] = field(default_factory=dict)
    required_fields: tuple[str, ...] = ()
    hidden_fields: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # Every type, plugins' included, gets the length bound: the id is
        # part of the database key whatever its pattern.
        if not isinstance(self.id_pattern, IdPattern):
            self.id_pattern = IdPattern(self.id_pattern)

    @property
    def create_permission(self) -> str:
        return f"{self.name}:create"


@dataclass
class Location:
    """
    Where an object (or a list) is: C{parent_uri} is also the storage
    parent id; C{ancestors} are the C{(type, id)} pairs above it.
    """

    resource: ResourceType
    parent_uri: str
    ancestors: list[tuple[ResourceType, str]]
    object_id: str | None = None

    @property
    def list_uri(self) -> str:
        return f"{self.parent_uri}/{self.resource.plural}"

    @property
    def uri(self) -> str:
        return f"{self.list_uri}/{self.object_id}"

    def child_uri(self, object_id: str) -> str:
        return f"{self.list_uri}/{object_id}"

    def payload(self) -> dict[str, Any]:
        """Kinto's event payload ids: C{bucket_id}, C{collection_id}, C{<resource>_id}."""
        ids = {f"{rt.name}_id": oid for rt, oid in self.ancestors}
        if self.object_id is not None:
            ids[f"{self.resource.name}_id"] = self.object_id
        return ids
