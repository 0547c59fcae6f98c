"""
What a list query means, independent of any backend: filters, sorting,
keyset pagination, and the total order of JSON values they rely on.

The memory backend evaluates these functions directly; the PostgreSQL
backend translates the same L{Query} into SQL and must agree with them (the
contract suite checks it).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any


class _Missing:
    """The value of a field an object does not have: greater than any value."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return "MISSING"

    def __reduce__(self):
        return (_Missing, ())


MISSING: Any = _Missing()


class Op(enum.Enum):
    EQ = "eq"
    NOT = "not"
    IN = "in"
    EXCLUDE = "exclude"
    LT = "lt"
    MAX = "max"
    GT = "gt"
    MIN = "min"
    LIKE = "like"
    HAS = "has"
    CONTAINS = "contains"
    CONTAINS_ANY = "contains_any"


@dataclass(frozen=True)
class Filter:
    field: str
    value: Any
    op: Op = Op.EQ


@dataclass(frozen=True)
class Sort:
    field: str
    direction: int = 1  # 1 ascending, -1 descending


DEFAULT_SORT = (Sort("last_modified", -1),)


@dataclass
class Query:
    """
    @ivar filters: ANDed L{Filter}s.
    @ivar pagination: keyset rules, ORed, each a list of ANDed filters.
    @ivar ids: restrict to these ids (partial read access), or C{None}.
    @ivar include_deleted: return tombstones too.
    """

    filters: list[Filter] = field(default_factory=list)
    sorting: tuple[Sort, ...] = DEFAULT_SORT
    pagination: list[list[Filter]] = field(default_factory=list)
    limit: int | None = None
    ids: frozenset[str] | None = None
    include_deleted: bool = False


# Past this many dot-separated parts, a field path is read only as one key or
# as one key per part (the PostgreSQL backend's _MAX_SPLIT_PARTS agrees).
MAX_SPLIT_PARTS = 5


def resolve(obj: dict, path: str) -> Any:
    """
    The value at a dotted C{path}, trying the longest key that exists at
    each level first so that keys containing dots are reachable.
    """
    if path in obj:
        return obj[path]
    if "." not in path:
        return MISSING
    parts = path.split(".")
    if len(parts) > MAX_SPLIT_PARTS:
        # Trying every split of a long path costs exponential time on an
        # object whose keys are crafted for it; the PostgreSQL backend
        # tries the same two readings.
        sub: Any = obj
        for part in parts:
            if not isinstance(sub, dict) or part not in sub:
                return MISSING
            sub = sub[part]
        return sub
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in obj:
            sub = obj[head]
            if isinstance(sub, dict):
                found = resolve(sub, ".".join(parts[cut:]))
                if found is not MISSING:
                    return found
    return MISSING


def rank(value: Any) -> int:
    """Position of a value's type in C{null < string < number < boolean < array < object < missing}."""
    if value is None:
        return 0
    if isinstance(value, str):
        return 1
    if isinstance(value, bool):
        return 3
    if isinstance(value, (int, float)):
        return 2
    if isinstance(value, list):
        return 4
    if isinstance(value, dict):
        return 5
    return 6  # MISSING


def sort_key(value: Any):
    """A key that orders any JSON values (and L{MISSING}) as PostgreSQL's JSONB does."""
    r = rank(value)
    if r == 1 or r == 2:
        return (r, value)
    if r == 3:
        return (r, int(value))
    if r == 4:
        return (r, len(value), tuple(sort_key(v) for v in value))
    if r == 5:
        items = sorted(value.items())
        return (r, len(items), tuple((k, sort_key(v)) for k, v in items))
    return (r,)


def json_equal(a: Any, b: Any) -> bool:
    """Typed equality: C{1 != "1"}, C{True != 1}, containers compared deeply."""
    return sort_key(a) == sort_key(b)


_like_cache: dict[str, re.Pattern] = {}


def like_pattern(value: str) -> re.Pattern:
    pattern = _like_cache.get(value)
    if pattern is None:
        if "*" not in value:
            value = f"*{value}*"
        body = ".*".join(re.escape(part) for part in value.split("*"))
        pattern = re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL)
        if len(_like_cache) < 1000:
            _like_cache[value] = pattern
    return pattern


def _key_set(flt: Filter) -> frozenset:
    """
    The sort keys of an C{in_}/C{exclude_} filter's values, worked out once
    per filter: checking each object against a list (an C{in_id} of a
    whole page of ids) would cost objects times values.
    """
    keys = flt.__dict__.get("_keys")
    if keys is None:
        keys = frozenset(sort_key(v) for v in flt.value)
        object.__setattr__(flt, "_keys", keys)  # frozen: a cache, not a change
    return keys


def matches(obj: dict, flt: Filter) -> bool:
    """Whether C{obj} passes one filter."""
    value = resolve(obj, flt.field)
    op = flt.op
    if op is Op.EQ:
        return json_equal(value, flt.value)
    if op is Op.NOT:
        return not json_equal(value, flt.value)
    if op is Op.IN:
        return sort_key(value) in _key_set(flt)
    if op is Op.EXCLUDE:
        return sort_key(value) not in _key_set(flt)
    if op is Op.HAS:
        return (value is not MISSING) == bool(flt.value)
    if op is Op.LIKE:
        return isinstance(value, str) and like_pattern(flt.value).match(value) is not None
    if op is Op.CONTAINS or op is Op.CONTAINS_ANY:
        if not isinstance(value, list):
            return False
        keys = {sort_key(v) for v in value}
        wanted = [sort_key(v) for v in flt.value]
        if op is Op.CONTAINS:
            return all(w in keys for w in wanted)
        return any(w in keys for w in wanted)
    key, other = sort_key(value), sort_key(flt.value)
    if op is Op.LT:
        return key < other
    if op is Op.MAX:
        return key <= other
    if op is Op.GT:
        return key > other
    if op is Op.MIN:
        return key >= other
    raise ValueError(op)


def matches_all(obj: dict, filters: list[Filter]) -> bool:
    for flt in filters:
        if not matches(obj, flt):
            return False
    return True


def keyset_rules(sorting: tuple[Sort, ...], last: dict) -> list[list[Filter]]:
    """
    Keyset pagination rules: the objects strictly after C{last} (a mapping
    of sort field to value, a missing field meaning L{MISSING}) in the
    order given by C{sorting}.
    """
    rules = []
    for i, sort in enumerate(sorting):
        rule = [Filter(s.field, last.get(s.field, MISSING), Op.EQ) for s in sorting[:i]]
        op = Op.GT if sort.direction > 0 else Op.LT
        rule.append(Filter(sort.field, last.get(sort.field, MISSING), op))
        rules.append(rule)
    return rules


def ordering_key(sorting: tuple[Sort, ...]):
    """A key function for C{list.sort} implementing C{sorting} (directions included)."""

    def key(obj):
        return tuple(
            _Directed(sort_key(resolve(obj, s.field)), s.direction) for s in sorting
        )

    return key


class _Directed:
    __slots__ = ("key", "direction")

    def __init__(self, key, direction):
        self.key = key
        self.direction = direction

    def __lt__(self, other):
        if self.direction > 0:
            return self.key < other.key
        return self.key > other.key

    def __eq__(self, other):
        return self.key == other.key
